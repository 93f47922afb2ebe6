"""Every exporter lowers either deploy layout on request, proven in its own runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import require_module

import hrvit_mobile
from hrvit_mobile.exporters import ExportError, ExportSpec, export
from hrvit_mobile.exporters.registry import get_backend

SIZE = (64, 96)


@pytest.mark.parametrize(
    ("target", "layout"),
    [("executorch", "tokens"), ("executorch", None), ("coreml", "channels_first"),
     ("tflite", "channels_first"), ("tflite", None)],
)
def test_export_in_either_layout(deploy_nano, tmp_path: Path, target: str, layout) -> None:
    modules = {"executorch": "executorch", "coreml": "coremltools", "tflite": "litert_torch"}
    require_module(modules[target])
    deployed = deploy_nano(SIZE)  # dense and factored DES maps
    spec = ExportSpec(target=target, bits=32, img_size=SIZE, num_classes=7, out_dir=tmp_path,
                      model_name="hrvit_nano", layout=layout)
    report = export(deployed, spec)
    assert report.ok, report.summary()
    assert report.artifact.details["layout"] == (layout or get_backend(target).layout)
    assert report.parity.max_abs_err <= 1e-3 and report.parity.argmax_agreement >= 0.999
    # the caller's deploy form is left in its own (token) layout
    assert any(type(m).__name__ == "DeployBranch" for m in deployed.modules())


def test_unknown_layout_is_one_clear_error() -> None:
    with pytest.raises(ExportError, match="unknown layout 'nhwc'; allowed: tokens, channels_first"):
        ExportSpec(target="executorch", bits=32, img_size=SIZE, layout="nhwc")


def test_executorch_fp16_keeps_the_token_layout(nano_model: torch.nn.Module, tmp_path: Path) -> None:
    """XNNPACK fp16 stores the channels-first form's 1x1 convs no smaller than fp32 (b1: 37.6 vs
    21.5 MB in tokens), so fp16 lowers tokens by default while fp32 and int8 lower channels-first."""
    require_module("executorch")
    executorch, tflite = get_backend("executorch"), get_backend("tflite")
    assert executorch.layout_for("fp16") == "tokens"
    assert executorch.layout_for("fp32") == executorch.layout_for("int8") == "channels_first"
    assert executorch.layout_for("fp16", "channels_first") == "channels_first"  # --layout wins
    assert tflite.layout_for("int8") == "tokens"
    spec = ExportSpec(target="executorch", bits=16, img_size=SIZE, num_classes=7, out_dir=tmp_path,
                      model_name="hrvit_nano")
    report = export(hrvit_mobile.deploy(nano_model, img_size=SIZE), spec)
    assert report.ok, report.summary()
    assert report.artifact.details["layout"] == "tokens"
