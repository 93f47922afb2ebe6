"""Shortcuts through other libraries' internals for quantization, quarantined in this one module.

Each context manager swaps a private function of torch, torchao, ExecuTorch's quantizers or
litert-torch for a checked equivalent while a recipe prepares, calibrates or converts (same
annotations, same observer state, same artifacts; ``tests/test_quant_recipes.py`` compares each with
the stock code). All of them go through :func:`hrvit_mobile.patching.library_patch`: applied only with
patches on and on the versions they were written against (``patching.WRITTEN_FOR``: torch 2.13.0,
torchao 0.18.0, executorch 1.5.1, litert-torch 0.10.0); any other version, or
``HRVIT_MOBILE_PATCHES=0``, runs the stock code. An export's sidecar lists those applied under
``details.patches``.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from hrvit_mobile.patching import library_patch

from .. import native
from ..observers import upscale_histogram
from .calibration import BINNING_PATHS, _binning_edges, fake_quantize_per_tensor, histc_in_range

_PATTERN_CACHE: dict[Any, Any] = {}


class _FunctionModule(nn.Module):
    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


@contextlib.contextmanager
def fast_pattern_capture(utils_module: str) -> Iterator[None]:
    """Make a PT2E quantizer's pattern annotation several times faster (a fixed cost, any model size).

    The quantizers (``CoreMLQuantizer``: ~400 patterns, ``XNNPACKQuantizer``/litert-torch: conv-BN ones)
    capture each small op pattern with a *strict* ``torch.export`` (~0.15-2 s each through TorchDynamo),
    via ``_get_aten_graph_module_for_pattern`` imported into ``utils_module``. Non-strict capture yields
    the same aten pattern graphs (checked: identical q/dq placement and outputs on the test models) much
    faster, and the patterns do not depend on the model, so they are also cached for later calls in this
    process. The hook is a private name of each quantizer; if it moves, this degrades to the slow path.
    """
    import importlib

    try:
        cu = importlib.import_module(utils_module)
    except ImportError:
        yield
        return
    original = getattr(cu, "_get_aten_graph_module_for_pattern", None)
    if original is None:
        yield
        return

    def capture(pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool = False, **kwargs: Any) -> Any:
        # CoreML/XNNPACK pass pattern modules, litert-torch plain functions
        fwd = type(pattern).forward if isinstance(pattern, nn.Module) else pattern
        try:
            key = (
                fwd.__code__,
                tuple(c.cell_contents for c in (fwd.__closure__ or ())),
                tuple((tuple(t.shape), t.dtype) for t in example_inputs),
                is_cuda,
                tuple(sorted(kwargs.items())),
            )
            hash(key)
        except (TypeError, ValueError, AttributeError):
            key = None
        if key is None or key not in _PATTERN_CACHE:
            real_export = torch.export.export

            def non_strict(*a: Any, **k: Any) -> Any:
                return real_export(*a, **{**k, "strict": False})

            with library_patch(torch.export, export=non_strict):
                # torch.export takes modules only; litert-torch still hands it plain functions
                module = pattern if isinstance(pattern, nn.Module) else _FunctionModule(pattern)
                gm = original(module, example_inputs, is_cuda, **kwargs)
            if key is None:
                return gm
            _PATTERN_CACHE[key] = gm
        return copy.deepcopy(_PATTERN_CACHE[key])  # the matcher must not share one graph between matches

    with library_patch(cu, _get_aten_graph_module_for_pattern=capture):
        yield


def fast_coreml_pattern_capture() -> contextlib.AbstractContextManager[None]:
    return fast_pattern_capture("executorch.backends.apple.coreml.quantizer._coreml_quantizer_utils")


def _aten_op_names(graph: torch.fx.Graph) -> set[str]:
    """Names of the aten ops called in ``graph`` (``relu_`` for ``aten.relu_.default``)."""
    return {
        str(n.target).split(".")[1]
        for n in graph.nodes
        if n.op == "call_function" and str(n.target).startswith("aten.")
    }


_ACTIVATION_TUPLES = ("_supported_activations", "_supported_activations_no_inplace")


@contextlib.contextmanager
def present_activation_patterns(quantizer_cls: type, utils_module: str) -> Iterator[None]:
    """``quantizer_cls.annotate`` tries only the activation patterns whose activation is in the graph.

    ``CoreMLQuantizer`` pairs every conv, linear and binary-op pattern with each of 15 activations
    (in place and not): ~26 patterns per kind, each one captured before it is matched. A pattern's
    activation is the aten op named after the function (``F.relu(x, inplace=True)`` ->
    ``aten.relu_.default``; tests check every one), and the matcher matches targets exactly, so an
    activation whose op (in place or not) the graph never calls cannot match anything. HRViT calls
    three (relu, hardswish, gelu); the other twelve are dropped from the quantizer's activation lists
    while it annotates. Activations not named after an aten op are always kept. Same annotations
    (``tests/test_quant_recipes.py`` compares with the stock quantizer).
    """
    import importlib

    try:
        cu = importlib.import_module(utils_module)
    except ImportError:
        yield
        return
    original = quantizer_cls.__dict__.get("annotate")
    if original is None or not all(hasattr(cu, name) for name in _ACTIVATION_TUPLES):
        yield
        return

    def may_match(act: Any, called: set[str]) -> bool:
        name = getattr(act, "__name__", None)
        if not name or not hasattr(torch.ops.aten, name):
            return True
        return name in called or f"{name}_" in called

    def annotate(self: Any, model: torch.fx.GraphModule) -> Any:
        if not isinstance(model, torch.fx.GraphModule):
            return original(self, model)
        called = _aten_op_names(model.graph)
        present = {
            name: tuple(a for a in getattr(cu, name) if may_match(a, called)) for name in _ACTIVATION_TUPLES
        }
        with library_patch(cu, **present):
            return original(self, model)

    with library_patch(quantizer_cls, annotate=annotate):
        yield


@contextlib.contextmanager
def deferred_annotation_recompile(quantizer_cls: type) -> Iterator[None]:
    """Make ``quantizer_cls.annotate`` skip the per-pattern upkeep of the whole model graph.

    ``CoreMLQuantizer.annotate`` sweeps ~400 patterns once per ``module_type_configs`` /
    ``module_name_configs`` entry and once globally (5 sweeps with HRViT's four float-island types), and
    every pattern starts with ``model.graph.eliminate_dead_code(); model.recompile()`` on the *model*:
    Python code generation and ``exec`` of the whole graph, then a dead-code scan of it, ~2,000 times.
    On b1 at 512x512 that was 345 of the 447 s "quantize (coreml_w8a8)" step (py-spy: ``recompile``
    78 % and ``eliminate_dead_code`` 17 % of ``prepare_pt2e``; the pattern matching itself a few %).
    Annotation only writes ``node.meta``: the matcher reads the graph, never the generated code, and after
    the first dead-code pass the graph has none left. So within ``annotate`` ``recompile`` is a no-op
    (done once at the end) and ``eliminate_dead_code`` runs again only if the node count changed since
    its last pass. Same annotations, same prepared graph (``tests/test_quant_recipes.py`` compares the
    prepared code and every calibrated scale/zero point with the unpatched quantizer).
    """
    original = quantizer_cls.__dict__.get("annotate")
    if original is None:
        yield
        return

    def annotate(self: Any, model: torch.fx.GraphModule) -> Any:
        if not isinstance(model, torch.fx.GraphModule):
            return original(self, model)
        graph = model.graph
        real_dce = graph.eliminate_dead_code
        clean_len: int | None = None

        def eliminate_dead_code(*args: Any, **kwargs: Any) -> bool:
            nonlocal clean_len
            if clean_len is not None and clean_len == len(graph.nodes) and not args and not kwargs:
                return False  # nothing was added or removed since the last pass: nothing to remove
            changed = real_dce(*args, **kwargs)
            clean_len = len(graph.nodes)
            return changed

        try:
            # instance attributes shadow the graph's and the module's own methods
            with (
                library_patch(graph, eliminate_dead_code=eliminate_dead_code),
                library_patch(model, recompile=lambda: None),
            ):
                return original(self, model)
        finally:
            model.recompile()

    with library_patch(quantizer_cls, annotate=annotate):
        yield


@contextlib.contextmanager
def cycle_checks_up_to_the_match() -> Iterator[None]:
    """The subgraph matcher's cycle check stops walking at the match's last node.

    ``SubgraphMatcher.match`` drops a match that would form a cycle if fused
    (``fuser_utils.validate_partition``): a walk from every user outside the match through all of its
    descendants, looking for a node of the match. That walk runs to the end of the graph: on b1 the
    Core ML quantizer's matches each walked most of the 7k-node model (py-spy: 1.0 s of the 3.8 s
    ``prepare``). In an fx graph every user comes after its inputs, so a node placed after the match's
    last node cannot lead back into the match; the walk here skips those and gives the same answer
    (``tests/test_quant_recipes.py`` compares it with the stock check on every small partition of a
    graph with branches). Partitions spanning several graphs or nodes without an order key take the
    stock check.
    """
    from torch.fx.passes.utils import fuser_utils

    stock = fuser_utils.validate_partition

    def validate_partition(partition: list[torch.fx.Node]) -> bool:
        inside = set(partition)
        ordered = all(hasattr(n, "_sort_key") for n in inside)
        if not inside or not ordered or len({n.graph for n in inside}) != 1:
            return stock(partition)
        last = max(n._sort_key for n in inside)
        queue = [user for n in inside for user in n.users if user not in inside]
        visited: set[torch.fx.Node] = set()
        while queue:
            current = queue.pop()
            if current in visited:
                continue
            visited.add(current)
            if current in inside:
                return False  # a path leaves the match and comes back: fusing it would form a cycle
            if current._sort_key < last:
                queue.extend(current.users)
        return True

    with library_patch(fuser_utils, validate_partition=validate_partition):
        yield


@contextlib.contextmanager
def fast_fake_quantize() -> Iterator[None]:
    """Within the block, torchao's ``FakeQuantize`` on per-tensor float32 activations that need no
    gradient observes and fake-quantizes in a few scalar steps and one pass (same bits, same state).

    ``CoreMLQuantizer`` puts a fake-quant module on every activation even for PTQ (b1: 1,061 an image,
    most of them small). The stock forward is ~15 small tensor ops (~170 us a call here, whatever the
    size) plus ATen's scalar fake-quantize loop. Here, for a min/max observer: one ``aminmax`` (over the
    values in memory order), the observer's update and quantization parameters as float32 scalars
    (:func:`~hrvit_mobile.quant.observers.observed_min_max_qparams`), four in-place writes of the state,
    and the fake quantization in one vectorized native pass (:func:`native.fake_quantize`; without it
    :func:`fake_quantize_per_tensor`). Other observers observe through the stock forward first.
    Per-channel (weights), other dtypes and anything autograd needs (QAT training) take the stock path.
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize

    from ..observers import observed_min_max_qparams

    original = FakeQuantize.__dict__["forward"]

    def stock_observe(self: Any, x: torch.Tensor) -> None:
        self.fake_quant_enabled[0] = 0
        try:
            original(self, x)  # observes and updates scale and zero point; returns x as it is
        finally:
            self.fake_quant_enabled[0] = 1

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        if (
            self.is_per_channel
            or x.dtype != torch.float32
            or self.scale.numel() != 1
            or self.fake_quant_enabled.item() != 1
            or (torch.is_grad_enabled() and x.requires_grad)
        ):
            return original(self, x)
        post = self.activation_post_process
        if self.observer_enabled.item() == 1:
            observed = None
            if x.numel() and x.device.type == "cpu":
                values = native.dense_view(x)
                low, high = torch.aminmax(values if values is not None else x)
                observed = observed_min_max_qparams(post, low.item(), high.item())
            if observed is None:
                stock_observe(self, x)
            else:
                low, high, scale, zero_point = observed
                post.min_val.fill_(low)
                post.max_val.fill_(high)
                self.scale.fill_(scale)
                self.zero_point.fill_(zero_point)
        scale, zero_point = self.scale.item(), int(self.zero_point.item())
        inv_scale = float(np.float32(1.0) / np.float32(scale))  # ATen's 1.0f / scale
        out = native.fake_quantize(x, inv_scale, scale, zero_point, post.quant_min, post.quant_max)
        if out is None:
            out = fake_quantize_per_tensor(x, self.scale, self.zero_point, post.quant_min, post.quant_max)
        return out

    with library_patch(FakeQuantize, forward=forward):
        yield


