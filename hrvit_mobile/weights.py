"""The weights a model gets: a checkpoint, the embedded demo checkpoint, or the recipe's.

:func:`create_model_with_weights` is the one place that decides what a command runs when no checkpoint
is given. The recipe (:func:`load_recipe_weights`) gives deterministic, non-degenerate weights for any
HRViT layout; it is the recipe under which the official implementation's golden outputs were produced
(``tests/data``; see shared/reference/README.md), so it serves twice: the faithfulness tests load it,
and it is the embedded default of a variant without a demo checkpoint. Those weights are untrained:
figures measured with them are parity figures, not accuracy.
"""

from __future__ import annotations

import logging
import math
import zlib
from pathlib import Path

import torch
from torch import Tensor, nn

from hrvit_mobile.checkpoint import load_checkpoint
from hrvit_mobile.demo import demo_checkpoint_for
from hrvit_mobile.models import HRViTSegmentor, create_model

log = logging.getLogger("hrvit_mobile")


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


def create_model_with_weights(
    name: str,
    num_classes: int,
    img_size: tuple[int, int] | str | int,
    checkpoint: Path | str | None = None,
) -> tuple[HRViTSegmentor, str]:
    """The training form of ``name`` (eval mode) with the weights a command runs on, and where they came
    from: ``checkpoint`` when given; else the embedded demo checkpoint when it was trained for ``name``
    with ``num_classes`` classes; else the deterministic, untrained recipe weights (with a warning)."""
    model = create_model(name, num_classes=num_classes, img_size=img_size)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
        return model.eval(), str(checkpoint)
    demo = demo_checkpoint_for(name)
    if demo is not None and demo.num_classes == num_classes:
        load_checkpoint(model, demo.path)
        return model.eval(), f"the embedded demo checkpoint {demo.path.name}"
    log.warning("no checkpoint: %s gets the embedded default, deterministic untrained weights (parity "
                "figures are meaningful, predictions are not)", name)
    return load_recipe_weights(model).eval(), "deterministic untrained recipe weights"
