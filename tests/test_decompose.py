"""The core-ATen decomposition without a retrace writes the program ``run_decompositions`` writes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import require_module
from torch import nn

from hrvit_mobile.exporters.decompose import decomposed_without_retrace, normalized_arguments, unsupported
from hrvit_mobile.exporters.testing import RewrittenOps, debug_handle_groups, node_descriptions

# what ExecuTorch reads of a compute node's metadata; placeholders carry leftovers of the tracer's
# state, and seq_nr (autograd's sequence number at tracing time) is -1 or whatever the tracer saw
_READ_META = ("original_aten", "stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn")


def _description(ep: Any) -> list[tuple[Any, ...]]:
    return node_descriptions(ep.graph, _READ_META)


def _executorch_table(ep: Any) -> Any:
    from hrvit_mobile.exporters.executorch import xnnpack_partitioner
    from hrvit_mobile.exporters.patches.executorch_lowering import core_aten_table_keeping

    return core_aten_table_keeping(xnnpack_partitioner().ops_to_not_decompose(ep)[0])


def _assert_same_program(ep: Any, table: dict[Any, Any]) -> None:
    rewritten = decomposed_without_retrace(ep, table)
    assert rewritten is not None, unsupported(ep, table)
    retraced = ep.run_decompositions(table)
    assert _description(rewritten) == _description(retraced)
    assert str(rewritten.graph_signature) == str(retraced.graph_signature)
    assert rewritten.module_call_graph == retraced.module_call_graph
    assert rewritten.verifiers == retraced.verifiers
    assert debug_handle_groups(rewritten) == debug_handle_groups(retraced)
    x = ep.example_inputs[0][0]
    torch.testing.assert_close(rewritten.module()(x), retraced.module()(x), rtol=0, atol=0)


@pytest.mark.parametrize("table", ["executorch", "empty"])
def test_rewritten_ops_give_the_retraced_program(table: str) -> None:
    require_module("executorch")
    ep = torch.export.export(RewrittenOps().eval(), (torch.randn(1, 3, 16, 16),))
    targets = {str(n.target) for n in ep.graph.nodes}
    assert {"aten.conv2d.default", "aten.softmax.int", "aten.transpose.int", "aten.reshape.default",
            "aten.to.dtype"} <= targets
    _assert_same_program(ep, _executorch_table(ep) if table == "executorch" else {})


def test_nano_deploy_form_gives_the_retraced_program(deploy_nano) -> None:
    require_module("executorch")
    from hrvit_mobile.deploy.channels_first import in_export_layout

    model, _ = in_export_layout(deploy_nano((64, 96)), "channels_first")
    ep = torch.export.export(model.eval(), (torch.randn(1, 3, 64, 96),))
    _assert_same_program(ep, _executorch_table(ep))


@pytest.mark.slow
def test_quantized_nano_gives_the_retraced_program(deploy_nano) -> None:
    """The int8 graph: quantize/dequantize pairs around every rewritten op."""
    require_module("executorch")
    from hrvit_mobile.deploy.channels_first import in_export_layout
    from hrvit_mobile.quant.recipes import XNNPACKInt8

    model, _ = in_export_layout(deploy_nano((64, 96)), "channels_first")
    example = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        quantized = XNNPACKInt8().quantize(model.eval(), example, [example])
        ep = torch.export.export(quantized, (example,))
    _assert_same_program(ep, _executorch_table(ep))


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * 2


class _SoftmaxInHalf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1, dtype=torch.float16).float()


class _CountingBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count.add_(1)
        return x.reshape(-1) + self.count


def test_what_needs_the_retrace_is_left_to_it() -> None:
    x = torch.randn(2, 3, 4)
    flatten = torch.export.export(_Flatten(), (x,))
    assert unsupported(flatten, {}) == "decomposition of aten.flatten.using_ints"
    assert decomposed_without_retrace(flatten, {}) is None
    in_half = torch.export.export(_SoftmaxInHalf(), (x,))
    assert decomposed_without_retrace(in_half, {torch.ops.aten.softmax.int: None}) is None
    mutating = torch.export.export(_CountingBuffer(), (x,))
    assert unsupported(mutating, {}) == "mutating op aten.add_.Tensor"
    dynamic = torch.export.export(_Flatten(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert unsupported(dynamic, {}) == "symbolic shapes"


def test_arguments_are_normalized_as_the_dispatcher_does() -> None:
    aten = torch.ops.aten
    # trailing defaults dropped, an earlier default kept when a later positional one is given
    assert normalized_arguments(aten.conv2d.default, ("x", "w", None, [1, 1]), {}) == (("x", "w"), {})
    assert normalized_arguments(aten._assert_tensor_metadata.default, ("a",),
                                {"dtype": torch.float32, "device": torch.device("cpu")}) == (
        ("a", None, None, torch.float32), {"device": torch.device("cpu")})
    # keyword-only arguments only where they differ from their default
    given = {"dtype": torch.float16, "non_blocking": False}
    assert normalized_arguments(aten._to_copy.default, ("a",), given) == (("a",), {"dtype": torch.float16})
    with pytest.raises(TypeError, match="unexpected"):
        normalized_arguments(aten.relu.default, ("a",), {"alpha": 1})
