"""Per-layer error of the int8 (PT2E) variants: which layers lose the most SQNR.

The figures come from the PyTorch-side simulation (the converted PT2E model, with the same quantizer and
the same calibration inputs the exporter uses), not from the runtime: torchao's numeric debugger tags
every node of the float graph with a debug handle, both the float and the quantized graph log each
tagged node's output, and each output's SQNR is measured against its float counterpart. The SQNR a
layer *loses* is the SQNR of the tensors entering it minus the SQNR of its output: this isolates the
layer from the error it inherits.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hrvit_mobile.exporters.registry import get_backend
from hrvit_mobile.patching import patched
from hrvit_mobile.quant.recipes import PT2ERecipe

log = logging.getLogger("hrvit_mobile.report")

SOURCE = (
    "PyTorch-side simulation (PT2E fake-quantized model vs float, torchao numeric debugger), not the runtime"
)


@dataclass
class LayerError:
    module: str  # the innermost module that owns the node(s), e.g. features.3.branches.1.blocks.0.attn
    sqnr_in_db: float
    sqnr_out_db: float
    order: int  # position of the module's output in the graph

    @property
    def loss_db(self) -> float:
        return self.sqnr_in_db - self.sqnr_out_db


@dataclass
class LayerReport:
    variant: str
    quantizer: str
    source: str = SOURCE
    images: int = 0  # verification images the SQNRs are measured on
    layers: list[LayerError] = field(default_factory=list)  # graph order

    def worst(self, n: int = 10) -> list[LayerError]:
        finite = [x for x in self.layers if np.isfinite(x.loss_db)]
        return sorted(finite, key=lambda x: x.loss_db, reverse=True)[:n]

    def to_dict(self, top: int = 20) -> dict[str, Any]:
        def row(x: LayerError) -> dict[str, Any]:
            return {"module": x.module, "sqnr_in_db": _num(x.sqnr_in_db), "sqnr_out_db": _num(x.sqnr_out_db),
                    "loss_db": _num(x.loss_db), "order": x.order}

        return {"variant": self.variant, "quantizer": self.quantizer, "source": self.source,
                "images": self.images, "worst": [row(x) for x in self.worst(top)],
                "layers": [row(x) for x in self.layers]}


def _num(v: float) -> float | str:
    return v if np.isfinite(v) else str(v)


def _pt2e_recipe(
    target: str, variant: str
) -> tuple[str, Callable[[], Any], Callable[[Any], Any], Callable[[], Any]] | None:
    """(scheme, quantizer factory, graph wrapper, context for prepare) of a variant quantized on the
    PyTorch graph: what the exporter does, through the same recipe object it applies; None otherwise."""
    found = get_backend(target).variant_named(variant)
    if found.recipe is None or found.activations != "int8":  # float and weight-only variants
        return None
    recipe = found.recipe(None)  # the int8-activation recipes take nothing from the spec
    if not isinstance(recipe, PT2ERecipe):
        return None
    wrap = found.quantized_module or (lambda m: m)
    return recipe.scheme, recipe.quantizer, wrap, recipe._annotation_context


def supports(target: str, variant: str) -> bool:
    return _pt2e_recipe(target, variant) is not None


@torch.no_grad()
def layer_errors(
    model: torch.nn.Module,
    target: str,
    variant: str,
    example: torch.Tensor,
    calib: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
) -> LayerReport:
    """Per-module SQNR of the PT2E-quantized ``model`` against itself in float, on ``inputs``."""
    from torchao.quantization.pt2e import generate_numeric_debug_handle, prepare_for_propagation_comparison
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    recipe = _pt2e_recipe(target, variant)
    if recipe is None:
        raise ValueError(f"no PT2E recipe for {target}/{variant}")
    name, make_quantizer, wrap, prepare_context = recipe
    ep = torch.export.export(wrap(model.eval()), (example,), strict=False)
    generate_numeric_debug_handle(ep)
    gm = ep.module()
    ref = prepare_for_propagation_comparison(copy.deepcopy(gm))
    with prepare_context():
        prepared = prepare_pt2e(gm, make_quantizer())
    for x in calib:
        prepared(x)
    quant = prepare_for_propagation_comparison(convert_pt2e(prepared))
    report = LayerReport(variant=f"{target}/{variant}", quantizer=name, images=min(len(inputs), LAYER_IMAGES))
    report.layers = _per_module(ref, _streamed_sqnr(ref, quant, inputs[:LAYER_IMAGES]))
    return report


def _loggers(gm: torch.fx.GraphModule) -> dict[Any, tuple[str, bool]]:
    """The numeric debugger's output loggers of ``gm``: logger -> (float graph node name, compared).

    Several loggers can carry one node's name (a quantized graph duplicates dequantize nodes); as in
    torchao's ``extract_results_from_loggers`` the last one of a name is the one compared.
    """
    from torchao.quantization.pt2e._numeric_debugger import OutputLogger

    loggers = [m for m in gm.children() if isinstance(m, OutputLogger)]
    last = {m.debug_info.name: m for m in loggers}
    return {m: (m.debug_info.name, last[m.debug_info.name] is m) for m in loggers}


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


# verification images the per-layer simulation runs (each costs a few passes of both graphs on a full model)
LAYER_IMAGES = 2
# float outputs of the reference graph held at once by the per-layer simulation; more logged output than
# this is compared in several passes (a node's outputs are never split)
LAYER_MEMORY_BUDGET = 2 * 2**30


@contextlib.contextmanager
def _logging_with(
    loggers: dict[Any, tuple[str, bool]], forward_for: Callable[[str, bool], Callable[[Any], Any]]
) -> Iterator[None]:
    """Every logger runs ``forward_for(name, compared)`` instead of storing its output (an instance
    attribute shadows ``OutputLogger.forward``), for the duration of the block."""
    with contextlib.ExitStack() as stack:
        for logger, (name, compared) in loggers.items():
            stack.enter_context(patched(logger, forward=forward_for(name, compared)))
        yield


def _chunks(sizes: dict[str, int], budget: int) -> list[set[str]]:
    """Consecutive groups of node names whose outputs together stay within ``budget`` bytes."""
    chunks: list[set[str]] = []
    current: set[str] = set()
    used = 0
    for name, size in sizes.items():
        if current and used + size > budget:
            chunks.append(current)
            current, used = set(), 0
        current.add(name)
        used += size
    if current:
        chunks.append(current)
    return chunks


def _streamed_sqnr(
    ref: torch.fx.GraphModule,
    quant: torch.fx.GraphModule,
    inputs: Sequence[torch.Tensor],
    budget: int = LAYER_MEMORY_BUDGET,
) -> dict[str, float]:
    """Per logged node, SQNR of the quantized graph's output against the float graph's, over ``inputs``.

    The debugger's loggers keep every node's output of every run: on b1 at 512x512 that is more than
    10 GB per image and graph (a bench was OOM-killed at 24 GB). Here, per image: one pass measures the
    outputs, then for each group of nodes within ``budget`` the float graph keeps that group's outputs
    and the quantized graph reduces its own to signal and noise sums the moment they are produced.
    """
    ref_loggers, quant_loggers = _loggers(ref), _loggers(quant)
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    mismatched: set[str] = set()

    def passthrough(value: Any) -> Any:
        return value

    def accumulate(name: str, reference: list[torch.Tensor], value: Any) -> Any:
        actual = _tensors(value)
        if len(actual) != len(reference) or any(a.shape != r.shape for a, r in zip(actual, reference)):
            mismatched.add(name)
            return value
        for a, r in zip(actual, reference):
            r64 = r.detach().double()
            signal[name] = signal.get(name, 0.0) + float((r64 * r64).sum())
            noise[name] = noise.get(name, 0.0) + float(((a.detach().double() - r64) ** 2).sum())
        return value

    for x in inputs:
        sizes: dict[str, int] = {}

        def measure(name: str, compared: bool, _sizes: dict[str, int] = sizes) -> Callable[[Any], Any]:
            if not compared:
                return passthrough

            def run(value: Any) -> Any:
                _sizes[name] = sum(t.numel() * t.element_size() for t in _tensors(value))
                return value
            return run

        with _logging_with(ref_loggers, measure):
            ref(x)
        for chunk in _chunks(sizes, budget):
            reference: dict[str, list[torch.Tensor]] = {}

            def keep(name: str, compared: bool, _chunk: set[str] = chunk, _ref: dict = reference
                     ) -> Callable[[Any], Any]:
                if not compared or name not in _chunk:
                    return passthrough

                def run(value: Any) -> Any:
                    _ref[name] = [t.detach().clone() for t in _tensors(value)]
                    return value
                return run

            def compare(name: str, compared: bool, _ref: dict = reference) -> Callable[[Any], Any]:
                if not compared or name not in _ref:
                    return passthrough
                return lambda value: accumulate(name, _ref[name], value)

            with _logging_with(ref_loggers, keep):
                ref(x)
            with _logging_with(quant_loggers, compare):
                quant(x)
            reference.clear()
    out = {}
    for name in signal:
        if name in mismatched:
            out[name] = float("nan")
        elif noise[name] == 0.0:
            out[name] = float("inf")
        elif signal[name] == 0.0:
            out[name] = float("-inf")
        else:
            out[name] = 10.0 * float(np.log10(signal[name] / noise[name]))
    return out


def _per_module(ref_gm: torch.fx.GraphModule, sqnr: dict[str, float]) -> list[LayerError]:
    """Group the logged nodes by innermost module; SQNR in = worst logged tensor entering from outside."""

    def owner(node: torch.fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        return path.removeprefix("L['self'].").removeprefix("model.") or "(top level)"

    def source(node: torch.fx.Node) -> torch.fx.Node:
        # the loggers sit between a node and its users: look through them
        while node.op == "call_module" and node.args and isinstance(node.args[0], torch.fx.Node):
            node = node.args[0]
        return node

    def users(node: torch.fx.Node) -> list[torch.fx.Node]:
        out = []
        for u in node.users:
            out.extend(users(u) if u.op == "call_module" else [u])
        return out

    def feeds_batch_norm(node: torch.fx.Node) -> bool:
        # a conv whose BatchNorm the quantizer folds has no float counterpart: its SQNR is meaningless
        return any("batch_norm" in str(u.target) for u in users(node))

    modules: dict[str, dict[str, Any]] = {}
    # the logged nodes, in graph order (the loggers keep the float graph's node names)
    nodes = [n for n in ref_gm.graph.nodes if n.op == "call_function" and n.name in sqnr]
    for order, node in enumerate(nodes):
        if node.name not in sqnr or feeds_batch_norm(node):
            continue
        mod = owner(node)
        entry = modules.setdefault(mod, {"in": [], "out": float("nan"), "order": order})
        entry["out"], entry["order"] = sqnr[node.name], order
        for arg in map(source, node.all_input_nodes):
            if arg.name in sqnr and owner(arg) != mod:
                entry["in"].append(sqnr[arg.name])
    out = []
    for mod, e in modules.items():
        ins = [v for v in e["in"] if np.isfinite(v)]
        # a module fed only by the graph input (or by untagged nodes) starts from an exact signal
        out.append(LayerError(mod, min(ins) if ins else float("inf"), e["out"], e["order"]))
    return sorted(out, key=lambda x: x.order)
