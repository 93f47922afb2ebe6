"""The README tells the truth about how CI installs and tests the project."""

from __future__ import annotations

import json
import re
from pathlib import Path

import conftest
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command() -> None:
    commands = _readme_commands()
    test_command = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci


def test_readme_main_command_uses_the_console_script() -> None:
    main = _readme_commands()[0]
    assert main.startswith("python3 -m pip install -e ") and "hrvit-mobile " in main


def test_a_runtime_that_does_not_import_fails_in_ci_and_skips_elsewhere(monkeypatch) -> None:
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="no_such_runtime does not import"):
        conftest.require_module("no_such_runtime")
    with pytest.raises(pytest.fail.Exception):
        conftest.has_module("no_such_runtime")
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception):
        conftest.require_module("no_such_runtime")
    assert conftest.has_module("no_such_runtime") is False
    assert conftest.require_module("json") is json


def test_ci_runs_in_ci_mode() -> None:
    """.ci/run sets CI=true, so a runtime missing from its install fails the run instead of skipping."""
    assert "export CI=true" in (ROOT / ".ci" / "run").read_text()


def test_generated_figure_pages_match_their_json() -> None:
    """The measured-figure pages and README's headline rows are what benchmarks/docs_pages.py writes
    from the kept JSON: a hand edit of a figure (or a stale page) fails here."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "docs_pages.py"), "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
