"""Wrong artifacts that still load: ``validate`` fails a .pte and a .tflite whose weights were rewritten
in the file, naming the metric (the Core ML cases are in test_coreml_eval.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _artifact_edits import with_tensor_replaced
from conftest import require_module

from hrvit_mobile.exporters import ExportSpec, export, open_artifact, validate
from hrvit_mobile.exporters.parity import synthetic_images
from hrvit_mobile.exporters.testing import TinySegmenter

SIZE = (64, 64)
RUNTIMES = {"executorch": "executorch.runtime", "tflite": "ai_edge_litert.interpreter"}


@pytest.fixture(scope="module")
def model() -> TinySegmenter:
    return TinySegmenter(num_classes=5)


@pytest.fixture(scope="module", params=sorted(RUNTIMES))
def fp32_artifact(request: pytest.FixtureRequest, model: TinySegmenter,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module(RUNTIMES[request.param])
    out = tmp_path_factory.mktemp(f"fp32-{request.param}")
    spec = ExportSpec(target=request.param, img_size=SIZE, num_classes=5, out_dir=out)
    return export(model, spec).artifact.path


def test_wrong_weights_that_still_load_fail_parity(model: TinySegmenter, fp32_artifact: Path,
                                                   tmp_path: Path) -> None:
    """The classifier weights negated: the file loads and runs, and ``validate`` fails it by metric."""
    assert validate(fp32_artifact, model).passed is True
    weight = model.head.weight.detach().numpy()
    bad = with_tensor_replaced(fp32_artifact, weight, -weight, tmp_path)
    logits = open_artifact(bad).predict(synthetic_images(1, SIZE, seed=7))[0]  # still a valid model
    assert np.isfinite(logits).all()
    res = validate(bad, model)
    assert res.ran and res.passed is False, res
    assert "cosine" in res.reason and "argmax agreement" in res.reason and res.cosine < 0


def test_a_small_bias_shift_fails_on_max_abs_err_alone(model: TinySegmenter, fp32_artifact: Path,
                                                       tmp_path: Path) -> None:
    """Every class's bias moved by 0.003 moves every logit by 0.003 and no argmax: the fp32 limit (1e-3)
    catches it, and it is the only check that does."""
    bias = model.head.bias.detach().numpy()
    shifted = bias + np.float32(0.003)
    res = validate(with_tensor_replaced(fp32_artifact, bias, shifted, tmp_path), model)
    assert res.passed is False and res.reason.startswith("max_abs_err") and ";" not in res.reason, res.reason
    assert res.max_abs_err == pytest.approx(0.003, abs=1e-4) and res.argmax_agreement == 1.0
