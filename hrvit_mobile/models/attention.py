"""HRViT's cross-shaped stripe attention (training form).

The training form accepts any input size, like the official module: stripes that do not tile the
feature map are zero-padded at the bottom/right and the padded keys of the last stripe are masked
with -100 (the official constant, kept for bit-faithfulness). Unlike the official code it builds
the mask with plain tensor ops (no ``lru_cache`` keyed on devices) and needs no einops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrvit_mobile.models.layout import image_to_tokens, tokens_to_image

# Additive logit for padded key positions, as in the official implementation.
PADDED_KEY_LOGIT = -100.0


def stripe_heads(half_channels: int, dim_head: int) -> tuple[int, int, float]:
    """Heads, head width and softmax scale used by one channel half of the attention.

    The official rule: a half splits into ``half_channels // dim_head`` heads scaled by
    ``dim_head ** -0.5``; a half narrower than ``dim_head`` is one head scaled by
    ``half_channels ** -0.5``.
    """
    scale_dim = min(dim_head, half_channels)
    heads = half_channels // scale_dim
    if half_channels % heads:
        raise ValueError(f"{half_channels} channels do not split into {heads} equal heads")
    return heads, half_channels // heads, scale_dim**-0.5


def padded_length(length: int, stripe_width: int) -> int:
    """Smallest multiple of ``stripe_width`` that is >= ``length``."""
    return -(-length // stripe_width) * stripe_width


class MaskedSoftmax(nn.Module):
    """``softmax(logits + key_mask)`` over the last dim.

    One module so that quantization recipes can keep it in float as a unit: the -100 mask would
    otherwise stretch an observed int8 range over the logits and wipe out their resolution.
    The deploy form stores its static mask as a buffer here; the training form passes it in.
    """

    def __init__(self, key_mask: Tensor | None = None) -> None:
        super().__init__()
        if key_mask is None:
            self.key_mask = None
        else:
            self.register_buffer("key_mask", key_mask, persistent=False)

    def forward(self, logits: Tensor, key_mask: Tensor | None = None) -> Tensor:
        mask = self.key_mask if key_mask is None else key_mask
        if mask is not None:
            logits = logits + mask
        return logits.softmax(dim=-1)


def stripe_attention(
    q: Tensor, v: Tensor, height: int, width: int, stripe_width: int, dim_head: int,
    horizontal: bool, attend: MaskedSoftmax,
) -> Tensor:
    """Self-attention inside horizontal (or vertical) stripes; keys are the values.

    q, v: (B, H, W, C) channel-last maps of one channel half. Returns (B, H, W, C).
    """
    batch, _, _, channels = q.shape
    heads, head_dim, scale = stripe_heads(channels, dim_head)
    if not horizontal:  # a vertical stripe of the map is a horizontal stripe of its transpose
        q, v = q.transpose(1, 2), v.transpose(1, 2)
        height, width = width, height
    padded = padded_length(height, stripe_width)
    if padded != height:
        q = F.pad(q, (0, 0, 0, 0, 0, padded - height))
        v = F.pad(v, (0, 0, 0, 0, 0, padded - height))
    stripes = padded // stripe_width
    tokens = stripe_width * width

    def split_heads(t: Tensor) -> Tensor:  # (B, HP, W, C) -> (B*S, heads, tokens, head_dim)
        return t.reshape(batch * stripes, tokens, heads, head_dim).transpose(1, 2)

    qs, vs = split_heads(q), split_heads(v)
    logits = qs.matmul(vs.transpose(-2, -1)) * scale
    key_mask = None
    if padded != height:
        valid = (stripe_width - (padded - height)) * width
        key_mask = torch.zeros(stripes, 1, 1, tokens, dtype=logits.dtype, device=logits.device)
        key_mask[-1, ..., valid:] = PADDED_KEY_LOGIT
        key_mask = key_mask.repeat(batch, 1, 1, 1)  # stripes of all images lie along dim 0
    out = attend(logits, key_mask).matmul(vs)  # (B*S, heads, tokens, head_dim)
    out = out.transpose(1, 2).reshape(batch, padded, width, channels)[:, :height]
    if not horizontal:
        out = out.transpose(1, 2)
    return out


class LinearAsConv1x1(nn.Conv2d):
    """A 1x1 conv that checkpoints store as a ``Linear``'s (out, in) weight.

    The official attention ends in ``Linear -> BatchNorm over tokens``. As ``conv2d -> BatchNorm2d``
    the same computation is a conv-BN pair that PT2E QAT recognizes and folds while training,
    while ``state_dict``/``load_state_dict`` keep the official (out, in) key layout.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, kernel_size=1)
        self._register_state_dict_hook(_squeeze_weight)
        self._register_load_state_dict_pre_hook(_unsqueeze_weight)


def _squeeze_weight(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
    state[prefix + "weight"] = state[prefix + "weight"].flatten(1)


def _unsqueeze_weight(state: dict, prefix: str, *args: object) -> None:
    weight = state.get(prefix + "weight")
    if weight is not None and weight.ndim == 2:
        state[prefix + "weight"] = weight[:, :, None, None]


class HRViTAttention(nn.Module):
    """Cross-shaped stripe attention with shared key/value, a parallel depthwise conv path and BN.

    Channels are split in halves: the first attends within horizontal stripes, the second within
    vertical stripes, both of width ``stripe_width``.
    """

    def __init__(self, in_dim: int, dim: int, heads: int, stripe_width: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim = dim
        self.dim_head = dim // heads
        self.stripe_width = stripe_width
        self.to_qkv = nn.Linear(in_dim, 2 * dim)  # q and the shared k=v
        self.attend = MaskedSoftmax()
        self.attn_act = nn.Hardswish()
        # official: Sequential(Linear, Dropout(0)); the no-op dropout would sit between the
        # projection and its BN and hide the conv-BN pair from QAT, so only the key path is kept
        self.to_out = nn.Sequential(LinearAsConv1x1(dim, dim))
        # the official BN over tokens flattened to (B*N, C), as BN2d over the same elements
        self.attn_bn = nn.BatchNorm2d(dim)
        nn.init.zeros_(self.attn_bn.weight)  # official init: the branch starts as identity
        nn.init.zeros_(self.attn_bn.bias)
        self.parallel_conv = nn.Sequential(
            nn.Hardswish(), nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        )

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        batch = x.shape[0]
        q, v = self.to_qkv(x).chunk(2, dim=-1)
        v_conv = image_to_tokens(self.parallel_conv(tokens_to_image(v, height, width)))
        q = q.reshape(batch, height, width, self.dim)
        v = v.reshape(batch, height, width, self.dim)
        (qh, qv), (vh, vv) = q.chunk(2, dim=-1), v.chunk(2, dim=-1)
        common = (height, width, self.stripe_width, self.dim_head)
        attend = self.attend
        attn = torch.cat(
            [
                stripe_attention(qh, vh, *common, horizontal=True, attend=attend),
                stripe_attention(qv, vv, *common, horizontal=False, attend=attend),
            ],
            dim=-1,
        ).reshape(batch, height * width, self.dim)
        attn = tokens_to_image(self.attn_act(attn + v_conv), height, width)
        return image_to_tokens(self.attn_bn(self.to_out(attn)))

    def extra_repr(self) -> str:
        return f"stripe_width={self.stripe_width}"
