"""Native kernels for int8 calibration (``calibration_kernels.c``), compiled on first use.

``HistogramObserver`` bins every activation of every calibration image (b1 at 512x512: ~400M values per
image). In PyTorch that is four whole-tensor passes plus a single-threaded ``bincount``; the C loop does it
in one pass, split over the intra-op threads for large tensors (ctypes releases the GIL while it runs).
``CoreMLQuantizer``'s fake-quant modules fake-quantize every activation (b1: 1,061 per image, most of them
small): ATen's kernel is a scalar loop and the same arithmetic as whole-tensor passes is six ops; the C
loop is one vectorized pass and one call. When an observer's range widens, its old histogram is re-binned
into the new range (``HistogramObserver._upscale_histogram``): a binary search per point in PyTorch, one
forward walk over the two sorted arrays in C (``rebin_sorted``).

The library is built once per source and compiler with the host's C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``) into ``$XDG_CACHE_HOME/hrvit-mobile`` (else ``~/.cache``, else the temp folder),
written to a temp file and renamed. Before first use in a process each kernel must reproduce its ATen
op bit for bit: ``torch.histc`` on values at and next to every bin edge, ``bucketize``/``bincount`` on
points at and next to every bound with fractional weights, ``fake_quantize_per_tensor_affine`` on ties,
their neighbours, signed zeros, infinities and NaN. No compiler, a failed build or a failed check: the
caller takes its PyTorch path (same bits, slower). ``HRVIT_MOBILE_NATIVE=0`` switches the kernels off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("hrvit_mobile.quant")

SOURCE = Path(__file__).with_name("calibration_kernels.c")
# no FMA contraction, no fast-math reassociation: each operation rounds as float32 arithmetic; no trapping
# math: the compiler may turn float selects into compares and blends (vectorized), the values are the same
_FLAGS = ("-O3", "-std=c99", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math", "-shared", "-fPIC")
# below this many values per thread, handing work to a second thread costs more than it saves (measured on
# this 2-core host: one thread is faster at 1M values, two are 1.6x faster at 4M)
_VALUES_PER_THREAD = 1 << 21


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def _cache_dirs() -> list[Path]:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(base) / "hrvit-mobile", Path(tempfile.gettempdir()) / "hrvit-mobile"]


def _build(compiler: str) -> Path | None:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(_FLAGS).encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    for folder in _cache_dirs():
        library = folder / f"{SOURCE.stem}-{key}.so"
        if library.exists():
            return library
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(dir=folder, suffix=".so.partial")
            os.close(fd)
        except OSError:
            continue  # not writable: the next folder
        try:
            subprocess.run([compiler, *_FLAGS, "-o", partial, str(SOURCE)], check=True, capture_output=True,
                           timeout=120)
            os.replace(partial, library)  # another process may have won the race: same bytes either way
            return library
        except (OSError, subprocess.SubprocessError) as error:
            log.info("native calibration kernels not built (%s); calibration uses its PyTorch path", error)
            return None
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return None


def _edge_values(low: float, high: float, bins: int) -> torch.Tensor:
    """Values whose bin is decided by the last bit: each bin edge, its float32 neighbours, and a spread."""
    edges = torch.linspace(low, high, bins + 1)
    up = torch.nextafter(edges, torch.full_like(edges, float("inf")))
    down = torch.nextafter(edges, torch.full_like(edges, float("-inf")))
    spread = torch.linspace(low, high, 10_007)
    return torch.cat([edges, up, down, spread]).clamp(low, high)


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("HRVIT_MOBILE_NATIVE", "1") == "0":
        return None
    compiler = _compiler()
    library = _build(compiler) if compiler else None
    if library is None:
        return None
    try:
        return ctypes.CDLL(str(library))
    except OSError as error:
        log.info("native calibration kernels not loaded (%s); calibration uses its PyTorch path", error)
        return None


def _typed(name: str, restype: Any, *argtypes: Any) -> Any:
    """The library's function ``name`` with its C signature set, or None without a library."""
    library = _library()
    function = getattr(library, name, None) if library is not None else None
    if function is not None:
        function.restype = restype
        function.argtypes = list(argtypes)
    return function