@contextlib.contextmanager
def fast_histograms() -> Iterator[None]:
    """Within the block, ``torch.histc`` goes through :func:`histc_in_range` (same bits); ``out=`` calls
    and the cases it declines take the stock kernel.

    ExecuTorch's int8 recipe observes activations with ``HistogramObserver``, and its ``torch.histc`` was
    58 % of b1's calibration (py-spy: 406M activation values per image through 876 observers).
    ``HistogramObserver.forward`` takes ``torch.aminmax`` of the tensor just before it bins it, so the
    last ``aminmax`` result is kept (with the tensor and its version counter) and reused when ``histc``
    gets that same, unmodified tensor: one pass over each activation fewer.

    ``HistogramObserver.forward`` itself takes a short path when the activation lies inside the range
    the observer has already: its ~15 small tensor ops become an ``aminmax``, the counts and one
    ``add_``, the state the stock forward reaches; on b1 (32 images) 55,441 of 60,992 calls take it.
    With the native kernel the check and the counts are one pass (``native.bin_counts_if_inside``, no
    ``aminmax``). Neither changes the observers' state or the .pte.
    """
    stock_histc, stock_aminmax = torch.histc, torch.aminmax
    # per thread: histograms may be observed on a background thread (histograms_in_background) while the
    # calibration forward's min/max observers call aminmax on the main one
    cache = threading.local()

    def last() -> list[Any]:
        if not hasattr(cache, "last"):
            cache.last = [None, -1, None]  # tensor, its _version, its (min, max)
        return cache.last

    def aminmax(input: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        whole = not args and not kwargs
        # the extrema of the whole tensor do not depend on the order: a permuted activation is reduced in
        # memory order (native.dense_view)
        values = native.dense_view(input) if whole and not input.is_contiguous() else None
        result = stock_aminmax(values if values is not None else input, *args, **kwargs)
        last()[:] = (input, input._version, result) if whole else (None, -1, None)
        return result

    # torch.histc's own parameter names, since observers pass min=/max= by keyword
    def histc(
        input: torch.Tensor, bins: int = 100, min: Any = 0, max: Any = 0, **kwargs: Any
    ) -> torch.Tensor:
        if not kwargs:
            kept = last()
            known = kept[2] if kept[0] is input and kept[1] == input._version else None
            kept[:] = (None, -1, None)  # the activation is not kept alive past its histogram
            counts = histc_in_range(input, bins, min, max, extrema=known)
            if counts is not None:
                return counts
        BINNING_PATHS["torch.histc"] += 1
        return stock_histc(input, bins, min=min, max=max, **kwargs)

    from torchao.quantization.pt2e.observer import HistogramObserver

    stock_observe = HistogramObserver.forward

    def observe(self: Any, x_orig: torch.Tensor) -> torch.Tensor:
        # the common case once the range has settled, in a few ops: the activation lies inside the
        # observer's range, so stock's new range is the old one and it adds the counts to its histogram
        x = x_orig.detach()
        if x.dtype == torch.float32 and x.device.type == "cpu" and self.histogram.dtype == torch.float32:
            low, high = self.min_val.item(), self.max_val.item()
            edges = _binning_edges(x, self.bins, low, high) if low <= high else None
            if edges is not None and native.available_if_inside():
                # counted and checked in one pass; outside the range (or NaN): the stock forward
                counts = native.bin_counts_if_inside(x, self.bins, *edges)
                if counts is None:
                    HISTOGRAM_FAST_PATH["stock"] += 1
                    return stock_observe(self, x_orig)
                self.histogram.add_(counts)
                HISTOGRAM_FAST_PATH["in range, one pass"] += 1
                BINNING_PATHS["native C kernel, range checked in the same pass"] += 1
                return x_orig
            if low <= high:  # initialized (stock: min inf / max -inf until the first tensor)
                extrema = aminmax(x)
                if float(extrema[0]) >= low and float(extrema[1]) <= high:  # False for NaN
                    counts = histc_in_range(x, self.bins, low, high, extrema=extrema)
                    if counts is not None:
                        last()[:] = (None, -1, None)
                        self.histogram.add_(counts)  # stock: histogram + counts, copied back
                        HISTOGRAM_FAST_PATH["in range"] += 1
                        return x_orig
        HISTOGRAM_FAST_PATH["stock"] += 1
        return stock_observe(self, x_orig)

    stock_upscale = HistogramObserver._upscale_histogram

    def upscale(self: Any, *args: torch.Tensor) -> torch.Tensor:
        out = upscale_histogram(self, *args)
        return out if out is not None else stock_upscale(self, *args)

    with library_patch(torch, histc=histc, aminmax=aminmax), \
            library_patch(HistogramObserver, forward=observe, _upscale_histogram=upscale):
        yield


# HistogramObserver calls within fast_histograms in this process: "in range" (the activation inside the
# observer's range, counted and added in a few ops) and "stock" (first tensor, a widened range, other cases)
HISTOGRAM_FAST_PATH: Counter[str] = Counter()


# activations waiting for their histogram observer (histograms_in_background): enough to keep the worker busy
# while the forward runs, few enough that waiting ones add little to the peak memory
BACKGROUND_QUEUE_TENSORS = 16


def _mutates_in_place(graph: torch.fx.Graph) -> bool:
    """Whether any op of ``graph`` writes to one of its inputs (an observed activation could change before
    a background observer reads it)."""
    return any(
        n.op == "call_function" and getattr(getattr(n.target, "_schema", None), "is_mutable", False)
        for n in graph.nodes
    )


@contextlib.contextmanager
def indexed_attr_names(verify: bool = False) -> Iterator[Counter[str]]:
    """Within the block, PT2E's new-attribute names (``activation_post_process_<i>`` for each observer
    ``prepare`` adds, ``_scale_<i>``/``_zero_point_<i>`` for each constant ``convert`` adds) are found
    from the index last handed out for that module and prefix instead of from 0.

    The stock helper tries ``<prefix>0``, ``<prefix>1``, ... with ``hasattr`` until one is free: quadratic
    in the number of attributes, 2.5 s of b1's ExecuTorch int8 quantize step and 1.4 s of Core ML W8A8's
    (py-spy). Its answer is the smallest free index; neither step deletes attributes of these prefixes
    while it runs, so the smallest free index is the one after the last handed out, provided that one is
    still there (checked; else the search starts from 0 as before). ``verify=True`` (tests) computes the
    stock answer too and asserts they agree. Yields a counter of names handed out."""
    import importlib

    import torchao.quantization.pt2e.utils as pt2e_utils

    # the module: the package's attribute of that name is its prepare function
    fx_prepare = importlib.import_module("torch.ao.quantization.fx.prepare")

    stock = pt2e_utils.get_new_attr_name_with_prefix
    if getattr(stock, "indexed", None) is not None:  # nested: the outer block's names go on
        yield stock.indexed
        return
    last: dict[tuple[int, str], int] = {}
    handed: Counter[str] = Counter()

    def with_prefix(prefix: str) -> Callable[[nn.Module], str]:
        prefix = prefix.replace(".", "_")

        def new_attr_name(module: nn.Module) -> str:
            key = (id(module), prefix)
            i = last.get(key, -1)
            i = i + 1 if i >= 0 and hasattr(module, prefix + str(i)) else 0
            while hasattr(module, prefix + str(i)):
                i += 1
            last[key] = i
            handed[prefix] += 1
            name = prefix + str(i)
            if verify:
                assert name == stock(prefix)(module), (name, stock(prefix)(module))
            return name

        return new_attr_name

    with_prefix.indexed = handed  # type: ignore[attr-defined]
    with library_patch(fx_prepare, get_new_attr_name_with_prefix=with_prefix), \
            library_patch(pt2e_utils, get_new_attr_name_with_prefix=with_prefix):
        yield handed


@contextlib.contextmanager
def histograms_in_background(prepared: torch.fx.GraphModule) -> Iterator[None]:
    """Within the block, ``prepared``'s ``HistogramObserver``s observe on one background thread while the
    calibration forward goes on with one intra-op thread fewer; leaving the block waits for them.

    Each observer still sees the same tensors in the same order, so it ends in the state inline observing
    reaches with that forward thread count (tested). b1 at 512x512 on 2 cores (forward on 1 thread, the
    histograms on the other): 995-1032 ms an image against 1230-1315 ms inline on 2 threads. Inline as
    before when the host has one thread, the graph has no histogram observer, or an op of the graph writes
    in place (an activation could change before its observer reads it). The queue holds at most
    ``BACKGROUND_QUEUE_TENSORS`` activations; an observer's error is raised in the calibrating thread.
    """
    from torchao.quantization.pt2e.observer import HistogramObserver

    threads = torch.get_num_threads()
    if (
        threads < 2
        or not any(isinstance(m, HistogramObserver) for m in prepared.modules())
        or _mutates_in_place(prepared.graph)
    ):
        yield
        return
    stock = HistogramObserver.forward
    work: queue.Queue = queue.Queue(maxsize=BACKGROUND_QUEUE_TENSORS)
    failures: list[BaseException] = []

    def drain() -> None:
        while (item := work.get()) is not None:
            observer, x, version = item
            if failures:
                continue
            try:
                if x._version != version:  # _mutates_in_place missed a writer: stop rather than mis-observe
                    raise RuntimeError("an observed activation was modified in place before its observer ran")
                stock(observer, x)
            except BaseException as exc:  # handed to the calibrating thread
                failures.append(exc)

    def observe(self: Any, x: torch.Tensor) -> torch.Tensor:
        if failures:
            raise failures[0]
        work.put((self, x.detach(), x._version))
        return x

    worker = threading.Thread(target=drain, name="histogram-observers", daemon=True)
    torch.set_num_threads(threads - 1)
    worker.start()
    try:
        with library_patch(HistogramObserver, forward=observe):
            yield
    finally:
        work.put(None)
        worker.join()
        torch.set_num_threads(threads)
    if failures:
        raise failures[0]


def _idempotent_observer_types() -> tuple[type, ...]:
    """Observers whose state after observing a tensor twice is the state after once: min/max ones
    (``min(a, a) == a``; moving average ``m + c * (m - m) == m``)."""
    from torchao.quantization.pt2e.observer import MinMaxObserver, PerChannelMinMaxObserver

    return (MinMaxObserver, PerChannelMinMaxObserver)  # the moving-average ones subclass these


@contextlib.contextmanager
def weights_observed_once(prepared: torch.fx.GraphModule) -> Iterator[Callable[[], None]]:
    """Calibrate with the weights' fake-quant modules observing the first batch only.

    Yields a function to call after the first batch: it turns off the observers of the fake-quant
    modules whose every input is a constant (``get_attr``: a weight) and whose observer is a min/max
    one; on exit they are on again. The weight is the same tensor on every batch, so a min/max
    observer (moving average or not) ends in exactly the state it reached after the first batch, and the
    fake-quant module keeps fake-quantizing with exactly the scale/zero point it would recompute: the
    calibrated parameters do not change. Measured on b1 at 512x512 (32 inputs): the per-channel weight
    observer was ~5 % of calibration, plus ``calculate_qparams`` on every module and batch.

    From then on each of those modules also keeps its last output and hands it out again while its
    input is the same unchanged tensor and its scale, zero point and switches are unchanged (ATen's
    per-channel fake quantization of b1's 372 weights was ~2 s of 32 batches). Not in graphs with an op
    that writes in place (it could write to the kept output) or with autograd on.
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    observers = _idempotent_observer_types()
    constant: dict[str, bool] = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        module = prepared.get_submodule(node.target)
        if not isinstance(module, FakeQuantizeBase):
            continue
        ok = (
            isinstance(getattr(module, "activation_post_process", None), observers)
            and len(node.args) == 1
            and isinstance(node.args[0], torch.fx.Node)
            and node.args[0].op == "get_attr"
        )
        constant[node.target] = constant.get(node.target, True) and ok
    modules = [prepared.get_submodule(t) for t, ok in constant.items() if ok]
    saved = [int(m.observer_enabled[0]) for m in modules]
    keep_outputs = not _mutates_in_place(prepared.graph)

    def first_batch_done() -> None:
        for m in modules:
            m.disable_observer()
            if keep_outputs:
                m.forward = _output_kept(m)

    try:
        yield first_batch_done
    finally:
        for m, enabled in zip(modules, saved):
            m.observer_enabled[0] = enabled
            m.__dict__.pop("forward", None)


def _output_kept(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module``'s forward (a fake-quant module of a constant), its last output handed out again while
    nothing it depends on changed (see :func:`weights_observed_once`)."""
    kept: list[Any] = [None, None, None]  # input, what the output depends on, output

    def kept_forward(x: torch.Tensor) -> torch.Tensor:
        forward = type(module).forward  # at call time: calibration patches the class's (fast_fake_quantize)
        if torch.is_grad_enabled():
            return forward(module, x)
        key = (x._version, x.data_ptr(), x.shape, x.stride(), module.scale._version,
               module.zero_point._version, module.fake_quant_enabled._version,
               module.observer_enabled._version)
        if kept[0] is x and kept[1] == key:
            return kept[2]
        out = forward(module, x)
        kept[:] = (x, key, out)
        return out

    return kept_forward
