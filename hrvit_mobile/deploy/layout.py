"""The deploy form's layout decision, kept in one place.

Two layouts compute the same network:

- ``tokens`` (what :func:`hrvit_mobile.deploy` builds): token maps flow through the transformer
  blocks channels-last as rank-4 (B, H, W, C) tensors, so linears and LayerNorm act on the last
  dim with no reshapes; convolutions (patch embedding, depthwise paths, fusion, head) take
  channels-first (B, C, H, W), through the two permutes below.
- ``channels_first`` (:mod:`hrvit_mobile.deploy.channels_first`): every map stays (B, C, H, W),
  linears are 1x1 convs; a delegate that runs convs in NHWC keeps the data NHWC throughout.

``EXPORT_LAYOUT`` says which one each exporter lowers, as measured in that runtime;
:func:`export_layout` adds the per-variant exceptions.
"""

from __future__ import annotations

from torch import Tensor


def to_channels_first(x: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, C, H, W)."""
    return x.permute(0, 3, 1, 2)


def to_channels_last(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H, W, C)."""
    return x.permute(0, 2, 3, 1)


# Measured per runtime with `python3 benchmarks/layout.py --runtimes executorch tflite` (four b1
# blocks at 128x128, the two layouts interleaved): ExecuTorch XNNPACK runs channels-first in 0.74x
# the token layout's time, LiteRT in 1.17x (litert-torch moves NCHW graphs to NHWC with transposes
# of its own). Core ML keeps the token layout: it cannot be timed on Linux, so it is not measured.
LAYOUTS = ("tokens", "channels_first")
EXPORT_LAYOUT: dict[str, str] = {"executorch": "channels_first", "coreml": "tokens", "tflite": "tokens"}

# Per-variant exceptions, measured on b1 (`hrvit-mobile export --target executorch --bits 16
# [--layout tokens]`): XNNPACK fp16 takes no GELU, so the graph is split into ~50 delegate calls
# either way, and in the channels-first form (every linear a 1x1 conv) the .pte grows to 37.62 MB
# against 21.47 MB in the token layout: it is then no smaller than fp32. fp16 keeps tokens.
VARIANT_LAYOUT: dict[tuple[str, str], str] = {("executorch", "fp16"): "tokens"}


def export_layout(target: str, variant: str | None = None) -> str:
    """The layout ``target``'s exporter lowers ``variant`` in by default (fp32, fp16, int8, w8, ...)."""
    return VARIANT_LAYOUT.get((target, variant or ""), EXPORT_LAYOUT.get(target, "tokens"))
