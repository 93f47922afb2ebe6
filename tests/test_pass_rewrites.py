"""ExecuTorch's view-copy and edge-op rewrites without a retrace write the graphs its passes write."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from conftest import require_module

from hrvit_mobile.exporters.pass_rewrites import edge_ops_without_retrace, view_copies_without_retrace
from hrvit_mobile.exporters.testing import RewrittenOps, TinySegmenter, node_descriptions

require_module("executorch")


def _aten_graph(model: torch.nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """The graph ``_generate_edge_program`` hands to ReplaceViewOpsWithViewCopyOpsPass."""
    from executorch.exir.passes.remove_graph_asserts_pass import RemoveNonCoreAtenOpGraphAssertsPass

    from hrvit_mobile.exporters.executorch import xnnpack_partitioner
    from hrvit_mobile.exporters.patches.executorch_lowering import core_aten_table_keeping

    ep = torch.export.export(model, (example,))
    table = core_aten_table_keeping(xnnpack_partitioner().ops_to_not_decompose(ep)[0])
    return RemoveNonCoreAtenOpGraphAssertsPass()(ep.run_decompositions(table).graph_module).graph_module


def _quantized_tiny() -> torch.nn.Module:
    from hrvit_mobile.quant.recipes import XNNPACKInt8

    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        return XNNPACKInt8().quantize(TinySegmenter(num_classes=5).eval(), x, [x])


def _assert_same(rebuilt: Any, stock: torch.fx.GraphModule) -> None:
    assert rebuilt is not None
    # a retrace stamps the nodes it makes without one (the output, nodes a pass added) with autograd's
    # sequence number at that moment: process state (-1 in an export, whatever earlier tests left here)
    for gm in (rebuilt, stock):
        for node in gm.graph.nodes:
            node.meta.pop("seq_nr", None)
    assert node_descriptions(rebuilt.graph) == node_descriptions(stock.graph)
    assert rebuilt.meta.keys() == stock.meta.keys()


@pytest.mark.parametrize("case", ["rewritten_ops", "tiny_int8"])
def test_rewrites_write_the_graphs_the_passes_write(case: str) -> None:
    from executorch.exir.passes.memory_format_ops_pass import MemoryFormatOpsPass
    from executorch.exir.passes.replace_aten_with_edge_pass import OpReplacePass
    from torch._export.passes import ReplaceViewOpsWithViewCopyOpsPass

    from hrvit_mobile.exporters.patches.executorch_lowering import _op_replace_with_dim_order_pass

    if case == "rewritten_ops":
        gm = _aten_graph(RewrittenOps().eval(), torch.randn(1, 3, 16, 16))
    else:
        gm = _aten_graph(_quantized_tiny(), torch.randn(1, 3, 32, 32))
    stock_views = ReplaceViewOpsWithViewCopyOpsPass()(copy.deepcopy(gm)).graph_module
    _assert_same(view_copies_without_retrace(gm), stock_views)
    stock_edge = _op_replace_with_dim_order_pass()()(copy.deepcopy(stock_views)).graph_module
    _assert_same(edge_ops_without_retrace(stock_views), stock_edge)
    names = {getattr(n.target, "__name__", "") for n in stock_edge.graph.nodes}
    assert "aten.view_copy.default" in names  # views became copies
    if case == "rewritten_ops":  # and memory formats dim orders
        assert {"aten.permute_copy.default", "aten.slice_copy.Tensor",
                "dim_order_ops._clone_dim_order.default", "dim_order_ops._to_dim_order_copy.default"} <= names
    # the combined pass the exporter runs is ExecuTorch's pair: OpReplacePass, then MemoryFormatOpsPass
    pair = MemoryFormatOpsPass()(OpReplacePass()(copy.deepcopy(stock_views)).graph_module).graph_module
    assert [row[:6] for row in node_descriptions(pair.graph)] == [
        row[:6] for row in node_descriptions(stock_edge.graph)]


def test_graphs_the_rewrites_cannot_take_are_left_to_the_passes() -> None:
    gm = _aten_graph(RewrittenOps().eval(), torch.randn(1, 3, 16, 16))
    no_value = copy.deepcopy(gm)
    next(n for n in no_value.graph.nodes if n.op == "call_function").meta.pop("val")
    assert view_copies_without_retrace(no_value) is None and edge_ops_without_retrace(no_value) is None
    with_submodule = copy.deepcopy(gm)
    with_submodule.add_module("inner", torch.nn.Identity())
    assert view_copies_without_retrace(with_submodule) is None


@pytest.mark.parametrize("quantized", [False, True])
def test_channels_last_retrace_rebuilt_writes_the_retraced_graph(quantized: bool) -> None:
    """XNNPACK's layout pass, its closing retrace rebuilt from its in-place edits on: the graph its own
    retrace writes (copies inserted, values recomputed downstream, provenance of the new nodes)."""
    from collections import Counter

    from executorch.backends.xnnpack._passes.channels_last_tagged_reshape_pass import (
        ChannelsLastTaggedReshapePass,
    )
    from executorch.exir import to_edge

    from hrvit_mobile.exporters.patches.executorch_lowering import retrace_rebuilt

    x = torch.randn(1, 3, 32, 32)
    model = _quantized_tiny() if quantized else TinySegmenter(num_classes=5).eval()
    ep = to_edge(torch.export.export(model, (x,))).exported_program()
    stock = ChannelsLastTaggedReshapePass(ep)(copy.deepcopy(ep.graph_module)).graph_module
    skipped: Counter[str] = Counter()
    pass_ = ChannelsLastTaggedReshapePass(ep)
    with retrace_rebuilt(pass_, ep.graph_module, skipped):
        rebuilt = pass_(ep.graph_module).graph_module
    assert skipped == {"ChannelsLastTaggedReshapePass's retrace": 1}
    _assert_same(rebuilt, stock)
    assert any("_to_copy" in str(n.target) or "dim_order" in str(n.target) for n in rebuilt.graph.nodes)
