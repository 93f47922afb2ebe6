"""Faster, bit-identical stand-ins for slow parts of PT2E's observers (used while converting).

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

import torch

from hrvit_mobile.patching import patched

_FLOAT32 = struct.Struct("f")


def _float32(value: float) -> float:
    """``value`` rounded to float32 (as a Python float): what a comparison of a float32 0-dim tensor
    with a Python scalar compares against (the scalar takes the tensor's dtype)."""
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:  # beyond float32's range: the cast gives an infinity
        return math.copysign(math.inf, value)


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

    with patched(HistogramObserver, _non_linear_param_search=search):
        yield
