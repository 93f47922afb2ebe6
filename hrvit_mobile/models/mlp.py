"""Feed-forward layers of HRViT: MixConv2d, MixCFN and the diversity-enhanced shortcut (DES).

Parameter names and shapes follow the official implementation
(facebookresearch/HRViT, ``segmentation/mmseg/models/backbones/hrvit.py``) so that official
checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hrvit_mobile.models.layout import image_to_tokens, tokens_to_image


class MixConv2d(nn.Module):
    """Depthwise conv whose first channel half uses ``kernel_size`` and second half ``kernel_size + 2``."""

    def __init__(self, channels: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        half = channels // 2
        self.conv_3 = nn.Conv2d(
            half, half, kernel_size, padding=kernel_size // 2, groups=half, bias=bias
        )
        rest = channels - half
        self.conv_5 = nn.Conv2d(
            rest, rest, kernel_size + 2, padding=kernel_size // 2 + 1, groups=rest, bias=bias
        )

    def forward(self, x: Tensor) -> Tensor:
        x3, x5 = x.chunk(2, dim=1)
        return torch.cat([self.conv_3(x3), self.conv_5(x5)], dim=1)


class MixCFN(nn.Module):
    """Mixed-scale convolutional FFN: fc1 -> MixConv (3x3 | 5x5 depthwise) -> GELU -> fc2."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.conv = MixConv2d(hidden_features, kernel_size=3)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = self.fc1(x)
        x = self.act(self.conv(tokens_to_image(x, height, width)))
        return self.fc2(image_to_tokens(x))


def des_factors(features: int) -> tuple[int, int]:
    """Split ``features`` as the official DES does: (k, p) with p = 2**ceil(e/2), e = floor(log2 n)."""
    if features % 2:
        raise ValueError(f"DES needs an even feature dimension, got {features}")
    exponent = int(math.log2(features))
    p = 2 ** (exponent - exponent // 2)
    return features // p, p


class DES(nn.Module):
    """Diversity-enhanced shortcut: a Kronecker-factored linear map with a GELU between the factors.

    The token's channels are viewed as a (k, p) matrix; ``proj_right`` mixes along p and
    ``proj_left`` along k. This is the official module, including its factorisation rule.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        _, self.p = des_factors(min(in_features, out_features))
        self.k_in = in_features // self.p
        self.k_out = out_features // self.p
        self.proj_right = nn.Linear(self.p, self.p, bias=bias)
        self.act = nn.GELU()
        self.proj_left = nn.Linear(self.k_in, self.k_out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x = x.reshape(*lead, self.k_in, self.p)
        x = self.act(self.proj_right(x).transpose(-1, -2))
        return self.proj_left(x).transpose(-1, -2).flatten(-2, -1)
