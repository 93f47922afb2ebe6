"""The HRViT backbone (training form) and its variant configurations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from hrvit_mobile.models.attention import HRViTAttention
from hrvit_mobile.models.layout import tokens_to_image
from hrvit_mobile.models.mlp import DES, MixCFN
from hrvit_mobile.models.multiscale import HRViTFusionBlock, HRViTPatchEmbed, HRViTStem


@dataclass(frozen=True)
class HRViTConfig:
    """Architecture of one HRViT variant, in the official constructor's terms.

    ``channel_list[s]`` / ``block_list[s]`` give the branch widths and blocks per branch of stage s.
    """

    channel_list: tuple[tuple[int, ...], ...]
    block_list: tuple[tuple[int, ...], ...]
    dim_head: int
    mlp_ratio_list: tuple[int, ...]
    stem_channels: int = 64
    ws_list: tuple[int, ...] = (1, 2, 7, 7)
    head_channels: int = 256

    @property
    def out_channels(self) -> tuple[int, ...]:
        return self.channel_list[-1]


class HRViTBlock(nn.Module):
    """LN -> stripe attention, plus the DES shortcut and the identity; then LN -> MixCFN."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, stripe_width: int, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = HRViTAttention(dim, dim, heads, stripe_width)
        self.des = DES(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = MixCFN(dim, int(dim * mlp_ratio), dim)
        self.drop_path = drop_path

    def _drop_path(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_path == 0.0:
            return x
        keep = 1.0 - self.drop_path
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = x + self._drop_path(self.attn(self.attn_norm(x), height, width) + self.des(x))
        return x + self._drop_path(self.ffn(self.ffn_norm(x), height, width))


class HRViTStage(nn.Module):
    """Per-branch patch embedding, the branch's HRViT blocks, and a closing LayerNorm."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        block_list: Sequence[int],
        dim_head: int,
        ws_list: Sequence[int],
        mlp_ratio_list: Sequence[int],
        drop_path_rates: Sequence[float],
    ) -> None:
        super().__init__()
        self.patch_embed = nn.ModuleList(
            HRViTPatchEmbed(inc, outc) for inc, outc in zip(in_channels, out_channels)
        )
        self.branches = nn.ModuleList(
            nn.ModuleList(
                HRViTBlock(
                    dim=out_channels[i],
                    heads=out_channels[i] // dim_head,
                    mlp_ratio=mlp_ratio_list[i],
                    stripe_width=ws_list[i],
                    drop_path=drop_path_rates[j],
                )
                for j in range(n_blocks)
            )
            for i, n_blocks in enumerate(block_list[: len(out_channels)])
        )
        self.norm = nn.ModuleList(nn.LayerNorm(c) for c in out_channels)

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        outs = []
        for x, embed, blocks, norm in zip(xs, self.patch_embed, self.branches, self.norm):
            height, width = x.shape[-2:]
            t = embed(x)
            for block in blocks:
                t = block(t, height, width)
            outs.append(tokens_to_image(norm(t), height, width).contiguous())
        return outs


class HRViT(nn.Module):
    """HRViT backbone: stem, then (fusion, stage) pairs; returns the 1/4..1/32 feature maps."""

    def __init__(self, config: HRViTConfig, in_channels: int = 3, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.stem = HRViTStem(in_channels, config.stem_channels)
        total_blocks = sum(max(b) for b in config.block_list)
        # stochastic depth grows linearly over the blocks of the deepest branch, as in the official code
        rates = [drop_path_rate * i / max(total_blocks - 1, 1) for i in range(total_blocks)]
        channel_list = [(config.stem_channels,), *config.channel_list]
        layers: list[nn.Module] = []
        cursor = 0
        for s, blocks in enumerate(config.block_list):
            inc, outc = channel_list[s], channel_list[s + 1]
            # a stage that adds a branch first fuses the inputs into len(inc) + 1 maps
            fused = tuple(inc) if len(inc) == len(outc) else (*inc, outc[-1])
            depth = max(blocks)
            layers.append(HRViTFusionBlock(inc, fused))
            layers.append(
                HRViTStage(
                    fused, outc, blocks, config.dim_head, config.ws_list, config.mlp_ratio_list,
                    rates[cursor : cursor + depth],
                )
            )
            cursor += depth
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats: list[Tensor] = [self.stem(x)]
        for layer in self.features:
            feats = layer(feats)
        return feats
