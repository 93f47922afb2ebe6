"""Faster, bit-identical stand-ins for slow parts of PT2E's observers.

:func:`observed_min_max_qparams` (calibration): what a per-tensor min/max observer's ``forward`` and
``calculate_qparams`` compute, as float32 scalar arithmetic instead of ~15 small tensor ops.

``HistogramObserver.calculate_qparams`` picks the clipping range with ``_non_linear_param_search``:
it walks two quantile bounds inwards in steps of 1e-5 and, at every step, scans the cumulative
histogram bin by bin, each bin read as a 0-dim tensor and compared with a Python float (~6 us a
bin here). On b1's ExecuTorch int8 export (876 histogram observers, 2,048 bins) the search was ~87 %
of ``convert_pt2e`` under py-spy, and more than half of it outside the candidates' error computation.
:func:`non_linear_param_search` runs the same walk over the cumulative histogram as Python floats;
everything else (the error of each candidate range, the returned bounds) is computed by the observer's
own tensor code, so the chosen range is the same, bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from hrvit_mobile.patching import library_patch

from . import native

_FLOAT32 = struct.Struct("f")


def _float32(value: float) -> float:
    """``value`` rounded to float32 (as a Python float): what a comparison of a float32 0-dim tensor
    with a Python scalar compares against (the scalar takes the tensor's dtype)."""
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:  # beyond float32's range: the cast gives an infinity
        return math.copysign(math.inf, value)


def _minimum(a: np.float32, b: np.float32) -> np.float32:
    """ATen's scalar ``minimum`` of two non-NaN floats: ``std::min(a, b)``, ``a`` when they compare equal
    (0.0 and -0.0)."""
    return b if b < a else a


def _maximum(a: np.float32, b: np.float32) -> np.float32:
    """ATen's scalar ``maximum`` of two non-NaN floats: ``std::max(a, b)``, ``a`` when they compare equal."""
    return b if a < b else a


def _min_max_observer_types() -> tuple[type, type]:
    from torchao.quantization.pt2e.observer import MinMaxObserver, MovingAverageMinMaxObserver

    return MinMaxObserver, MovingAverageMinMaxObserver


def observed_min_max_qparams(
    observer: Any, low: float, high: float
) -> tuple[float, float, float, int] | None:
    """``(min_val, max_val, scale, zero_point)`` that torchao's per-tensor ``MinMaxObserver`` or
    ``MovingAverageMinMaxObserver`` reaches when it observes a tensor whose extrema are ``low``/``high``
    (float32 values) and then computes its quantization parameters, without changing it; None where
    this mirror does not apply (another observer type or scheme, a NaN or infinity anywhere, an empty
    range) and the stock code must run.

    The stock code does it in 0-dim float32 tensor ops: ``torch.min``/``torch.max`` of two values (ATen's
    scalar ``std::min``/``std::max``), the moving average ``m + c * (x - m)`` with ``c`` taken as float32,
    and the scale ``max(|range|) / ((quant_max - quant_min) / 2)`` (symmetric) or ``range / (quant_max -
    quant_min)`` (affine) floored at ``eps``. Here the same IEEE float32 operations run on numpy float32
    scalars, in the same order (tests compare every field with the stock observer's on random and edge
    values: zeros of both signs, ranges under ``eps``, the first observation).
    """
    minmax, moving = _min_max_observer_types()
    kind = type(observer)
    if kind not in (minmax, moving) or observer.qscheme not in (torch.per_tensor_symmetric,
                                                               torch.per_tensor_affine):
        return None
    if observer.min_val.dtype != torch.float32 or observer.min_val.numel() != 1 or observer.eps.numel() != 1:
        return None
    f32 = np.float32
    lo, hi = f32(low), f32(high)
    old_lo, old_hi = f32(observer.min_val.item()), f32(observer.max_val.item())
    if kind is moving:
        if old_lo == np.inf and old_hi == -np.inf:
            new_lo, new_hi = lo, hi
        else:
            c = f32(observer.averaging_constant)
            new_lo, new_hi = old_lo + c * (lo - old_lo), old_hi + c * (hi - old_hi)
    else:
        new_lo, new_hi = _minimum(lo, old_lo), _maximum(hi, old_hi)
    if not (np.isfinite(new_lo) and np.isfinite(new_hi)) or new_lo > new_hi:
        return None  # stock: NaN qparams, the unobserved default, or its assertion
    quant_min, quant_max = observer.quant_min, observer.quant_max
    eps = f32(observer.eps.item())
    min_neg, max_pos = _minimum(new_lo, f32(0.0)), _maximum(new_hi, f32(0.0))
    if observer.qscheme == torch.per_tensor_symmetric:
        scale = _maximum(_maximum(-min_neg, max_pos) / f32(float(quant_max - quant_min) / 2), eps)
        if observer.dtype in (torch.quint8, torch.uint8):
            zero_point = (quant_min + quant_max) // 2 if observer.has_customized_qrange else 128
        elif observer.dtype == torch.uint16:
            zero_point = 2**15
        else:
            zero_point = 0
    else:
        scale = _maximum((max_pos - min_neg) / f32(float(quant_max - quant_min)), eps)
        zero_point = min(max(quant_min - int(np.rint(min_neg / scale)), quant_min), quant_max)
    return float(new_lo), float(new_hi), float(scale), zero_point


def non_linear_param_search(observer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``observer._non_linear_param_search()`` (torchao ``HistogramObserver``), step for step, for a
    float32 or float64 histogram (:func:`fast_param_search` leaves other dtypes to the stock method).

    The cumulative sums are float32 values, so as Python floats they compare exactly as the 0-dim
    tensors did once the other side is rounded to float32 (:func:`_float32`).
    """
    histogram = observer.histogram
    bins = observer.bins
    if histogram.size()[0] != bins:
        raise AssertionError("bins mismatch")
    bin_width = (observer.max_val - observer.min_val) / bins

    total = torch.sum(histogram).item()
    cumulative_t = torch.cumsum(histogram, dim=0)
    # a float64 histogram compares in float64, exactly as Python floats do
    limit = {torch.float32: _float32, torch.float64: float}[cumulative_t.dtype]
    cumulative = cumulative_t.tolist()

    stepsize = 1e-5  # the observer's granularity, as in its own loop
    alpha, beta = 0.0, 1.0
    start_bin, end_bin = 0, bins - 1
    norm_min = float("inf")
    while alpha < beta:
        next_alpha = alpha + stepsize
        next_beta = beta - stepsize
        # the limits are rounded only where a bin is compared with them: once the bounds meet, the walk
        # runs out its remaining steps (up to 1e5 of them, e.g. a constant activation) comparing nothing
        left, right = start_bin, end_bin
        if left < end_bin:
            low_limit = limit(next_alpha * total)
            while left < end_bin and cumulative[left] < low_limit:
                left += 1
        if right > start_bin:
            high_limit = limit(next_beta * total)
            while right > start_bin and cumulative[right] > high_limit:
                right -= 1

        next_start_bin, next_end_bin = start_bin, end_bin
        if (left - start_bin) > (end_bin - right):
            next_start_bin = left
            alpha = next_alpha
        else:
            next_end_bin = right
            beta = next_beta
        if next_start_bin == start_bin and next_end_bin == end_bin:
            continue
        norm = observer._compute_quantization_error(next_start_bin, next_end_bin)
        if norm > norm_min:
            break
        norm_min = norm
        start_bin, end_bin = next_start_bin, next_end_bin

    new_min = observer.min_val + bin_width * start_bin
    new_max = observer.min_val + bin_width * (end_bin + 1)
    return new_min, new_max


def upscale_histogram(
    observer: Any,
    histogram: torch.Tensor,
    orig_min: torch.Tensor,
    orig_max: torch.Tensor,
    update_min: torch.Tensor,
    update_max: torch.Tensor,
) -> torch.Tensor | None:
    """``HistogramObserver._upscale_histogram`` (the old histogram moved into a widened range) with the
    bucketize / bincount step in the native kernel (:func:`native.rebinned`, checked against those ops),
    or None where that kernel declines. The stock method was 3.0 s of b1's ExecuTorch int8 calibration
    (py-spy, histogram thread: 5,551 widened ranges, ~0.5 ms each, most of it in ``bucketize``'s binary
    searches of 32k sorted points); the mid points and the tensors around the kernel are the stock ones.
    """
    if not native.available_rebin():  # the caller computes the stock way: not these tensors first
        return None
    rate, bins = observer.upsample_rate, observer.bins
    weights = histogram.repeat_interleave(rate) / rate
    bin_size = (orig_max - orig_min) / (bins * rate)
    mid = (
        torch.linspace(orig_min, orig_max, bins * rate + 1, device=orig_min.device)[:-1].to(weights.device)
        + 0.5 * bin_size
    )
    bounds = torch.linspace(update_min, update_max, bins + 1, device=update_min.device).to(weights.device)
    return native.rebinned(mid, weights, bounds)


@contextlib.contextmanager
def fast_param_search() -> Iterator[None]:
    """Within the block, torchao's ``HistogramObserver`` searches its range with
    :func:`non_linear_param_search` (the same result)."""
    from torchao.quantization.pt2e.observer import HistogramObserver

    stock = HistogramObserver._non_linear_param_search

    def search(observer: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if observer.histogram.dtype in (torch.float32, torch.float64):
            return non_linear_param_search(observer)
        return stock(observer)

    with library_patch(HistogramObserver, _non_linear_param_search=search):
        yield
