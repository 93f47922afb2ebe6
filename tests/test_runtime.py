"""open_artifact: every runtime available here loads an artifact from its sidecar and reproduces parity."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_module

from hrvit_mobile.exporters import ExportError, ExportSpec, export, open_artifact
from hrvit_mobile.exporters.parity import synthetic_images
from hrvit_mobile.exporters.testing import TinySegmenter
from hrvit_mobile.normalization import Normalization

SIZE = (64, 64)


@pytest.fixture(scope="module")
def model() -> TinySegmenter:
    return TinySegmenter(num_classes=5).eval()


@pytest.mark.parametrize(("target", "module"), [("tflite", "ai_edge_litert"), ("executorch", "executorch")])
def test_runner_matches_float_model(model, tmp_path: Path, target: str, module: str) -> None:
    require_module(module)
    spec = ExportSpec(
        target=target, bits=32, img_size=SIZE, num_classes=5, out_dir=tmp_path, run_parity=False
    )
    report = export(model, spec)
    runner = open_artifact(report.artifact.path)
    images = synthetic_images(2, SIZE, seed=3)
    outputs = runner.predict(images)
    norm = Normalization()
    with torch.no_grad():
        refs = [model(torch.from_numpy(norm.apply(images[i : i + 1]))).numpy() for i in range(2)]
    for out, ref in zip(outputs, refs):
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() < 1e-4
    lat = runner.latency(runs=3, warmup=1)
    assert lat["runs"] == 3 and 0 < lat["median_ms"] <= lat["p90_ms"]
    with pytest.raises(ExportError, match="64x64x3"):
        runner.predict(synthetic_images(1, (32, 32)))

    # without its sidecar an artifact is refused with one line
    lone = tmp_path / "lone" / report.artifact.path.name
    lone.parent.mkdir()
    shutil.copy(report.artifact.path, lone)
    with pytest.raises(ExportError, match="sidecar"):
        open_artifact(lone)


def test_missing_artifact(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not found"):
        open_artifact(tmp_path / "nope.pte")
