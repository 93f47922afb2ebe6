"""Same-bits kernels for PTQ calibration: torch's per-tensor fake quantization and ``torch.histc`` over
a known range as whole-tensor passes (or the native C loop), and how often each binning path ran."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from .. import native


def fake_quantize_per_tensor(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int, quant_max: int
) -> torch.Tensor:
    """``torch.fake_quantize_per_tensor_affine`` of a float32 tensor, bit for bit, in a new tensor.

    The ATen kernel computes ``(clamp(zp + nearbyint(x * (1.0f / scale))) - zp) * scale`` element by
    element (a NaN clamps to ``quant_min``); here the same float32 operations run as whole-tensor
    in-place passes (``round`` is round-half-to-even like ``nearbyint``; adding the zero point, also 0,
    turns a rounded -0.0 into +0.0 as the kernel's integer step does). About 6x faster on a 4M-element
    activation on this host; tests compare the bits, ties, signed zeros, infinities and NaN included.
    """
    scale = scale.reshape(()).to(torch.float32)
    inv_scale = torch.ones((), dtype=torch.float32) / scale
    zp = int(zero_point.reshape(()).item())
    q = torch.mul(x, inv_scale).round_().add_(zp)
    q.clamp_(quant_min, quant_max).nan_to_num_(nan=float(quant_min))
    if zp:
        q.sub_(zp)
    return q.mul_(scale)


# torch.histc counts in float32: a bin holding 2**24 values or more could round in the stock kernel
_EXACT_FLOAT32_COUNTS = 1 << 24

# how many histograms each path has binned in this process (exports report their share, see
# hrvit_mobile.exporters.quantize): "native C kernel", "PyTorch passes", "torch.histc" (cases declined)
BINNING_PATHS: Counter[str] = Counter()


def _binning_edges(x: torch.Tensor, bins: int, low: Any, high: Any) -> tuple[float, float, float] | None:
    """``(low, high, span)`` as the float32 values torch.histc bins ``x`` with, or None where its kernel
    does something else than :func:`histc_in_range` does (see there)."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or not 0 < x.numel() < _EXACT_FLOAT32_COUNTS:
        return None
    # the checks run on Python floats and NumPy float32 scalars: as 0-dim tensors they were ~9 % of b1's
    # calibration (a few dozen small tensor ops per activation)
    low, high = float(low), float(high)
    lo32, hi32 = np.float32(low), np.float32(high)
    if float(lo32) != low or float(hi32) != high:  # the kernel's edges are float32 (also catches NaN)
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        span32 = hi32 - lo32
        if not (span32 > 0 and np.isfinite(span32 * np.float32(bins))):
            return None
    return low, high, float(span32)


def histc_in_range(
    x: torch.Tensor, bins: int, low: Any, high: Any, extrema: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor | None:
    """``torch.histc(x, bins, low, high)`` of a float32 CPU tensor whose values all lie in ``[low, high]``,
    bit for bit, or None where that does not hold (the caller then takes the stock kernel).

    ATen's kernel bins each value as ``int64((v - low) * bins / (high - low))`` in float32, one element
    at a time, and puts ``v == high`` in the last bin. Here the same float32 operations run in
    :mod:`~hrvit_mobile.quant.native`'s C loop where it is available, else as whole-tensor passes with
    ``bincount`` counting the bins (~2x faster than the kernel on a 4M-element activation). Ranges
    where the kernel does something else (``low == high`` widens the range by 1; overflowing or
    non-float32 bounds; NaN or out-of-range values, which it skips) are left to it. ``extrema``: the
    ``torch.aminmax`` of ``x`` where the caller has it already (then not computed again).
    """
    edges = _binning_edges(x, bins, low, high)
    if edges is None:
        return None
    low, high, span32 = edges
    x_min, x_max = extrema if extrema is not None else torch.aminmax(x)
    if not (float(x_min) >= low and float(x_max) <= high):  # also False for NaN
        return None
    counts = native.bin_counts(x, bins, low, span32)
    if counts is not None:
        BINNING_PATHS["native C kernel"] += 1
        return counts
    lo, span = torch.tensor(low, dtype=torch.float32), torch.tensor(span32, dtype=torch.float32)
    position = torch.sub(x, lo).mul_(float(bins)).div_(span).to(torch.int32)
    position.clamp_(max=bins - 1)  # v == high: the last bin includes its right edge
    BINNING_PATHS["PyTorch passes"] += 1
    return torch.bincount(position.reshape(-1), minlength=bins).to(torch.float32)
