"""The deploy form's layout decision, kept in one place.

Two layouts compute the same network:

- ``tokens`` (what :func:`hrvit_mobile.deploy` builds): token maps flow through the transformer
  blocks channels-last as rank-4 (B, H, W, C) tensors, so linears and LayerNorm act on the last
  dim with no reshapes; convolutions (patch embedding, depthwise paths, fusion, head) take
  channels-first (B, C, H, W), through the two permutes below.
- ``channels_first`` (:mod:`hrvit_mobile.deploy.channels_first`): every map stays (B, C, H, W),
  linears are 1x1 convs; a delegate that runs convs in NHWC keeps the data NHWC throughout.

Which one an exporter lowers is each backend's measured choice, declared in its registration
(``hrvit_mobile.exporters.registry``): the model code knows no targets.
"""

from __future__ import annotations

from torch import Tensor


def to_channels_first(x: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, C, H, W)."""
    return x.permute(0, 3, 1, 2)


def to_channels_last(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H, W, C)."""
    return x.permute(0, 2, 3, 1)


LAYOUTS = ("tokens", "channels_first")
