"""Quantization recipes: small objects applied to a model, one per backend scheme.

A recipe knows its backend's quantizer and nothing about files. Two kinds:

- :class:`PT2ERecipe` acts on the PyTorch graph (``prepare -> calibrate or QAT -> convert``):
  :class:`XNNPACKInt8` (ExecuTorch), :class:`CoreMLW8A8` (ExecuTorch's ``CoreMLQuantizer``, then
  ``ct.convert``) and :class:`LiteRTInt8` (litert-torch's ``PT2EQuantizer``). ``qat=True`` gives the
  same quantizer in QAT mode (fake-quant modules that train).
- :class:`PostConversionRecipe` acts on the converted artifact: :class:`CoreMLWeightOnly` (linear int8
  or k-means palettization of an ML program) and :class:`LiteRTPostTraining` (``ai_edge_quantizer`` on the
  float .tflite: fp16 weights, dynamic-range int8, static int8).

``keep_float`` lists module names (``features.3.branches.1``) or types left in float; HRViT's float
islands (masked softmax, LayerNorm, see :mod:`hrvit_mobile.models.float_islands`) are always added.
Each export variant names its recipe in its backend's registration (``hrvit_mobile.exporters.registry``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import (
    DES_FORMS,
    PostConversionRecipe,
    Prequantized,
    PT2ERecipe,
    QuantRecipe,
    QuantRecipeError,
    apply_keep_float,
    is_quantized_graph,
)
from .calibration import BINNING_PATHS, fake_quantize_per_tensor, histc_in_range
from .coreml import (
    PAL4_SMALL_TENSORS_INT8,
    SCALAR_ZERO_POINTS_PASS,
    W8_WEIGHT_THRESHOLD,
    CoreMLW8A8,
    CoreMLWeightOnly,
    register_scalar_zero_points,
)
from .executorch import XNNPACKInt8
from .litert import (
    LITERT_CALIBRATION_MODES,
    LiteRTInt8,
    LiteRTPostTraining,
    RankThreeLayerNorm,
    RankThreeLinear,
)
from .patches import (
    HISTOGRAM_FAST_PATH,
    fast_coreml_pattern_capture,
    fast_fake_quantize,
    fast_histograms,
    fast_pattern_capture,
    histograms_in_background,
    indexed_attr_names,
    weights_observed_once,
)

# QAT needs a PT2E quantizer in QAT mode: the recipe classes that have one, found by their ``target``.
QAT_RECIPES: tuple[type[PT2ERecipe], ...] = (XNNPACKInt8, CoreMLW8A8, LiteRTInt8)


def get_qat_recipe(target: str, keep_float: Sequence[str | type[nn.Module]] = ()) -> PT2ERecipe:
    """The target's PT2E quantizer in QAT mode."""
    for cls in QAT_RECIPES:
        if cls.target == target:
            return cls(qat=True, keep_float=tuple(keep_float))
    allowed = ", ".join(cls.target for cls in QAT_RECIPES)
    raise QuantRecipeError(f"no QAT recipe for target {target!r}; allowed: {allowed}")


__all__ = [
    "BINNING_PATHS",
    "DES_FORMS",
    "HISTOGRAM_FAST_PATH",
    "LITERT_CALIBRATION_MODES",
    "PAL4_SMALL_TENSORS_INT8",
    "QAT_RECIPES",
    "SCALAR_ZERO_POINTS_PASS",
    "W8_WEIGHT_THRESHOLD",
    "CoreMLW8A8",
    "CoreMLWeightOnly",
    "LiteRTInt8",
    "LiteRTPostTraining",
    "PT2ERecipe",
    "PostConversionRecipe",
    "Prequantized",
    "QuantRecipe",
    "QuantRecipeError",
    "RankThreeLayerNorm",
    "RankThreeLinear",
    "XNNPACKInt8",
    "apply_keep_float",
    "fake_quantize_per_tensor",
    "fast_coreml_pattern_capture",
    "fast_fake_quantize",
    "fast_histograms",
    "fast_pattern_capture",
    "get_qat_recipe",
    "histc_in_range",
    "histograms_in_background",
    "indexed_attr_names",
    "is_quantized_graph",
    "register_scalar_zero_points",
    "weights_observed_once",
]
