"""The core-ATen decomposition without a retrace writes the program ``run_decompositions`` writes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hrvit_mobile.exporters.decompose import decomposed_without_retrace, normalized_arguments, unsupported


class _RewrittenOps(nn.Module):
    """Every rewritten op, with defaults given and omitted, reshapes of contiguous, viewable and
    non-viewable inputs (with -1 sizes) and casts."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.depthwise = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
        self.upsample = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=8)
        self.register_buffer("mask", torch.randn(1, 1, 16, generator=g))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(F.relu(self.stem(x)))  # (1, 8, 8, 8)
        t = x.reshape(1, 8, -1).transpose(1, 2)  # a view, then (1, 64, 8) non-contiguous
        q = t.reshape(4, 16, 8)  # a copy first: not viewable
        a = torch.softmax(torch.bmm(q, q.transpose(-1, -2)) + self.mask, dim=-1)
        y = torch.bmm(a, q).reshape(1, 64, 8).transpose(1, 2).reshape(1, 8, 8, 8)
        y = y + t.reshape(1, -1).reshape(1, 8, 8, -1).mean() + x.reshape(-1, 64).reshape(1, 8, 8, -1)
        y = torch.cat([y[:, :4], x[:, 4:]], dim=1).to(torch.float16).to(torch.float32)
        y = F.conv2d(y, self.depthwise.weight, stride=1, padding=[2, 2], groups=8)
        again = F.conv_transpose2d(y, self.upsample.weight, stride=2, output_padding=0, groups=8)
        return self.upsample(y) + again


def _description(ep: Any) -> list[tuple[Any, ...]]:
    """Every node as the rest of the lowering sees it: name, op, target, arguments, fake value, and
    the metadata ExecuTorch reads (``original_aten`` on compute nodes, source locations)."""
    rows = []
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        tensor = (tuple(val.shape), val.stride(), val.dtype) if isinstance(val, torch.Tensor) else None
        meta = ()
        if node.op == "call_function":  # placeholders carry leftovers of the tracer's state
            # (seq_nr, autograd's sequence number at tracing time, is -1 or whatever the tracer saw)
            meta = tuple(str(node.meta.get(k)) for k in ("original_aten", "stack_trace",
                                                         "nn_module_stack", "source_fn_stack", "torch_fn"))
            meta += (tuple(sorted(node.meta)),)
        rows.append((node.name, node.op, str(node.target), str(node.args), str(node.kwargs), tensor, meta))
    return rows


def _debug_handle_groups(ep: Any) -> list[int]:
    """Which nodes share an ExecuTorch debug handle (same greatest ancestor), in graph order."""
    from executorch.exir.debug_handle_utils import get_greatest_ancestor_node_identifier

    seen: dict[str, int] = {}
    return [
        seen.setdefault(get_greatest_ancestor_node_identifier(n), len(seen))
        for n in ep.graph.nodes
        if n.op not in ("placeholder", "output")
    ]


def _executorch_table(ep: Any) -> dict[Any, Any]:
    from executorch.exir.program import _program

    from hrvit_mobile.exporters.executorch import xnnpack_partitioner

    ops, _ = xnnpack_partitioner().ops_to_not_decompose(ep)
    table = _program._default_decomposition_table()
    for op in ops:
        table.pop(op, None)
    return table


def _assert_same_program(ep: Any, table: dict[Any, Any]) -> None:
    rewritten = decomposed_without_retrace(ep, table)
    assert rewritten is not None, unsupported(ep, table)
    retraced = ep.run_decompositions(table)
    assert _description(rewritten) == _description(retraced)
    assert str(rewritten.graph_signature) == str(retraced.graph_signature)
    assert rewritten.module_call_graph == retraced.module_call_graph
    assert rewritten.verifiers == retraced.verifiers
    assert _debug_handle_groups(rewritten) == _debug_handle_groups(retraced)
    x = ep.example_inputs[0][0]
    torch.testing.assert_close(rewritten.module()(x), retraced.module()(x), rtol=0, atol=0)


@pytest.mark.parametrize("table", ["executorch", "empty"])
def test_rewritten_ops_give_the_retraced_program(table: str) -> None:
    pytest.importorskip("executorch")
    ep = torch.export.export(_RewrittenOps().eval(), (torch.randn(1, 3, 16, 16),))
    targets = {str(n.target) for n in ep.graph.nodes}
    assert {"aten.conv2d.default", "aten.softmax.int", "aten.transpose.int", "aten.reshape.default",
            "aten.to.dtype"} <= targets
    _assert_same_program(ep, _executorch_table(ep) if table == "executorch" else {})


def test_nano_deploy_form_gives_the_retraced_program(deploy_nano) -> None:
    pytest.importorskip("executorch")
    from hrvit_mobile.deploy.channels_first import in_export_layout

    model, _ = in_export_layout(deploy_nano((64, 96)), "executorch", None, "fp32")
    ep = torch.export.export(model.eval(), (torch.randn(1, 3, 64, 96),))
    _assert_same_program(ep, _executorch_table(ep))


@pytest.mark.slow
def test_quantized_nano_gives_the_retraced_program(deploy_nano) -> None:
    """The int8 graph: quantize/dequantize pairs around every rewritten op."""
    pytest.importorskip("executorch")
    from hrvit_mobile.deploy.channels_first import in_export_layout
    from hrvit_mobile.quant.recipes import XNNPACKInt8

    model, _ = in_export_layout(deploy_nano((64, 96)), "executorch", None, "int8")
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
