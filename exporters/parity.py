"""Parity: how close an artifact's output is to the float PyTorch model on the same images.

The thresholds an artifact must meet per (bits, activations), the deterministic synthetic images the
exporters run parity and calibration on when none are given, the float reference outputs and the
metrics (:func:`compare`) every backend's ``validate`` reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

EXPORTER_SYNTHETIC = "the exporter's synthetic images"
EXPORTER_SYNTHETIC_PARITY = "synthetic blob images (the exporter's own; not from the model's domain)"


@dataclass(frozen=True)
class ParityThresholds:
    """Limits an artifact must meet against the float PyTorch model; ``None`` disables a check."""

    max_abs_err: float | None = None
    min_cosine: float | None = None
    min_argmax_agreement: float | None = None


# Defaults per (bits, activations). fp32 keeps its promise (argmax >= 99.9 %, max |diff| <= 1e-3);
# the lossy variants are bounded by cosine and argmax agreement, because logit scale is model-dependent.
DEFAULT_THRESHOLDS: dict[tuple[int, str], ParityThresholds] = {
    (32, "float"): ParityThresholds(max_abs_err=1e-3, min_cosine=0.99999, min_argmax_agreement=0.999),
    (16, "float"): ParityThresholds(min_cosine=0.999, min_argmax_agreement=0.99),
    (8, "float"): ParityThresholds(min_cosine=0.99, min_argmax_agreement=0.95),
    (8, "int8"): ParityThresholds(min_cosine=0.98, min_argmax_agreement=0.90),
    (6, "float"): ParityThresholds(min_cosine=0.99, min_argmax_agreement=0.95),
    (4, "float"): ParityThresholds(min_cosine=0.95, min_argmax_agreement=0.85),
}


def default_thresholds(bits: int, activations: str) -> ParityThresholds:
    return DEFAULT_THRESHOLDS.get((bits, activations), ParityThresholds(min_cosine=0.95))


@dataclass
class ParityResult:
    """The artifact's output in its runtime vs the float PyTorch model on the same images."""

    runtime: str
    ran: bool
    passed: bool | None  # None when the runtime could not run here
    thresholds: ParityThresholds
    samples: int = 0
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    cosine: float | None = None  # the worst sample
    argmax_agreement: float | None = None  # over all pixels of all samples
    reason: str = ""  # why it did not run, or which check failed
    structural: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def synthetic_images(n: int, img_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Deterministic uint8 RGB images (N, H, W, 3): smooth blobs plus texture, photo-like statistics.

    Pure noise would make every pixel's argmax a coin toss; smooth regions give the model something
    like real structure, which makes argmax agreement meaningful.
    """
    h, w = img_size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.zeros((h, w, 3), np.float32)
        for _ in range(6):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(0.1, 0.5) * max(h, w)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img += blob[..., None] * rng.uniform(-0.6, 0.6, 3)
        img += 0.5 + 0.05 * rng.standard_normal((h, w, 3))
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def to_tensors(batch: np.ndarray) -> list[torch.Tensor]:
    """(N, 3, H, W) float32 -> N tensors of (1, 3, H, W)."""
    return [torch.from_numpy(np.ascontiguousarray(batch[i : i + 1])) for i in range(batch.shape[0])]


@torch.no_grad()
def reference_outputs(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    model.eval()
    return [first_output(model(x)).float().numpy() for x in inputs]


def first_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0]


def compare(
    outputs: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    thresholds: ParityThresholds,
    runtime: str,
) -> ParityResult:
    """Parity metrics over samples of logits (1, K, h, w); the class axis is 1."""
    if len(outputs) != len(references) or not outputs:
        raise ValueError(f"got {len(outputs)} outputs for {len(references)} references")
    max_abs, abs_sum, count, agree, pixels, cos_min = 0.0, 0.0, 0, 0, 0, 1.0
    for out, ref in zip(outputs, references, strict=True):
        out = np.asarray(out, np.float64).reshape(ref.shape)
        ref = np.asarray(ref, np.float64)
        d = np.abs(out - ref)
        max_abs = max(max_abs, float(d.max()))
        abs_sum += float(d.sum())
        count += d.size
        denom = float(np.linalg.norm(out) * np.linalg.norm(ref))
        cos_min = min(cos_min, float(np.dot(out.ravel(), ref.ravel()) / denom) if denom else 0.0)
        agree += int((out.argmax(1) == ref.argmax(1)).sum())
        pixels += ref.shape[0] * int(np.prod(ref.shape[2:]))
    res = ParityResult(
        runtime=runtime,
        ran=True,
        passed=True,
        thresholds=thresholds,
        samples=len(outputs),
        max_abs_err=max_abs,
        mean_abs_err=abs_sum / count,
        cosine=cos_min,
        argmax_agreement=agree / pixels,
    )
    failed = []
    # NaN compares false against every threshold (and max() skips it): refuse it explicitly
    if not all(np.isfinite(np.asarray(out)).all() for out in outputs):
        failed.append("non-finite values (NaN/inf) in the artifact's output")
    if thresholds.max_abs_err is not None and max_abs > thresholds.max_abs_err:
        failed.append(f"max_abs_err {max_abs:.3g} > {thresholds.max_abs_err:g}")
    if thresholds.min_cosine is not None and cos_min < thresholds.min_cosine:
        failed.append(f"cosine {cos_min:.6f} < {thresholds.min_cosine:g}")
    if thresholds.min_argmax_agreement is not None and res.argmax_agreement < thresholds.min_argmax_agreement:
        failed.append(f"argmax agreement {res.argmax_agreement:.4f} < {thresholds.min_argmax_agreement:g}")
    if failed:
        res.passed = False
        res.reason = "; ".join(failed)
    return res
