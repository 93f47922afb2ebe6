"""Artifact footprints: every export's sidecar says where its bytes go, and the parts add up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import require_module

from hrvit_mobile.exporters import ExportSpec, export
from hrvit_mobile.exporters.footprint import FootprintError, artifact_footprint, tensor_data_bytes
from hrvit_mobile.exporters.testing import TinySegmenter

SIZE = (64, 64)


def _wide() -> TinySegmenter:
    return TinySegmenter(num_classes=5, channels=64)  # enough weights for size to be about weights


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters()) * 4


def _export(target: str, bits: int, activations: int | None, out: Path) -> tuple[Path, dict]:
    spec = ExportSpec(target=target, bits=bits, activations=activations, img_size=SIZE, num_classes=5,
                      out_dir=out, calib_samples=2, run_parity=False)
    path = export(_wide(), spec).artifact.path
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    footprint = meta["details"]["footprint"]
    assert "error" not in footprint, footprint
    assert footprint["total"] == meta["size_bytes"]
    assert sum(v for k, v in footprint.items() if k != "total") == footprint["total"]
    assert all(v >= 0 for v in footprint.values())
    assert footprint == artifact_footprint(path)  # the sidecar's figures are the file's
    return path, footprint


@pytest.mark.parametrize("bits", [32, 8])
def test_executorch_footprint(tmp_path: Path, bits: int) -> None:
    require_module("executorch")
    _, fp = _export("executorch", bits, None, tmp_path)
    weights = _weight_bytes(_wide())
    assert fp["xnnpack_graph"] > 0
    if bits == 32:
        assert "named_data_scales" not in fp  # no per-channel quantization
        assert 0.9 * weights <= fp["named_data_tensors"] <= 1.1 * weights
    else:
        assert fp["named_data_scales"] > 0  # XNNPACK's per-channel scales, stored beside the weights
        assert fp["named_data_tensors"] < 0.4 * weights
    tensors = fp["named_data_tensors"] + fp.get("named_data_scales", 0) + fp.get("program_constants", 0)
    assert tensor_data_bytes(fp) == tensors  # the graph and the container are not tensor data


def test_tflite_footprint_counts_shared_vectors_once(tmp_path: Path) -> None:
    require_module("litert_torch")
    _, fp = _export("tflite", 8, 8, tmp_path)
    assert fp["buffers_int8"] > 0.2 * _weight_bytes(_wide())
    assert fp["quantization_scales"] > 0
    # every per-channel tensor has its own zero-point vector of zeros; compaction stores each length once
    assert fp["quantization_zero_points"] < fp["quantization_scales"]
    tensors = sum(v for k, v in fp.items() if k.startswith(("buffers_", "quantization_")))
    assert tensor_data_bytes(fp) == tensors


def test_coreml_footprint(tmp_path: Path) -> None:
    require_module("coremltools")
    _, fp = _export("coreml", 8, None, tmp_path)
    assert fp["weights"] > 0 and fp["program"] > 0
    assert fp["weights"] < 0.4 * _weight_bytes(_wide())
    # tensors under the int8 threshold stay inline in the program, in fp16
    assert fp["program_constants"] > 0
    assert tensor_data_bytes(fp) == fp["weights"] + fp["program_constants"]


def test_inline_tensor_bytes_of_a_mil_program() -> None:
    """The program's inline tensor payloads are counted by dtype width; names and blob references are not."""
    ct = require_module("coremltools")
    import numpy as np
    from coremltools.converters.mil import Builder as mb

    from hrvit_mobile.exporters.footprint import _mil_inline_tensor_bytes

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8))], opset_version=ct.target.iOS17)
    def prog(x):
        y = mb.add(x=x, y=np.arange(8, dtype=np.float32).reshape(1, 8))  # 8 fp32 values inline
        return mb.mul(x=y, y=np.float32(2.0))  # one more

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                       compute_precision=ct.precision.FLOAT32, skip_model_load=True)
    assert _mil_inline_tensor_bytes(model.get_spec().mlProgram) == 9 * 4


def test_unknown_artifact_kind(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\0")
    known = re.escape("no footprint reader for model.onnx; known: .pte, .tflite, .mlpackage")
    with pytest.raises(FootprintError, match=known):
        artifact_footprint(path)
