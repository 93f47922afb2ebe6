"""The plain images/ + masks/ layout and evaluate() on a model with a known answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_module
from PIL import Image

from hrvit_mobile.data import DatasetError, open_dataset
from hrvit_mobile.evaluate import evaluate


def _write(root: Path, n: int = 3, size: tuple[int, int] = (40, 48), label_max: int = 2) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
        mask = np.zeros(size, np.uint8)
        mask[:, size[1] // 2 :] = label_max
        mask[0, 0] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")


def test_folder_dataset(tmp_path: Path) -> None:
    _write(tmp_path)
    ds = open_dataset(tmp_path, img_size=(32, 32), num_classes=3)
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and set(mask.unique().tolist()) <= {0, 2, 255}


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        open_dataset(tmp_path, num_classes=2)
    bad = tmp_path / "bad"
    _write(bad, label_max=5)
    with pytest.raises(DatasetError, match=r"outside 0\.\.2"):
        open_dataset(bad, num_classes=3)[0]
    broken = tmp_path / "broken"
    _write(broken)
    (broken / "masks" / "1.png").write_bytes(b"not a png")
    ds = open_dataset(broken, num_classes=3)
    with pytest.raises(DatasetError, match=r"1\.png is not a readable image"):
        ds[1]


def test_evaluate_known_answer(tmp_path: Path) -> None:
    _write(tmp_path, size=(32, 32))
    ds = open_dataset(tmp_path, num_classes=3)

    def left_zero_right_two(x: torch.Tensor) -> torch.Tensor:  # the masks exactly, at 1/4 resolution
        logits = torch.zeros(x.shape[0], 3, 8, 8)
        logits[:, 0, :, :4] = 1
        logits[:, 2, :, 4:] = 1
        return logits

    assert evaluate(left_zero_right_two, ds, 3).miou == pytest.approx(1.0)
    all_zero = evaluate(lambda x: torch.zeros(x.shape[0], 3, 8, 8), ds, 3, batch_size=2)
    # class 0 predicted everywhere: IoU(0) = 511/1023 (one ignored pixel), IoU(2) = 0, class 1 absent
    assert all_zero.miou == pytest.approx(511 / 1023 / 2) and all_zero.samples == 3


def test_evaluate_artifact_matches_the_float_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An fp32 artifact scored in its runtime gives the float model's mIoU on the same data."""
    require_module("ai_edge_litert")
    from hrvit_mobile.data.transforms import eval_transform
    from hrvit_mobile.evaluate import evaluate_artifact
    from hrvit_mobile.exporters import ExportSpec, export, open_artifact
    from hrvit_mobile.exporters.testing import TinySegmenter

    _write(tmp_path / "data", size=(40, 48))
    model = TinySegmenter(num_classes=3).eval()
    report = export(model, ExportSpec(target="tflite", img_size=(32, 32), num_classes=3,
                                      out_dir=tmp_path / "out", run_parity=False))
    transform = eval_transform((32, 32))
    ds = open_dataset(tmp_path / "data", num_classes=3, transform=transform)
    float_result = evaluate(model, ds, 3)
    artifact_result = evaluate_artifact(open_artifact(report.artifact.path), ds, 3, transform=transform)
    assert artifact_result.samples == 3
    assert artifact_result.miou == pytest.approx(float_result.miou, abs=1e-6)
    assert artifact_result.pixel_accuracy == pytest.approx(float_result.pixel_accuracy, abs=1e-6)
    # the CLI: stdout is one JSON document naming the runtime that produced the figure
    from hrvit_mobile.cli import main

    argv = ["eval", "--data", str(tmp_path / "data"), "--artifact", str(report.artifact.path), "--json",
            "--num-classes", "3"]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    printed = json.loads(out)
    assert printed["runtime"].startswith("ai_edge_litert") and printed["samples"] == 3
    assert printed["miou"] == pytest.approx(float_result.miou, abs=1e-6)
