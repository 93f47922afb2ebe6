"""Which parts of the network int8 hurts most, and ``keep_float="auto"``.

Cost stays bounded by measuring module *groups*, not single layers: the stem, each fusion, each branch of
each stage, the head (see :func:`module_groups`). A group's sensitivity is the output SQNR gained over
full int8 when only that group is kept float (so the figures answer "what does keeping this float buy"),
measured on the calibration batches against the float model.

:func:`auto_keep_float` keeps the most sensitive groups float, one at a time in order of gain, until the
quantized model meets a parity target (cosine and argmax agreement against float), and reports which.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from hrvit_mobile.metrics import cosine_similarity, sqnr_db

from .recipes import PT2ERecipe, QuantRecipeError

log = logging.getLogger("hrvit_mobile.quant")


def module_groups(model: nn.Module) -> list[str]:
    """Names of the module groups sensitivity is measured over, in forward order.

    Top-level children, with ``ModuleList`` children expanded one level, and a stage's parallel
    ``branches`` expanded to one group per branch (HRViT's branches differ in resolution and width,
    so they differ in sensitivity).
    """
    groups: list[str] = []
    for name, child in model.named_children():
        subs = list(child.named_children()) if isinstance(child, nn.ModuleList) else [("", child)]
        for sub_name, sub in subs:
            prefix = f"{name}.{sub_name}" if sub_name else name
            branches = getattr(sub, "branches", None)
            if isinstance(branches, nn.ModuleList) and len(branches) > 1:
                groups.extend(f"{prefix}.branches.{i}" for i in range(len(branches)))
            elif any(True for _ in sub.parameters()):
                groups.append(prefix)
    return groups


@dataclass
class Agreement:
    """The quantized model's logits against float on the same batches."""

    sqnr_db: float
    cosine: float
    argmax: float

    def as_dict(self) -> dict[str, float]:
        return {
            "sqnr_db": round(self.sqnr_db, 3),
            "cosine": round(self.cosine, 6),
            "argmax": round(self.argmax, 6),
        }


def agreement(outputs: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> Agreement:
    out = np.concatenate([np.asarray(o, np.float64).ravel() for o in outputs])
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in references])
    arg = np.mean([float(np.mean(o.argmax(1) == r.argmax(1))) for o, r in zip(outputs, references)])
    return Agreement(sqnr_db(out, ref), cosine_similarity(out, ref), float(arg))


@torch.no_grad()
def _outputs(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [model(x).float().numpy() for x in batches]


@dataclass
class GroupSensitivity:
    name: str
    kept_float: Agreement  # everything int8 except this group
    gain_db: float  # SQNR over full int8

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.name, "gain_db": round(self.gain_db, 3), **self.kept_float.as_dict()}


@dataclass
class SensitivityReport:
    recipe: str
    full_int8: Agreement
    groups: list[GroupSensitivity]  # most sensitive first

    def as_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "full_int8": self.full_int8.as_dict(),
            "groups": [g.as_dict() for g in self.groups],
        }

    def as_text(self) -> str:
        lines = [f"full int8: SQNR {self.full_int8.sqnr_db:.1f} dB, cosine {self.full_int8.cosine:.4f}"]
        for g in self.groups:
            lines.append(f"  {g.name:32s} float: {g.gain_db:+.2f} dB (cosine {g.kept_float.cosine:.4f})")
        return "\n".join(lines)


def _quantized_agreement(
    model: nn.Module,
    recipe: PT2ERecipe,
    example: torch.Tensor,
    calib: Sequence[torch.Tensor],
    references: Sequence[np.ndarray],
    keep: Sequence[str],
) -> tuple[Agreement, torch.fx.GraphModule]:
    quantized = recipe.with_keep_float(keep).quantize(model, example, calib, progress=False)
    return agreement(_outputs(quantized, calib), references), quantized


