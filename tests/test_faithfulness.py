"""The project's HRViT is the official network: same state_dict layout, same outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hrvit_mobile
from tests.conftest import load_manifest

EXPECTED_PARAMS = {"b1": 8_183_118, "b2": 20_809_782, "b3": 28_724_494}


@pytest.mark.parametrize("variant", ["b1", "b2", "b3"])
def test_state_dict_layout_equals_official_manifest(variant: str) -> None:
    model = hrvit_mobile.create_model(f"hrvit_{variant}")
    layout = {
        k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()
    }
    manifest = load_manifest(variant)
    assert sorted(layout) == sorted(manifest)
    assert layout == manifest
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[variant]


def test_b3_head_has_768_channels() -> None:
    model = hrvit_mobile.create_model("hrvit_b3")
    assert model.decode_head.conv_seg.in_channels == 768


@pytest.mark.parametrize("size", ["224x224", "256x256"])
def test_b1_reproduces_golden_logits(b1_reference, golden, size: str) -> None:
    with torch.no_grad():
        logits = b1_reference(torch.from_numpy(golden[f"input_{size}"])).numpy()
    expected = golden[f"logits_{size}"]
    assert logits.shape == expected.shape
    assert np.abs(logits - expected).max() <= 1e-4


@pytest.mark.parametrize("size", ["512x512", "384x640"])
def test_b1_reproduces_golden_samples_and_argmax(b1_reference, golden, size: str) -> None:
    with torch.no_grad():
        logits = b1_reference(torch.from_numpy(golden[f"input_{size}"])).numpy()
    sampled = logits.reshape(-1)[golden[f"logits_{size}_flat_index"]]
    assert np.abs(sampled - golden[f"logits_{size}_flat_value"]).max() <= 1e-4
    agreement = (logits[0].argmax(0) == golden[f"argmax_{size}"]).mean()
    assert agreement >= 0.9999


def test_golden_check_catches_a_wrong_weight(golden) -> None:
    """The comparison above is sensitive: one perturbed tensor breaks it."""
    from tests.conftest import recipe_state_dict

    model = hrvit_mobile.create_model("hrvit_b1").eval()
    state = recipe_state_dict(load_manifest("b1"))
    state["backbone.features.5.branches.2.3.attn.to_qkv.weight"] *= 1.01
    model.load_state_dict(state)
    with torch.no_grad():
        logits = model(torch.from_numpy(golden["input_224x224"])).numpy()
    assert np.abs(logits - golden["logits_224x224"]).max() > 1e-4
