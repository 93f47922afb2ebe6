"""Questions about targets answered from the backend registry: which exports exist, how a spec
resolves to a variant, what a backend needs installed, and the inputs every ``convert`` starts from.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from hrvit_mobile import patching

from .errors import MissingDependencyError
from .parity import synthetic_images, to_tensors
from .registry import all_variants, backends, get_backend
from .spec import ExportSpec, calibration_tensors


def supported() -> dict[tuple[str, int, str], str]:
    """(target, bits, activations) -> variant name, for every registered backend."""
    return {(b.name, v.bits, v.activations): v.name for b, v in all_variants()}


def supported_pairs(target: str | None = None) -> list[tuple[str, int, str]]:
    return [k for k in supported() if target is None or k[0] == target]


def describe_supported(target: str | None = None) -> str:
    """e.g. ``tflite: 32, 16, 8 (activations float), 8 --activations 8``"""
    chosen = [get_backend(target)] if target else backends()
    return "; ".join(f"{b.name}: {b.describe()}" for b in chosen)


def canonical_target(target: str) -> str:
    return get_backend(target).name


def resolve(spec: ExportSpec) -> tuple[ExportSpec, str]:
    """Fill in defaults and check the pair; returns a resolved copy of the spec and its variant name."""
    backend = get_backend(spec.target)
    variant = backend.variant(spec.bits, spec.activations)
    resolved = dataclasses.replace(spec, target=backend.name, activations=variant.activations)
    if resolved.name is None:
        h, w = spec.img_size
        resolved.name = f"{spec.model_name}_{h}x{w}_{backend.name}_{variant.name}"
    return resolved, variant.name


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def check_dependencies(target: str, variant: str | None = None) -> None:
    """Raise one line naming what to pip install when a backend's (or variant's) packages are missing."""
    backend = get_backend(target)
    needed = backend.requirements + (backend.variant_named(variant).requirements if variant else ())
    missing = [pip for mod, pip in needed if not _installed(mod)]
    if missing:
        raise MissingDependencyError(
            f"--target {backend.name} needs {', '.join(missing)}: pip install "
            f"{' '.join(repr(m) for m in missing)} (or pip install 'hrvit-mobile[{backend.extra}]')"
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
) -> ConversionInputs:
    """Check packages and the pair for ``target``, then build the sample and calibration inputs."""
    check_dependencies(target)
    spec, variant = resolve(spec)
    check_dependencies(target, variant)
    patching.begin_export(spec.patches)
    if spec.target != target:
        raise ValueError(f"spec.target is {spec.target!r}, this is the {target} exporter")
    if spec.keep_float is not None or spec.recipe is not None:
        from .quantize import recipe_for

        recipe_for(spec)  # --keep-float on a post-conversion variant fails here, before any work
    example = to_tensors(spec.normalization.apply(synthetic_images(1, spec.img_size, seed=spec.seed)))[0]
    # a graph quantized already (QAT) is lowered as it is: nothing to calibrate
    prequantized = getattr(spec.recipe, "source", None) is not None
    calibrates = get_backend(target).variant_named(variant).calibrates
    calib_t = calibration_tensors(spec, calib) if calibrates and not prequantized else []
    return ConversionInputs(spec, variant, example, calib_t)
