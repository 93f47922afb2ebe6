"""Render a collected report as Markdown (PNG files beside it) and as one self-contained HTML file."""

from __future__ import annotations

import base64
import html
from typing import Any

SUMMARY_COLUMNS = (
    "artifact", "runtime", "status", "size MB", "size vs fp32", "max abs", "mean abs", "cosine (min)",
    "SQNR dB", "argmax agree", "mIoU vs float", "mIoU vs GT", "latency ms (median / p90)", "parity",
)


def _f(v: Any, spec: str) -> str:
    if v is None:
        return "-"
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.2f} %"


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per artifact, the cells of :data:`SUMMARY_COLUMNS`."""
    rows = []
    for a in report["artifacts"]:
        p = a.get("parity") or {}
        lat = a.get("latency")
        verdict = "-" if not p else ("pass" if p["passed"] else "FAIL: " + p["reason"])
        rows.append([
            f"{a['target']}/{a['variant']}",
            a["runtime"] or "-",
            a["status"],
            _f(a["size_bytes"] / 1e6, ".2f"),
            _f(1 / a["compression_vs_fp32"] if a.get("compression_vs_fp32") else None, ".3f"),
            _f(p.get("max_abs_err"), ".2e"),
            _f(p.get("mean_abs_err"), ".2e"),
            _f(p.get("cosine_min"), ".6f"),
            _f(p.get("sqnr_db"), ".1f"),
            _pct(p.get("argmax_agreement")) if p else "-",
            _f(p.get("miou_vs_float"), ".4f"),
            _f(p.get("miou_vs_labels"), ".4f"),
            f"{lat['median_ms']:.1f} / {lat['p90_ms']:.1f}" if lat else "not measured",
            verdict,
        ])
        rows += [arm64_row(a, v) for v in (a.get("arm64") or {}).values()]
    return rows


def arm64_row(a: dict[str, Any], v: dict[str, Any]) -> list[str]:
    """A row of its own for the artifact's run on an ARM64 CPU model (``hrvit-mobile verify``), vs float."""
    f = v.get("vs_float") or {}
    verdict = "pass" if v.get("passed") else "FAIL: " + (v.get("error") or f.get("reason") or "")
    return [f"{a['target']}/{a['variant']} on ARM64 {v['cpu']}", v["runtime"], "measured" if f else "error",
            "-", "-", _f(f.get("max_abs_err"), ".2e"), _f(f.get("mean_abs_err"), ".2e"),
            _f(f.get("cosine"), ".6f"), "-", _pct(f.get("argmax_agreement")) if f else "-", "-", "-",
            "not measured (emulated)" if v.get("execution", "").startswith("qemu") else "not measured",
            verdict]


def _intro(report: dict[str, Any]) -> list[str]:
    h, w = report["img_size"]
    lines = [
        f"Model **{report['model']}**, input {h}x{w}, {report['num_classes']} classes, "
        f"{report['params']:,} float parameters (the deploy form the artifacts were made from).",
        f"Verification set: {report['images_source']}; "
        + ("with labels." if report["labels"] else "no labels (mIoU vs ground truth not available)."),
        "Reference: the float PyTorch model on the same images. Latency is this host's CPU "
        f"({report['host']['platform']}), not a phone. Created {report['created']}.",
    ]
    if report.get("float_vs_labels"):
        fl = report["float_vs_labels"]
        lines.append(
            f"Float model vs labels: mIoU {fl['miou']:.4f}, pixel accuracy {fl['pixel_accuracy']:.4f}."
        )
    return lines


def _artifact_notes(a: dict[str, Any]) -> list[str]:
    notes = [f"file `{a['path']}`, {a['size_bytes']:,} bytes"]
    if a.get("compression_vs_fp32"):
        c = a["compression_vs_fp32"]
        notes[-1] += f", {1 / c:.3f}x the size of the {a['compression_basis']} ({c:.2f}x smaller)"
    if a["status"] != "measured":
        notes.append(f"**{a['status']}**: {a['reason']}")
    if a.get("verify_command"):
        notes.append(f"verify on the right host: `{a['verify_command']}`")
    if a["runtime"]:
        notes.append(f"runtime: {a['runtime']}")
    if a.get("latency_note"):
        notes.append(f"latency: {a['latency_note']}")
    notes.append(f"delegation: {a['delegation']}")
    if a.get("export_seconds") is not None:
        notes.append(f"export time: {a['export_seconds']:.1f} s")
    p = a.get("parity")
    if p and p.get("pixel_acc_vs_labels") is not None:
        notes.append(f"pixel accuracy vs labels: {p['pixel_acc_vs_labels']:.4f}")
    th = {k: v for k, v in (a.get("thresholds") or {}).items() if v is not None}
    if th:
        notes.append("parity thresholds: " + ", ".join(f"{k} {v}" for k, v in th.items()))
    versions = a.get("tool_versions") or {}
    if versions:
        notes.append("export tools: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform"))
    if a.get("runtime_versions"):
        notes.append("measured with: " + ", ".join(f"{k} {v}" for k, v in a["runtime_versions"].items()))
    if a.get("layers_note"):
        notes.append(f"per-layer error: {a['layers_note']}")
    return notes


