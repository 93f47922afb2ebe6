"""Deploy-form modules: HRViT for one fixed input size, with folded norms and static shapes.

Each class has a ``from_training`` constructor that takes the training-form module (see
``hrvit_mobile.models``) and the static feature-map size it will see. Nothing in ``forward``
depends on tensor values or on shapes read at run time: every size, padding, split and mask is a
Python int or a buffer fixed here, and every intermediate tensor has rank <= 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrvit_mobile.deploy.fold import (
    NearestUpsample,
    bn_scale_shift,
    des_as_dense,
    fold_affine_into_linear,
    fold_bn_into_conv,
    fold_bn_into_linear,
    merge_mixconv,
)
from hrvit_mobile.deploy.layout import to_channels_first, to_channels_last
from hrvit_mobile.models.attention import (
    PADDED_KEY_LOGIT,
    HRViTAttention,
    MaskedSoftmax,
    padded_length,
    stripe_heads,
)
from hrvit_mobile.models.hrvit import HRViTBlock, HRViTStage
from hrvit_mobile.models.mlp import DES, MixCFN
from hrvit_mobile.models.multiscale import HRViTFusionBlock, HRViTPatchEmbed, HRViTStem
from hrvit_mobile.models.norm import DelegableLayerNorm
from hrvit_mobile.models.segformer_head import SegformerHead


class StripeAttention(nn.Module):
    """Attention inside stripes of one channel half, keys shared with values, static shapes.

    Horizontal stripes of ``stripe_width`` rows; a vertical instance runs on the transposed map.
    Stripes and heads are folded into the batch dim of one rank-3/4 batched matmul. When the map
    does not tile, q/v are zero-padded and a key-mask buffer gives the padded keys of the last
    stripe the official logit of -100 (padded query rows are cropped, so only keys need masking).
    """

    def __init__(
        self, channels: int, dim_head: int, stripe_width: int, height: int, width: int,
        horizontal: bool, batch_size: int = 1,
    ) -> None:
        super().__init__()
        self.heads, self.head_dim, _ = stripe_heads(channels, dim_head)
        self.horizontal = horizontal
        self.stripe_width, self.batch_size = stripe_width, batch_size
        rows, cols = (height, width) if horizontal else (width, height)
        self.rows, self.cols, self.channels = rows, cols, channels
        self.pad_rows = padded_length(rows, stripe_width) - rows
        self.stripes = batch_size * (rows + self.pad_rows) // stripe_width
        self.tokens = stripe_width * cols
        mask = None
        if self.pad_rows:
            mask = torch.zeros(self.stripes, 1, self.tokens)
            valid = (stripe_width - self.pad_rows) * cols
            per_image = self.stripes // batch_size
            mask[per_image - 1 :: per_image, :, valid:] = PADDED_KEY_LOGIT
            mask = mask.repeat_interleave(self.heads, dim=0)  # heads sit next to their stripe
        self.attend = MaskedSoftmax(mask)
        # zero rows appended by concatenation, not F.pad: XNNPACK refuses a quantized constant-pad
        # node, and a zero is exact in any int8 scale, so cat shares its input's qparams cleanly
        self.register_buffer(
            "pad_zeros",
            torch.zeros(batch_size, self.pad_rows, cols, channels) if self.pad_rows else None,
            persistent=False,
        )

    def _split(self, x: Tensor) -> Tensor:
        """(B, rows, cols, C) -> (stripes * heads, tokens, head_dim) for a rank-3 bmm."""
        if not self.horizontal:
            x = x.transpose(1, 2)
        if self.pad_zeros is not None:
            x = torch.cat([x, self.pad_zeros], dim=1)
        if self.heads == 1:
            return x.reshape(self.stripes, self.tokens, self.channels)
        x = x.reshape(self.stripes, self.tokens, self.heads, self.head_dim).transpose(1, 2)
        return x.reshape(self.stripes * self.heads, self.tokens, self.head_dim)

    def _merge(self, x: Tensor, batch: int) -> Tensor:
        if self.heads > 1:
            x = x.reshape(self.stripes, self.heads, self.tokens, self.head_dim).transpose(1, 2)
        x = x.reshape(batch, self.rows + self.pad_rows, self.cols, self.channels)
        if self.pad_rows:
            x = x[:, : self.rows]
        return x if self.horizontal else x.transpose(1, 2)

    def forward(self, q: Tensor, v: Tensor) -> Tensor:
        """q (pre-scaled) and v: (B, H, W, C) -> (B, H, W, C)."""
        batch = q.shape[0]
        qs, vs = self._split(q), self._split(v)
        # rank-3 bmm: XNNPACK takes it whole, a rank-4 matmul leaves expand copies outside
        logits = torch.bmm(qs, vs.transpose(1, 2))
        return self._merge(torch.bmm(self.attend(logits), vs), batch)


# DES maps of at least this many channels stay Kronecker-factored in the deploy form; narrower ones
# become two dense linears. On b1 at 512x512 factoring the 128- and 256-channel maps (24 of 35 blocks)
# shrinks every artifact by ~12 % at about the same latency, while the 32- and 64-channel maps are cheap
# dense (2 * C^2 weights) and 2-4x slower factored in XNNPACK, where the two transposes cost more than
# the saved MACs. Figures and commands: README, "The deploy form"; benchmarks/des_form.py.
FACTORED_DES_MIN_CHANNELS = 128


def des_factored(
    des: DES, factored_from: int | None
) -> tuple[nn.Linear, nn.Linear, tuple[int, int, int] | None]:
    """DES as (right, left, factors) for a deploy block: its own two small linears with factors
    ``(k_in, p, k_out)`` when it has at least ``factored_from`` channels, otherwise the dense maps of
    :func:`~hrvit_mobile.deploy.fold.des_as_dense` and ``None``."""
    if factored_from is not None and des.k_in * des.p >= factored_from:
        return des.proj_right, des.proj_left, (des.k_in, des.p, des.k_out)
    return (*des_as_dense(des), None)


class DeployAttentionBlock(nn.Module):
    """One HRViT block: norm-folded stripe attention + DES shortcut, then the merged MixCFN.

    The DES shortcut is either two dense channel linears or, with ``des_factors`` set, the official
    two Kronecker factors acting on the (k, p) view of each token (see ``FACTORED_DES_MIN_CHANNELS``).
    """

    def __init__(
        self, block: HRViTBlock, height: int, width: int, batch_size: int = 1,
        factored_des_from: int | None = FACTORED_DES_MIN_CHANNELS,
    ) -> None:
        super().__init__()
        attn: HRViTAttention = block.attn
        dim, half = attn.dim, attn.dim // 2
        self.half = half
        self.attn_norm, qkv = fold_affine_into_linear(block.attn_norm, attn.to_qkv)
        # the softmax scale of each half moves into the q rows of to_qkv
        scale = torch.ones(2 * dim)
        scale[:half] = stripe_heads(half, attn.dim_head)[2]
        scale[half:dim] = stripe_heads(dim - half, attn.dim_head)[2]
        qkv.weight.mul_(scale[:, None])
        qkv.bias.mul_(scale)
        self.to_qkv = qkv
        self.dim = dim
        self.conv_act = nn.Hardswish()
        self.parallel_conv = attn.parallel_conv[1]
        common = dict(dim_head=attn.dim_head, stripe_width=attn.stripe_width, height=height,
                      width=width, batch_size=batch_size)
        self.attn_h = StripeAttention(half, horizontal=True, **common)
        self.attn_v = StripeAttention(dim - half, horizontal=False, **common)
        self.attn_act = nn.Hardswish()
        self.to_out = fold_bn_into_linear(attn.to_out[0], attn.attn_bn)
        self.des_right, self.des_left, self.des_factors = des_factored(block.des, factored_des_from)
        self.des_act = nn.GELU()
        ffn: MixCFN = block.ffn
        self.ffn_norm, self.fc1 = fold_affine_into_linear(block.ffn_norm, ffn.fc1)
        self.ffn_conv = merge_mixconv(ffn.conv)
        self.ffn_act = nn.GELU()
        self.fc2 = ffn.fc2

    def forward(self, x: Tensor) -> Tensor:  # x: (B, H, W, C)
        qv = self.to_qkv(self.attn_norm(x))
        q, v = qv[..., : self.dim], qv[..., self.dim :]
        h, d = self.half, self.dim
        v_conv = to_channels_last(self.parallel_conv(self.conv_act(to_channels_first(v))))
        attn = torch.cat(
            [self.attn_h(q[..., :h], v[..., :h]), self.attn_v(q[..., h:d], v[..., h:d])], dim=-1
        )
        attn = self.to_out(self.attn_act(attn + v_conv))
        x = x + attn + self._des(x)
        y = self.fc1(self.ffn_norm(x))
        y = to_channels_last(self.ffn_act(self.ffn_conv(to_channels_first(y))))
        return x + self.fc2(y)

    def _des(self, x: Tensor) -> Tensor:
        if self.des_factors is None:
            return self.des_left(self.des_act(self.des_right(x)))
        k_in, p, k_out = self.des_factors
        y = self.des_act(self.des_right(x.reshape(-1, k_in, p)))  # mixes p: (N, k_in, p)
        y = self.des_left(y.transpose(1, 2)).transpose(1, 2)  # mixes k: (N, k_out, p)
        return y.reshape(*x.shape[:-1], k_out * p)


class DeployBranch(nn.Module):
    """Patch embedding, the blocks and the closing LayerNorm of one branch of one stage."""

    def __init__(
        self, embed: HRViTPatchEmbed, blocks: nn.ModuleList, norm: nn.LayerNorm,
        height: int, width: int, batch_size: int = 1,
        factored_des_from: int | None = FACTORED_DES_MIN_CHANNELS,
    ) -> None:
        super().__init__()
        self.embed_proj = nn.Sequential(*embed.proj)
        self.embed_norm = DelegableLayerNorm.from_layer_norm(embed.norm)
        self.blocks = nn.Sequential(
            *(DeployAttentionBlock(b, height, width, batch_size, factored_des_from) for b in blocks)
        )
        self.norm = DelegableLayerNorm.from_layer_norm(norm)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C, H, W)
        t = self.embed_norm(to_channels_last(self.embed_proj(x)))
        return to_channels_first(self.norm(self.blocks(t)))


class DeployStage(nn.Module):
    def __init__(
        self, stage: HRViTStage, sizes: list[tuple[int, int]], batch_size: int = 1,
        factored_des_from: int | None = FACTORED_DES_MIN_CHANNELS,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            DeployBranch(embed, blocks, norm, *size, batch_size=batch_size,
                         factored_des_from=factored_des_from)
            for embed, blocks, norm, size in zip(stage.patch_embed, stage.branches, stage.norm, sizes)
        )

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        return [branch(x) for branch, x in zip(self.branches, xs)]


def _fold_path(path: nn.Module) -> nn.Module:
    """A fusion path with its BNs folded into the convs before them and nearest upsampling
    as a transposed conv."""
    if isinstance(path, nn.Identity):
        return path
    layers = list(path)
    folded: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            folded.append(fold_bn_into_conv(layer, nxt))
            i += 2
        elif isinstance(layer, nn.Upsample):
            channels = folded[-1].out_channels
            folded.append(NearestUpsample(channels, int(layer.scale_factor)))
            i += 1
        else:
            folded.append(layer)
            i += 1
    return nn.Sequential(*folded)


class DeployFusion(nn.Module):
    """Cross-resolution fusion with every BN folded."""

    def __init__(self, fusion: HRViTFusionBlock) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList(_fold_path(p) for p in row) for row in fusion.blocks
        )
        self.act = nn.GELU()

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        outs = []
        for row in self.blocks:
            total = row[0](xs[0])
            for path, x in zip(row[1:], xs[1:]):
                total = total + path(x)
            outs.append(self.act(total))
        return outs


class DeployStem(nn.Module):
    def __init__(self, stem: HRViTStem) -> None:
        super().__init__()
        self.body = nn.Sequential(
            fold_bn_into_conv(stem.conv1, stem.bn1), nn.ReLU(),
            fold_bn_into_conv(stem.conv2, stem.bn2), nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class DeploySegformerHead(nn.Module):
    """SegFormer head with the per-branch 1x1 convs, the fusion conv and its BN composed.

    ``fusion(cat(resize(conv_i(x_i))))`` equals ``sum_i resize(W_i' x_i) + b'`` because bilinear
    resizing is linear with weights summing to one; the composed 1x1 convs run at each branch's
    own resolution instead of a 4*C-channel conv at 1/4 resolution.
    """

    def __init__(self, head: SegformerHead, out_size: tuple[int, int]) -> None:
        super().__init__()
        self.out_size = out_size
        scale, shift = bn_scale_shift(head.fusion_conv.bn)
        fusion_w = head.fusion_conv.conv.weight[:, :, 0, 0] * scale[:, None]
        channels = head.conv_seg.in_channels
        bias = shift.clone()
        self.branch_convs = nn.ModuleList()
        for i, conv_module in enumerate(head.convs):
            conv = conv_module.conv
            part = fusion_w[:, i * channels : (i + 1) * channels]
            composed = nn.Conv2d(conv.in_channels, channels, 1, bias=(i == 0))
            composed.weight.copy_((part @ conv.weight[:, :, 0, 0])[:, :, None, None])
            bias += part @ conv.bias
            self.branch_convs.append(composed)
        self.branch_convs[0].bias.copy_(bias)
        self.act = nn.ReLU()
        self.conv_seg = head.conv_seg

    def forward(self, xs: list[Tensor]) -> Tensor:
        total = self.branch_convs[0](xs[0])
        for conv, x in zip(self.branch_convs[1:], xs[1:]):
            total = total + F.interpolate(
                conv(x), size=self.out_size, mode="bilinear", align_corners=False
            )
        return self.conv_seg(self.act(total))
