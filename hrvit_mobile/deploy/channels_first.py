"""The channels-first deploy layout: token maps stay (B, C, H, W) and linears are 1x1 convs.

Why (measured on ExecuTorch XNNPACK 1.5.1): XNNPACK runs convolutions in NHWC and its
``ChannelsLastTaggedReshapePass`` keeps a tensor NHWC from one conv to the next. In the token
layout (:mod:`hrvit_mobile.deploy.layout`) each depthwise conv sits between two permutes, and the
delegate runs four whole-tensor transposes per conv (permute, to NHWC, back, permute). Here the
linears, the LayerNorm means and the depthwise convs are all convs, so data stays NHWC inside the
delegate; the only layout copies left are at the stripe split and merge. Four b1 blocks at
128x128 run in 0.74x the token layout's time and lower in 0.84x
(``python3 benchmarks/layout.py``; ``benchmarks/speed.py`` measures the whole network).

The layout is a switch of the deploy modules themselves (``channels_first`` of
:mod:`hrvit_mobile.deploy.modules`); the classes here set it. They are subclasses with names of their
own, not one class with an argument, because LiteRT names a model's tensors after its modules' classes:
the names keep the channels-first ``.tflite`` the same bytes. :func:`hrvit_mobile.deploy.deploy` builds
either layout directly from :class:`~hrvit_mobile.deploy.DeployOptions`; the functions here turn a
built token form into the channels-first one, with the very same folded weights, stripes and masks.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from hrvit_mobile.deploy.modules import DeployAttentionBlock, DeployBranch, DeployStage, StripeAttention


class ChannelsFirstStripeAttention(StripeAttention):
    """:class:`~hrvit_mobile.deploy.modules.StripeAttention` on (B, C, H, W) maps."""

    channels_first = True


class ChannelsFirstAttentionBlock(DeployAttentionBlock):
    """:class:`~hrvit_mobile.deploy.modules.DeployAttentionBlock` on (B, C, H, W), 1x1 convs for linears."""

    channels_first = True
    stripe_attention = ChannelsFirstStripeAttention


class ChannelsFirstBranch(DeployBranch):
    """:class:`~hrvit_mobile.deploy.modules.DeployBranch` with its blocks on (B, C, H, W) maps."""

    channels_first = True
    attention_block = ChannelsFirstAttentionBlock


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
                if isinstance(branch, DeployBranch) and not branch.channels_first:
                    module.branches[i] = ChannelsFirstBranch.from_tokens(branch)
                    switched += 1
    return switched


def layout_of(model: nn.Module) -> str:
    """"tokens" or "channels_first" for a deploy form, "as given" for anything else (a quantized
    GraphModule after QAT keeps the layout it was trained in)."""
    branches = [m for m in model.modules() if isinstance(m, DeployBranch)]
    if not branches:
        return "as given"
    return "tokens" if any(not b.channels_first for b in branches) else "channels_first"


def in_export_layout(model: nn.Module, layout: str) -> tuple[nn.Module, str]:
    """``model`` in ``layout`` ("tokens" or "channels_first"; each backend's variant names its own).

    A token-layout deploy form asked for channels-first comes back as a switched copy (the caller's
    module is untouched); anything else comes back as it is. Returns the module and the layout it has.
    """
    if layout == "channels_first" and layout_of(model) == "tokens":
        model = copy.deepcopy(model)
        use_channels_first(model)
    return model, layout_of(model)
