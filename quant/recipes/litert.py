"""LiteRT int8: litert-torch's PT2E quantizer (QAT, PT2E conversion) and ``ai_edge_quantizer`` on the
converted float .tflite (post-training export)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from hrvit_mobile.models.norm import DelegableLayerNorm

from .base import PostConversionRecipe, PT2ERecipe, QuantRecipeError


def _on_rank_three(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``forward`` over the last dim, leading dims but the first folded: (B, *, C) -> (B, N, C)."""
    if x.dim() <= 3:
        return forward(x)
    y = forward(x.reshape(x.shape[0], -1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


class RankThreeLinear(nn.Linear):
    @classmethod
    def from_linear(cls, linear: nn.Linear) -> RankThreeLinear:
        """The same parameters (shared, under the same names), the rank-3 forward."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        new.weight, new.bias = linear.weight, linear.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _on_rank_three(super().forward, x)


class RankThreeLayerNorm(DelegableLayerNorm):
    @classmethod
    def from_delegable(cls, norm: DelegableLayerNorm) -> RankThreeLayerNorm:
        """The same buffers and parameters, the rank-3 forward."""
        new = cls(norm.mean_row.shape[-1], norm.eps)
        new.mean_row, new.eps_bias = norm.mean_row, norm.eps_bias
        new.weight, new.bias = norm.weight, norm.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _on_rank_three(super().forward, x)


@dataclass
class LiteRTInt8(PT2ERecipe):
    """LiteRT: litert-torch's PT2E quantizer (int8 per-channel weights, static int8 activations).

    Used for QAT toward LiteRT and for a PT2E-quantized ``litert_torch.convert``; post-training export to
    .tflite uses :class:`LiteRTPostTraining`, which quantizes the converted graph itself.
    """

    name: str = "litert_int8"
    target: str = "tflite"
    per_channel: bool = True
    scheme: str = "PT2E litert_torch PT2EQuantizer: int8 per-channel weights, static int8 activations"
    pattern_utils: str = "litert_torch.quantize.pt2e_quantizer_utils"
    # litert-torch's converter turns each quantize/dequantize pair around a float weight into a quantized
    # tensor and refuses weights folded into int8 constants
    fold_quantize: ClassVar[bool] = False

    def adapt(self, model: nn.Module) -> nn.Module:
        """Linears (and the LayerNorm's mean linears) on (B, H, W, C) tokens run on (B, H*W, C): LiteRT's
        quantized batch_matmul takes rank 3 only (float conversion reshapes by itself; the quantized
        path fails with "tfl.batch_matmul ... expected 3 but got 4")."""
        adapted = copy.deepcopy(model)  # the caller's module stays as it was
        for parent in list(adapted.modules()):
            for name, child in parent.named_children():
                if type(child) is nn.Linear:
                    setattr(parent, name, RankThreeLinear.from_linear(child))
                elif type(child) is DelegableLayerNorm:
                    setattr(parent, name, RankThreeLayerNorm.from_delegable(child))
        return adapted

    def quantizer(self) -> Any:
        from litert_torch.quantize import pt2e_quantizer as pt2eq

        config = pt2eq.get_symmetric_quantization_config(is_per_channel=self.per_channel, is_qat=self.qat)
        quantizer = pt2eq.PT2EQuantizer().set_global(config)
        for module_type in self._float_types():
            quantizer.set_module_type(module_type, None)
        for name in self._float_names():
            # set_module_name() asserts on None, but annotate() skips a None entry and the global
            # config excludes every named module: exactly "leave this module float"
            quantizer.module_name_config[name] = None
        return quantizer


# how LiteRTPostTraining's static int8 gathers statistics (see its docstring): name -> the member of
# ai_edge_quantizer's CalibrationMode it selects
LITERT_CALIBRATION_MODES = {
    "profiler": "CALIBRATION_PROFILER_BASED",
    "preserve_all_tensors": "CALIBRATION_PRESERVE_ALL_TENSORS",
}


def _statistics_in_tensor_rank(statistics: dict[str, Any], float_model: bytes) -> dict[str, Any]:
    """Profiler statistics shaped as the preserve-all calibration shapes them: a per-tensor min/max of
    shape ``(1,) * rank`` (the profiler returns shape ``(1,)``, which the quantizer's concatenation
    handling turns into scales of the wrong rank: "Ranks of scales (5) ... tensor rank (4)")."""
    import numpy as np
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    ranks: dict[str, int] = {}
    for subgraph in tfl_flatbuffer_utils.read_model(float_model).subgraphs:
        for tensor in subgraph.tensors:
            ranks[tfl_flatbuffer_utils.get_tensor_name(tensor)] = len(tensor.shape)
    out: dict[str, Any] = {}
    for name, qsv in statistics.items():
        shape = (1,) * ranks[name] if name in ranks else None
        out[name] = {
            key: np.reshape(value, shape) if shape is not None and np.size(value) == 1 else value
            for key, value in qsv.items()
        }
    return out


# Static int8 ops the LiteRT interpreter's XNNPACK delegate has no int8 kernel for on HRViT's graph:
# quantized, they run in the interpreter's builtin kernels, and every one splits the delegated graph
# (b1 256x256: 478 ops outside XNNPACK, 156 partitions; the int8 BATCH_MATMULs alone were half the
# ops' time). Left float, XNNPACK runs them in fp32 between DEQUANTIZE/QUANTIZE it also runs:
# 13 ops outside (the nearest resizes, outside in fp32 too). `benchmarks/int8_profile.py` measures both.
XNNPACK_FLOAT_OPS: tuple[str, ...] = ("BATCH_MATMUL", "SOFTMAX", "HARD_SWISH", "GELU", "RSQRT")


@dataclass
class LiteRTPostTraining(PostConversionRecipe):
    """``ai_edge_quantizer`` on the float .tflite: it quantizes exactly the ops the runtime will run.

    ``variant``: ``fp16`` (fp16 weights), ``int8dr`` (dynamic-range int8), ``int8`` (static int8 with the
    graph's input/output kept float32, so the app feeds the float image and reads float logits).

    ``calibration`` (static int8 only) picks how ``ai_edge_quantizer`` gathers each tensor's min/max:
    ``"profiler"`` (``CALIBRATION_PROFILER_BASED``: the interpreter runs with XNNPACK and records the
    statistics in C++) or ``"preserve_all_tensors"`` (the library's default: XNNPACK off, every
    intermediate tensor kept and read into Python). On b1 at 512x512 over 4 samples the profiler took
    1.9 s against 9.8 s, gave statistics for the same 2,852 tensors, and they differed by at most
    2.3e-7 relative (the two runs use different float kernels); the preserve-all mode also holds the
    interpreter's 2.5 GB of intermediate tensors (b1).
    """

    name: str = "litert_post_training"
    target: str = "tflite"
    variant: str = "int8"
    signature: str = "serving_default"
    input_name: str = "image"
    calibration: str = "profiler"
    # static int8 only: TFLite op types left float (``ai_edge_quantizer``'s NO_QUANTIZE); None: the
    # int8 variant's XNNPACK_FLOAT_OPS, () quantizes every op the quantizer can
    float_ops: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.variant not in ("fp16", "int8dr", "int8"):
            raise QuantRecipeError(
                f"LiteRT post-training variant {self.variant!r}; allowed: fp16, int8dr, int8"
            )
        if self.float_ops is None:
            self.float_ops = XNNPACK_FLOAT_OPS if self.variant == "int8" else ()
        elif self.float_ops:
            self._check_float_ops()
        if self.calibration not in LITERT_CALIBRATION_MODES:
            raise QuantRecipeError(
                f"LiteRT calibration mode {self.calibration!r}; "
                f"allowed: {', '.join(LITERT_CALIBRATION_MODES)}"
            )

    def _check_float_ops(self) -> None:
        from ai_edge_quantizer.qtyping import TFLOperationName

        unknown = [op for op in self.float_ops if not hasattr(TFLOperationName, op)]
        if unknown or self.variant != "int8":
            raise QuantRecipeError(
                f"LiteRT float_ops {', '.join(unknown or self.float_ops)}: allowed for the int8 variant, "
                "TFLite op names ai_edge_quantizer knows (e.g. BATCH_MATMUL, SOFTMAX)"
            )

    @property
    def needs_calibration(self) -> bool:
        return self.variant == "int8"

    def apply(self, float_model: bytes, calib: Sequence[torch.Tensor] = ()) -> tuple[bytes, dict[str, Any]]:
        """The quantized flatbuffer and a description of what was done."""
        from ai_edge_quantizer import qtyping, quantizer, recipe
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        q = quantizer.Quantizer(bytearray(float_model))
        if self.variant == "fp16":
            q.add_weight_only_config(
                regex=".*",
                operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                num_bits=16,
                algorithm_key=AlgorithmName.FLOAT_CASTING,
            )
            info: dict[str, Any] = {"scheme": "ai_edge_quantizer float_casting: fp16 weights, fp32 compute"}
        elif self.variant == "int8dr":
            q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            info = {
                "scheme": "ai_edge_quantizer dynamic_wi8_afp32: int8 per-channel weights, "
                "activations quantized at run time"
            }
        else:
            q.load_quantization_recipe(recipe.static_wi8_ai8())
            # Keep the graph's input and output float32: the converter then puts QUANTIZE/DEQUANTIZE
            # at the boundary instead of making the app feed int8.
            kept_float = (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT,
                          *(getattr(qtyping.TFLOperationName, op) for op in self.float_ops))
            for op in kept_float:
                q.update_quantization_recipe(
                    regex=".*", operation_name=op, algorithm_key=AlgorithmName.NO_QUANTIZE
                )
            info = {
                "scheme": "ai_edge_quantizer static_wi8_ai8: int8 per-channel weights, int8 activations "
                "(per-tensor, calibrated); float32 graph input/output",
                "calibration_samples": len(calib),
            }
            if self.float_ops:
                info["float_ops"] = list(self.float_ops)
        calibration = None
        if q.need_calibration:
            calibration = self.calibrate(q, float_model, calib)
            info["calibration_mode"] = self.calibration
        result = q.quantize(calibration, enable_progress_report=False)
        info["recipe"] = self.name
        return bytes(result.quantized_model), info

    def calibrate(self, q: Any, float_model: bytes, calib: Sequence[torch.Tensor]) -> dict[str, Any]:
        """The per-tensor statistics of ``calib`` through ``float_model`` (``q``: an ``ai_edge_quantizer``
        ``Quantizer`` of it with this recipe loaded), gathered in this recipe's ``calibration`` mode."""
        from ai_edge_quantizer.calibrator import CalibrationMode

        mode = getattr(CalibrationMode, LITERT_CALIBRATION_MODES[self.calibration])
        data = {self.signature: [{self.input_name: x.numpy()} for x in calib]}
        statistics = q.calibrate(data, num_threads=os.cpu_count() or 1, mode=mode)
        if self.calibration == "profiler":
            statistics = _statistics_in_tensor_rank(statistics, float_model)
        return statistics

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.needs_calibration:
            out["calibration_mode"] = self.calibration
            out["float_ops"] = list(self.float_ops)
        return out
