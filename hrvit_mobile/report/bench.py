"""``hrvit-mobile bench``: every supported target x bits pair of one model, one table row each.

Each export runs in a fresh ``hrvit-mobile export`` process (peak memory and wall time belong to that
export alone; a crash is a row, not the end of the run); the artifacts are then measured together by
the report (parity, latency in their own runtimes), which is also written into ``OUT/report``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrvit_mobile.errors import HRViTMobileError

log = logging.getLogger("hrvit_mobile.report")


@dataclass
class BenchRow:
    format: str  # target/variant
    target: str
    bits: int
    activations: str
    status: str  # ok, fail, skipped
    reason: str = ""
    artifact: str | None = None
    size_mb: float | None = None
    vs_fp32: float | None = None  # size relative to the same target's fp32 artifact
    cosine: float | None = None
    argmax_agreement: float | None = None
    sqnr_db: float | None = None
    latency_ms: float | None = None
    export_s: float | None = None
    process_s: float | None = None
    peak_rss_gb: float | None = None
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def export_command(
    target: str, bits: int, activations: str, model: str, img_size: str, out: Path,
    checkpoint: str | None = None, num_classes: int | None = None, report: bool = False,
    calib: str | None = None, calib_samples: int | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "hrvit_mobile.cli", "export", "--target", target, "--bits", str(bits),
           "--model", model, "--img-size", img_size, "--out", str(out)]
    if activations == "int8":
        cmd += ["--activations", "8"]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    if num_classes:
        cmd += ["--num-classes", str(num_classes)]
    if calib:
        cmd += ["--calib", str(calib)]
    if calib_samples:
        cmd += ["--calib-samples", str(calib_samples)]
    if not report:
        cmd.append("--no-report")
    return cmd


def export_pair(cmd: list[str], log_path: Path) -> tuple[int, float]:
    """Run one export command in its own process, output to ``log_path``; (exit code, wall seconds)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)
    return proc.returncode, time.perf_counter() - start


def find_artifact(out: Path, model: str, img_size: str, target: str, variant: str,
                  newer_than: float = 0.0) -> Path | None:
    """The artifact an export wrote (its sidecar is ``<artifact>.json``), if written after ``newer_than``."""
    h, w = img_size.lower().split("x")
    for sidecar in out.glob(f"{model}_{h}x{w}_{target}_{variant}.*.json"):
        if sidecar.stat().st_mtime >= newer_than:
            return sidecar.with_name(sidecar.name.removesuffix(".json"))
    return None


def _last_error(log_path: Path) -> str:
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower():
            return ln[-300:]
    return lines[-1][-300:] if lines else "no output"


