"""What every recipe is: the base classes, the PT2E flow (prepare -> calibrate or QAT -> convert) with
its speedups, the DES forms, and the quantized-graph checks."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from hrvit_mobile.deploy.modules import FACTORED_DES_MIN_CHANNELS
from hrvit_mobile.errors import HRViTMobileError

from ..observers import fast_param_search
from .patches import (
    fast_fake_quantize,
    fast_histograms,
    fast_pattern_capture,
    histograms_in_background,
    indexed_attr_names,
)

log = logging.getLogger("hrvit_mobile.quant")


# DES shortcut forms of the deploy graph: "factored" (the deploy form's default: the wide maps keep their
# Kronecker factors) or "dense" (every DES two dense linears, what QAT checkpoints from before the
# choice was recorded were trained with), as ``hrvit_mobile.deploy``'s ``factored_des_from``
DES_FORMS: dict[str, int | None] = {"factored": FACTORED_DES_MIN_CHANNELS, "dense": None}

KeepFloat = tuple[str | type[nn.Module], ...]


class QuantRecipeError(HRViTMobileError):
    """A recipe that does not exist or cannot apply; the message is one line."""


@dataclass
class QuantRecipe:
    """What every recipe has: a name for reports, its target, and the modules it leaves float."""

    name: str = "recipe"
    target: str = ""
    keep_float: KeepFloat = ()
    qat: bool = False

    def describe(self) -> dict[str, Any]:
        names = [k for k in self.keep_float if isinstance(k, str)]
        return {"recipe": self.name, "qat": self.qat, "keep_float": names}


@dataclass
class PT2ERecipe(QuantRecipe):
    """A PT2E quantizer on the exported graph: ``prepare`` -> ``calibrate`` (or train) -> ``convert``."""

    float_islands: bool = True
    scheme: str = ""
    # the DES form of the deploy graph the recipe QAT-trains (``DES_FORMS``); QAT checkpoints record it
    des: str = "factored"

    def factored_des_from(self) -> int | None:
        """``hrvit_mobile.deploy``'s ``factored_des_from`` for this recipe's DES form."""
        if self.des not in DES_FORMS:
            raise QuantRecipeError(f"unknown DES form {self.des!r}; allowed: {', '.join(DES_FORMS)}")
        return DES_FORMS[self.des]

    def quantizer(self) -> Any:  # pragma: no cover - every concrete recipe overrides it
        raise NotImplementedError

    def _float_types(self) -> list[type[nn.Module]]:
        from hrvit_mobile.models.float_islands import float_module_types

        types = [k for k in self.keep_float if isinstance(k, type)]
        if self.float_islands:
            types.extend(float_module_types())
        return types

    def _float_names(self) -> list[str]:
        return [k for k in self.keep_float if isinstance(k, str)]

    # the module whose ``_get_aten_graph_module_for_pattern`` the quantizer calls (see fast_pattern_capture)
    pattern_utils: str = ""
    # convert_pt2e's fold_quantize: int8 weight constants (True) or quantize/dequantize pairs around float
    # weights (False, what litert-torch's converter needs)
    fold_quantize: ClassVar[bool] = True

    def _annotation_context(self) -> contextlib.AbstractContextManager[None]:
        return fast_pattern_capture(self.pattern_utils) if self.pattern_utils else contextlib.nullcontext()

    def adapt(self, model: nn.Module) -> nn.Module:
        """A numerically identical rewrite of ``model`` that the target's quantized ops need (in place)."""
        return model

    def float_names_in(self, graph: torch.fx.GraphModule) -> list[str]:
        """Names of modules of the captured ``graph`` this recipe leaves float besides ``keep_float``."""
        return []

    @staticmethod
    def capture(model: nn.Module, example: torch.Tensor, strict: bool = False) -> torch.fx.GraphModule:
        """The graph PT2E works on; capture once and pass copies to :meth:`prepare` to try many recipes."""
        return torch.export.export(model, (example,), strict=strict).module()

    def prepare(
        self, model: nn.Module, example: torch.Tensor, strict: bool = False, captured: bool = False
    ) -> torch.fx.GraphModule:
        """Capture ``model`` with ``torch.export`` (unless ``captured``: it is a :meth:`capture` result,
        consumed) and insert observers (PTQ) or fake-quant modules (QAT)."""
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

        t0 = time.perf_counter()
        gm = model if captured else self.capture(self.adapt(model), example, strict)
        extra = self.float_names_in(gm)
        recipe = self.with_keep_float(extra) if extra else self
        with self._annotation_context(), indexed_attr_names():
            prepared = (prepare_qat_pt2e if self.qat else prepare_pt2e)(gm, recipe.quantizer())
        log.debug("[%s] prepared (%s) in %.1f s", self.target, self.name, time.perf_counter() - t0)
        return prepared

    @torch.no_grad()
    def calibrate(
        self, prepared: torch.fx.GraphModule, batches: Iterable[torch.Tensor], progress: bool = True
    ) -> torch.fx.GraphModule:
        """Run ``batches`` (normalized (1, 3, H, W)) through the observers (fake-quant modules, where the
        quantizer inserts those, fake-quantize with :func:`fast_fake_quantize`; histogram observers count
        with :func:`fast_histograms`: the same bits, on a background thread, see
        :func:`histograms_in_background`)."""
        from tqdm import tqdm

        batches = list(batches)
        desc = f"[{self.target}] calibrate"
        with fast_fake_quantize(), fast_histograms(), histograms_in_background(prepared):
            for x in tqdm(batches, desc=desc, disable=not progress or None, leave=False):
                prepared(x)
        return prepared

    def convert(self, prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
        """Observers/fake-quant -> quantize/dequantize pairs with the calibrated (or trained) parameters
        (histogram observers search their ranges with :func:`~hrvit_mobile.quant.observers.fast_param_search`:
        the same ranges)."""
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        with fast_param_search(), indexed_attr_names():
            return convert_pt2e(prepared, fold_quantize=self.fold_quantize)

    def quantize(
        self,
        model: nn.Module,
        example: torch.Tensor,
        calib: Sequence[torch.Tensor],
        strict: bool = False,
        progress: bool = True,
    ) -> torch.fx.GraphModule:
        """PTQ in one call: prepare, calibrate on ``calib``, convert. ``model`` may be a :meth:`capture`
        result (it is copied, not consumed)."""
        if isinstance(model, torch.fx.GraphModule):
            prepared = self.prepare(copy.deepcopy(model), example, captured=True)
        else:
            prepared = self.prepare(model.eval(), example, strict=strict)
        self.calibrate(prepared, calib, progress=progress)
        return self.convert(prepared)

    def with_keep_float(self, keep_float: Iterable[str | type[nn.Module]]) -> PT2ERecipe:
        """A copy that also leaves ``keep_float`` in float."""
        out = copy.copy(self)
        out.keep_float = (*self.keep_float, *keep_float)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scheme": self.scheme, "float_islands": self.float_islands,
                "des": self.des}