@functools.cache
def _kernel() -> Callable[..., None] | None:
    function = _typed("bin_counts", None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_float,
                      ctypes.c_int32, ctypes.c_void_p)
    if function is None:
        return None
    # the compiler's arithmetic must be the kernel's: checked on edge values over narrow to wide ranges
    # (through torch.ops: torch.histc and torch.aminmax may be fast_histograms' wrappers, and its histc
    # calls back here)
    for low, high, bins in ((-1.5, 2.25, 2048), (0.0, 1e-3, 2048), (-3.1e4, 7.7e5, 2048), (1.0, 1.0001, 256),
                            (-0.37, 0.91, 7)):
        x = _edge_values(low, high, bins)
        lo, hi = torch.ops.aten.aminmax.default(x)
        span = float(hi - lo)
        if not torch.equal(_run(function, x, bins, float(lo), span, threads=1),
                           torch.ops.aten.histc.default(x, bins, float(lo), float(hi))):
            log.warning("native binning kernel disagrees with torch.histc on this host; not used")
            return None
    return function


@functools.cache
def _kernel_if_inside() -> Callable[..., int] | None:
    """``bin_counts_if_inside``, checked against ``bin_counts`` (itself checked against ``torch.histc``):
    the same counts for values inside the range, a refusal for a value outside it or NaN."""
    counts = _kernel()
    function = _typed("bin_counts_if_inside", ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float,
                      ctypes.c_float, ctypes.c_float, ctypes.c_int32, ctypes.c_void_p) if counts else None
    if function is None:
        return None
    for low, high, bins in ((-1.5, 2.25, 2048), (0.0, 1e-3, 2048), (-0.37, 0.91, 7)):
        x = _edge_values(low, high, bins)
        lo, hi = (float(v) for v in torch.ops.aten.aminmax.default(x))
        span = float(torch.tensor(hi, dtype=torch.float32) - torch.tensor(lo, dtype=torch.float32))
        inside = _run_if_inside(function, x, bins, lo, hi, span, threads=1)
        outside = [x.clone() for _ in range(3)]
        outside[0][-1] = float("nan")
        outside[1][len(x) // 2] = hi * 2 + 1
        outside[2][0] = lo - 1
        if inside is None or not torch.equal(inside, _run(counts, x, bins, lo, span, threads=1)) or any(
            _run_if_inside(function, o, bins, lo, hi, span, threads=1) is not None for o in outside
        ):
            log.warning("native in-range binning kernel disagrees with bin_counts on this host; not used")
            return None
    return function


def _fake_quantize_check_values(scale: float) -> torch.Tensor:
    """Values where fake quantization is decided by the last bit or a special case: exact ties of the
    rounding, their float32 neighbours, signed zeros, infinities, NaN, far out of range, and a spread."""
    ties = (torch.arange(-300, 300, dtype=torch.float32) + 0.5) * scale
    up = torch.nextafter(ties, torch.full_like(ties, float("inf")))
    down = torch.nextafter(ties, torch.full_like(ties, float("-inf")))
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e30, -1e30, 1e-30, -1e-30,
                            -0.4 * scale, 0.4 * scale, 4194304.5 * scale, -4194304.5 * scale])
    spread = torch.linspace(-400 * scale, 400 * scale, 10_007)
    return torch.cat([ties, up, down, special, spread])


@functools.cache
def _fake_quantize_kernel() -> Callable[..., None] | None:
    function = _typed("fake_quantize", None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float,
                      ctypes.c_float, ctypes.c_float, ctypes.c_float, ctypes.c_float)
    if function is None:
        return None
    for scale in (0.05, 0.0123, 1.7, 3e-4, 2.0**-20):
        x = _fake_quantize_check_values(scale)
        for zero_point, quant_min, quant_max in ((0, -128, 127), (128, 0, 255), (-5, -128, 127), (3, 0, 15)):
            stock = torch.fake_quantize_per_tensor_affine(
                x, torch.tensor([scale]), torch.tensor([zero_point], dtype=torch.int32), quant_min, quant_max
            )
            ours = torch.empty_like(x)
            inv_scale = float(torch.ones((), dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32))
            function(x.data_ptr(), ours.data_ptr(), x.numel(), inv_scale, scale, zero_point, quant_min,
                     quant_max)
            if not torch.equal(stock.view(torch.int32), ours.view(torch.int32)):
                log.warning("native fake-quantize kernel disagrees with ATen's on this host; not used")
                return None
    return function