def analyze(
    model: nn.Module,
    recipe: PT2ERecipe,
    example: torch.Tensor,
    calib: Sequence[torch.Tensor],
    groups: Sequence[str] | None = None,
    progress: bool = True,
) -> SensitivityReport:
    """Per-group sensitivity of ``model`` under ``recipe`` on ``calib`` (normalized (1, 3, H, W))."""
    from tqdm import tqdm

    if not isinstance(recipe, PT2ERecipe):
        raise QuantRecipeError(
            f"sensitivity needs a PT2E recipe (int8 activations); {recipe.name} is not one"
        )
    model = model.eval()
    groups = list(groups) if groups is not None else module_groups(model)
    references = _outputs(model, calib)
    graph = recipe.capture(model, example)  # one capture, a copy per recipe tried
    full, _ = _quantized_agreement(graph, recipe, example, calib, references, ())
    results = []
    bar = tqdm(groups, desc=f"[{recipe.target}] sensitivity", disable=not progress or None, leave=False)
    for name in bar:
        kept, _ = _quantized_agreement(graph, recipe, example, calib, references, (name,))
        results.append(GroupSensitivity(name, kept, kept.sqnr_db - full.sqnr_db))
    results.sort(key=lambda g: g.gain_db, reverse=True)
    return SensitivityReport(recipe.name, full, results)


@dataclass
class KeepFloatResult:
    """What ``keep_float="auto"`` chose, and the path it took there."""

    kept: list[str]
    met: bool
    target: dict[str, float]
    final: Agreement
    trail: list[dict[str, Any]] = field(default_factory=list)  # one entry per tried set
    sensitivity: SensitivityReport | None = None
    quantized: torch.fx.GraphModule | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": "auto",
            "kept_float": self.kept,
            "target_met": self.met,
            "target": self.target,
            "final": self.final.as_dict(),
            "trail": self.trail,
            "sensitivity": self.sensitivity.as_dict() if self.sensitivity else None,
        }

    def summary(self) -> str:
        kept = ", ".join(self.kept) if self.kept else "nothing"
        state = "met" if self.met else "NOT met"
        f = self.final
        return (f"keep-float auto: kept {kept} in float; target {state} "
                f"(cosine {f.cosine:.4f}, argmax {f.argmax:.3f}, SQNR {f.sqnr_db:.1f} dB)")


def _meets(a: Agreement, min_cosine: float | None, min_argmax: float | None) -> bool:
    return (min_cosine is None or a.cosine >= min_cosine) and (min_argmax is None or a.argmax >= min_argmax)


def auto_keep_float(
    model: nn.Module,
    recipe: PT2ERecipe,
    example: torch.Tensor,
    calib: Sequence[torch.Tensor],
    min_cosine: float | None = 0.98,
    min_argmax: float | None = 0.90,
    max_groups: int | None = None,
    groups: Sequence[str] | None = None,
    progress: bool = True,
) -> KeepFloatResult:
    """Keep the most sensitive groups float, greedily, until ``min_cosine``/``min_argmax`` are met.

    Full int8 is tried first (nothing is kept float when it already meets the target). The result holds
    the quantized graph of the last set tried; ``met`` says whether the target was reached.
    """
    from tqdm import tqdm

    model = model.eval()
    target = {"min_cosine": min_cosine, "min_argmax": min_argmax}
    references = _outputs(model, calib)
    graph = recipe.capture(model, example)
    full, quantized = _quantized_agreement(graph, recipe, example, calib, references, ())
    trail = [{"kept_float": [], **full.as_dict()}]
    if _meets(full, min_cosine, min_argmax):
        return KeepFloatResult([], True, target, full, trail, None, quantized)
    report = analyze(model, recipe, example, calib, groups=groups, progress=progress)
    order = [g.name for g in report.groups if g.gain_db > 0]
    if max_groups is not None:
        order = order[:max_groups]
    kept: list[str] = []
    current = full
    bar = tqdm(order, desc=f"[{recipe.target}] keep-float auto", disable=not progress or None, leave=False)
    for name in bar:
        kept.append(name)
        current, quantized = _quantized_agreement(graph, recipe, example, calib, references, kept)
        trail.append({"kept_float": list(kept), **current.as_dict()})
        log.info("[%s] keep-float auto: + %s -> cosine %.4f, argmax %.3f",
                 recipe.target, name, current.cosine, current.argmax)
        if _meets(current, min_cosine, min_argmax):
            return KeepFloatResult(kept, True, target, current, trail, report, quantized)
    return KeepFloatResult(kept, False, target, current, trail, report, quantized)
