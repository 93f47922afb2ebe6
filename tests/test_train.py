"""Float training on hrvit_nano: the loss falls, checkpoints resume where they stopped, eval reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import class_map, imagenet_normalized, labelled_images, reference_miou

import hrvit_mobile
from hrvit_mobile.cli import main
from hrvit_mobile.data import write_synthetic
from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.train import TrainConfig, poly_lr, segmentation_loss, train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("synthetic"), train=4, val=2, size=(64, 64), seed=0)


def _config(data: Path, out: Path, steps: int) -> TrainConfig:
    # no random resize: the loss then measures learning, not which crop came up
    return TrainConfig(
        data=str(data), out=str(out), model="hrvit_nano", img_size=(64, 64), crop_size=(64, 64),
        ratio_range=(1.0, 1.0), steps=steps, batch_size=4, lr=2e-3, warmup_steps=0,
        eval_every=2, eval_samples=2, threads=1,
    )


def _val_miou(state: dict[str, torch.Tensor], data: Path) -> float:
    """mIoU of hrvit_nano with ``state`` on the val split, from the PNGs, computed by the test alone."""
    model = hrvit_mobile.create_model("hrvit_nano", num_classes=8, img_size=(64, 64))
    model.load_state_dict(state)
    model.eval()
    pairs = labelled_images(data / "val")
    with torch.no_grad():
        predictions = [class_map(model(imagenet_normalized(rgb)), labels.shape) for rgb, labels in pairs]
    return reference_miou(predictions, [labels for _, labels in pairs], 8)


def test_poly_lr_warmup_and_decay() -> None:
    assert poly_lr(0, 100, 1.0, warmup_steps=10) == pytest.approx(1e-6)
    assert poly_lr(5, 100, 1.0, warmup_steps=10) == pytest.approx(0.95 * 0.5, rel=1e-4)
    assert poly_lr(10, 100, 1.0, warmup_steps=10) == pytest.approx(0.9)
    assert poly_lr(100, 100, 1.0) == 0.0
    assert poly_lr(50, 100, 1.0, power=2.0, min_lr=0.1) == pytest.approx(0.1 + 0.9 * 0.25)


def test_segmentation_loss_upsamples_and_ignores() -> None:
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 1] = 10.0
    masks = torch.full((1, 8, 8), 255)
    masks[0, 0, 0] = 1
    assert segmentation_loss(logits, masks).item() < 1e-3  # only the one labelled pixel counts
    masks[0, 0, 1] = 0
    assert segmentation_loss(logits, masks).item() > 4.0


def test_train_loss_falls_and_resume_continues(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(_config(tiny_data, out, steps=3), progress=False)
    assert result.step == 3 and (out / "last.pt").is_file() and (out / "best.pt").is_file()
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history]
    assert losses[-1] < losses[0], losses
    # the val mIoU recorded at the last step is that of the weights saved with it, recomputed here
    last = torch.load(out / "last.pt", weights_only=True)
    assert history[-1]["val_miou"] == pytest.approx(_val_miou(last["model"], tiny_data), abs=1e-9)
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["val_miou"] == max(h["val_miou"] for h in history if "val_miou" in h)
    assert best["val_miou"] == pytest.approx(_val_miou(best["model"], tiny_data), abs=1e-9)

    resumed = train(_config(tiny_data, out, steps=5), resume=True, progress=False)
    assert resumed.step == 5
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 5
    assert [h["step"] for h in state["history"]] == [1, 2, 3, 4, 5]
    assert state["history"][:3] == history  # the first run's record is kept, not restarted
    with pytest.raises(HRViTMobileError, match="already at step 5"):
        train(_config(tiny_data, out, steps=5), resume=True, progress=False)


def test_train_resume_without_checkpoint_is_one_line(tiny_data: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", str(tiny_data), "--model", "hrvit_nano", "--img-size", "64x64",
                 "--crop", "64x64", "--steps", "2", "--out", str(tmp_path / "none"), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "no " in err and "last.pt to resume from" in err and err.count("\n") == 1


def test_cli_train_then_eval(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["train", "--data", str(tiny_data), "--model", "hrvit_nano", "--img-size", "64x64",
                 "--crop", "64x64", "--steps", "2", "--batch-size", "2", "--eval-every", "2",
                 "--threads", "1", "--out", str(out)]) == 0
    assert "trained to step 2" in capsys.readouterr().out
    assert main(["eval", "--data", str(tiny_data), "--model", "hrvit_nano", "--checkpoint",
                 str(out / "best.pt"), "--img-size", "64x64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 2 and len(report["classes"]) == 8
    best = torch.load(out / "best.pt", weights_only=True)
    assert report["miou"] == pytest.approx(_val_miou(best["model"], tiny_data), abs=1e-9)
    assert report["runtime"] == "PyTorch (float)"


def test_ctrl_c_saves_the_last_step_and_resume_is_bit_identical(tiny_data: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while step 4's batch loads: last.pt holds step 3 (saved on the way out, not by the
    periodic save), and --resume ends with the bytes of a run that never stopped (random resize,
    crop, flip and colour on every sample)."""
    import hrvit_mobile.training as training

    def config(out: Path) -> TrainConfig:
        return TrainConfig(data=str(tiny_data), out=str(out), model="hrvit_nano", img_size=(64, 64),
                           crop_size=(32, 32), steps=6, batch_size=2, warmup_steps=1, eval_every=5,
                           eval_samples=1, threads=1)

    train(config(tmp_path / "whole"), progress=False)
    load = training._StepSamples.__getitem__

    def interrupted(self, sample: int):
        if sample == 3 * 2:  # the first sample of the fourth step (0-based step 3)
            raise KeyboardInterrupt
        return load(self, sample)

    monkeypatch.setattr(training._StepSamples, "__getitem__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "stopped"), progress=False)
    assert torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(training._StepSamples, "__getitem__", load)
    train(config(tmp_path / "stopped"), resume=True, progress=False)
    a = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    assert [k for k in b["model"] if not torch.equal(a["model"][k], b["model"][k])] == []
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
