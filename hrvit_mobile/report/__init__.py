"""Parity and size reports: ``report.json``, ``report.md`` and a self-contained ``report.html``.

    from hrvit_mobile.report import build_report
    build_report(["exports/a.pte", "exports/b.tflite"], deployed_model, images, out_dir="report")

Every figure comes from the artifact's own runtime (``open_artifact``) against the float model on the
same images; per-layer error of the int8 PT2E variants comes from the PyTorch-side simulation and the
report says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .collect import ArtifactEntry, Report, collect

__all__ = ["ArtifactEntry", "Report", "ReportFiles", "build_report", "collect", "write_report"]

log = logging.getLogger("hrvit_mobile.report")


@dataclass
class ReportFiles:
    json: Path
    markdown: Path
    html: Path
    report: Report


def write_report(report: Report, out_dir: Path | str) -> ReportFiles:
    """Plots, masks, report.json/.md/.html into ``out_dir``, built in a staging folder then moved in."""
    from hrvit_mobile.files import commit, staging_dir

    from . import plots as plots_mod
    from .render import html_page, markdown

    out = Path(out_dir)
    data = report.to_dict()
    pngs = dict(report.pngs)
    plots: dict[str, str] = {}
    for key, png in (("size_vs_agreement", plots_mod.size_vs_agreement(data["artifacts"])),
                     ("latency", plots_mod.latency_bars(data["artifacts"]))):
        if png:
            plots[key] = pngs_key = f"plots/{key}.png"
            pngs[pngs_key] = png
    for a in data["artifacts"]:
        if a.get("layers"):
            png = plots_mod.layer_sqnr(a["layers"])
            if png:
                rel = f"plots/layers_{a['name'].replace('.', '_')}.png"
                plots[f"layers:{a['name']}"], pngs[rel] = rel, png
    with staging_dir(out, "report") as stage:
        for rel, png in pngs.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_bytes(png)
        (stage / "report.json").write_text(json.dumps(data, indent=2) + "\n")
        (stage / "report.md").write_text(markdown(data, plots))
        (stage / "report.html").write_text(html_page(data, pngs, plots))
        # pictures first, the reports last: a reader that sees report.md sees its pictures
        for sub in ("masks", "plots"):
            if (stage / sub).exists():
                commit(stage / sub, out / sub)
        for name in ("report.json", "report.md", "report.html"):
            commit(stage / name, out / name)
    log.info("report: %s", out / "report.html")
    return ReportFiles(out / "report.json", out / "report.md", out / "report.html", report)


def build_report(
    artifacts: Sequence[Path | str],
    model: torch.nn.Module,
    images: np.ndarray,
    out_dir: Path | str,
    labels: np.ndarray | None = None,
    **kwargs,
) -> ReportFiles:
    """Measure ``artifacts`` against the float ``model`` on ``images`` and write the report files.

    Keyword arguments go to :func:`collect` (``images_source``, ``latency_runs``, ``layer_error``, ...).
    """
    return write_report(collect(artifacts, model, images, labels, **kwargs), out_dir)
