"""Deploy-form modules: HRViT for one fixed input size, with folded norms and static shapes.

Each class is built from the training-form module (see ``hrvit_mobile.models``) and the static
feature-map size it will see. Nothing in ``forward`` depends on tensor values or on shapes read at run
time: every size, padding, split and mask is a Python int or a buffer fixed here, and every
intermediate tensor has rank <= 4.

The attention branches come in two layouts, one implementation with a switch (``channels_first``):
token maps (B, H, W, C) with linears, or (B, C, H, W) maps with 1x1 convs (see
:mod:`hrvit_mobile.deploy.layout`). Both compute with the very same folded weights, stripes and
masks. The channels-first classes (:mod:`hrvit_mobile.deploy.channels_first`) are these with the
switch set, under names of their own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrvit_mobile.deploy.fold import (
    bn_scale_shift,
    des_as_dense,
    fold_affine_into_linear,
    fold_bn_into_conv,
    fold_bn_into_linear,
    linear_as_conv1x1,
    merge_mixconv,
    nearest_upsample,
)
from hrvit_mobile.deploy.layout import to_channels_first, to_channels_last
from hrvit_mobile.deploy.options import FACTORED_DES_MIN_CHANNELS
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
from hrvit_mobile.models.norm import ChannelLayerNorm, DelegableLayerNorm, NativeLayerNorm
from hrvit_mobile.models.segformer_head import SegformerHead


class StripeAttention(nn.Module):
    """Attention inside stripes of one channel half, keys shared with values, static shapes.

    Horizontal stripes of ``stripe_width`` rows, vertical ones of ``stripe_width`` columns. Stripes and
    heads are folded into the batch dim of one rank-3 batched matmul. When the map does not tile, q/v
    get zero rows (columns) and a key-mask buffer gives the padded keys of each last stripe the
    official logit of -100 (padded query rows are cropped, so only keys need masking).

    With ``channels_first`` False (this class), q/v are token maps (B, H, W, C) and a vertical instance
    runs on the transposed map; with it True (the channels-first subclass), q/v are (B, C, H, W) maps:
    batch, heads and stripes fold into the bmm batch in that order, each with one permute in and one
    out (the tokens of a vertical stripe come in another order, which attention does not see).
    """

    channels_first = False

    def __init__(
        self, channels: int, dim_head: int, stripe_width: int, height: int, width: int,
        horizontal: bool, batch_size: int = 1,
    ) -> None:
        super().__init__()
        self.heads, self.head_dim, _ = stripe_heads(channels, dim_head)
        self.channels, self.dim_head, self.stripe_width = channels, dim_head, stripe_width
        self.height, self.width, self.horizontal, self.batch_size = height, width, horizontal, batch_size
        along, across = (height, width) if horizontal else (width, height)  # cut dim, other dim
        self.rows, self.cols = along, across
        self.padded = padded_length(along, stripe_width)
        self.pad_rows = pad = self.padded - along
        self.tokens = stripe_width * across
        if self.channels_first:
            self.per_group = self.padded // stripe_width  # stripes per (image, head)
            mask = self._channels_first_mask() if pad else None
            pad_shape = (batch_size, channels, *((pad, width) if horizontal else (height, pad)))
        else:
            self.stripes = batch_size * self.padded // stripe_width
            mask = self._tokens_mask() if pad else None
            pad_shape = (batch_size, pad, across, channels)
        self.attend = MaskedSoftmax(mask)
        # zero rows appended by concatenation, not F.pad: XNNPACK refuses a quantized constant-pad
        # node, and a zero is exact in any int8 scale, so cat shares its input's qparams cleanly
        self.register_buffer("pad_zeros", torch.zeros(pad_shape) if pad else None, persistent=False)

    def _tokens_mask(self) -> Tensor:
        mask = torch.zeros(self.stripes, 1, self.tokens)
        valid = (self.stripe_width - self.pad_rows) * self.cols
        per_image = self.stripes // self.batch_size
        mask[per_image - 1 :: per_image, :, valid:] = PADDED_KEY_LOGIT
        return mask.repeat_interleave(self.heads, dim=0)  # heads sit next to their stripe

    def _channels_first_mask(self) -> Tensor:
        groups = self.batch_size * self.heads
        mask = torch.zeros(groups, self.per_group, 1, self.tokens)
        mask[:, -1, :, (self.stripe_width - self.pad_rows) * self.cols :] = PADDED_KEY_LOGIT
        return mask.reshape(groups * self.per_group, 1, self.tokens)

    @classmethod
    def from_tokens(cls, attn: StripeAttention) -> StripeAttention:
        """This class's attention over the same map, stripes and heads as the token-layout ``attn``."""
        return cls(attn.channels, attn.dim_head, attn.stripe_width, attn.height, attn.width,
                   attn.horizontal, attn.batch_size)

    def _split_tokens(self, x: Tensor) -> Tensor:
        """(B, rows, cols, C) -> (stripes * heads, tokens, head_dim)."""
        if not self.horizontal:
            x = x.transpose(1, 2)
        if self.pad_zeros is not None:
            x = torch.cat([x, self.pad_zeros], dim=1)
        if self.heads == 1:
            return x.reshape(self.stripes, self.tokens, self.channels)
        x = x.reshape(self.stripes, self.tokens, self.heads, self.head_dim).transpose(1, 2)
        return x.reshape(self.stripes * self.heads, self.tokens, self.head_dim)

    def _merge_tokens(self, x: Tensor, batch: int) -> Tensor:
        if self.heads > 1:
            x = x.reshape(self.stripes, self.heads, self.tokens, self.head_dim).transpose(1, 2)
        x = x.reshape(batch, self.rows + self.pad_rows, self.cols, self.channels)
        if self.pad_rows:
            x = x[:, : self.rows]
        return x if self.horizontal else x.transpose(1, 2)

    def _split_channels_first(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B * heads * stripes, tokens, head_dim)."""
        groups = self.batch_size * self.heads
        if self.pad_zeros is not None:
            x = torch.cat([x, self.pad_zeros], dim=2 if self.horizontal else 3)
        if self.horizontal:
            x = x.reshape(groups, self.head_dim, self.per_group, self.tokens).permute(0, 2, 3, 1)
        else:
            x = x.reshape(groups, self.head_dim, self.height, self.padded).permute(0, 3, 2, 1)
        return x.reshape(groups * self.per_group, self.tokens, self.head_dim)

    def _merge_channels_first(self, x: Tensor) -> Tensor:
        """(B * heads * stripes, tokens, head_dim) -> (B, C, H, W)."""
        groups, image = self.batch_size * self.heads, (self.batch_size, self.channels)
        if self.horizontal:
            x = x.reshape(groups, self.per_group, self.tokens, self.head_dim).permute(0, 3, 1, 2)
            x = x.reshape(*image, self.padded, self.width)
            return x[:, :, : self.height] if self.padded != self.height else x
        x = x.reshape(groups, self.padded, self.height, self.head_dim).permute(0, 3, 2, 1)
        x = x.reshape(*image, self.height, self.padded)
        return x[:, :, :, : self.width] if self.padded != self.width else x

    def forward(self, q: Tensor, v: Tensor) -> Tensor:
        """q (pre-scaled) and v -> the attention output, all in this instance's layout."""
        if self.channels_first:
            qs, vs = self._split_channels_first(q), self._split_channels_first(v)
            logits = torch.bmm(qs, vs.transpose(1, 2))
            return self._merge_channels_first(torch.bmm(self.attend(logits), vs))
        batch = q.shape[0]
        qs, vs = self._split_tokens(q), self._split_tokens(v)
        # rank-3 bmm: XNNPACK takes it whole, a rank-4 matmul leaves expand copies outside
        logits = torch.bmm(qs, vs.transpose(1, 2))
        return self._merge_tokens(torch.bmm(self.attend(logits), vs), batch)


