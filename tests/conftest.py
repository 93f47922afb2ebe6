"""Shared fixtures: the reference data of the official implementation and its weight recipe."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import hrvit_mobile

DATA = Path(__file__).parent / "data"


def recipe_tensor(key: str, shape: list[int]) -> torch.Tensor:
    """The reference weight recipe (shared/reference/README.md), implemented independently."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    shape = tuple(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=generator)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=generator)
    if key.endswith("bias"):
        return 0.05 * torch.randn(shape, generator=generator)
    if len(shape) == 1:
        return 1 + 0.1 * torch.randn(shape, generator=generator)
    return torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))


def recipe_state_dict(layout: dict[str, list]) -> dict[str, torch.Tensor]:
    return {key: recipe_tensor(key, shape) for key, (shape, _dtype) in layout.items()}


def load_manifest(variant: str) -> dict[str, list]:
    return json.loads((DATA / f"hrvit_{variant}_segformer_ade20k.keys.json").read_text())


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    with np.load(DATA / "hrvit_b1_segformer_golden.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def b1_reference() -> hrvit_mobile.HRViTSegmentor:
    """HRViT-b1 with the reference recipe's weights, eval mode (do not modify in tests)."""
    model = hrvit_mobile.create_model("hrvit_b1").eval()
    model.load_state_dict(recipe_state_dict(load_manifest("b1")))
    return model


@pytest.fixture(scope="session")
def nano_model() -> hrvit_mobile.HRViTSegmentor:
    """The tiny test configuration with non-degenerate weights (the recipe over its own layout)."""
    torch.manual_seed(0)
    model = hrvit_mobile.create_model("hrvit_nano", num_classes=7, img_size=(64, 96)).eval()
    layout = {k: [list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()}
    model.load_state_dict(recipe_state_dict(layout))
    return model
