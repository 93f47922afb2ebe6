"""What `hrvit-mobile report`, `bench` and `export --report` do; `hrvit_mobile.cli` only wires them."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrvit_mobile.errors import HRViTMobileError

log = logging.getLogger("hrvit_mobile.report")

BuildModel = Callable[[argparse.Namespace, tuple[int, int]], torch.nn.Module]


def verification_set(
    args: argparse.Namespace, size: tuple[int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(images, labels, description) from --images/--labels; without them the demo checkpoint's held-out
    synthetic val images (with labels) when the demo checkpoint is the model, else the export's parity
    set for such a model: the shipped sample photos, or synthetic images where those are not installed."""
    from hrvit_mobile.demo import demo_checkpoint_for, demo_verification_set
    from hrvit_mobile.exporters import synthetic_images
    from hrvit_mobile.metrics import IGNORE_INDEX

    from .data import load_verification_set

    if args.labels and not args.images:
        raise HRViTMobileError("--labels needs --images (the images the labels belong to)")
    if args.samples < 1:
        raise HRViTMobileError(f"--samples must be >= 1, got {args.samples}")
    if not args.images:
        demo = None if args.checkpoint else demo_checkpoint_for(args.model)
        if demo is not None and num_classes == demo.num_classes:
            return demo_verification_set(args.samples, size)
        from hrvit_mobile.selftest import sample_photos

        photos = sample_photos(size, 2)
        if len(photos):
            return photos, None, (f"{len(photos)} shipped sample images (demo_app_assets/samples/*.jpg, the "
                                  "export's parity set)")
        return synthetic_images(2, size, seed=1000), None, "2 synthetic images (the export's parity set)"
    images, labels = load_verification_set(
        args.images, size, args.labels, args.samples, args.reduce_zero_label
    )
    if labels is not None:
        bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))]
        if bad.size:
            raise HRViTMobileError(
                f"labels hold class {int(bad.flat[0])}, outside 0..{num_classes - 1} (255 = ignore); "
                "for ADE20K's 0-based 'other' pass --reduce-zero-label"
            )
    return images, labels, f"{len(images)} image(s) from {args.images}" + (
        f", labels from {args.labels}" if labels is not None else "")


def run_report(args: argparse.Namespace, build_model: BuildModel) -> str:
    """``hrvit-mobile report``: returns the line to print."""
    from hrvit_mobile.data.calibration import default_calibration
    from hrvit_mobile.deploy import deploy
    from hrvit_mobile.exporters import read_sidecar
    from hrvit_mobile.exporters.errors import ExportError

    from . import build_report

    paths = [Path(a) for a in args.artifacts]
    for p in paths:
        if not p.exists():
            raise ExportError(f"artifact not found: {p}")
    meta = read_sidecar(paths[0])
    size = (int(meta["img_size"][0]), int(meta["img_size"][1]))
    args.model = args.model or meta.get("model") or "hrvit_b1"
    args.num_classes = args.num_classes or meta["num_classes"]
    if args.latency_runs < 1:
        raise HRViTMobileError(f"--latency-runs must be >= 1, got {args.latency_runs}")
    images, labels, source = verification_set(args, size, args.num_classes)
    calib, calib_source = default_calibration(args.calib, args.calib_samples, size, demo_model=False)
    reference = deploy(build_model(args, size), img_size=size)
    files = build_report(paths, reference, images, args.out, labels, images_source=source,
                         latency_runs=args.latency_runs, layer_error=not args.no_layers, calib=calib,
                         calib_source=calib_source)
    return summary_line(files.report.artifacts, files.html)


def summary_line(entries: Sequence[Any], html: Path) -> str:
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.status] = counts.get(e.status, 0) + 1
    return f"report: {html} ({', '.join(f'{n} {s}' for s, n in counts.items())})"


def report_after_export(reports: Sequence[Any], deployed: torch.nn.Module, args: argparse.Namespace,
                        calib: np.ndarray | None, images: np.ndarray | None = None) -> None:
    """The report ``export`` writes beside its artifacts (``<out>/<artifact stem>_report/``), on the images
    its parity ran on (``images``; None: the exporter's synthetic ones).

    A report that cannot be written is a warning: the export itself succeeded and stays as it is.
    """
    from hrvit_mobile.exporters import parity_inputs
    from hrvit_mobile.exporters.spec import calibration_tensors

    from . import build_report

    spec = reports[0].spec
    stem = reports[0].artifact.path.name.split(".")[0]
    if len(reports) > 1:
        h, w = spec.img_size
        stem = f"{spec.model_name}_{h}x{w}_all_{spec.bits}bit"
    out = Path(args.out) / f"{stem}_report"
    try:
        calib_t = calibration_tensors(spec, calib) if calib is not None else None
        # per-layer error re-runs the quantization with loggers (minutes on a full model): it stays
        # in `hrvit-mobile report` / `bench`, so that an export's report costs seconds
        source = spec.parity_source or f"the export's {spec.parity_samples} synthetic parity images"
        files = build_report([r.artifact.path for r in reports], deployed, parity_inputs(spec, images), out,
                             images_source=source, calib=calib_t,
                             layer_error=False)
    except Exception as e:
        log.warning("report not written: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return
    print(summary_line(files.report.artifacts, files.html))


def run_bench_command(args: argparse.Namespace, size: tuple[int, int], build_model: BuildModel) -> int:
    """``hrvit-mobile bench``: prints the table (or JSON); exit 0 even when pairs fail (they are rows)."""
    from hrvit_mobile.deploy import deploy
    from hrvit_mobile.models import list_models

    from .bench import run_bench, table

    if args.model not in list_models():
        raise HRViTMobileError(f"unknown --model {args.model!r}; choose from {', '.join(list_models())}")
    if args.latency_runs < 1:
        raise HRViTMobileError(f"--latency-runs must be >= 1, got {args.latency_runs}")
    images, labels, source = verification_set(args, size, args.num_classes)
    img_size = f"{size[0]}x{size[1]}"
    rows, html = run_bench(
        args.model, img_size, args.out, lambda: deploy(build_model(args, size), img_size=size),
        targets=args.targets, only=args.only, checkpoint=args.checkpoint, num_classes=args.num_classes,
        images=images, labels=labels, images_source=source,
        latency_runs=args.latency_runs, layer_error=not args.no_layers,
        calib_dir=args.calib, calib_samples=args.calib_samples, reuse=args.reuse,
    )
    if args.json:
        print(Path(args.out, "bench.json").read_text())
    else:
        print(table(rows))
        print(f"\nbench.json, bench.md: {args.out}" + (f"; report: {html}" if html else ""))
    return 0


