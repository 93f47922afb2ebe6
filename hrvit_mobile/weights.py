"""Deterministic, non-degenerate weights for any HRViT layout.

This is the weight recipe under which the official implementation's golden outputs were produced
(``tests/data``; see shared/reference/README.md), so it serves twice: the faithfulness tests load
it, and the CLI uses it as the embedded default when no checkpoint is given. The weights are
untrained: figures measured with them are parity figures, not accuracy.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import Tensor, nn


def recipe_tensor(key: str, shape: tuple[int, ...]) -> Tensor:
    """The tensor the recipe assigns to ``key``; seeded by the key's CRC32."""
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
    if len(shape) == 1:  # norm scales
        return 1 + 0.1 * torch.randn(shape, generator=generator)
    return torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))


def recipe_state_dict(layout: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """``{key: shape}`` -> the recipe's state_dict."""
    return {key: recipe_tensor(key, shape) for key, shape in layout.items()}


@torch.no_grad()
def load_recipe_weights(model: nn.Module) -> nn.Module:
    """Fill ``model`` (any layout) with the recipe's weights in place and return it."""
    layout = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(recipe_state_dict(layout))
    return model
