"""SegFormer's all-MLP decode head as HRViT configures it (mmseg ``SegformerHead`` with
``mlp_norm=False, mlp_act=False``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvModule(nn.Module):
    """conv -> optional BN -> optional ReLU, with mmcv's ``ConvModule`` parameter names."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool, act: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else None
        self.activate = nn.ReLU() if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


class SegformerHead(nn.Module):
    """Per-branch 1x1 convs, bilinear resize to the 1/4 map, concat, 1x1 fusion conv+BN+ReLU,
    dropout, 1x1 classifier."""

    def __init__(
        self, in_channels: Sequence[int], channels: int, num_classes: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(ConvModule(c, channels, norm=False, act=False) for c in in_channels)
        self.fusion_conv = ConvModule(channels * len(in_channels), channels, norm=True, act=True)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        size = feats[0].shape[-2:]
        outs = [
            F.interpolate(conv(x), size=size, mode="bilinear", align_corners=False)
            for conv, x in zip(self.convs, feats)
        ]
        out = self.fusion_conv(torch.cat(outs, dim=1))
        return self.conv_seg(self.dropout(out))
