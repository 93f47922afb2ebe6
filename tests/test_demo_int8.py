"""Static int8 of the shipped demo model (trained HRViT-b1) meets the default parity thresholds.

The model is the one ``hrvit-mobile export`` uses when no checkpoint is given, calibrated on the set the
CLI picks for it (the demo's train images), and compared with the float model on the synthetic val
split it was scored on: accuracy is claimed for a trained model on its own kind of images, at the
thresholds a user gets. Untrained weights (the nano export tests) only show that int8 lowers and runs.
At 128x128 to stay a few minutes per target: lowering time follows the graph, not the resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_module

import hrvit_mobile
from hrvit_mobile.data import generate_sample
from hrvit_mobile.data.calibration import default_calibration
from hrvit_mobile.demo import load_demo_model
from hrvit_mobile.exporters import ExportSpec, export
from hrvit_mobile.exporters.parity import DEFAULT_THRESHOLDS

SIZE = (128, 128)
CALIB_SAMPLES = 8


@pytest.fixture(scope="module")
def demo_deployed() -> torch.nn.Module:
    return hrvit_mobile.deploy(load_demo_model(SIZE).eval(), img_size=SIZE)


# each target on a worker of its own in the default run: minutes apiece
@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize(
    ("target", "module"),
    [pytest.param("executorch", "executorch", marks=pytest.mark.xdist_group("demo_int8_executorch")),
     pytest.param("tflite", "ai_edge_litert", marks=pytest.mark.xdist_group("demo_int8_tflite"))],
)
def test_demo_model_int8_meets_the_default_thresholds(
    demo_deployed, tmp_path: Path, target: str, module: str
) -> None:
    require_module(module)
    calib, source = default_calibration(None, CALIB_SAMPLES, SIZE, demo_model=True)
    val = np.stack([generate_sample(0, "val", i, SIZE)[0] for i in range(4)])
    spec = ExportSpec(target=target, bits=8, activations="int8", img_size=SIZE, num_classes=8,
                      out_dir=tmp_path, model_name="hrvit_b1", calib_source=source)
    report = export(demo_deployed, spec, calib, images=val)
    parity = report.parity
    assert parity.thresholds == DEFAULT_THRESHOLDS[(8, "int8")]  # nothing loosened
    assert parity.ran and parity.samples == 4 and report.ok, report.summary()
