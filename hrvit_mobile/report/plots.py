"""Report plots as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _target_colors() -> dict[str, str]:
    """Each registered target's plot colour, in registry order."""
    from hrvit_mobile.exporters.registry import backends

    return {b.name: b.color for b in backends()}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def size_vs_agreement(rows: list[dict[str, Any]]) -> bytes | None:
    """Scatter of artifact size (MB) against argmax agreement with the float model (%), one point each."""
    pts = [r for r in rows if r.get("parity") and r.get("size_bytes")]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = _target_colors()
    placed: list[tuple[float, float]] = []
    for r in pts:
        x, y = r["size_bytes"] / 1e6, 100 * r["parity"]["argmax_agreement"]
        ax.scatter(x, y, s=46, color=colors.get(r["target"], "k"), zorder=3)
        # points that nearly coincide (fp32 of every target) get their labels stacked, not overprinted
        near = sum(1 for px, py in placed if abs(px - x) < 0.06 * x + 1e-9 and abs(py - y) < 0.5)
        placed.append((x, y))
        ax.annotate(f"{r['target']}/{r['variant']}", (x, y), textcoords="offset points",
                    xytext=(5, 4 - 10 * near), fontsize=8)
    for t, c in colors.items():
        if any(r["target"] == t for r in pts):
            ax.scatter([], [], color=c, label=t)
    ax.set_xlabel("artifact size (MB)")
    ax.set_ylabel("argmax agreement with float (%)")
    ax.set_title("Size vs agreement")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def latency_bars(rows: list[dict[str, Any]]) -> bytes | None:
    """Horizontal bars: median host latency per artifact, p90 as the whisker."""
    pts = [r for r in rows if r.get("latency")]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(pts) + 1.2))
    names = [f"{r['target']}/{r['variant']}" for r in pts]
    med = [r["latency"]["median_ms"] for r in pts]
    p90 = [r["latency"]["p90_ms"] for r in pts]
    y = range(len(pts))
    colors = _target_colors()
    ax.barh(y, med, color=[colors.get(r["target"], "grey") for r in pts],
            xerr=[[0] * len(pts), [max(0.0, b - a) for a, b in zip(med, p90)]], capsize=3)
    for i, m, hi in zip(y, med, p90):
        ax.text(max(m, hi), i, f"  {m:.1f}", va="center", fontsize=8)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("host latency, ms (bar: median, whisker: p90)")
    ax.set_title("Latency in each artifact's runtime (this host)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def layer_sqnr(layers: dict[str, Any], top: int = 12) -> bytes | None:
    """Left: output SQNR of every module in graph order. Right: the modules that lose the most SQNR."""
    rows = layers.get("layers") or []
    worst = (layers.get("worst") or [])[:top]
    if not rows:
        return None

    def f(v: Any) -> float:
        return float(v)

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    a.plot([f(r["sqnr_out_db"]) for r in rows], lw=1)
    a.set_xlabel("module (graph order)")
    a.set_ylabel("output SQNR vs float (dB)")
    a.set_title(f"{layers['variant']}: SQNR through the network")
    a.grid(alpha=0.3)
    if worst:
        b.barh(range(len(worst)), [f(r["loss_db"]) for r in worst], color="#d62728")
        b.set_yticks(range(len(worst)), [r["module"][-48:] for r in worst], fontsize=7)
        b.invert_yaxis()
        b.set_xlabel("SQNR lost in the module (dB)")
        b.set_title("Layers that lose the most")
        b.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)