def des_factored(
    des: DES, factored_from: int | None
) -> tuple[nn.Linear, nn.Linear, tuple[int, int, int] | None]:
    """DES as (right, left, factors) for a deploy block: its own two small linears with factors
    ``(k_in, p, k_out)`` when it has at least ``factored_from`` channels, otherwise the dense maps of
    :func:`~hrvit_mobile.deploy.fold.des_as_dense` and ``None``."""
    if factored_from is not None and des.k_in * des.p >= factored_from:
        return des.proj_right, des.proj_left, (des.k_in, des.p, des.k_out)
    return (*des_as_dense(des), None)


def layer_norm_form(norm: DelegableLayerNorm, channels_first: bool, native: bool) -> DelegableLayerNorm:
    """A token-layout deploy norm in the form a layout and norm choice ask for: the channels-first
    twin (means as 1x1 convs) for (B, C, H, W) maps, else the native ``F.layer_norm`` form when
    ``native``, else ``norm`` itself. The native form exists for the token layout only."""
    if channels_first:
        return ChannelLayerNorm.from_delegable(norm)
    if native and type(norm) is DelegableLayerNorm:
        return NativeLayerNorm.from_delegable(norm)
    return norm


class DeployAttentionBlock(nn.Module):
    """One HRViT block: norm-folded stripe attention + DES shortcut, then the merged MixCFN.

    The DES shortcut is either two dense channel linears or, with ``des_factors`` set, the official
    two Kronecker factors acting on the (k, p) view of each token (see ``FACTORED_DES_MIN_CHANNELS``).
    ``channels_first`` (set by the channels-first subclass) picks the layout: linears become 1x1 convs,
    norms their channels-first twin. ``native_norm`` picks the norms' ``F.layer_norm`` form (token
    layout only).
    """

    channels_first = False
    stripe_attention: type[StripeAttention] = StripeAttention  # its class in this layout

    def __init__(
        self, block: HRViTBlock, height: int, width: int, batch_size: int = 1,
        factored_des_from: int | None = FACTORED_DES_MIN_CHANNELS, native_norm: bool = False,
    ) -> None:
        super().__init__()
        attn: HRViTAttention = block.attn
        dim, half = attn.dim, attn.dim // 2
        attn_norm, qkv = fold_affine_into_linear(block.attn_norm, attn.to_qkv)
        # the softmax scale of each half moves into the q rows of to_qkv
        scale = torch.ones(2 * dim)
        scale[:half] = stripe_heads(half, attn.dim_head)[2]
        scale[half:dim] = stripe_heads(dim - half, attn.dim_head)[2]
        qkv.weight.mul_(scale[:, None])
        qkv.bias.mul_(scale)
        common = dict(dim_head=attn.dim_head, stripe_width=attn.stripe_width, height=height,
                      width=width, batch_size=batch_size)
        des_right, des_left, des_factors = des_factored(block.des, factored_des_from)
        ffn: MixCFN = block.ffn
        ffn_norm, fc1 = fold_affine_into_linear(block.ffn_norm, ffn.fc1)
        self._install(
            dim=dim, half=half, height=height, width=width, batch_size=batch_size,
            des_factors=des_factors, native_norm=native_norm,
            attn_norm=attn_norm, to_qkv=qkv, conv_act=nn.Hardswish(), parallel_conv=attn.parallel_conv[1],
            attn_h=StripeAttention(half, horizontal=True, **common),
            attn_v=StripeAttention(dim - half, horizontal=False, **common),
            attn_act=nn.Hardswish(), to_out=fold_bn_into_linear(attn.to_out[0], attn.attn_bn),
            des_right=des_right, des_left=des_left, des_act=nn.GELU(),
            ffn_norm=ffn_norm, fc1=fc1, ffn_conv=merge_mixconv(ffn.conv), ffn_act=nn.GELU(), fc2=ffn.fc2,
        )

    def _install(
        self, *, dim: int, half: int, height: int, width: int, batch_size: int,
        des_factors: tuple[int, int, int] | None, native_norm: bool, **layers: nn.Module,
    ) -> None:
        """Set the block's layers (given in the token layout) in this class's layout and the norm form."""
        self.dim, self.half, self.height, self.width, self.batch_size = dim, half, height, width, batch_size
        self.des_factors = des_factors
        for name, layer in layers.items():  # registration order: the token form's, in either layout
            if isinstance(layer, DelegableLayerNorm):
                layer = layer_norm_form(layer, self.channels_first, native_norm)
            elif isinstance(layer, StripeAttention) and type(layer) is not self.stripe_attention:
                layer = self.stripe_attention.from_tokens(layer)
            elif self.channels_first and isinstance(layer, nn.Linear):
                layer = linear_as_conv1x1(layer)
            setattr(self, name, layer)

    @classmethod
    def from_tokens(cls, block: DeployAttentionBlock) -> DeployAttentionBlock:
        """This class's block from a token-layout deploy block: the same folded weights, shared convs."""
        if block.channels_first:
            raise ValueError("a channels-first block does not go back to the token layout")
        other = cls.__new__(cls)
        nn.Module.__init__(other)
        other._install(
            dim=block.dim, half=block.half, height=block.height, width=block.width,
            batch_size=block.batch_size, des_factors=block.des_factors, native_norm=False,
            **dict(block.named_children()),
        )
        return other

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) tokens, or (B, C, H, W) with ``channels_first``."""
        if self.channels_first:
            return self._forward_channels_first(x)
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

    def _forward_channels_first(self, x: Tensor) -> Tensor:
        qv = self.to_qkv(self.attn_norm(x))
        h, d = self.half, self.dim
        q, v = qv[:, :d], qv[:, d:]
        v_conv = self.parallel_conv(self.conv_act(v))
        attn = torch.cat([self.attn_h(q[:, :h], v[:, :h]), self.attn_v(q[:, h:], v[:, h:])], dim=1)
        attn = self.to_out(self.attn_act(attn + v_conv))
        x = x + attn + self._des_channels_first(x)
        y = self.ffn_act(self.ffn_conv(self.fc1(self.ffn_norm(x))))
        return x + self.fc2(y)

    def _des(self, x: Tensor) -> Tensor:
        if self.des_factors is None:
            return self.des_left(self.des_act(self.des_right(x)))
        k_in, p, k_out = self.des_factors
        y = self.des_act(self.des_right(x.reshape(-1, k_in, p)))  # mixes p: (N, k_in, p)
        y = self.des_left(y.transpose(1, 2)).transpose(1, 2)  # mixes k: (N, k_out, p)
        return y.reshape(*x.shape[:-1], k_out * p)

    def _des_channels_first(self, x: Tensor) -> Tensor:
        if self.des_factors is None:
            return self.des_left(self.des_act(self.des_right(x)))
        # channel c = i * p + j: the p-mixing factor is a 1x1 conv over batch (B * k_in); the k-mixing
        # one runs on the map with k and p swapped, batch (B * p)
        (k_in, p, k_out), batch, height, width = self.des_factors, self.batch_size, self.height, self.width
        y = self.des_act(self.des_right(x.reshape(batch * k_in, p, height, width)))
        y = y.reshape(batch, k_in, p, height * width).transpose(1, 2).reshape(batch * p, k_in, height, width)
        y = self.des_left(y).reshape(batch, p, k_out, height * width).transpose(1, 2)
        return y.reshape(batch, k_out * p, height, width)


class DeployBranch(nn.Module):
    """Patch embedding, the blocks and the closing LayerNorm of one branch of one stage.

    Takes and returns (B, C, H, W) maps; inside, the blocks run on tokens or, with ``channels_first``
    (set by the channels-first subclass), on the maps themselves.
    """

    channels_first = False
    attention_block: type[DeployAttentionBlock] = DeployAttentionBlock  # its class in this layout

    def __init__(
        self, embed: HRViTPatchEmbed, blocks: nn.ModuleList, norm: nn.LayerNorm,
        height: int, width: int, batch_size: int = 1,
        factored_des_from: int | None = FACTORED_DES_MIN_CHANNELS, native_norm: bool = False,
    ) -> None:
        super().__init__()
        cf = self.channels_first
        self.embed_proj = nn.Sequential(*embed.proj)
        self.embed_norm = layer_norm_form(DelegableLayerNorm.from_layer_norm(embed.norm), cf, native_norm)
        self.blocks = nn.Sequential(*(
            self.attention_block(b, height, width, batch_size, factored_des_from, native_norm) for b in blocks
        ))
        self.norm = layer_norm_form(DelegableLayerNorm.from_layer_norm(norm), cf, native_norm)

    @classmethod
    def from_tokens(cls, branch: DeployBranch) -> DeployBranch:
        """This class's branch from a token-layout deploy branch: the same folded weights; the layers
        both layouts hold alike (convs, activations) are shared."""
        if branch.channels_first:
            raise ValueError("a channels-first branch does not go back to the token layout")
        other = cls.__new__(cls)
        nn.Module.__init__(other)
        other.embed_proj = branch.embed_proj
        other.embed_norm = layer_norm_form(branch.embed_norm, cls.channels_first, False)
        other.blocks = nn.Sequential(*(cls.attention_block.from_tokens(b) for b in branch.blocks))
        other.norm = layer_norm_form(branch.norm, cls.channels_first, False)
        return other.requires_grad_(any(p.requires_grad for p in branch.parameters()))

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C, H, W)
        if self.channels_first:
            return self.norm(self.blocks(self.embed_norm(self.embed_proj(x))))
        t = self.embed_norm(to_channels_last(self.embed_proj(x)))
        return to_channels_first(self.norm(self.blocks(t)))


class DeployStage(nn.Module):
    def __init__(
        self, stage: HRViTStage, sizes: list[tuple[int, int]], batch_size: int = 1,
        factored_des_from: int | None = FACTORED_DES_MIN_CHANNELS, native_norm: bool = False,
        branch: type[DeployBranch] = DeployBranch,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            branch(embed, blocks, norm, *size, batch_size=batch_size, factored_des_from=factored_des_from,
                   native_norm=native_norm)
            for embed, blocks, norm, size in zip(stage.patch_embed, stage.branches, stage.norm, sizes)
        )

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        return [branch(x) for branch, x in zip(self.branches, xs)]


def _fold_path(path: nn.Module, upsampler: str) -> nn.Module:
    """A fusion path with its BNs folded into the convs before them and nearest upsampling in the
    ``upsampler`` form (:class:`~hrvit_mobile.deploy.fold.NearestUpsample`)."""
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
            folded.append(nearest_upsample(channels, int(layer.scale_factor), upsampler))
            i += 1
        else:
            folded.append(layer)
            i += 1
    return nn.Sequential(*folded)


class DeployFusion(nn.Module):
    """Cross-resolution fusion with every BN folded, nearest upsampling in the ``upsampler`` form."""

    def __init__(self, fusion: HRViTFusionBlock, upsampler: str = "transposed_conv") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList(_fold_path(p, upsampler) for p in row) for row in fusion.blocks
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
