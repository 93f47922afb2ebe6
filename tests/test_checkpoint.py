"""Loading official/mmseg-style checkpoints, and clear refusals of bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hrvit_mobile
from hrvit_mobile import CheckpointError


class Payload:
    """Stands for any object a malicious pickle could smuggle in."""


def _fresh(num_classes: int = 7) -> hrvit_mobile.HRViTSegmentor:
    return hrvit_mobile.create_model("hrvit_nano", num_classes=num_classes, img_size=(64, 96)).eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"meta": {"mmseg_version": "0.20.2", "iter": 160000}, "state_dict": sd},
        lambda sd: {"model": sd, "epoch": 3},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["bare", "mmseg", "model-key", "ddp-prefix"],
)
def test_loads_official_layouts(nano_model, tmp_path: Path, wrap) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(nano_model.state_dict()), path)
    model = hrvit_mobile.load_checkpoint(_fresh(), path)
    assert _same_weights(model, nano_model)


def test_loads_fp16_safetensors(nano_model, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in nano_model.state_dict().items()}
    save_file(state, str(path))
    model = hrvit_mobile.load_checkpoint(_fresh(), path)
    w = model.decode_head.conv_seg.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, nano_model.decode_head.conv_seg.weight.half().float())


def test_corrupt_file_gives_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        hrvit_mobile.load_checkpoint(_fresh(), path)
    assert "cannot read checkpoint" in str(info.value) and "\n" not in str(info.value)
    assert "weights_only" not in str(info.value)
    # a file torch's weights-only unpickler refuses: its advice to retry with weights_only=False is not
    # passed on, its reason is
    path.write_bytes(b"garbage\n")
    refused = r"not a readable weights-only pickle \(Unsupported operand"
    with pytest.raises(CheckpointError, match=refused) as info:
        hrvit_mobile.load_checkpoint(_fresh(), path)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_pickled_module_says_to_save_the_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    expected = r"pickles Python objects.*save model.state_dict\(\) instead"
    with pytest.raises(CheckpointError, match=expected) as info:
        hrvit_mobile.load_checkpoint(_fresh(), path)
    assert "\n" not in str(info.value) and "torch.nn.modules.linear.Linear" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        hrvit_mobile.load_checkpoint(_fresh(), tmp_path / "nope.pth")


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint carrying code objects is not unpickled."""
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "hook": Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        hrvit_mobile.load_checkpoint(_fresh(), path)


def test_mismatched_variant_names_keys_and_variant(tmp_path: Path) -> None:
    path = tmp_path / "b1.pth"
    torch.save({"state_dict": hrvit_mobile.create_model("hrvit_b1").state_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        hrvit_mobile.load_checkpoint(hrvit_mobile.create_model("hrvit_b2"), path)
    message = str(info.value)
    assert "does not fit hrvit_b2" in message and "looks like hrvit_b1" in message
    assert "shape mismatches" in message


def test_missing_and_unexpected_keys_are_listed(nano_model, tmp_path: Path) -> None:
    state = dict(nano_model.state_dict())
    state.pop("decode_head.conv_seg.bias")
    state["backbone.extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        hrvit_mobile.load_checkpoint(_fresh(), path)
    message = str(info.value)
    assert "missing keys: decode_head.conv_seg.bias" in message
    assert "unexpected keys: backbone.extra.weight" in message
    # non-strict loading takes what fits
    model = hrvit_mobile.load_checkpoint(_fresh(), path, strict=False)
    assert torch.equal(model.decode_head.conv_seg.weight, nano_model.decode_head.conv_seg.weight)


def test_class_count_mismatch_says_what_to_do(nano_model, tmp_path: Path) -> None:
    path = tmp_path / "c7.pth"
    torch.save(nano_model.state_dict(), path)
    expected = "has 7 classes, the model 19; create the model with num_classes=7"
    with pytest.raises(CheckpointError, match=expected):
        hrvit_mobile.load_checkpoint(_fresh(num_classes=19), path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_non_finite_weights_are_refused_naming_count_and_first_key(nano_model, tmp_path: Path, bad,
                                                                  suffix) -> None:
    state = {k: v.clone() for k, v in nano_model.state_dict().items()}
    state["backbone.stem.conv1.weight"][0] = bad
    state["decode_head.conv_seg.bias"][:] = bad
    path = tmp_path / f"diverged{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as info:
        hrvit_mobile.load_checkpoint(_fresh(), path)
    message = str(info.value)
    assert f"NaN/inf weights in 2 of {len(state)} tensors (first: backbone.stem.conv1.weight)" in message
    assert "\n" not in message


def test_finite_check_skips_integer_buffers(nano_model, tmp_path: Path) -> None:
    state = dict(nano_model.state_dict())
    state["backbone.extra.num_batches_tracked"] = torch.tensor(3)
    path = tmp_path / "ints.pth"
    torch.save(state, path)
    model = hrvit_mobile.load_checkpoint(_fresh(), path, strict=False)
    assert _same_weights(model, nano_model)