def run_bench(
    model: str,
    img_size: str,
    out: Path | str,
    reference: Callable[[], torch.nn.Module],
    targets: Sequence[str] | None = None,
    only: Sequence[str] | None = None,
    checkpoint: str | None = None,
    num_classes: int | None = None,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    images_source: str = "synthetic",
    latency_runs: int = 10,
    layer_error: bool = True,
    calib_dir: str | None = None,
    calib_samples: int = 32,
    reuse: bool = False,
) -> tuple[list[BenchRow], Path | None]:
    """Export every pair, measure the artifacts, write bench.json, bench.md and report/ into ``out``.

    ``reference`` builds the float deploy-form model (called once, after the exports, so that it does
    not hold memory while they run). Returns the rows and the report.html path (None if no artifact).
    """
    from hrvit_mobile.data.calibration import default_calibration
    from hrvit_mobile.exporters import check_dependencies, supported, synthetic_images
    from hrvit_mobile.files import atomic_write

    from . import build_report

    out = Path(out)
    pairs = [(t, b, a, v) for (t, b, a), v in supported().items() if not targets or t in targets]
    if only:
        known = {f"{t}/{v}" for t, _b, _a, v in pairs}
        unknown = sorted(set(only) - known)
        if unknown:
            raise HRViTMobileError(f"--only {unknown[0]} is not a supported format; choose from "
                                   + ", ".join(sorted(known)))
        pairs = [p for p in pairs if f"{p[0]}/{p[3]}" in only]
    if not pairs:
        raise HRViTMobileError(f"no supported pair for targets {list(targets or [])}")
    rows: list[BenchRow] = []
    for target, bits, act, variant in pairs:
        row = BenchRow(f"{target}/{variant}", target, bits, act, status="ok")
        rows.append(row)
        try:
            check_dependencies(target)
        except HRViTMobileError as e:
            row.status, row.reason = "skipped", str(e)
            print(f"[{row.format}] skipped: {e}", file=sys.stderr, flush=True)
            continue
        cmd = export_command(target, bits, act, model, img_size, out / "artifacts", checkpoint, num_classes,
                             calib=calib_dir, calib_samples=calib_samples)
        row.command = " ".join(["hrvit-mobile", *cmd[3:]])
        art = find_artifact(out / "artifacts", model, img_size, target, variant) if reuse else None
        if art is not None:  # measured again below; its export figures are the sidecar's
            code, seconds = None, 0.0
            row.extra["reused"] = True
            print(f"[{row.format}] reusing {art.name}", file=sys.stderr, flush=True)
        else:
            print(f"[{row.format}] exporting ...", file=sys.stderr, flush=True)
            started = time.time()
            code, seconds = export_pair(cmd, out / "logs" / f"{target}_{variant}.log")
            row.process_s = round(seconds, 1)
            art = find_artifact(out / "artifacts", model, img_size, target, variant, newer_than=started - 1)
        if art is not None:
            row.artifact = str(art)
            meta = json.loads(art.with_name(art.name + ".json").read_text())
            row.size_mb = meta["size_bytes"] / 1e6
            row.export_s = meta.get("export_seconds")
            row.peak_rss_gb = meta["peak_rss_bytes"] / 1e9 if meta.get("peak_rss_bytes") else None
            if code is None:  # reused: its exit code is what its recorded parity says
                parity = meta.get("parity") or {}
                code = 1 if parity.get("ran") and not parity.get("passed") else 0
        if code != 0 or art is None:
            row.status = "fail"
            row.reason = (
                "parity below threshold (artifact kept)" if code == 1 and art is not None
                else f"exit {code}: {_last_error(out / 'logs' / f'{target}_{variant}.log')}"
            )
        if seconds:
            print(f"[{row.format}] {row.status} in {seconds:.0f} s", file=sys.stderr, flush=True)
    artifacts = [Path(r.artifact) for r in rows if r.artifact]
    report_html = None
    if artifacts:
        size = tuple(int(v) for v in img_size.lower().split("x"))
        if images is None:
            images = synthetic_images(2, size, seed=1000)  # the export's parity images
        # the exports' own --calib set for the per-layer simulation (without it, what the sidecars record)
        calib, calib_source = (default_calibration(calib_dir, calib_samples, size, demo_model=False)
                               if layer_error else (None, None))
        files = build_report(artifacts, reference(), images, out / "report", labels,
                             images_source=images_source, latency_runs=latency_runs, layer_error=layer_error,
                             calib=calib, calib_source=calib_source)
        report_html = files.html
        by_path = {a.path: a for a in files.report.artifacts}
        for r in rows:
            entry = by_path.get(r.artifact or "")
            if entry is None:
                continue
            r.vs_fp32 = 1 / entry.compression_vs_fp32 if entry.compression_vs_fp32 and \
                entry.compression_basis.endswith("fp32 artifact") else None
            if entry.parity:
                r.cosine = entry.parity["cosine_min"]
                r.argmax_agreement = entry.parity["argmax_agreement"]
                r.sqnr_db = entry.parity["sqnr_db"]
            if entry.latency:
                r.latency_ms = entry.latency["median_ms"]
            if entry.status != "measured" and r.status == "ok":
                r.reason = f"{entry.status}: {entry.reason}"
    data = {"model": model, "img_size": img_size, "rows": [_row_dict(r) for r in rows],
            "report": str(report_html) if report_html else None}
    atomic_write(out / "bench.json", json.dumps(data, indent=2) + "\n")
    atomic_write(out / "bench.md", f"# Benchmark: {model} @ {img_size}\n\n" + table(rows) + "\n")
    return rows, report_html


def _row_dict(r: BenchRow) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(r)
    if d["sqnr_db"] is not None and not np.isfinite(d["sqnr_db"]):
        d["sqnr_db"] = str(d["sqnr_db"])
    return d


COLUMNS = ("format", "status", "size MB", "vs fp32", "cosine", "argmax agree", "SQNR dB", "latency ms",
           "export s")


def _cell(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: Sequence[BenchRow]) -> str:
    """Markdown table (also readable as plain text): one row per pair, the reason under failures."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in rows:
        status = r.status if not r.reason else f"{r.status}: {r.reason}"
        agree = None if r.argmax_agreement is None else 100 * r.argmax_agreement
        cells = [r.format, status.replace("|", "/")[:140], _cell(r.size_mb, ".2f"), _cell(r.vs_fp32, ".3f"),
                 _cell(r.cosine, ".6f"), _cell(agree, ".2f"),
                 _cell(r.sqnr_db, ".1f"), _cell(r.latency_ms, ".1f"), _cell(r.export_s, ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
