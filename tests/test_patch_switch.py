"""The one switch over other libraries' internals: off, every export runs stock library code only and
writes the same artifact; on, the sidecar names what was patched; another library version gets stock code."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_module

from hrvit_mobile import patching
from hrvit_mobile.exporters import ExportSpec, export, read_sidecar
from hrvit_mobile.exporters.testing import TinySegmenter

SIZE = (32, 32)


def _export(tmp_path: Path, target: str, bits: int, activations: str | None, patches: bool | None):
    spec = ExportSpec(target=target, bits=bits, activations=activations, img_size=SIZE, num_classes=5,
                      out_dir=tmp_path / f"patches_{patches}", run_parity=False, patches=patches)
    return export(TinySegmenter(num_classes=5).eval(), spec).artifact


@pytest.mark.parametrize(
    ("target", "bits", "activations", "module"),
    [("executorch", 32, None, "executorch"), ("executorch", 8, "8", "executorch"),
     ("tflite", 32, None, "litert_torch"), ("tflite", 8, "8", "litert_torch")],
)
def test_switch_off_writes_the_same_artifact_with_stock_code(
    tmp_path: Path, target: str, bits: int, activations: str | None, module: str
) -> None:
    require_module(module)
    on = _export(tmp_path, target, bits, activations, patches=True)
    off = _export(tmp_path, target, bits, activations, patches=False)
    assert hashlib.sha256(on.path.read_bytes()).digest() == hashlib.sha256(off.path.read_bytes()).digest()
    assert read_sidecar(off.path)["details"]["patches"] == []
    applied = read_sidecar(on.path)["details"]["patches"]
    assert applied and all("." in name for name in applied)


def test_switch_off_core_ml_computes_the_same(tmp_path: Path) -> None:
    """Core ML: the one size patch (small constants held in the program, not the weight file) moves
    bytes between the package's two files, so the packages differ; the program computes the same."""
    require_module("coremltools")
    from hrvit_mobile.exporters.coreml_eval import Program

    on = _export(tmp_path, "coreml", 16, None, patches=True)
    off = _export(tmp_path, "coreml", 16, None, patches=False)
    assert read_sidecar(off.path)["details"]["patches"] == []
    assert any("should_use_weight_file" in n for n in read_sidecar(on.path)["details"]["patches"])
    image = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    a, b = Program(on.path).predict(image), Program(off.path).predict(image)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_environment_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    patching.begin_export(None)
    monkeypatch.setenv(patching.ENV, "0")
    assert not patching.enabled()
    before = torch.fx.Graph.__dict__.get("eliminate_dead_code")
    with patching.library_patch(torch.fx.Graph, eliminate_dead_code=lambda self: False) as applied:
        assert not applied and torch.fx.Graph.__dict__.get("eliminate_dead_code") is before
    assert patching.applied() == []
    monkeypatch.setenv(patching.ENV, "1")
    patching.begin_export(False)  # the export's own choice wins over the environment
    assert not patching.enabled()
    patching.begin_export(None)
    assert patching.enabled()


def test_another_library_version_gets_stock_code(monkeypatch: pytest.MonkeyPatch) -> None:
    patching.begin_export(True)
    original = torch.fx.Graph.__dict__["eliminate_dead_code"]

    def replacement(self: torch.fx.Graph) -> bool:
        return False

    with patching.library_patch(torch.fx.Graph, eliminate_dead_code=replacement) as applied:
        assert applied and torch.fx.Graph.eliminate_dead_code is replacement
    assert torch.fx.Graph.__dict__["eliminate_dead_code"] is original
    assert patching.applied() == ["torch.fx.graph.Graph.eliminate_dead_code"]
    monkeypatch.setitem(patching.WRITTEN_FOR, "torch", ("torch", "0.0.1"))
    with patching.library_patch(torch.fx.Graph, eliminate_dead_code=replacement) as applied:
        assert not applied and torch.fx.Graph.__dict__["eliminate_dead_code"] is original
    patching.begin_export(None)
