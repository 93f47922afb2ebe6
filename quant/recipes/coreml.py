"""Core ML: W8A8 on the PyTorch side (ExecuTorch's ``CoreMLQuantizer``) and weight compression of a
converted ML program (int8 linear, k-means palettes), with the graph pass both use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .base import PostConversionRecipe, PT2ERecipe, QuantRecipeError
from .patches import (
    cycle_checks_up_to_the_match,
    deferred_annotation_recompile,
    fast_pattern_capture,
    present_activation_patterns,
    weights_observed_once,
)


@dataclass
class CoreMLW8A8(PT2ERecipe):
    """Core ML W8A8 on the PyTorch side (ExecuTorch's ``CoreMLQuantizer``), converted by ``ct.convert``.

    Core ML's own activation calibration predicts, which needs macOS; PT2E calibrates anywhere. The
    quantizer inserts FakeQuantize modules in both modes, so the same config serves PTQ and QAT.
    """

    name: str = "coreml_w8a8"
    target: str = "coreml"
    scheme: str = "PT2E CoreMLQuantizer: int8 per-channel weights, uint8 static activations"
    pattern_utils: str = "executorch.backends.apple.coreml.quantizer._coreml_quantizer_utils"

    def quantizer(self) -> Any:
        from coremltools.optimize.torch.quantization.quantization_config import (
            LinearQuantizerConfig,
            QuantizationScheme,
        )
        from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

        cfg: dict[str, Any] = {
            "global_config": {
                "quantization_scheme": QuantizationScheme.symmetric,
                "activation_dtype": torch.quint8,
                "weight_dtype": torch.qint8,
                "weight_per_channel": True,
            },
            # LayerNorm and the masked softmax stay float: quantizing LayerNorm's variance path
            # rounds ``variance + eps`` to 0 on b1 and rsqrt turns it into inf (seen in calibration)
            "module_type_configs": {t: None for t in self._float_types()},
            "module_name_configs": {n: None for n in self._float_names()},
        }
        return CoreMLQuantizer(LinearQuantizerConfig.from_dict(cfg))

    def _annotation_context(self) -> contextlib.AbstractContextManager[None]:
        from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

        stack = contextlib.ExitStack()
        stack.enter_context(fast_pattern_capture(self.pattern_utils))
        stack.enter_context(deferred_annotation_recompile(CoreMLQuantizer))
        stack.enter_context(present_activation_patterns(CoreMLQuantizer, self.pattern_utils))
        stack.enter_context(cycle_checks_up_to_the_match())
        return stack

    @torch.no_grad()
    def calibrate(
        self, prepared: torch.fx.GraphModule, batches: Iterable[torch.Tensor], progress: bool = True
    ) -> torch.fx.GraphModule:
        """Run ``batches`` through the fake-quant modules; the weights' ones observe the first batch only
        (see :func:`weights_observed_once`: the result is the same as observing every batch)."""
        batches = list(batches)
        with weights_observed_once(prepared) as first_batch_done:
            super().calibrate(prepared, batches[:1], progress=False)
            first_batch_done()
            return super().calibrate(prepared, batches[1:], progress)


@dataclass
class CoreMLWeightOnly(PostConversionRecipe):
    """Core ML weight compression of a converted ML program: int8 linear, or 6/4-bit k-means palettes."""

    name: str = "coreml_weight_only"
    target: str = "coreml"
    bits: int = 8
    mode: str = "linear"  # "linear" (int8 symmetric per-channel) or "kmeans" (palettization)
    min_ios: int = 17
    # tensors with fewer elements stay fp16 (coremltools' default, 2,048)
    weight_threshold: int = 2048
    # palettization only: tensors of at least this many elements but under weight_threshold become
    # int8 (per-channel linear) instead of staying fp16; None keeps them fp16
    small_tensors_int8: int | None = None

    def __post_init__(self) -> None:
        allowed = {("linear", 8), ("kmeans", 8), ("kmeans", 6), ("kmeans", 4)}
        if (self.mode, self.bits) not in allowed:
            raise QuantRecipeError(
                f"Core ML weight-only mode {self.mode!r} with {self.bits} bits is not supported; "
                "allowed: linear 8, kmeans 8/6/4"
            )

    def graph_passes(self) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
        """The coremltools graph passes (registered name, options) that compress a converted program,
        in order, and a description of what they do.

        :meth:`conversion_pipeline` puts them into ``ct.convert``'s pass pipeline (what the exporter
        uses); :meth:`apply` runs them on an existing ML program.
        """
        from coremltools.optimize import coreml as cto

        def int8_per_channel(weight_threshold: int) -> tuple[str, dict[str, Any]]:
            cfg = cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel",
                weight_threshold=weight_threshold,
            )
            return _compression_pass("compression::linear_quantize_weights", cfg)

        if self.mode == "linear":
            passes = [int8_per_channel(self.weight_threshold)]
            info: dict[str, Any] = {
                "scheme": "weight-only int8, symmetric, per-channel (coremltools linear_quantize_weights)",
                "weight_threshold": self.weight_threshold,
                "recipe": self.name,
            }
        else:
            # Grouped-channel LUTs keep 4-bit usable, but need iOS 18; before that one LUT per tensor.
            grouped = self.min_ios >= 18
            granularity = "per_grouped_channel" if grouped else "per_tensor"
            cfg = cto.OpPalettizerConfig(
                nbits=self.bits, mode="kmeans", granularity=granularity,
                weight_threshold=self.weight_threshold, **({"group_size": 16} if grouped else {}),
            )
            passes = [_compression_pass("compression::palettize_weights", cfg)]
            info = {
                "scheme": f"{self.bits}-bit k-means palettization, {granularity}"
                + (" (group 16)" if grouped else "")
                + ", fp16 compute",
                "weight_threshold": self.weight_threshold,
                "recipe": self.name,
            }
            if self.small_tensors_int8 is not None:
                # the tensors too small to palettize well stay out of the palettes but need not stay
                # fp16: int8 per-channel, as --bits 8 stores every tensor
                passes.append(int8_per_channel(self.small_tensors_int8))
                info["scheme"] += f"; tensors of {self.small_tensors_int8}+ elements below that int8"
                info["small_tensors_int8_threshold"] = self.small_tensors_int8
        passes.append((register_scalar_zero_points(), {}))
        return passes, info

    def conversion_pipeline(self) -> tuple[Any, dict[str, Any]]:
        """``ct.convert``'s default pass pipeline with :meth:`graph_passes` after it, then coremltools'
        cleanup passes (what a compressed program gets when ``*_weights`` converts it back), and the
        description. Compressing inside the conversion saves that round trip through the protobuf,
        the weight file and the whole default pipeline (25-30 s of a b1 export)."""
        import coremltools as ct

        pipeline = ct.PassPipeline.DEFAULT
        passes, info = self.graph_passes()
        for name, options in passes:
            pipeline.append_pass(name)
            if options:
                pipeline.set_options(name, options)
        for name in ct.PassPipeline.CLEANUP.passes:
            pipeline.append_pass(name)
        return pipeline, info

    def apply(self, mlmodel: Any) -> tuple[Any, dict[str, Any]]:
        """The compressed ML program (all passes on one pymil program, one conversion back) and a
        description of what was done."""
        from coremltools.converters.mil.mil.passes.graph_pass import PassOption
        from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
        from coremltools.models.utils import _apply_graph_pass

        passes, info = self.graph_passes()
        instances = []
        for name, options in passes:
            graph_pass = PASS_REGISTRY[name]
            graph_pass.set_options([PassOption(k, v) for k, v in options.items()])
            instances.append(graph_pass)
        return _apply_graph_pass(mlmodel, instances), info


def _compression_pass(name: str, config: Any) -> tuple[str, dict[str, Any]]:
    """coremltools' compression pass ``name`` with ``config``, the options its ``*_weights``
    functions set."""
    from coremltools.optimize.coreml import OptimizationConfig

    return name, {"config": OptimizationConfig(global_config=config), "joint_compression": False}


SCALAR_ZERO_POINTS_PASS = "hrvit_mobile::scalar_zero_points"


def register_scalar_zero_points() -> str:
    """Register (once) and name the coremltools graph pass that gives an int8
    ``constexpr_affine_dequantize`` whose per-channel zero points are all 0 (symmetric quantization)
    the scalar 0 instead.

    coremltools stores the zeros as a vector blob per tensor (deduplicated by length); the op's spec
    allows a scalar zero point beside a per-channel scale, each broadcasting along ``axis`` on its own.
    The decompressed weights are identical.
    """
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    if SCALAR_ZERO_POINTS_PASS in PASS_REGISTRY:
        return SCALAR_ZERO_POINTS_PASS

    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.pass_registry import register_pass

    @register_pass(namespace="hrvit_mobile", name="scalar_zero_points")
    class ScalarZeroPoints(AbstractGraphPass):
        def apply(self, prog: Any) -> None:
            for function in prog.functions.values():
                self._rewrite(function)

        def _rewrite(self, block: Any) -> None:
            # one block context for all rewrites: leaving it re-propagates the block's
            # non-replaceable vars, 0.1 s a time on b1
            with block:
                for op in list(block.operations):
                    for inner in op.blocks:
                        self._rewrite(inner)
                    if op.op_type != "constexpr_affine_dequantize":
                        continue
                    zero_point = op.zero_point.val
                    if np.ndim(zero_point) != 1 or np.any(zero_point):
                        continue
                    scalar = mb.constexpr_affine_dequantize(
                        quantized_data=op.quantized_data.val,
                        zero_point=np.zeros((), dtype=zero_point.dtype),
                        scale=op.scale.val,
                        axis=op.axis.val,
                        before_op=op,
                        name=op.name + "_zp",
                    )
                    block.replace_uses_of_var_after_op(
                        anchor_op=op, old_var=op.outputs[0], new_var=scalar, force_replace=True
                    )
                    block.remove_ops([op])

    return SCALAR_ZERO_POINTS_PASS


# 4-bit palettes: tensors of 256 to 2,047 elements (too small for coremltools to palettize) go int8
# instead of fp16. b1 at 512x512, demo checkpoint, the same 2 parity images: 4.946 -> 4.884 MB, cosine
# 0.99585 -> 0.99616, argmax 95.35 -> 95.54 % (the 4-bit palettes' error dominates); from 64 elements
# the file grows again (4.889 MB: per-channel scales of tiny tensors); at 512 elements palettizing them
# instead fell to cosine 0.9774, argmax 87.5 %.
PAL4_SMALL_TENSORS_INT8 = 256

# Weight-only 8-bit: every weight of 256+ elements int8 (coremltools' default leaves those under 2,048
# fp16). b1 at 512x512, demo checkpoint, 2 parity images: 8.854 -> 8.768 MB (0.2708x ->
# 0.2681x the 32.697 MB fp32 package), cosine 0.999991 -> 0.999952, argmax 99.79 -> 99.59 %. The
# error comes from the small convs (3x3 / 5x5 depthwise, the stem): int8 on convs alone gave the same
# cosine (0.999947). ``CoreMLWeightOnly(bits=8, weight_threshold=2048)`` keeps coremltools' default.
W8_WEIGHT_THRESHOLD = 256
