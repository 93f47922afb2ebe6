"""Which HRViT modules a quantization recipe should leave in float.

Softmax over stripe logits (with the -100 padded-key mask, see ``MaskedSoftmax``) and LayerNorm
are the two places where int8 loses the most for ViTs: the softmax input range is dominated by
the mask constant and its output is a distribution, and LayerNorm inputs carry per-channel
outliers. Recipes pass these types to their quantizer (e.g. ``set_module_type(t, None)`` for the
PT2E quantizers) so the ops run in float between quantized neighbours.
"""

from __future__ import annotations

from torch import nn

from hrvit_mobile.models.attention import MaskedSoftmax
from hrvit_mobile.models.norm import ChannelLayerNorm, DelegableLayerNorm, NativeLayerNorm


def float_module_types(softmax: bool = True, layernorm: bool = True) -> tuple[type[nn.Module], ...]:
    """Module types to keep in float; both on by default."""
    types: list[type[nn.Module]] = []
    if softmax:
        types.append(MaskedSoftmax)
    if layernorm:
        types.extend((nn.LayerNorm, DelegableLayerNorm, ChannelLayerNorm, NativeLayerNorm))
    return tuple(types)
