"""The channels-first deploy layout: token maps stay (B, C, H, W) and linears are 1x1 convs.

Why (measured on ExecuTorch XNNPACK 1.5.1): XNNPACK runs convolutions in NHWC and its
``ChannelsLastTaggedReshapePass`` keeps a tensor NHWC from one conv to the next. In the token
layout (:mod:`hrvit_mobile.deploy.layout`) each depthwise conv sits between two permutes, and the
delegate runs four whole-tensor transposes per conv (permute, to NHWC, back, permute). Here the
linears, the LayerNorm means and the depthwise convs are all convs, so data stays NHWC inside the
delegate; the only layout copies left are at the stripe split and merge. Four b1 blocks at
128x128 run in 0.74x the token layout's time and lower in 0.84x
(``python3 benchmarks/layout.py``; ``benchmarks/speed.py`` measures the whole network).

Built from the token-layout deploy modules (:func:`use_channels_first`), so it computes with the
very same folded weights, stripes and masks; the tokens of a vertical stripe come in another
order, which attention does not see.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from hrvit_mobile.deploy.modules import DeployAttentionBlock, DeployBranch, DeployStage, StripeAttention
from hrvit_mobile.models.attention import PADDED_KEY_LOGIT, MaskedSoftmax, padded_length
from hrvit_mobile.models.norm import ChannelLayerNorm


def linear_as_conv1x1(linear: nn.Linear) -> nn.Conv2d:
    """The same map on (B, C, H, W): a 1x1 conv holding the linear's weight and bias."""
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