def _layer_table(layers: dict[str, Any], n: int = 10) -> tuple[list[str], list[list[str]]]:
    head = ["module", "SQNR in (dB)", "SQNR out (dB)", "lost (dB)"]
    rows = [[r["module"], _f(r["sqnr_in_db"], ".1f"), _f(r["sqnr_out_db"], ".1f"), _f(r["loss_db"], ".1f")]
            for r in layers["worst"][:n]]
    return head, rows


def _md_table(head: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return lines + ["| " + " | ".join(r) + " |" for r in esc]


def markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    """``plots``: plot name -> relative PNG path (written beside report.md)."""
    out = [f"# hrvit-mobile report: {report['model']}", "", *_intro(report), ""]
    out += ["## Summary", "", *_md_table(SUMMARY_COLUMNS, summary_rows(report)), ""]
    for key, title in (("size_vs_agreement", "Size vs agreement"), ("latency", "Latency")):
        if key in plots:
            out += [f"![{title}]({plots[key]})", ""]
    for a in report["artifacts"]:
        out += [f"## {a['target']}/{a['variant']}", ""]
        out += [f"- {n}" for n in _artifact_notes(a)] + [""]
        if a.get("layers"):
            out += [f"Per-layer error ({a['layers']['source']}; {a['layers'].get('images', '?')} image(s)), "
                    f"{a['layers']['quantizer']}:", ""]
            out += [*_md_table(*_layer_table(a["layers"])), ""]
            if f"layers:{a['name']}" in plots:
                out += [f"![per-layer SQNR]({plots['layers:' + a['name']]})", ""]
        for m in a.get("masks", []):
            out += [f"![image / float / artifact / disagreement]({m})", ""]
    return "\n".join(out) + "\n"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,td:nth-child(2),td:nth-child(3){text-align:left}
td.fail{color:#b00;font-weight:600;white-space:normal;text-align:left;min-width:170px}
td:nth-child(2){white-space:normal;min-width:120px}.scroll{overflow-x:auto}td.pass{color:#070}
.notrun{background:#fff6e0}ul{font-size:13px}code{background:#f4f4f4;padding:1px 3px}
img{max-width:100%;border:1px solid #eee;margin:4px 0}.cap{font-size:12px;color:#555}
.masks{width:1000px;max-width:100%;margin:6px 0 14px}
.masks img{display:block;width:100%;image-rendering:pixelated}
.heads{display:flex;font-size:12px;color:#555}.heads span{flex:1;text-align:center}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _html_table(
    head: list[str] | tuple[str, ...], rows: list[list[str]], status_col: int | None = None
) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cls = ' class="notrun"' if status_col is not None and r[status_col] != "measured" else ""
        cells = []
        for i, c in enumerate(r):
            tcls = ""
            if head[i] == "parity":
                tcls = ' class="pass"' if c == "pass" else (' class="fail"' if c.startswith("FAIL") else "")
            cells.append(f"<td{tcls}>{html.escape(c)}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _md_inline(text: str) -> str:
    """The notes use **bold** and `code`; render those two, escape the rest."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def html_page(report: dict[str, Any], pngs: dict[str, bytes], plots: dict[str, str]) -> str:
    """One HTML file with every picture inline (data URIs): no external src or href."""
    body = [f"<h1>hrvit-mobile report: {html.escape(report['model'])}</h1>"]
    body += [f"<p>{_md_inline(line)}</p>" for line in _intro(report)]
    body += ["<h2>Summary</h2>", "<div class=scroll>"
             + _html_table(SUMMARY_COLUMNS, summary_rows(report), status_col=2) + "</div>"]
    for key, title in (("size_vs_agreement", "Size vs agreement"), ("latency", "Latency")):
        if key in plots:
            body.append(_img(pngs[plots[key]], title))
    for a in report["artifacts"]:
        title = a["target"] + "/" + a["variant"]
        body.append(f"<h2 id={html.escape(title.replace('/', '-'))}>{html.escape(title)}</h2>")
        body.append("<ul>" + "".join(f"<li>{_md_inline(n)}</li>" for n in _artifact_notes(a)) + "</ul>")
        if a.get("layers"):
            body.append(f"<p class=cap>Per-layer error: {html.escape(a['layers']['source'])}; "
                        f"{a['layers'].get('images', '?')} image(s); "
                        f"{html.escape(a['layers']['quantizer'])}. Worst layers:</p>")
            body.append(_html_table(*_layer_table(a["layers"])))
            key = f"layers:{a['name']}"
            if key in plots:
                body.append(_img(pngs[plots[key]], "per-layer SQNR"))
        if a.get("masks"):
            heads = ("image", "float prediction", "artifact prediction", "disagreement (red: classes differ)")
            body.append('<div class=masks><div class=heads>' + "".join(f"<span>{h}</span>" for h in heads)
                        + "</div>" + "".join(_img(pngs[m], "masks") for m in a["masks"]) + "</div>")
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>hrvit-mobile report: {html.escape(report['model'])}</title><style>{_CSS}</style></head>"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
