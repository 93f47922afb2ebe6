"""Run mutmut over the code that decides whether an artifact is good (see docs/testing.md).

mutmut names a mutant after its file's path and checks that the tests reach the function under that
dotted name; ``exporters/`` installs as ``hrvit_mobile.exporters`` (setuptools ``package-dir``), so in the
checkout the two differ. This builds a copy laid out as the package installs (``hrvit_mobile/exporters``,
``hrvit_mobile/quant``), runs ``mutmut run`` there with the ``[tool.mutmut]`` settings of pyproject.toml
(mutmut puts its ``mutants/`` copy first on ``sys.path``, ahead of the editable install's finder), and
prints killed / total per module:

    python3 tests/mutation.py                 # into build/mutation, one test process
    python3 tests/mutation.py --children 2    # more parallel
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = {"hrvit_mobile": "hrvit_mobile", "exporters": "hrvit_mobile/exporters",
          "quant": "hrvit_mobile/quant", "tests": "tests", "demo_app_assets": "demo_app_assets"}
# what the score is about: the metrics, the parity comparison, the Core ML weight decompression, and the
# verifying half of bundle.py (building a bundle is tested by test_bundle.py, not mutated)
DEFAULT_NAMES = [
    "hrvit_mobile.metrics.*",
    "hrvit_mobile.exporters.parity.*",
    "hrvit_mobile.exporters.coreml_eval.weights.*",
    *(f"hrvit_mobile.bundle.x_{f}__mutmut_*" for f in ("verify_bundle", "_verify", "_inside",
                                                       "_field_mismatches", "_artifact_io", "_as_nchw")),
]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")


def build_workspace(work: Path) -> None:
    """A fresh copy of the sources in their installed layout (mutmut's own state is kept between runs
    only while the sources are unchanged: mutmut rebuilds a mutant whose file changed)."""
    work.mkdir(parents=True, exist_ok=True)
    for src, dst in LAYOUT.items():
        target = work / dst
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ROOT / src, target, ignore=IGNORE)
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")


def scores(work: Path, names: list[str]) -> dict[str, Counter]:
    """Per mutated file: how many of its mutants (those matching ``names``, if given) ended killed,
    survived, timed out or untested."""
    from mutmut.stats import status_by_exit_code

    out: dict[str, Counter] = {}
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
        chosen = [code for name, code in exit_codes.items()
                  if not names or any(fnmatch.fnmatch(name, pattern) for pattern in names)]
        if chosen:
            counts = Counter(status_by_exit_code[code] for code in chosen)
            out[str(meta.relative_to(work / "mutants"))[: -len(".meta")]] = counts
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument("--children", type=int, default=1, help="mutants tested at once")
    parser.add_argument("names", nargs="*", help="mutant name globs (default: all)")
    args = parser.parse_args()
    build_workspace(args.work)
    run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.children),
                          *(args.names or DEFAULT_NAMES)], cwd=args.work)
    for path, counts in scores(args.work, args.names or DEFAULT_NAMES).items():
        total, killed = sum(counts.values()), counts["killed"]
        others = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "killed")
        print(f"{path}: {killed} of {total} killed ({100 * killed / max(total, 1):.1f} %); {others}")
    print(f"survivors: cd {args.work} && python3 -m mutmut results; python3 -m mutmut show NAME")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
