"""Quantization recipes: small objects applied to a model, one per backend scheme.

A recipe knows its backend's quantizer and nothing about files. Two kinds:

- :class:`PT2ERecipe` acts on the PyTorch graph (``prepare -> calibrate or QAT -> convert``):
  :class:`XNNPACKInt8` (ExecuTorch), :class:`CoreMLW8A8` (ExecuTorch's ``CoreMLQuantizer``, then
  ``ct.convert``) and :class:`LiteRTInt8` (litert-torch's ``PT2EQuantizer``). ``qat=True`` gives the
  same quantizer in QAT mode (fake-quant modules that train).
- :class:`PostConversionRecipe` acts on the converted artifact: :class:`CoreMLWeightOnly` (linear int8
  or k-means palettization of an ML program) and :class:`LiteRTPostTraining` (``ai_edge_quantizer`` on the
  float .tflite: fp16 weights, dynamic-range int8, static int8).

``keep_float`` lists module names (``features.3.branches.1``) or types left in float; HRViT's float
islands (masked softmax, LayerNorm, see :mod:`hrvit_mobile.models.float_islands`) are always added.
Each export variant names its recipe in its backend's registration (``hrvit_mobile.exporters.registry``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from hrvit_mobile.deploy.modules import FACTORED_DES_MIN_CHANNELS
from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.models.norm import DelegableLayerNorm
from hrvit_mobile.patching import library_patch

from . import native
from .observers import fast_param_search, upscale_histogram

log = logging.getLogger("hrvit_mobile.quant")

# DES shortcut forms of the deploy graph: "factored" (the deploy form's default: the wide maps keep their
# Kronecker factors) or "dense" (every DES two dense linears, what QAT checkpoints from before the
# choice was recorded were trained with), as ``hrvit_mobile.deploy``'s ``factored_des_from``
DES_FORMS: dict[str, int | None] = {"factored": FACTORED_DES_MIN_CHANNELS, "dense": None}

KeepFloat = tuple[str | type[nn.Module], ...]


class QuantRecipeError(HRViTMobileError):
    """A recipe that does not exist or cannot apply; the message is one line."""


@dataclass
class QuantRecipe:
    """What every recipe has: a name for reports, its target, and the modules it leaves float."""

    name: str = "recipe"
    target: str = ""
    keep_float: KeepFloat = ()
    qat: bool = False

    def describe(self) -> dict[str, Any]:
        names = [k for k in self.keep_float if isinstance(k, str)]
        return {"recipe": self.name, "qat": self.qat, "keep_float": names}


@dataclass
class PT2ERecipe(QuantRecipe):
    """A PT2E quantizer on the exported graph: ``prepare`` -> ``calibrate`` (or train) -> ``convert``."""

    float_islands: bool = True
    scheme: str = ""
    # the DES form of the deploy graph the recipe QAT-trains (``DES_FORMS``); QAT checkpoints record it
    des: str = "factored"

    def factored_des_from(self) -> int | None:
        """``hrvit_mobile.deploy``'s ``factored_des_from`` for this recipe's DES form."""
        if self.des not in DES_FORMS:
            raise QuantRecipeError(f"unknown DES form {self.des!r}; allowed: {', '.join(DES_FORMS)}")
        return DES_FORMS[self.des]

    def quantizer(self) -> Any:  # pragma: no cover - every concrete recipe overrides it
        raise NotImplementedError

    def _float_types(self) -> list[type[nn.Module]]:
        from hrvit_mobile.models.float_islands import float_module_types

        types = [k for k in self.keep_float if isinstance(k, type)]
        if self.float_islands:
            types.extend(float_module_types())
        return types

    def _float_names(self) -> list[str]:
        return [k for k in self.keep_float if isinstance(k, str)]

    # the module whose ``_get_aten_graph_module_for_pattern`` the quantizer calls (see fast_pattern_capture)
    pattern_utils: str = ""
    # convert_pt2e's fold_quantize: int8 weight constants (True) or quantize/dequantize pairs around float
    # weights (False, what litert-torch's converter needs)
    fold_quantize: ClassVar[bool] = True

    def _annotation_context(self) -> contextlib.AbstractContextManager[None]:
        return fast_pattern_capture(self.pattern_utils) if self.pattern_utils else contextlib.nullcontext()

    def adapt(self, model: nn.Module) -> nn.Module:
        """A numerically identical rewrite of ``model`` that the target's quantized ops need (in place)."""
        return model

    @staticmethod
    def capture(model: nn.Module, example: torch.Tensor, strict: bool = False) -> torch.fx.GraphModule:
        """The graph PT2E works on; capture once and pass copies to :meth:`prepare` to try many recipes."""
        return torch.export.export(model, (example,), strict=strict).module()

    def prepare(
        self, model: nn.Module, example: torch.Tensor, strict: bool = False, captured: bool = False
    ) -> torch.fx.GraphModule:
        """Capture ``model`` with ``torch.export`` (unless ``captured``: it is a :meth:`capture` result,
        consumed) and insert observers (PTQ) or fake-quant modules (QAT)."""
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

        t0 = time.perf_counter()
        gm = model if captured else self.capture(self.adapt(model), example, strict)
        with self._annotation_context(), indexed_attr_names():
            prepared = (prepare_qat_pt2e if self.qat else prepare_pt2e)(gm, self.quantizer())
        log.debug("[%s] prepared (%s) in %.1f s", self.target, self.name, time.perf_counter() - t0)
        return prepared

    @torch.no_grad()
    def calibrate(
        self, prepared: torch.fx.GraphModule, batches: Iterable[torch.Tensor], progress: bool = True
    ) -> torch.fx.GraphModule:
        """Run ``batches`` (normalized (1, 3, H, W)) through the observers (fake-quant modules, where the
        quantizer inserts those, fake-quantize with :func:`fast_fake_quantize`; histogram observers count
        with :func:`fast_histograms`: the same bits, on a background thread, see
        :func:`histograms_in_background`)."""
        from tqdm import tqdm

        batches = list(batches)
        desc = f"[{self.target}] calibrate"
        with fast_fake_quantize(), fast_histograms(), histograms_in_background(prepared):
            for x in tqdm(batches, desc=desc, disable=not progress or None, leave=False):
                prepared(x)
        return prepared

    def convert(self, prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
        """Observers/fake-quant -> quantize/dequantize pairs with the calibrated (or trained) parameters
        (histogram observers search their ranges with :func:`~hrvit_mobile.quant.observers.fast_param_search`:
        the same ranges)."""
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        with fast_param_search(), indexed_attr_names():
            return convert_pt2e(prepared, fold_quantize=self.fold_quantize)

    def quantize(
        self,
        model: nn.Module,
        example: torch.Tensor,
        calib: Sequence[torch.Tensor],
        strict: bool = False,
        progress: bool = True,
    ) -> torch.fx.GraphModule:
        """PTQ in one call: prepare, calibrate on ``calib``, convert. ``model`` may be a :meth:`capture`
        result (it is copied, not consumed)."""
        if isinstance(model, torch.fx.GraphModule):
            prepared = self.prepare(copy.deepcopy(model), example, captured=True)
        else:
            prepared = self.prepare(model.eval(), example, strict=strict)
        self.calibrate(prepared, calib, progress=progress)
        return self.convert(prepared)

    def with_keep_float(self, keep_float: Iterable[str | type[nn.Module]]) -> PT2ERecipe:
        """A copy that also leaves ``keep_float`` in float."""
        out = copy.copy(self)
        out.keep_float = (*self.keep_float, *keep_float)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scheme": self.scheme, "float_islands": self.float_islands,
                "des": self.des}


