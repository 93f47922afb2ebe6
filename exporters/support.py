"""Which (target, bits, activations) exports exist, and what each needs installed.

One table, read by ``export``, by the CLI's help and by the errors, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .contract import (
    TARGETS,
    ExportSpec,
    MissingDependencyError,
    UnsupportedExportError,
    calibration_tensors,
    normalize_activations,
    synthetic_images,
    to_tensors,
)

# (target, bits, activations) -> variant name used in file names and reports.
SUPPORTED: dict[tuple[str, int, str], str] = {
    ("executorch", 32, "float"): "fp32",
    # fp16 XNNPACK kernels: the graph runs in half, with float32 in/out casts at the boundary.
    ("executorch", 16, "float"): "fp16",
    ("executorch", 8, "int8"): "int8",  # static per-channel W8A8, PT2E XNNPACKQuantizer
    ("coreml", 32, "float"): "fp32",
    ("coreml", 16, "float"): "fp16",
    ("coreml", 8, "float"): "w8",  # weight-only int8 linear, fp16 compute
    ("coreml", 8, "int8"): "w8a8",  # PT2E CoreMLQuantizer on the PyTorch side (calibration needs no Mac)
    ("coreml", 6, "float"): "pal6",  # 6-bit k-means palettization, fp16 compute
    ("coreml", 4, "float"): "pal4",  # 4-bit k-means palettization, fp16 compute
    ("tflite", 32, "float"): "fp32",
    ("tflite", 16, "float"): "fp16",  # fp16 weights, float32 compute
    ("tflite", 8, "float"): "int8dr",  # dynamic-range: int8 weights, activations quantized at run time
    ("tflite", 8, "int8"): "int8",  # full int8 static, float32 image in / float32 logits out
}

# What `--bits N` means when `--activations` is not given.
DEFAULT_ACTIVATIONS: dict[tuple[str, int], str] = {
    ("executorch", 8): "int8",  # XNNPACK has no weight-only conv path: 8-bit means W8A8 here
    ("coreml", 8): "float",
    ("tflite", 8): "float",
}

# target -> (import name, pip requirement) of what its convert/validate need.
REQUIREMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "executorch": (("executorch", "executorch==1.5.1"), ("torchao", "torchao")),
    "coreml": (("coremltools", "coremltools==9.0"),),
    "tflite": (
        ("litert_torch", "litert-torch==0.10.0"),
        ("ai_edge_litert", "ai-edge-litert"),
        ("ai_edge_quantizer", "ai-edge-quantizer"),
    ),
}

TARGET_ALIASES = {
    "tflite": "tflite",
    "litert": "tflite",
    "executorch": "executorch",
    "pte": "executorch",
    "coreml": "coreml",
    "mlpackage": "coreml",
}


def supported_pairs(target: str | None = None) -> list[tuple[str, int, str]]:
    return [k for k in SUPPORTED if target is None or k[0] == target]


def describe_supported(target: str | None = None) -> str:
    """e.g. ``tflite: 32, 16, 8 (activations float), 8 --activations 8``"""
    parts = []
    for t in [target] if target else TARGETS:
        items = []
        for _, bits, act in supported_pairs(t):
            default = DEFAULT_ACTIVATIONS.get((t, bits), "float")
            items.append(
                str(bits) if act == default else f"{bits} --activations {8 if act == 'int8' else act}"
            )
        parts.append(f"{t}: " + ", ".join(items))
    return "; ".join(parts)


def canonical_target(target: str) -> str:
    t = TARGET_ALIASES.get(str(target).lower())
    if t is None:
        raise UnsupportedExportError(
            f"unknown target {target!r}; supported targets: {', '.join(TARGETS)} (or 'all')"
        )
    return t


def resolve(spec: ExportSpec) -> tuple[ExportSpec, str]:
    """Fill in defaults and check the pair; returns a resolved copy of the spec and its variant name."""
    target = canonical_target(spec.target)
    act = (
        normalize_activations(spec.activations)
        if spec.activations is not None
        else DEFAULT_ACTIVATIONS.get((target, spec.bits), "float")
    )
    variant = SUPPORTED.get((target, spec.bits, act))
    if variant is None:
        wanted = f"--bits {spec.bits}" + (" --activations 8" if act == "int8" else "")
        raise UnsupportedExportError(
            f"--target {target} {wanted} is not supported; supported: {describe_supported(target)}"
        )
    resolved = dataclasses.replace(spec, target=target, activations=act)
    if resolved.name is None:
        h, w = spec.img_size
        resolved.name = f"{spec.model_name}_{h}x{w}_{target}_{variant}"
    return resolved, variant


def check_dependencies(target: str) -> None:
    """Raise one line naming what to pip install when a backend's packages are missing."""
    missing = [pip for mod, pip in REQUIREMENTS[target] if importlib.util.find_spec(mod) is None]
    if missing:
        extra = {"executorch": "executorch", "coreml": "coreml", "tflite": "tflite"}[target]
        raise MissingDependencyError(
            f"--target {target} needs {', '.join(missing)}: pip install {' '.join(repr(m) for m in missing)}"
            f" (or pip install 'hrvit-mobile[{extra}]')"
        )


@dataclass
class ConversionInputs:
    """What every backend's ``convert`` starts from: the resolved spec, its variant, a sample input
    and (for the variants that calibrate) the calibration tensors."""

    spec: ExportSpec
    variant: str
    example: torch.Tensor
    calib: list[torch.Tensor]


def conversion_inputs(
    target: str,
    spec: ExportSpec,
    calib: Iterable[torch.Tensor] | np.ndarray | None,
    calibrated_variants: tuple[str, ...],
) -> ConversionInputs:
    """Check packages and the pair for ``target``, then build the sample and calibration inputs."""
    check_dependencies(target)
    spec, variant = resolve(spec)
    if spec.target != target:
        raise ValueError(f"spec.target is {spec.target!r}, this is the {target} exporter")
    if spec.keep_float is not None or spec.recipe is not None:
        from .quantize import recipe_for

        recipe_for(spec)  # --keep-float on a post-conversion variant fails here, before any work
    example = to_tensors(spec.normalization.apply(synthetic_images(1, spec.img_size, seed=spec.seed)))[0]
    # a graph quantized already (QAT) is lowered as it is: nothing to calibrate
    prequantized = getattr(spec.recipe, "source", None) is not None
    calib_t = calibration_tensors(spec, calib) if variant in calibrated_variants and not prequantized else []
    return ConversionInputs(spec, variant, example, calib_t)
