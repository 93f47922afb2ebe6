"""The shipped demo checkpoint: loads into hrvit_b1 with the 8 synthetic classes, and is the CLI default."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hrvit_mobile.cli import _build_model, _calibration, _default_classes, main
from hrvit_mobile.data import SYNTHETIC_CLASSES, generate_sample, normalize_image
from hrvit_mobile.demo import DEMO_INFO, DEMO_WEIGHTS, demo_checkpoint, load_demo_model
from hrvit_mobile.metrics import ConfusionMatrix, upsample_class_map


def test_demo_checkpoint_is_shipped_small_and_fp16() -> None:
    assert DEMO_WEIGHTS.is_file() and DEMO_WEIGHTS.stat().st_size <= 20 * 2**20
    with safe_open(str(DEMO_WEIGHTS), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in dtypes and "F32" not in dtypes
    info = json.loads(DEMO_INFO.read_text())
    assert info["model"] == "hrvit_b1" and info["classes"] == list(SYNTHETIC_CLASSES)
    assert isinstance(info["val_miou"], float) and 0.0 < info["val_miou"] <= 1.0
    assert "hrvit-mobile train" in info["train_command"] and info["steps"] > 0


def test_demo_loads_into_b1_in_fp32() -> None:
    model = load_demo_model((128, 128))
    assert model.name == "hrvit_b1" and model.num_classes == 8
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert demo_checkpoint().num_classes == 8


def test_demo_predicts_the_synthetic_shapes(torch_threads) -> None:
    torch_threads(1)
    model = load_demo_model((512, 512)).eval()
    cm = ConfusionMatrix(8)
    with torch.no_grad():
        for i in range(2):  # held-out images, at the size the checkpoint was scored at
            rgb, mask = generate_sample(0, "val", i, (512, 512))
            logits = model(normalize_image(rgb)[None]).numpy()
            cm.update(upsample_class_map(logits, mask.shape), mask[None].astype("int64"))
    # a random-weight b1 scores ~0.02 here; the shipped one must actually segment
    assert cm.miou() > 0.4, cm.iou()


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"model": "hrvit_b1", "checkpoint": None, "num_classes": None, **kw})


def test_cli_default_is_the_demo_for_b1_only() -> None:
    args = _args()
    assert _default_classes(args) == list(SYNTHETIC_CLASSES) and args.num_classes == 8
    model = _build_model(args, (64, 64))
    assert model.num_classes == 8
    demo = load_demo_model((64, 64))
    assert torch.equal(model.state_dict()["decode_head.conv_seg.weight"],
                       demo.state_dict()["decode_head.conv_seg.weight"])
    nano = _args(model="hrvit_nano")
    assert _default_classes(nano) is None and nano.num_classes == 150
    ade = _args(num_classes=150)  # asking for other classes: the recipe weights, as before
    assert _default_classes(ade) is None and _build_model(ade, (64, 64)).num_classes == 150


def test_demo_model_calibrates_on_its_own_train_images(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from hrvit_mobile.data.calibration import DEMO_CALIBRATION

    args = _args(calib=None, calib_samples=3)
    calib, source = _calibration(args, (64, 96), demo_model=True)
    assert calib.shape == (3, 64, 96, 3) and calib.dtype == np.uint8 and source == DEMO_CALIBRATION
    assert np.array_equal(calib[2], generate_sample(0, "train", 2, (64, 96))[0])
    assert _calibration(args, (64, 96), demo_model=False) == (None, None)  # the exporter's fallback
    Image.fromarray(np.full((64, 96, 3), 7, np.uint8)).save(tmp_path / "a.png")
    own, source = _calibration(_args(calib=str(tmp_path), calib_samples=3), (64, 96), demo_model=True)
    assert own.shape == (1, 64, 96, 3) and int(own.max()) == 7  # --calib wins
    assert source == f"1 images of {tmp_path.resolve()}"


def test_cli_eval_defaults_to_the_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synthetic", "--out", str(tmp_path), "--train", "0", "--val", "1",
                 "--img-size", "64x64"]) == 0
    capsys.readouterr()
    assert main(["eval", "--data", str(tmp_path), "--img-size", "64x64", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("runtime: PyTorch (float)\nmIoU ") and "stripes" in out
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (tmp_path / "val" / "images" / "000000.png").rename(other / "images" / "000000.png")
    (tmp_path / "val" / "masks").rename(other / "masks")
    (other / "classes.txt").write_text("a\nb\nc\nd\ne\nf\ng\nh\ni\n")
    assert main(["eval", "--data", str(other), "--img-size", "64x64"]) == 2
    assert "predicts 8 classes" in capsys.readouterr().err


def test_qat_starts_from_the_demo_checkpoint_by_default() -> None:
    from hrvit_mobile.quant.qat import QATConfig, _float_model

    model = _float_model(QATConfig(data="unused", model="hrvit_b1", img_size=(64, 64)), num_classes=8)
    demo = load_demo_model((64, 64))
    key = "decode_head.conv_seg.weight"
    assert torch.equal(model.state_dict()[key], demo.state_dict()[key])
