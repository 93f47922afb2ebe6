"""Conversions between the two tensor layouts HRViT uses: tokens (B, N, C) and images (B, C, H, W)."""

from __future__ import annotations

from torch import Tensor


def tokens_to_image(x: Tensor, height: int, width: int) -> Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


def image_to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)