@dataclass
class XNNPACKInt8(PT2ERecipe):
    """ExecuTorch/XNNPACK: int8 symmetric weights (per-channel by default), static int8 activations."""

    name: str = "xnnpack_int8"
    target: str = "executorch"
    per_channel: bool = True
    scheme: str = "PT2E XNNPACKQuantizer: int8 per-channel weights, static int8 activations"
    pattern_utils: str = "executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils"
    # the deploy layout the graph is quantized (and QAT-trained) in: the one XNNPACK runs fastest, which
    # the ExecuTorch backend lowers; QAT checkpoints record it
    layout: str = "channels_first"
    # the form of the nearest upsamplers the graph is quantized (and QAT-trained) with: "broadcast"
    # (hrvit_mobile.deploy.fold.BroadcastNearest, what XNNPACK runs fastest) or "transposed_conv" (the
    # deploy form's own, what QAT checkpoints from before this was recorded were trained with)
    upsampler: str = "broadcast"

    def adapt(self, model: nn.Module) -> nn.Module:
        """The token-layout deploy form switched to ``layout`` and ``upsampler`` (in place; numerically
        the same): XNNPACK runs the channels-first form without transposes around its depthwise convs,
        and a broadcast multiply instead of a transposed conv per upsampler."""
        if self.layout == "channels_first":
            from hrvit_mobile.deploy.channels_first import use_channels_first

            use_channels_first(model)
        if self.upsampler == "broadcast":
            from hrvit_mobile.deploy.fold import use_broadcast_nearest

            use_broadcast_nearest(model)
        return model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layout": self.layout, "upsampler": self.upsampler}

    def quantizer(self) -> Any:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        config = get_symmetric_quantization_config(is_per_channel=self.per_channel, is_qat=self.qat)
        quantizer = XNNPACKQuantizer().set_global(config)
        for module_type in self._float_types():
            quantizer.set_module_type(module_type, None)
        for name in self._float_names():
            # set_module_name() asserts on None, but annotate() skips a None entry and the global
            # config excludes every named module: exactly "leave this module float"
            quantizer.module_name_config[name] = None
        return quantizer


