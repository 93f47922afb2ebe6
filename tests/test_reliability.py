"""Bad and hostile input through the CLI: one line naming what is wrong, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hrvit_mobile
from hrvit_mobile.cli import main
from hrvit_mobile.quant.qat import FORMAT as QAT_FORMAT

NANO = ["--model", "hrvit_nano", "--img-size", "64x64", "--num-classes", "7"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of ``hrvit-mobile argv`` run in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def assert_refused(code: int, lines: list[str], *fragments: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("hrvit-mobile: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------------------------------
# checkpoints


def _diverged_state() -> dict[str, torch.Tensor]:
    model = hrvit_mobile.create_model("hrvit_nano", num_classes=7, img_size=(64, 64))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["backbone.stem.conv1.weight"][0, 0, 0, 0] = float("nan")
    state["decode_head.conv_seg.weight"][1] = float("inf")
    return state


def test_export_refuses_a_checkpoint_with_nan_weights(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "diverged.pth"
    torch.save({"state_dict": _diverged_state()}, ckpt)
    out = tmp_path / "exports"
    code, lines = run_cli(capsys, "export", "--target", "executorch", *NANO, "--checkpoint", ckpt,
                          "--out", out)
    assert_refused(code, lines, "NaN/inf weights in 2 of", "first: backbone.stem.conv1.weight")
    assert files_under(out) == []


def test_export_refuses_a_qat_checkpoint_with_nan_weights(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "last.pt"
    weights = {"conv.weight": torch.ones(2), "conv.bias": torch.tensor([0.0, float("nan")])}
    torch.save({"format": QAT_FORMAT, "config": {"target": "executorch"}, "step": 3, "model": weights}, ckpt)
    out = tmp_path / "exports"
    code, lines = run_cli(capsys, "export", "--target", "executorch", "--bits", "8", "--checkpoint", ckpt,
                          "--out", out)
    assert_refused(code, lines, "NaN/inf weights in 1 of 2 tensors (first: conv.bias)")
    assert files_under(out) == []
