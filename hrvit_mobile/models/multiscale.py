"""Multi-resolution plumbing of HRViT: the conv stem, per-branch patch embedding and the
cross-resolution fusion block."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from hrvit_mobile.models.layout import image_to_tokens


class HRViTStem(nn.Module):
    """Two stride-2 3x3 convs with BN and ReLU: the image enters the network at 1/4 resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, mid, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(mid, out_channels, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(x)))


class HRViTPatchEmbed(nn.Module):
    """1x1 conv, 3x3 depthwise conv, LayerNorm over channels; returns tokens (B, H*W, C)."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, dim, kernel_size=1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim),
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(image_to_tokens(self.proj(x)))


def downsample_path(in_channels: int, out_channels: int, factor: int) -> nn.Sequential:
    """Strided depthwise conv + BN + 1x1 conv + BN, taking a branch down by ``factor``."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels, in_channels, kernel_size=factor + 1, stride=factor,
            padding=factor // 2, groups=in_channels, bias=False,
        ),
        nn.BatchNorm2d(in_channels),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
        nn.BatchNorm2d(out_channels),
    )


def upsample_path(in_channels: int, out_channels: int, factor: int) -> nn.Sequential:
    """1x1 conv + BN at the low resolution, then nearest upsampling by ``factor``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
        nn.BatchNorm2d(out_channels),
        nn.Upsample(scale_factor=factor, mode="nearest"),
    )


class HRViTFusionBlock(nn.Module):
    """Cross-resolution fusion: every output branch sums all input branches brought to its scale,
    then applies GELU. ``blocks[i][j]`` maps input j to output i."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for i, out_ch in enumerate(out_channels):
            row = nn.ModuleList()
            for j, in_ch in enumerate(in_channels):
                if j == i:
                    row.append(nn.Identity())
                elif j < i:
                    row.append(downsample_path(in_ch, out_ch, 2 ** (i - j)))
                else:
                    row.append(upsample_path(in_ch, out_ch, 2 ** (j - i)))
            self.blocks.append(row)
        self.act = nn.ModuleList(nn.GELU() for _ in out_channels)

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        outs = []
        for row, act in zip(self.blocks, self.act):
            total = None
            for x, path in zip(xs, row):
                y = path(x)
                total = y if total is None else total + y
            outs.append(act(total))
        return outs