def _on_rank_three(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``forward`` over the last dim, leading dims but the first folded: (B, *, C) -> (B, N, C)."""
    if x.dim() <= 3:
        return forward(x)
    y = forward(x.reshape(x.shape[0], -1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


class RankThreeLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _on_rank_three(super().forward, x)


class RankThreeLayerNorm(DelegableLayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _on_rank_three(super().forward, x)


@dataclass
class LiteRTInt8(PT2ERecipe):
    """LiteRT: litert-torch's PT2E quantizer (int8 per-channel weights, static int8 activations).

    Used for QAT toward LiteRT and for a PT2E-quantized ``litert_torch.convert``; post-training export to
    .tflite uses :class:`LiteRTPostTraining`, which quantizes the converted graph itself.
    """

    name: str = "litert_int8"
    target: str = "tflite"
    per_channel: bool = True
    scheme: str = "PT2E litert_torch PT2EQuantizer: int8 per-channel weights, static int8 activations"
    pattern_utils: str = "litert_torch.quantize.pt2e_quantizer_utils"
    # litert-torch's converter turns each quantize/dequantize pair around a float weight into a quantized
    # tensor and refuses weights folded into int8 constants
    fold_quantize: ClassVar[bool] = False

    def adapt(self, model: nn.Module) -> nn.Module:
        """Linears (and the LayerNorm's mean linears) on (B, H, W, C) tokens run on (B, H*W, C): LiteRT's
        quantized batch_matmul takes rank 3 only (float conversion reshapes by itself; the quantized
        path fails with "tfl.batch_matmul ... expected 3 but got 4")."""
        swaps = {nn.Linear: RankThreeLinear, DelegableLayerNorm: RankThreeLayerNorm}
        for module in model.modules():
            if type(module) in swaps:
                module.__class__ = swaps[type(module)]  # same parameters and names, another forward
        return model

    def quantizer(self) -> Any:
        from litert_torch.quantize import pt2e_quantizer as pt2eq

        config = pt2eq.get_symmetric_quantization_config(is_per_channel=self.per_channel, is_qat=self.qat)
        quantizer = pt2eq.PT2EQuantizer().set_global(config)
        for module_type in self._float_types():
            quantizer.set_module_type(module_type, None)
        for name in self._float_names():
            # set_module_name() asserts on None, but annotate() skips a None entry and the global
            # config excludes every named module: exactly "leave this module float"
            quantizer.module_name_config[name] = None
        return quantizer


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


@dataclass
class CoreMLW8A8(PT2ERecipe):
    """Core ML W8A8 on the PyTorch side (ExecuTorch's ``CoreMLQuantizer``), converted by ``ct.convert``.

    Core ML's own activation calibration predicts, which needs macOS; PT2E calibrates anywhere. The
    quantizer inserts FakeQuantize modules in both modes, so the same config serves PTQ and QAT.
    """

    name: str = "coreml_w8a8"
    target: str = "coreml"
    scheme: str = "PT2E CoreMLQuantizer: int8 per-channel weights, uint8 static activations"
    pattern_utils: str = "executorch.backends.apple.coreml.quantizer._coreml_quantizer_utils"

    def quantizer(self) -> Any:
        from coremltools.optimize.torch.quantization.quantization_config import (
            LinearQuantizerConfig,
            QuantizationScheme,
        )
        from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

        cfg: dict[str, Any] = {
            "global_config": {
                "quantization_scheme": QuantizationScheme.symmetric,
                "activation_dtype": torch.quint8,
                "weight_dtype": torch.qint8,
                "weight_per_channel": True,
            },
            # LayerNorm and the masked softmax stay float: quantizing LayerNorm's variance path
            # rounds ``variance + eps`` to 0 on b1 and rsqrt turns it into inf (seen in calibration)
            "module_type_configs": {t: None for t in self._float_types()},
            "module_name_configs": {n: None for n in self._float_names()},
        }
        return CoreMLQuantizer(LinearQuantizerConfig.from_dict(cfg))

    def _annotation_context(self) -> contextlib.AbstractContextManager[None]:
        from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

        stack = contextlib.ExitStack()
        stack.enter_context(fast_pattern_capture(self.pattern_utils))
        stack.enter_context(deferred_annotation_recompile(CoreMLQuantizer))
        stack.enter_context(present_activation_patterns(CoreMLQuantizer, self.pattern_utils))
        stack.enter_context(cycle_checks_up_to_the_match())
        return stack

    @torch.no_grad()
    def calibrate(
        self, prepared: torch.fx.GraphModule, batches: Iterable[torch.Tensor], progress: bool = True
    ) -> torch.fx.GraphModule:
        """Run ``batches`` through the fake-quant modules; the weights' ones observe the first batch only
        (see :func:`weights_observed_once`: the result is the same as observing every batch)."""
        batches = list(batches)
        with weights_observed_once(prepared) as first_batch_done:
            super().calibrate(prepared, batches[:1], progress=False)
            first_batch_done()
            return super().calibrate(prepared, batches[1:], progress)


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

    from .observers import observed_min_max_qparams

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


@dataclass
class PostConversionRecipe(QuantRecipe):
    """A pass over the converted artifact (ML program, .tflite flatbuffer) rather than the PyTorch graph."""

    variant: str = ""


@dataclass
class CoreMLWeightOnly(PostConversionRecipe):
    """Core ML weight compression of a converted ML program: int8 linear, or 6/4-bit k-means palettes."""

    name: str = "coreml_weight_only"
    target: str = "coreml"
    bits: int = 8
    mode: str = "linear"  # "linear" (int8 symmetric per-channel) or "kmeans" (palettization)
    min_ios: int = 17
    # tensors with fewer elements stay fp16 (coremltools' default, 2,048)
    weight_threshold: int = 2048
    # palettization only: tensors of at least this many elements but under weight_threshold become
    # int8 (per-channel linear) instead of staying fp16; None keeps them fp16
    small_tensors_int8: int | None = None

    def __post_init__(self) -> None:
        allowed = {("linear", 8), ("kmeans", 8), ("kmeans", 6), ("kmeans", 4)}
        if (self.mode, self.bits) not in allowed:
            raise QuantRecipeError(
                f"Core ML weight-only mode {self.mode!r} with {self.bits} bits is not supported; "
                "allowed: linear 8, kmeans 8/6/4"
            )

    def graph_passes(self) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
        """The coremltools graph passes (registered name, options) that compress a converted program,
        in order, and a description of what they do.

        :meth:`conversion_pipeline` puts them into ``ct.convert``'s pass pipeline (what the exporter
        uses); :meth:`apply` runs them on an existing ML program.
        """
        from coremltools.optimize import coreml as cto

        def int8_per_channel(weight_threshold: int) -> tuple[str, dict[str, Any]]:
            cfg = cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel",
                weight_threshold=weight_threshold,
            )
            return _compression_pass("compression::linear_quantize_weights", cfg)

        if self.mode == "linear":
            passes = [int8_per_channel(self.weight_threshold)]
            info: dict[str, Any] = {
                "scheme": "weight-only int8, symmetric, per-channel (coremltools linear_quantize_weights)",
                "weight_threshold": self.weight_threshold,
                "recipe": self.name,
            }
        else:
            # Grouped-channel LUTs keep 4-bit usable, but need iOS 18; before that one LUT per tensor.
            grouped = self.min_ios >= 18
            granularity = "per_grouped_channel" if grouped else "per_tensor"
            cfg = cto.OpPalettizerConfig(
                nbits=self.bits, mode="kmeans", granularity=granularity,
                weight_threshold=self.weight_threshold, **({"group_size": 16} if grouped else {}),
            )
            passes = [_compression_pass("compression::palettize_weights", cfg)]
            info = {
                "scheme": f"{self.bits}-bit k-means palettization, {granularity}"
                + (" (group 16)" if grouped else "")
                + ", fp16 compute",
                "weight_threshold": self.weight_threshold,
                "recipe": self.name,
            }
            if self.small_tensors_int8 is not None:
                # the tensors too small to palettize well stay out of the palettes but need not stay
                # fp16: int8 per-channel, as --bits 8 stores every tensor
                passes.append(int8_per_channel(self.small_tensors_int8))
                info["scheme"] += f"; tensors of {self.small_tensors_int8}+ elements below that int8"
                info["small_tensors_int8_threshold"] = self.small_tensors_int8
        passes.append((register_scalar_zero_points(), {}))
        return passes, info

    def conversion_pipeline(self) -> tuple[Any, dict[str, Any]]:
        """``ct.convert``'s default pass pipeline with :meth:`graph_passes` after it, then coremltools'
        cleanup passes (what a compressed program gets when ``*_weights`` converts it back), and the
        description. Compressing inside the conversion saves that round trip through the protobuf,
        the weight file and the whole default pipeline (25-30 s of a b1 export)."""
        import coremltools as ct

        pipeline = ct.PassPipeline.DEFAULT
        passes, info = self.graph_passes()
        for name, options in passes:
            pipeline.append_pass(name)
            if options:
                pipeline.set_options(name, options)
        for name in ct.PassPipeline.CLEANUP.passes:
            pipeline.append_pass(name)
        return pipeline, info

    def apply(self, mlmodel: Any) -> tuple[Any, dict[str, Any]]:
        """The compressed ML program (all passes on one pymil program, one conversion back) and a
        description of what was done."""
        from coremltools.converters.mil.mil.passes.graph_pass import PassOption
        from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
        from coremltools.models.utils import _apply_graph_pass

        passes, info = self.graph_passes()
        instances = []
        for name, options in passes:
            graph_pass = PASS_REGISTRY[name]
            graph_pass.set_options([PassOption(k, v) for k, v in options.items()])
            instances.append(graph_pass)
        return _apply_graph_pass(mlmodel, instances), info


def _compression_pass(name: str, config: Any) -> tuple[str, dict[str, Any]]:
    """coremltools' compression pass ``name`` with ``config``, the options its ``*_weights``
    functions set."""
    from coremltools.optimize.coreml import OptimizationConfig

    return name, {"config": OptimizationConfig(global_config=config), "joint_compression": False}


SCALAR_ZERO_POINTS_PASS = "hrvit_mobile::scalar_zero_points"


def register_scalar_zero_points() -> str:
    """Register (once) and name the coremltools graph pass that gives an int8
    ``constexpr_affine_dequantize`` whose per-channel zero points are all 0 (symmetric quantization)
    the scalar 0 instead.

    coremltools stores the zeros as a vector blob per tensor (deduplicated by length); the op's spec
    allows a scalar zero point beside a per-channel scale, each broadcasting along ``axis`` on its own.
    The decompressed weights are identical.
    """
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    if SCALAR_ZERO_POINTS_PASS in PASS_REGISTRY:
        return SCALAR_ZERO_POINTS_PASS

    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.pass_registry import register_pass

    @register_pass(namespace="hrvit_mobile", name="scalar_zero_points")
    class ScalarZeroPoints(AbstractGraphPass):
        def apply(self, prog: Any) -> None:
            for function in prog.functions.values():
                self._rewrite(function)

        def _rewrite(self, block: Any) -> None:
            # one block context for all rewrites: leaving it re-propagates the block's
            # non-replaceable vars, 0.1 s a time on b1
            with block:
                for op in list(block.operations):
                    for inner in op.blocks:
                        self._rewrite(inner)
                    if op.op_type != "constexpr_affine_dequantize":
                        continue
                    zero_point = op.zero_point.val
                    if np.ndim(zero_point) != 1 or np.any(zero_point):
                        continue
                    scalar = mb.constexpr_affine_dequantize(
                        quantized_data=op.quantized_data.val,
                        zero_point=np.zeros((), dtype=zero_point.dtype),
                        scale=op.scale.val,
                        axis=op.axis.val,
                        before_op=op,
                        name=op.name + "_zp",
                    )
                    block.replace_uses_of_var_after_op(
                        anchor_op=op, old_var=op.outputs[0], new_var=scalar, force_replace=True
                    )
                    block.remove_ops([op])

    return SCALAR_ZERO_POINTS_PASS


# how LiteRTPostTraining's static int8 gathers statistics (see its docstring): name -> the member of
# ai_edge_quantizer's CalibrationMode it selects
LITERT_CALIBRATION_MODES = {
    "profiler": "CALIBRATION_PROFILER_BASED",
    "preserve_all_tensors": "CALIBRATION_PRESERVE_ALL_TENSORS",
}


def _statistics_in_tensor_rank(statistics: dict[str, Any], float_model: bytes) -> dict[str, Any]:
    """Profiler statistics shaped as the preserve-all calibration shapes them: a per-tensor min/max of
    shape ``(1,) * rank`` (the profiler returns shape ``(1,)``, which the quantizer's concatenation
    handling turns into scales of the wrong rank: "Ranks of scales (5) ... tensor rank (4)")."""
    import numpy as np
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    ranks: dict[str, int] = {}
    for subgraph in tfl_flatbuffer_utils.read_model(float_model).subgraphs:
        for tensor in subgraph.tensors:
            ranks[tfl_flatbuffer_utils.get_tensor_name(tensor)] = len(tensor.shape)
    out: dict[str, Any] = {}
    for name, qsv in statistics.items():
        shape = (1,) * ranks[name] if name in ranks else None
        out[name] = {
            key: np.reshape(value, shape) if shape is not None and np.size(value) == 1 else value
            for key, value in qsv.items()
        }
    return out


@dataclass
class LiteRTPostTraining(PostConversionRecipe):
    """``ai_edge_quantizer`` on the float .tflite: it quantizes exactly the ops the runtime will run.

    ``variant``: ``fp16`` (fp16 weights), ``int8dr`` (dynamic-range int8), ``int8`` (static int8 with the
    graph's input/output kept float32, so the app feeds the float image and reads float logits).

    ``calibration`` (static int8 only) picks how ``ai_edge_quantizer`` gathers each tensor's min/max:
    ``"profiler"`` (``CALIBRATION_PROFILER_BASED``: the interpreter runs with XNNPACK and records the
    statistics in C++) or ``"preserve_all_tensors"`` (the library's default: XNNPACK off, every
    intermediate tensor kept and read into Python). On b1 at 512x512 over 4 samples the profiler took
    1.9 s against 9.8 s, gave statistics for the same 2,852 tensors, and they differed by at most
    2.3e-7 relative (the two runs use different float kernels); the preserve-all mode also holds the
    interpreter's 2.5 GB of intermediate tensors (b1).
    """

    name: str = "litert_post_training"
    target: str = "tflite"
    variant: str = "int8"
    signature: str = "serving_default"
    input_name: str = "image"
    calibration: str = "profiler"

    def __post_init__(self) -> None:
        if self.variant not in ("fp16", "int8dr", "int8"):
            raise QuantRecipeError(
                f"LiteRT post-training variant {self.variant!r}; allowed: fp16, int8dr, int8"
            )
        if self.calibration not in LITERT_CALIBRATION_MODES:
            raise QuantRecipeError(
                f"LiteRT calibration mode {self.calibration!r}; "
                f"allowed: {', '.join(LITERT_CALIBRATION_MODES)}"
            )

    @property
    def needs_calibration(self) -> bool:
        return self.variant == "int8"

    def apply(self, float_model: bytes, calib: Sequence[torch.Tensor] = ()) -> tuple[bytes, dict[str, Any]]:
        """The quantized flatbuffer and a description of what was done."""
        from ai_edge_quantizer import qtyping, quantizer, recipe
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        q = quantizer.Quantizer(bytearray(float_model))
        if self.variant == "fp16":
            q.add_weight_only_config(
                regex=".*",
                operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                num_bits=16,
                algorithm_key=AlgorithmName.FLOAT_CASTING,
            )
            info: dict[str, Any] = {"scheme": "ai_edge_quantizer float_casting: fp16 weights, fp32 compute"}
        elif self.variant == "int8dr":
            q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            info = {
                "scheme": "ai_edge_quantizer dynamic_wi8_afp32: int8 per-channel weights, "
                "activations quantized at run time"
            }
        else:
            q.load_quantization_recipe(recipe.static_wi8_ai8())
            # Keep the graph's input and output float32: the converter then puts QUANTIZE/DEQUANTIZE
            # at the boundary instead of making the app feed int8.
            for io in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
                q.update_quantization_recipe(
                    regex=".*", operation_name=io, algorithm_key=AlgorithmName.NO_QUANTIZE
                )
            info = {
                "scheme": "ai_edge_quantizer static_wi8_ai8: int8 per-channel weights, int8 activations "
                "(per-tensor, calibrated); float32 graph input/output",
                "calibration_samples": len(calib),
            }
        calibration = None
        if q.need_calibration:
            calibration = self.calibrate(q, float_model, calib)
            info["calibration_mode"] = self.calibration
        result = q.quantize(calibration, enable_progress_report=False)
        info["recipe"] = self.name
        return bytes(result.quantized_model), info

    def calibrate(self, q: Any, float_model: bytes, calib: Sequence[torch.Tensor]) -> dict[str, Any]:
        """The per-tensor statistics of ``calib`` through ``float_model`` (``q``: an ``ai_edge_quantizer``
        ``Quantizer`` of it with this recipe loaded), gathered in this recipe's ``calibration`` mode."""
        from ai_edge_quantizer.calibrator import CalibrationMode

        mode = getattr(CalibrationMode, LITERT_CALIBRATION_MODES[self.calibration])
        data = {self.signature: [{self.input_name: x.numpy()} for x in calib]}
        statistics = q.calibrate(data, num_threads=os.cpu_count() or 1, mode=mode)
        if self.calibration == "profiler":
            statistics = _statistics_in_tensor_rank(statistics, float_model)
        return statistics

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.needs_calibration:
            out["calibration_mode"] = self.calibration
        return out


@dataclass
class Prequantized(PT2ERecipe):
    """A graph quantized already (e.g. converted after QAT): exporters lower it as it is, no calibration."""

    name: str = "prequantized"
    source: str = "QAT"
    scheme: str = "quantized before export (QAT); lowered without recalibration"
    info: dict[str, Any] = field(default_factory=dict)

    def quantize(
        self,
        model: nn.Module,
        example: torch.Tensor,
        calib: Sequence[torch.Tensor],
        strict: bool = False,
        progress: bool = True,
    ) -> torch.fx.GraphModule:
        if not is_quantized_graph(model):
            raise QuantRecipeError(
                "a prequantized export needs a converted PT2E graph (quantize/dequantize ops)"
            )
        return model  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": self.source, **self.info}


def is_quantized_graph(model: nn.Module) -> bool:
    """True when ``model`` is or wraps a converted PT2E graph (one holding quantize/dequantize ops)."""
    return any(
        isinstance(m, torch.fx.GraphModule)
        and any("quantize_per" in str(n.target) for n in m.graph.nodes if n.op == "call_function")
        for m in model.modules()
    )


# 4-bit palettes: tensors of 256 to 2,047 elements (too small for coremltools to palettize) go int8
# instead of fp16. b1 at 512x512, demo checkpoint, the same 2 parity images: 4.946 -> 4.884 MB, cosine
# 0.99585 -> 0.99616, argmax 95.35 -> 95.54 % (the 4-bit palettes' error dominates); from 64 elements
# the file grows again (4.889 MB: per-channel scales of tiny tensors); at 512 elements palettizing them
# instead fell to cosine 0.9774, argmax 87.5 %.
PAL4_SMALL_TENSORS_INT8 = 256

# Weight-only 8-bit: every weight of 256+ elements int8 (coremltools' default leaves those under 2,048
# fp16). b1 at 512x512, demo checkpoint, 2 parity images: 8.854 -> 8.768 MB (0.2708x ->
# 0.2681x the 32.697 MB fp32 package), cosine 0.999991 -> 0.999952, argmax 99.79 -> 99.59 %. The
# error comes from the small convs (3x3 / 5x5 depthwise, the stem): int8 on convs alone gave the same
# cosine (0.999947). ``CoreMLWeightOnly(bits=8, weight_threshold=2048)`` keeps coremltools' default.
W8_WEIGHT_THRESHOLD = 256

# QAT needs a PT2E quantizer in QAT mode: the recipe classes that have one, found by their ``target``.
QAT_RECIPES: tuple[type[PT2ERecipe], ...] = (XNNPACKInt8, CoreMLW8A8, LiteRTInt8)


def apply_keep_float(recipe: QuantRecipe, keep_float: Sequence[str | type[nn.Module]]) -> QuantRecipe:
    """``recipe`` with ``keep_float`` modules left float; one line when the recipe cannot keep any."""
    if not keep_float:
        return recipe
    if not isinstance(recipe, PT2ERecipe):
        raise QuantRecipeError(
            f"keep-float applies to int8-activation recipes; {recipe.name} is a post-conversion pass"
        )
    return recipe.with_keep_float(keep_float)


def get_qat_recipe(target: str, keep_float: Sequence[str | type[nn.Module]] = ()) -> PT2ERecipe:
    """The target's PT2E quantizer in QAT mode."""
    for cls in QAT_RECIPES:
        if cls.target == target:
            return cls(qat=True, keep_float=tuple(keep_float))
    allowed = ", ".join(cls.target for cls in QAT_RECIPES)
    raise QuantRecipeError(f"no QAT recipe for target {target!r}; allowed: {allowed}")