def _stock_rebin(mid: torch.Tensor, weights: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """``HistogramObserver._upscale_histogram``'s bucketize, clamp and bincount (through torch.ops)."""
    bins = bounds.numel() - 1
    buckets = torch.ops.aten.bucketize.Tensor(mid, bounds, right=True) - 1
    buckets = buckets.clamp(0, bins - 1)
    return torch.ops.aten.bincount.default(buckets, weights, bins)


@functools.cache
def _rebin_kernel() -> Callable[..., int] | None:
    function = _typed("rebin_sorted", ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                      ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p)
    if function is None:
        return None
    # mid points on, next to and between the bounds, below and above them, repeated ones; weights that
    # round differently when added in another order
    g = torch.Generator().manual_seed(0)
    for (low, high), (new_low, new_high), bins, rate in (
        ((-1.5, 2.25), (-1.75, 2.5), 2048, 16), ((0.0, 1e-3), (-3e-4, 1e-3), 2048, 16),
        ((-0.37, 0.91), (-0.5, 1.3), 7, 3), ((1.0, 1.0001), (0.9, 1.0001), 256, 16),
    ):
        bounds = torch.linspace(new_low, new_high, bins + 1)
        mid = torch.cat([torch.linspace(low, high, bins * rate), bounds, torch.nextafter(bounds, bounds + 1),
                         torch.nextafter(bounds, bounds - 1), torch.tensor([new_low - 1.0, new_high + 1.0])])
        mid = mid.sort().values
        weights = torch.rand(mid.numel(), generator=g) * 1000
        ours = rebinned(mid, weights, bounds, function)
        stock = _stock_rebin(mid, weights, bounds)
        if ours is None or not torch.equal(ours.view(torch.int32), stock.view(torch.int32)):
            log.warning("native re-binning kernel disagrees with bucketize/bincount on this host; not used")
            return None
    return function


def rebinned(
    mid: torch.Tensor, weights: torch.Tensor, bounds: torch.Tensor, function: Callable[..., int] | None = None
) -> torch.Tensor | None:
    """``bincount(clamp(bucketize(mid, bounds, right=True) - 1, 0, bins - 1), weights, bins)`` for float32
    CPU tensors, ``bins = len(bounds) - 1``, bit for bit; None when the kernel is not available, the
    tensors are not such, or ``mid`` / ``bounds`` are not sorted and finite."""
    function = function or _rebin_kernel()
    tensors = (mid, weights, bounds)
    plain = all(t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 1 for t in tensors)
    if function is None or not plain:
        return None
    if mid.numel() != weights.numel() or bounds.numel() < 2:
        return None
    mid, weights, bounds = (t.contiguous() for t in tensors)
    out = torch.zeros(bounds.numel() - 1, dtype=torch.float32)
    if not function(mid.data_ptr(), weights.data_ptr(), mid.numel(), bounds.data_ptr(), out.numel(),
                    out.data_ptr()):
        return None
    return out


def clear_caches() -> None:
    """Build, load and check again on next use (tests that swap the source or the environment)."""
    for cached in (_library, _kernel, _kernel_if_inside, _fake_quantize_kernel, _rebin_kernel):
        cached.cache_clear()


_pool: ThreadPoolExecutor | None = None


def _part_count(n: int, threads: int) -> int:
    """How many consecutive parts :func:`_in_parts` splits ``n`` values into."""
    return max(1, min(threads, n // _VALUES_PER_THREAD))


def _in_parts(n: int, threads: int, run: Callable[[int, int, int], Any]) -> list[Any]:
    """``run(part, start, count)`` over :func:`_part_count` consecutive parts of ``n`` values (at least
    ``_VALUES_PER_THREAD`` each; one part on the calling thread), the results in order."""
    global _pool
    parts = _part_count(n, threads)
    step = -(-n // parts)
    if parts == 1:
        return [run(0, 0, n)]
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(2, torch.get_num_threads()),
                                   thread_name_prefix="hrvit-calibration")
    return list(_pool.map(lambda part: run(part, part * step, min(step, n - part * step)), range(parts)))


def _counted(x: torch.Tensor, bins: int, threads: int,
             count: Callable[[int, int, int], int | None]) -> tuple[torch.Tensor, list[int | None]]:
    """Float32 counts of ``x`` in ``bins`` bins, from ``count(first value's address, how many, tables'
    address)`` run over up to ``threads`` consecutive parts of ``x`` (each part with its four tables),
    and what each call returned."""
    n = x.numel()
    tables = torch.zeros(_part_count(n, threads), 4, bins, dtype=torch.int64)
    base, table_bytes = x.data_ptr(), 4 * bins * 8

    def run(part: int, start: int, count_here: int) -> int | None:
        return count(base + 4 * start, count_here, tables.data_ptr() + part * table_bytes)

    results = _in_parts(n, threads, run)
    return tables.sum(dim=(0, 1)).to(torch.float32), results


def _run(function: Callable[..., None], x: torch.Tensor, bins: int, low: float, span: float,
         threads: int) -> torch.Tensor:
    return _counted(x, bins, threads, lambda first, n, table: function(first, n, low, span, bins, table))[0]


def _run_if_inside(function: Callable[..., int], x: torch.Tensor, bins: int, low: float, high: float,
                   span: float, threads: int) -> torch.Tensor | None:
    counts, inside = _counted(
        x, bins, threads, lambda first, n, table: function(first, n, low, high, span, bins, table)
    )
    return counts if all(inside) else None


def _in_memory_order(x: torch.Tensor) -> torch.Tensor:
    """``x``'s values as one flat tensor, in memory order where they fill one block (counts do not depend
    on the order)."""
    values = dense_view(x)
    return values if values is not None else x.reshape(-1).contiguous()


def dense_view(x: torch.Tensor) -> torch.Tensor | None:
    """``x``'s elements as a 1-D view in memory order where they fill one block of memory without
    gaps or overlaps (a contiguous tensor, or a permuted one such as a channels-last activation), else
    None. For order-free work on the values (extrema, histograms): ATen reduces a permuted tensor
    element by element along its logical order, ~15x slower than over the same values in memory order
    (``aminmax`` of a permuted 4M-value activation on this host: 5.5 ms against 0.36 ms)."""
    if x.is_contiguous():
        return x.view(-1)
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(x.shape, x.stride()) if sz != 1):
        if stride != expected:
            return None
        expected *= size
    return x.as_strided((x.numel(),), (1,))


def available() -> bool:
    """Whether the native kernel is built, loaded and agrees with ``torch.histc`` on this host."""
    return _kernel() is not None


def available_if_inside() -> bool:
    """Whether :func:`bin_counts_if_inside` has its kernel on this host."""
    return _kernel_if_inside() is not None


def available_rebin() -> bool:
    """Whether :func:`rebinned` has its kernel on this host."""
    return _rebin_kernel() is not None


def bin_counts_if_inside(
    x: torch.Tensor, bins: int, low: float, high: float, span: float
) -> torch.Tensor | None:
    """:func:`bin_counts` of ``x`` when every value lies in ``[low, high]`` (``high`` = ``low + span`` as the
    caller computed it in float32), checked in the same pass; None when one does not (or is NaN) or the
    kernel is not available."""
    function = _kernel_if_inside()
    if function is None:
        return None
    threads = torch.get_num_threads()
    return _run_if_inside(function, _in_memory_order(x), bins, low, high, span, threads=threads)


def bin_counts(x: torch.Tensor, bins: int, low: float, span: float) -> torch.Tensor | None:
    """Float32 counts of ``x`` (float32, CPU) in ``bins`` equal bins from ``low`` over ``span``, by
    ``torch.histc``'s rule, or None when the native kernel is not available. The caller guarantees every
    value lies in ``[low, low + span]`` (float32 bounds, ``span > 0``) and fewer than 2**24 values."""
    function = _kernel()
    if function is None:
        return None
    return _run(function, _in_memory_order(x), bins, low, span, threads=torch.get_num_threads())


def fake_quantize(
    x: torch.Tensor, inv_scale: float, scale: float, zero_point: int, quant_min: int, quant_max: int
) -> torch.Tensor | None:
    """``torch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max)`` of a float32
    CPU tensor whose values fill one block of memory (a new tensor with ``x``'s strides), bit for bit;
    ``inv_scale`` is ``1.0f / scale`` in float32 as ATen computes it. None when the kernel is not available
    or ``x`` is not such a tensor."""
    function = _fake_quantize_kernel()
    if function is None or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    values = dense_view(x)
    if values is None:
        return None
    out = torch.empty_like(x)  # the same strides: its values are in the same memory order
    src, dst = values.data_ptr(), out.data_ptr()
    _in_parts(values.numel(), torch.get_num_threads(), lambda _part, start, count: function(
        src + 4 * start, dst + 4 * start, count, inv_scale, scale, zero_point, quant_min, quant_max))
    return out
