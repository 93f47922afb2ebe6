"""Speed shortcuts in litert-torch's conversion (written for litert-torch 0.10.0, ``patching.WRITTEN_FOR``):
int64 aranges asked for int32 in place instead of through a lambda that forces a retrace, and the
layout pass's callables inlined by the lowering retrace instead of one of their own. Same .tflite;
see :mod:`hrvit_mobile.exporters.patches`.
"""

from __future__ import annotations

import types
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from hrvit_mobile.patching import library_patch

from ..errors import ExportError


@contextmanager
def arange_int32_in_place() -> Iterator[Counter[str]]:
    """litert-torch's int64 -> int32 ``arange`` rewrite without the retrace it forces.

    Before lowering, litert-torch turns each int64 ``aten.arange.start_step`` (the interpolations'
    decompositions make them) into a Python lambda around the op plus a cast to int32. A lambda target
    is not an operator, so its last ``run_decompositions`` must retrace the whole graph to inline it:
    on b1 that pass found nothing else to do and took 10-15 s of ~50. Here the node asks ``arange``
    for int32 directly (the same values, since start and end fit in int32, which the original checks
    too), its metadata follows, and that last pass is skipped. The .tflite is byte-identical (b1 fp32
    compared; tests/test_export_litert.py). Yields a counter of rewritten nodes.
    """
    from litert_torch.backend import export as litert_export
    from torch.fx.passes.shape_prop import _extract_tensor_metadata

    rewritten: Counter[str] = Counter()
    int32 = torch.iinfo(torch.int32)

    def convert_in_place(exported_program: Any) -> bool:
        changed = False
        for node in exported_program.graph_module.graph.nodes:
            if node.target != torch.ops.aten.arange.start_step:
                continue
            meta, val = node.meta.get("tensor_meta"), node.meta.get("val")
            if meta is None or val is None or meta.dtype != torch.int64:
                continue
            start, end = node.args[:2]
            if not all(isinstance(v, int) and int32.min <= v <= int32.max for v in (start, end)):
                continue
            node.kwargs = {**node.kwargs, "dtype": torch.int32}
            with val.fake_mode:
                node.meta["val"] = val.to(torch.int32)
            node.meta["tensor_meta"] = _extract_tensor_metadata(node.meta["val"])
            rewritten["arange"] += 1
            changed = True
        return changed

    with library_patch(litert_export, _convert_i64_to_i32=convert_in_place):
        yield rewritten


def _inner_function_code(outer: Any, name: str) -> types.CodeType:
    """The code object of the function ``name`` defined inside ``outer`` (one per module, shared by
    every closure made from it)."""
    for const in outer.__code__.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == name:
            return const
    raise ExportError(f"litert-torch changed: {outer.__qualname__} defines no {name}")


def _closure_cell(fn: Any, name: str) -> Any:
    return dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))[name]


@contextmanager
def layout_callables_traced_once() -> Iterator[Counter[str]]:
    """litert-torch's FX passes with one whole-graph retrace fewer: the layout pass's callables are
    inlined by the retrace that lowering always does, not by a retrace of their own.

    litert-torch's layout pass (``OptimizeLayoutTransposesPass``) turns NHWC-friendly nodes into Python
    callables (``tensor_to_nhwc``/``tensor_to_nchw`` and closures around ``conv2d`` and the NCHW-only
    ops such as ``upsample_nearest2d``); ``CanonicalizePass`` then retraces the whole graph only to
    inline them (b1: 386 callables, 7-10 s of a ~50 s conversion) before ``BuildAtenCompositePass``
    marks composites. Lowering retraces the whole graph again in any case (``pre_lower_decomp``,
    ``can_skip=False``), inlining any callable it meets. Here ``CanonicalizePass`` leaves the graph as
    it is when its only callables are those layout functions and no node is one
    ``ReduceViewRankPass`` (the pass in between) would look at (an ``unsqueeze`` past rank 4); and
    ``BuildAtenCompositePass`` builds the composite of an op wrapped in a layout closure (the resizes)
    inside that closure, with the wrapped node's metadata (the NCHW shape, which the layout pass leaves
    in place): the lowering retrace then meets the same ops in the same order. Any other callable
    takes litert-torch's own path. The .tflite is byte-identical (b1 fp32 compared;
    tests/test_export_litert.py). Yields a counter: ``callables`` left for the lowering retrace,
    ``composites`` built inside a closure.
    """
    from litert_torch._convert.fx_passes import build_aten_composite_pass as composite_pass
    from litert_torch._convert.fx_passes.optimize_layout_transposes_pass import layout_rewrite
    from litert_torch._convert.fx_passes.optimize_layout_transposes_pass import utils as layout_utils
    from litert_torch.fx_infra import _canonicalize_pass as canonicalize_pass
    from litert_torch.fx_infra import pass_base

    wrapping = {  # closures with an ``op`` cell: the aten op they call between the transposes
        _inner_function_code(layout_rewrite._aten_convolution_rewriter, "conv_nhwc"),
        _inner_function_code(layout_rewrite.transpose_first_arg_rewriter, "nhwc_op"),
    }
    layout_codes = wrapping | {layout_utils.tensor_to_nhwc.__code__, layout_utils.tensor_to_nchw.__code__}
    canonicalize_cls = canonicalize_pass.CanonicalizePass
    composite_cls = composite_pass.BuildAtenCompositePass
    original_canonicalize, original_composites = canonicalize_cls.call, composite_cls.call
    counts: Counter[str] = Counter()

    def layout_callables(graph: torch.fx.Graph) -> int | None:
        """How many layout callables ``graph`` holds, or None where the retrace must run."""
        found = 0
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            target = node.target
            if target == torch.ops.aten.unsqueeze.default:
                val = node.meta.get("val")
                if val is None or val.dim() > 4:
                    return None
            elif not isinstance(target, (torch._ops.OpOverload, torch._ops.OperatorBase)):
                if getattr(target, "__module__", None) == "_operator":
                    continue
                if getattr(target, "__code__", None) not in layout_codes:
                    return None
                found += 1
        return found

    def canonicalize(self: Any, exported_program: Any) -> Any:
        found = layout_callables(exported_program.graph)
        if not found:
            return original_canonicalize(self, exported_program)
        counts["callables"] += found
        return pass_base.ExportedProgramPassResult(exported_program, False)

    def build_composites(self: Any, graph_module: torch.fx.GraphModule) -> Any:
        # layout closures are still in the graph only where canonicalize left them there
        builders = composite_pass._composite_builders
        for node in graph_module.graph.nodes:
            if getattr(node.target, "__code__", None) not in wrapping:
                continue
            cell = _closure_cell(node.target, "op")
            if cell.cell_contents in builders:
                stand_in = types.SimpleNamespace(target=cell.cell_contents, meta=node.meta)
                builders[cell.cell_contents](graph_module, stand_in)
                cell.cell_contents = stand_in.target
                counts["composites"] += 1
        return original_composites(self, graph_module)

    with library_patch(canonicalize_cls, call=canonicalize), \
            library_patch(composite_cls, call=build_composites):
        yield counts
