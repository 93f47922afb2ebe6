"""The deploy form's one layout decision, kept in one place.

Token maps flow through the transformer blocks channels-last as rank-4 (B, H, W, C) tensors, so
linears and LayerNorm act on the last dim with no reshapes; convolutions (patch embedding,
depthwise paths, fusion, head) take channels-first (B, C, H, W). These two permutes are the only
layout changes in the deploy graph.
"""

from __future__ import annotations

from torch import Tensor


def to_channels_first(x: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, C, H, W)."""
    return x.permute(0, 3, 1, 2)


def to_channels_last(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H, W, C)."""
    return x.permute(0, 2, 3, 1)
