"""A tiny stand-in segmenter for smoke-testing the exporters in seconds.

It has the operator mix that matters to the converters — strided convs, BatchNorm, LayerNorm, a
softmax attention, depthwise conv, GELU, bilinear upsampling — and the deploy form's contract:
normalized float32 (1, 3, H, W) in, (1, K, H/4, W/4) logits out. Not a real model: weights are random.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinySegmenter(nn.Module):
    def __init__(self, num_classes: int = 5, channels: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        c = channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, 2, 1)
        )
        self.down = nn.Conv2d(c, c, 3, 2, 1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.head = nn.Conv2d(c, num_classes, 1)
        # deterministic, non-degenerate weights (BN statistics included) without touching the global RNG
        with torch.no_grad():
            for name, p in self.named_parameters():
                r = torch.randn(p.shape, generator=g)
                if p.dim() > 1:
                    p.copy_(r / p[0].numel() ** 0.5)
                else:
                    p.copy_(0.05 * r if name.endswith("bias") else 1 + 0.1 * r)
            bn = self.stem[1]
            bn.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
        self.scale = c**-0.5
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # 1/4
        b, c, h, w = x.shape
        y = self.down(x)  # 1/8
        hh, ww = y.shape[-2:]
        t = y.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm(t)).chunk(3, dim=-1)
        a = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        t = t + self.proj(a @ v)
        y = t.transpose(1, 2).reshape(b, c, hh, ww)
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return self.head(F.gelu(x + y))