@dataclass
class PostConversionRecipe(QuantRecipe):
    """A pass over the converted artifact (ML program, .tflite flatbuffer) rather than the PyTorch graph."""

    variant: str = ""


@dataclass
class Prequantized(PT2ERecipe):
    """A graph quantized already (e.g. converted after QAT): exporters lower it as it is, no calibration."""

    name: str = "prequantized"
    source: str = "QAT"
    scheme: str = "quantized before export (QAT); lowered without recalibration"
    info: dict[str, Any] = field(default_factory=dict)

    def quantize(
        self,
        model: nn.Module,
        example: torch.Tensor,
        calib: Sequence[torch.Tensor],
        strict: bool = False,
        progress: bool = True,
    ) -> torch.fx.GraphModule:
        if not is_quantized_graph(model):
            raise QuantRecipeError(
                "a prequantized export needs a converted PT2E graph (quantize/dequantize ops)"
            )
        return model  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": self.source, **self.info}


def is_quantized_graph(model: nn.Module) -> bool:
    """True when ``model`` is or wraps a converted PT2E graph (one holding quantize/dequantize ops)."""
    return any(
        isinstance(m, torch.fx.GraphModule)
        and any("quantize_per" in str(n.target) for n in m.graph.nodes if n.op == "call_function")
        for m in model.modules()
    )


def apply_keep_float(recipe: QuantRecipe, keep_float: Sequence[str | type[nn.Module]]) -> QuantRecipe:
    """``recipe`` with ``keep_float`` modules left float; one line when the recipe cannot keep any."""
    if not keep_float:
        return recipe
    if not isinstance(recipe, PT2ERecipe):
        raise QuantRecipeError(
            f"keep-float applies to int8-activation recipes; {recipe.name} is a post-conversion pass"
        )
    return recipe.with_keep_float(keep_float)
