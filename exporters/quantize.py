"""The exporters' side of quantization: pick the recipe for a spec and apply it with progress and a report.

The recipes themselves live in :mod:`hrvit_mobile.quant`; this module only maps an :class:`ExportSpec`
(``keep_float`` names or ``"auto"``, or an explicit ``recipe``) to one and records what it did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from hrvit_mobile.quant.recipes import BINNING_PATHS, Prequantized, PT2ERecipe, QuantRecipe

from .build import step
from .errors import ExportError
from .parity import EXPORTER_SYNTHETIC
from .registry import get_backend
from .spec import ExportSpec

AUTO = "auto"


def keep_float_names(spec: ExportSpec) -> list[str]:
    """``spec.keep_float`` as a list of module names ("auto" handled by the caller)."""
    kf = spec.keep_float
    if kf is None or kf == AUTO:
        return []
    if isinstance(kf, str):
        return [n.strip() for n in kf.split(",") if n.strip()]
    return [str(n) for n in kf]


def recipe_for(spec: ExportSpec) -> QuantRecipe:
    """The recipe a resolved spec asks for (its own ``recipe`` wins)."""
    if spec.recipe is not None:
        if spec.keep_float is not None and isinstance(spec.recipe, Prequantized):
            raise ExportError("--keep-float does not apply to a graph quantized already (QAT)")
        return spec.recipe
    assert spec.activations is not None, "resolve the spec first"
    backend = get_backend(spec.target)
    variant = backend.variant(spec.bits, spec.activations)
    if variant.recipe is None:
        raise ExportError(
            f"no quantization recipe for {backend.name} {variant.name}: it is a float export"
        )
    recipe = variant.recipe(spec)
    if spec.layout is not None and hasattr(recipe, "layout"):
        recipe.layout = spec.layout  # quantize in the layout the exporter lowers
    if spec.keep_float is not None and not isinstance(recipe, PT2ERecipe):
        raise ExportError(
            f"--keep-float applies to int8-activation exports; {spec.target} {spec.bits}-bit "
            f"({recipe.name}) quantizes after conversion"
        )
    return recipe


def check_keep_float(model: torch.nn.Module, spec: ExportSpec) -> None:
    """Unknown module names in ``keep_float`` are one line naming the groups that exist."""
    from hrvit_mobile.quant.sensitivity import module_groups

    names = keep_float_names(spec)
    if not names:
        return
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        groups = module_groups(model)
        raise ExportError(
            f"--keep-float: no module named {', '.join(unknown)}; module groups of this model: "
            f"{', '.join(groups[:12])}{' ...' if len(groups) > 12 else ''}"
        )


def quantize_pt2e(
    model: torch.nn.Module,
    example: torch.Tensor,
    recipe: PT2ERecipe,
    calib: Sequence[torch.Tensor],
    spec: ExportSpec,
    target: str,
    report: dict[str, Any] | None = None,
) -> torch.fx.GraphModule:
    """Quantize ``model`` with ``recipe`` (PTQ on ``calib``), honouring ``spec.keep_float``.

    ``report`` (when given) receives what was done: the recipe, calibration size, and for
    ``keep_float="auto"`` which groups were kept float and the figures that chose them.
    """
    info: dict[str, Any] = {**recipe.describe(), "calibration_samples": len(calib),
                            "calibration_source": spec.calib_source or EXPORTER_SYNTHETIC}
    if spec.keep_float == AUTO and not isinstance(recipe, Prequantized):
        from hrvit_mobile.quant.sensitivity import auto_keep_float

        thresholds = spec.resolved_thresholds()
        with step(target, f"keep-float auto (sensitivity on {len(calib)} inputs)"):
            result = auto_keep_float(
                model,
                recipe,
                example,
                calib,
                min_cosine=thresholds.min_cosine,
                min_argmax=thresholds.min_argmax_agreement,
            )
        from .spec import log

        log.info("[%s] %s", target, result.summary())
        info["keep_float"] = result.kept
        info["keep_float_auto"] = result.as_dict()
        quantized = result.quantized
    else:
        names = keep_float_names(spec)
        if names:
            check_keep_float(model, spec)
            recipe = recipe.with_keep_float(names)
            info["keep_float"] = names
        binned_before = Counter(BINNING_PATHS)
        with step(target, f"quantize ({recipe.name}), calibrate on {len(calib)} inputs"):
            quantized = recipe.quantize(model, example, calib, strict=spec.strict_export)
        binned = BINNING_PATHS - binned_before
        if binned:  # histogram observers (XNNPACK int8): which code binned their activations
            info["histogram_binning"] = dict(sorted(binned.items()))
    if report is not None:
        report.update(info)
    assert quantized is not None
    return quantized
