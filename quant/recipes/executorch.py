"""ExecuTorch (XNNPACK) int8: PT2E with ExecuTorch's ``XNNPACKQuantizer``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .base import PT2ERecipe


@dataclass
class XNNPACKInt8(PT2ERecipe):
    """ExecuTorch/XNNPACK: int8 symmetric weights (per-channel by default), static int8 activations."""

    name: str = "xnnpack_int8"
    target: str = "executorch"
    per_channel: bool = True
    scheme: str = "PT2E XNNPACKQuantizer: int8 per-channel weights, static int8 activations"
    pattern_utils: str = "executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils"
    # the deploy layout the graph is quantized (and QAT-trained) in: the one XNNPACK runs fastest, which
    # the ExecuTorch backend lowers; QAT checkpoints record it
    layout: str = "channels_first"
    # the form of the nearest upsamplers the graph is quantized (and QAT-trained) with: "broadcast"
    # (hrvit_mobile.deploy.fold.BroadcastNearest, what XNNPACK runs fastest) or "transposed_conv" (the
    # deploy form's own, what QAT checkpoints from before this was recorded were trained with)
    upsampler: str = "broadcast"
    # depthwise convs left float. On x86 (AVX2) XNNPACK's int8 (QC8) 5x5 depthwise kernel takes ~1.7x
    # its fp32 one, but the converts around float convs took the gain back (benchmarks/int8_profile.py,
    # docs/quantization.md): off by default, for CPUs where the balance differs (aarch64 int8 kernels)
    float_depthwise: bool = False

    def float_names_in(self, graph: torch.fx.GraphModule) -> list[str]:
        """The depthwise convs' module names when ``float_depthwise`` (from each conv's module stack)."""
        if not self.float_depthwise:
            return []
        names = []
        for node in graph.graph.nodes:
            if node.target is not torch.ops.aten.conv2d.default or len(node.args) < 7 or node.args[6] == 1:
                continue
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                names.append(list(stack.values())[-1][0])
        return names

    def adapt(self, model: nn.Module) -> nn.Module:
        """The token-layout deploy form switched to ``layout`` and ``upsampler`` (in place; numerically
        the same): XNNPACK runs the channels-first form without transposes around its depthwise convs,
        and a broadcast multiply instead of a transposed conv per upsampler."""
        if self.layout == "channels_first":
            from hrvit_mobile.deploy.channels_first import use_channels_first

            use_channels_first(model)
        if self.upsampler == "broadcast":
            from hrvit_mobile.deploy.fold import use_broadcast_nearest

            use_broadcast_nearest(model)
        return model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layout": self.layout, "upsampler": self.upsampler,
                **({"float_depthwise": True} if self.float_depthwise else {})}

    def quantizer(self) -> Any:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        config = get_symmetric_quantization_config(is_per_channel=self.per_channel, is_qat=self.qat)
        quantizer = XNNPACKQuantizer().set_global(config)
        for module_type in self._float_types():
            quantizer.set_module_type(module_type, None)
        for name in self._float_names():
            # set_module_name() asserts on None, but annotate() skips a None entry and the global
            # config excludes every named module: exactly "leave this module float"
            quantizer.module_name_config[name] = None
        return quantizer
