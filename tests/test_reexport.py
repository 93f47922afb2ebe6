"""The exported program of a quantized graph module, written without the retrace, is the retrace's."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import require_module
from torch import nn

from hrvit_mobile.exporters import ExportSpec, export
from hrvit_mobile.exporters.reexport import export_graph_module, exported_without_retrace, unsupported
from hrvit_mobile.exporters.testing import RewrittenOps, debug_handle_groups, mlpackage_contents

# what the lowering reads of a compute node besides its value and provenance
_READ_META = ("original_aten", "stack_trace")


def _rows(ep: Any) -> list[tuple[Any, ...]]:
    rows = []
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        rows.append((
            node.op, node.name, str(node.target),
            str(torch.fx.map_arg((node.args, node.kwargs), lambda n: n.name)),
            (tuple(val.shape), val.stride(), val.dtype, val.requires_grad) if val is not None else None,
            tuple(str(node.meta.get(k)) for k in _READ_META) if node.op == "call_function" else (),
        ))
    return rows


@pytest.fixture(scope="module")
def quantized_nano(deploy_nano) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """The nano deploy form after XNNPACK's PTQ (one calibration input): PT2E's converted graph."""
    require_module("executorch")
    from hrvit_mobile.deploy.channels_first import in_export_layout
    from hrvit_mobile.quant.recipes import XNNPACKInt8

    model, _ = in_export_layout(deploy_nano((64, 96)), "channels_first")
    example = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return XNNPACKInt8().quantize(model.eval(), example, [example], progress=False), example


def _quantized_ops() -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """Core ML's W8A8 on a graph with casts (``_assert_tensor_metadata``: no output, keyword arguments the
    tracer moves) and ``ExportedProgram.module()``'s input guard (a call_module the retrace drops)."""
    from hrvit_mobile.quant.recipes import CoreMLW8A8

    example = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return CoreMLW8A8().quantize(RewrittenOps().eval(), example, [example], progress=False), example


@pytest.mark.parametrize("graph", ["nano_xnnpack_int8", "ops_coreml_w8a8"])
def test_quantized_graph_gives_the_retraced_program(graph: str, request: pytest.FixtureRequest) -> None:
    require_module("executorch")  # the debug handles below are ExecuTorch's
    gm, example = request.getfixturevalue("quantized_nano") if graph.startswith("nano") else _quantized_ops()
    assert unsupported(gm, (example,)) is None
    with torch.no_grad():
        written = exported_without_retrace(gm, (example,))
        retraced = torch.export.export(gm, (example,))
    assert written is not None
    assert _rows(written) == _rows(retraced)
    assert written.graph_signature == retraced.graph_signature
    assert list(written.state_dict) == list(retraced.state_dict)
    assert all(written.state_dict[k] is t for k, t in retraced.state_dict.items())
    assert list(written.constants) == list(retraced.constants)
    assert [(e.fqn, e.signature) for e in written.module_call_graph] == [
        (e.fqn, e.signature) for e in retraced.module_call_graph]
    assert debug_handle_groups(written) == debug_handle_groups(retraced)
    if graph.startswith("nano"):
        # what makes the values be computed again: a dequantize after a view makes the view's input
        # contiguous, so some captured strides are stale
        pairs = zip((n for n in gm.graph.nodes if n.op == "call_function"),
                    (n for n in retraced.graph.nodes if n.op == "call_function"), strict=True)
        assert any("val" in a.meta and a.meta["val"].stride() != b.meta["val"].stride() for a, b in pairs)
    else:
        assert any(n.op == "call_module" for n in gm.graph.nodes)
        torch.testing.assert_close(written.module()(example), retraced.module()(example), rtol=0, atol=0)


class _Tokens(nn.Module):
    """Convolutions, then a linear layer over tokens (views and permutes between quantized ops), as
    XNNPACK lowers it (RewrittenOps' scalar mean is not lowered in int8)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.mix = nn.Linear(8, 8)
        g = torch.Generator().manual_seed(0)  # both exports of a comparison get the same weights
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        b, c, h, w = x.shape
        t = self.mix(self.depthwise(x).flatten(2).transpose(1, 2))
        return x + t.transpose(1, 2).reshape(b, c, h, w)


def _artifact(target: str, out: Path) -> tuple[bytes, bytes, bool]:
    """A small graph exported with int8 activations: the artifact's bytes (Core ML: the program without
    its date, and the weights) and whether the retrace was skipped."""
    spec = ExportSpec(target=target, bits=8, activations=8, img_size=(32, 32), num_classes=8, out_dir=out,
                      run_parity=False)
    model = _Tokens() if target == "executorch" else RewrittenOps()
    art = export(model.eval(), spec).artifact
    if target == "executorch":
        return art.path.read_bytes(), b"", art.details["quantization"]["exported_without_retrace"]
    return *mlpackage_contents(art.path), art.details["exported_without_retrace"]


@pytest.mark.parametrize("target", ["executorch", "coreml"])
def test_artifact_is_byte_identical(target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the exporter, the .pte (ExecuTorch) or the ML program and weights (Core ML W8A8) are those
    the retrace gives, and the sidecar says which ran."""
    module = importlib.import_module(f"hrvit_mobile.exporters.{target}")
    require_module("executorch" if target == "executorch" else "coremltools")
    written = _artifact(target, tmp_path / "written")
    monkeypatch.setattr(module, "export_graph_module",
                        lambda gm, args, strict: (torch.export.export(gm, args, strict=strict), False))
    retraced = _artifact(target, tmp_path / "retraced")
    assert written[2] is True and retraced[2] is False
    assert written[:2] == retraced[:2]


class _TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class _WithSubmodule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 2


def test_what_needs_the_retrace_is_left_to_it() -> None:
    x = torch.randn(2, 3)
    assert unsupported(nn.ReLU(), (x,)) == "not a graph module: ReLU"
    two = torch.export.export(_TwoInputs(), (x, x)).module()
    assert unsupported(two, (x, x)) == "not one tensor input"
    traced = torch.fx.symbolic_trace(_WithSubmodule())  # no pytree specs: not an exported program's module
    assert unsupported(traced, (x,)) == "no pytree specs (not an ExportedProgram.module() graph)"
    gm = torch.export.export(_WithSubmodule(), (x,)).module()
    graph = gm.graph
    relu = next(n for n in graph.nodes if n.op == "call_function")
    with graph.inserting_after(relu):
        dead = graph.call_function(torch.ops.aten.neg.default, (relu,))
    assert unsupported(gm, (x,)) == f"dead node {dead.name}"
    graph.erase_node(dead)
    with graph.inserting_after(relu):
        inplace = graph.call_function(torch.ops.aten.relu_.default, (relu,))
    assert unsupported(gm, (x,)) == "mutating op aten.relu_.default"
    graph.erase_node(inplace)
    assert unsupported(gm, (x,)) is None
    assert export_graph_module(gm, (x,))[1] is True
    assert export_graph_module(gm, (x,), strict=True)[1] is False  # dynamo's tracing: only the retrace
    assert export_graph_module(_WithSubmodule(), (x,))[1] is False
