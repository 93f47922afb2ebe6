"""Quantization recipes (PTQ/QAT) per backend, sensitivity, keep-float; installed as ``hrvit_mobile.quant``.

    from hrvit_mobile.quant import XNNPACKInt8, auto_keep_float, QATConfig, train_qat
    int8 = XNNPACKInt8().quantize(deployed, example, calib)
"""

from .qat import QATConfig, QATError, QATResult, converted_from_checkpoint, is_qat_checkpoint, train_qat
from .recipes import (
    CoreMLW8A8,
    CoreMLWeightOnly,
    LiteRTInt8,
    LiteRTPostTraining,
    PostConversionRecipe,
    Prequantized,
    PT2ERecipe,
    QuantRecipe,
    QuantRecipeError,
    XNNPACKInt8,
    apply_keep_float,
    get_qat_recipe,
)
from .sensitivity import KeepFloatResult, SensitivityReport, analyze, auto_keep_float, module_groups

__all__ = [
    "CoreMLW8A8",
    "CoreMLWeightOnly",
    "KeepFloatResult",
    "LiteRTInt8",
    "LiteRTPostTraining",
    "PT2ERecipe",
    "PostConversionRecipe",
    "Prequantized",
    "QATConfig",
    "QATError",
    "QATResult",
    "QuantRecipe",
    "QuantRecipeError",
    "SensitivityReport",
    "XNNPACKInt8",
    "analyze",
    "apply_keep_float",
    "auto_keep_float",
    "converted_from_checkpoint",
    "get_qat_recipe",
    "is_qat_checkpoint",
    "module_groups",
    "train_qat",
]