class ChannelsFirstStripeAttention(nn.Module):
    """Stripe attention of one channel half on (B, C, H, W) maps; static shapes, rank <= 4.

    Horizontal stripes are ``stripe_width`` rows (tokens ordered row, column), vertical ones
    ``stripe_width`` columns (tokens ordered column, row). Batch, heads and stripes fold into the
    batch of a rank-3 bmm in that order, each with one permute in and one out. A map that does not
    tile gets zero rows/columns by concatenation, and the padded keys of each last stripe the
    official -100 logit.
    """

    def __init__(
        self, channels: int, heads: int, stripe_width: int, height: int, width: int,
        horizontal: bool, batch_size: int = 1,
    ) -> None:
        super().__init__()
        self.channels, self.heads, self.head_dim = channels, heads, channels // heads
        self.horizontal, self.height, self.width, self.batch_size = horizontal, height, width, batch_size
        along, across = (height, width) if horizontal else (width, height)  # cut dim, other dim
        self.padded = padded_length(along, stripe_width)
        pad = self.padded - along
        self.per_group = self.padded // stripe_width  # stripes per (image, head)
        self.tokens = stripe_width * across
        groups = batch_size * heads
        mask = None
        if pad:
            mask = torch.zeros(groups, self.per_group, 1, self.tokens)
            mask[:, -1, :, (stripe_width - pad) * across :] = PADDED_KEY_LOGIT
            mask = mask.reshape(groups * self.per_group, 1, self.tokens)
        self.attend = MaskedSoftmax(mask)
        # zeros by concatenation, as in the token layout: XNNPACK refuses a quantized constant
        # pad, and a zero is exact in any int8 scale
        pad_shape = (batch_size, channels, pad, width) if horizontal else (batch_size, channels, height, pad)
        self.register_buffer("pad_zeros", torch.zeros(pad_shape) if pad else None, persistent=False)

    @classmethod
    def from_tokens(cls, attn: StripeAttention) -> ChannelsFirstStripeAttention:
        height, width = (attn.rows, attn.cols) if attn.horizontal else (attn.cols, attn.rows)
        return cls(attn.channels, attn.heads, attn.stripe_width, height, width, attn.horizontal,
                   attn.batch_size)

    def _split(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B * heads * stripes, tokens, head_dim)."""
        groups = self.batch_size * self.heads
        if self.pad_zeros is not None:
            x = torch.cat([x, self.pad_zeros], dim=2 if self.horizontal else 3)
        if self.horizontal:
            x = x.reshape(groups, self.head_dim, self.per_group, self.tokens).permute(0, 2, 3, 1)
        else:
            x = x.reshape(groups, self.head_dim, self.height, self.padded).permute(0, 3, 2, 1)
        return x.reshape(groups * self.per_group, self.tokens, self.head_dim)

    def _merge(self, x: Tensor) -> Tensor:
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
        """q (pre-scaled) and v: (B, C, H, W) -> (B, C, H, W)."""
        qs, vs = self._split(q), self._split(v)
        logits = torch.bmm(qs, vs.transpose(1, 2))
        return self._merge(torch.bmm(self.attend(logits), vs))


class ChannelsFirstAttentionBlock(nn.Module):
    """One deploy-form HRViT block on (B, C, H, W), with 1x1 convs where the token form has linears."""

    def __init__(self, block: DeployAttentionBlock) -> None:
        super().__init__()
        self.dim, self.half = block.dim, block.half
        self.attn_norm = ChannelLayerNorm.from_delegable(block.attn_norm)
        self.to_qkv = linear_as_conv1x1(block.to_qkv)
        self.conv_act = block.conv_act
        self.parallel_conv = block.parallel_conv
        self.attn_h = ChannelsFirstStripeAttention.from_tokens(block.attn_h)
        self.attn_v = ChannelsFirstStripeAttention.from_tokens(block.attn_v)
        self.attn_act = block.attn_act
        self.to_out = linear_as_conv1x1(block.to_out)
        self.des_right, self.des_left = linear_as_conv1x1(block.des_right), linear_as_conv1x1(block.des_left)
        self.des_act, self.des_factors = block.des_act, block.des_factors
        attn_h = block.attn_h  # horizontal: rows are the map's height
        self.batch_size, self.height, self.width = attn_h.batch_size, attn_h.rows, attn_h.cols
        self.ffn_norm = ChannelLayerNorm.from_delegable(block.ffn_norm)
        self.fc1, self.ffn_conv = linear_as_conv1x1(block.fc1), block.ffn_conv
        self.ffn_act = block.ffn_act
        self.fc2 = linear_as_conv1x1(block.fc2)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C, H, W)
        qv = self.to_qkv(self.attn_norm(x))
        h, d = self.half, self.dim
        q, v = qv[:, :d], qv[:, d:]
        v_conv = self.parallel_conv(self.conv_act(v))
        attn = torch.cat([self.attn_h(q[:, :h], v[:, :h]), self.attn_v(q[:, h:], v[:, h:])], dim=1)
        attn = self.to_out(self.attn_act(attn + v_conv))
        x = x + attn + self._des(x)
        y = self.ffn_act(self.ffn_conv(self.fc1(self.ffn_norm(x))))
        return x + self.fc2(y)

    def _des(self, x: Tensor) -> Tensor:
        if self.des_factors is None:
            return self.des_left(self.des_act(self.des_right(x)))
        # channel c = i * p + j: the p-mixing factor is a 1x1 conv over batch (B * k_in); the k-mixing
        # one runs on the map with k and p swapped, batch (B * p)
        (k_in, p, k_out), batch, height, width = self.des_factors, self.batch_size, self.height, self.width
        y = self.des_act(self.des_right(x.reshape(batch * k_in, p, height, width)))
        y = y.reshape(batch, k_in, p, height * width).transpose(1, 2).reshape(batch * p, k_in, height, width)
        y = self.des_left(y).reshape(batch, p, k_out, height * width).transpose(1, 2)
        return y.reshape(batch, k_out * p, height, width)


class ChannelsFirstBranch(nn.Module):
    """Patch embedding, blocks and closing LayerNorm of one branch, all on (B, C, H, W)."""

    def __init__(self, branch: DeployBranch) -> None:
        super().__init__()
        self.embed_proj = branch.embed_proj
        self.embed_norm = ChannelLayerNorm.from_delegable(branch.embed_norm)
        self.blocks = nn.Sequential(*(ChannelsFirstAttentionBlock(b) for b in branch.blocks))
        self.norm = ChannelLayerNorm.from_delegable(branch.norm)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C, H, W)
        return self.norm(self.blocks(self.embed_norm(self.embed_proj(x))))


@torch.no_grad()
def use_channels_first(model: nn.Module) -> int:
    """Switch every token-layout branch of a deploy form to the channels-first layout (in place).

    Returns how many branches were switched. Module names (``features.3.branches.1``...) stay, so
    keep-float names and sensitivity groups mean the same in both layouts.
    """
    switched = 0
    for module in model.modules():
        if isinstance(module, DeployStage):
            for i, branch in enumerate(module.branches):
                if isinstance(branch, DeployBranch):
                    trainable = any(p.requires_grad for p in branch.parameters())
                    module.branches[i] = ChannelsFirstBranch(branch).requires_grad_(trainable)
                    switched += 1
    return switched


def in_export_layout(model: nn.Module, layout: str) -> tuple[nn.Module, str]:
    """``model`` in ``layout`` ("tokens" or "channels_first"; each backend's variant names its own).

    A token-layout deploy form asked for channels-first comes back as a switched copy (the caller's
    module is untouched); anything else (a quantized GraphModule, e.g. after QAT, which keeps the
    layout it was trained in) comes back as it is. Returns the module and the layout it has.
    """
    wanted = layout
    has_tokens = any(isinstance(m, DeployBranch) for m in model.modules())
    has_channels_first = any(isinstance(m, ChannelsFirstBranch) for m in model.modules())
    if wanted == "channels_first" and has_tokens:
        model = copy.deepcopy(model)
        use_channels_first(model)
        return model, "channels_first"
    if has_channels_first:
        return model, "channels_first"
    return model, "tokens" if has_tokens else "as given"
