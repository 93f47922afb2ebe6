"""DES form probe: the whole b1 deploy form with DES dense or Kronecker-factored, per artifact.

Exports the demo model at 512x512 once per DES form (``--forms``: ``dense`` = every DES two dense
linears, an int N = factored on maps of at least N channels, ``0`` = every DES factored) with the
project's exporter (``--target``, ``--bits``, ``--activations``; int8 calibrates on ``--calib``
synthetic images), loads each artifact in its runtime and times them interleaved in one process, so
load on the machine hits every form alike. It is how ``FACTORED_DES_MIN_CHANNELS`` was chosen:

    python3 benchmarks/des_form.py --forms dense 128 0
    python3 benchmarks/des_form.py --forms dense 128 --bits 8 --activations 8

Prints, per form: DES blocks factored, weights, artifact MB, export seconds, max |logit diff| against
the first form's artifact, and median / minimum latency.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hrvit_mobile
from hrvit_mobile.demo import load_demo_model
from hrvit_mobile.exporters import ExportSpec, export, target_names
from hrvit_mobile.exporters.runtime import open_artifact


def _factored_from(form: str) -> int | None:
    return None if form == "dense" else int(form)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forms", nargs="+", default=["dense", "128"])
    parser.add_argument("--target", default=target_names()[0], choices=target_names())
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--activations", default=None)
    parser.add_argument("--calib", type=int, default=8, help="synthetic calibration images (int8)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = load_demo_model((512, 512)).eval()
    image = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    rows, runners = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for form in args.forms:
            deployed = hrvit_mobile.deploy(model, img_size=(512, 512), factored_des_from=_factored_from(form))
            blocks = [m for m in deployed.modules() if hasattr(m, "des_factors")]
            spec = ExportSpec(target=args.target, bits=args.bits, activations=args.activations,
                              img_size=(512, 512), num_classes=model.num_classes, out_dir=Path(tmp) / form,
                              model_name="hrvit_b1", calib_samples=args.calib, run_parity=False)
            report = export(deployed, spec)
            runner = open_artifact(report.artifact.path, threads=2)
            runners[form] = runner
            rows.append({
                "form": form,
                "factored_blocks": sum(m.des_factors is not None for m in blocks),
                "blocks": len(blocks),
                "weights": sum(p.numel() for p in deployed.parameters()),
                "size_mb": round(report.artifact.size_bytes / 1e6, 3),
                "export_seconds": round(report.artifact.export_seconds, 1),
            })
        first = runners[args.forms[0]].predict(image)[0]
        for row in rows:
            row["max_abs_diff_vs_first"] = float(np.abs(runners[row["form"]].predict(image)[0] - first).max())
        times: dict[str, list[float]] = {form: [] for form in runners}
        for _ in range(args.runs):  # interleaved: drift on a shared machine hits every form alike
            for form, runner in runners.items():
                t0 = time.perf_counter()
                runner.predict(image)
                times[form].append(time.perf_counter() - t0)
    for row in rows:
        row["median_ms"] = round(float(np.median(times[row["form"]])) * 1e3, 1)
        row["min_ms"] = round(min(times[row["form"]]) * 1e3, 1)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(f"{r['form']:>6}: {r['factored_blocks']}/{r['blocks']} DES factored, {r['weights']:,} weights, "
              f"{r['size_mb']} MB, export {r['export_seconds']} s, max|d| {r['max_abs_diff_vs_first']:.2e}, "
              f"median {r['median_ms']} ms, min {r['min_ms']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
