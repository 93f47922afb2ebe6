"""Exports shared by test_bundle.py and test_predict.py: a TinySegmenter with 150 classes at 512x512
(the default bundle's contract) for ExecuTorch, LiteRT and Core ML, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import has_module

from hrvit_mobile.exporters import ExportSpec, export
from hrvit_mobile.exporters.testing import TinySegmenter

SIZE = (512, 512)
NUM_CLASSES = 150
_CACHE: dict[str, Path] = {}


def tiny_model() -> TinySegmenter:
    return TinySegmenter(num_classes=NUM_CLASSES).eval()


def export_tiny(target: str, out_dir: Path, run_parity: bool = True) -> Path:
    spec = ExportSpec(target=target, bits=32, img_size=SIZE, num_classes=NUM_CLASSES, out_dir=out_dir,
                      model_name="tiny", run_parity=run_parity)
    return export(tiny_model(), spec).artifact.path


@pytest.fixture(scope="session", name="tiny_artifacts")
def tiny_artifacts_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{target: artifact path}; targets whose runtime package is missing are left out (outside CI)."""
    if not _CACHE:
        out = tmp_path_factory.mktemp("tiny-artifacts")
        runtimes = (("executorch", "executorch"), ("tflite", "ai_edge_litert"), ("coreml", "coremltools"))
        for target, module in runtimes:
            if not has_module(module):
                continue
            _CACHE[target] = export_tiny(target, out)
    return dict(_CACHE)
