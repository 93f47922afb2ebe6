"""What to export: :class:`ExportSpec`, and the inputs and outputs a spec implies.

One spec goes into a backend's ``convert``; the helpers here derive from it the calibration tensors and
the input and output descriptions an artifact's sidecar records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrvit_mobile.data.calibration import check_calibration_count
from hrvit_mobile.deploy.layout import LAYOUTS
from hrvit_mobile.normalization import Normalization
from hrvit_mobile.sizes import validate_img_size

from .errors import ExportError, UnsupportedExportError
from .parity import ParityThresholds, default_thresholds, synthetic_images, to_tensors

log = logging.getLogger("hrvit_mobile.exporters")


ACTIVATIONS: tuple[str, ...] = ("float", "int8")


@dataclass
class ExportSpec:
    """What to export. ``activations=None`` picks the backend's natural choice for ``bits``."""

    target: str
    bits: int = 32
    activations: str | None = None
    img_size: tuple[int, int] = (512, 512)
    num_classes: int = 150
    class_names: Sequence[str] | None = None
    normalization: Normalization = field(default_factory=Normalization)
    out_dir: Path = Path("exports")
    model_name: str = "model"
    name: str | None = None  # artifact stem; derived from model/size/target/variant when None
    # Core ML
    min_ios: int = 17
    argmax_output: bool = False
    author: str = ""
    license: str = ""
    version: str = ""
    description: str = ""
    # keep coremltools' PyTorch-derived op names and per-op small consts (for profiling in Xcode);
    # by default they are compacted, which changes no op, value or weight (exporters.coreml_compact)
    keep_op_names: bool = False
    # ExecuTorch
    bundled_program: bool = False
    etrecord: bool = False
    # common
    # deploy layout to lower: "tokens" or "channels_first"; None: the target's measured choice
    # and variant (hrvit_mobile.deploy.layout.export_layout)
    layout: str | None = None
    strict_export: bool = False  # non-strict torch.export is ~5x faster to trace and gives the same graph
    thresholds: ParityThresholds | None = None
    parity_samples: int = 2
    calib_samples: int = 8
    # where the calibration images came from (recorded in the sidecar, so a report can rebuild the set);
    # None: the exporter's own synthetic images (EXPORTER_SYNTHETIC)
    calib_source: str | None = None
    # where the parity images came from (recorded in the sidecar); None: the exporter's synthetic ones
    parity_source: str | None = None
    seed: int = 0
    run_parity: bool = True
    # int8-activation exports: module groups kept float (names), or "auto" (the most sensitive groups
    # until the parity thresholds are met; see hrvit_mobile.quant.sensitivity)
    keep_float: str | Sequence[str] | None = None
    # a hrvit_mobile.quant recipe overriding the one the (target, bits, activations) implies, e.g.
    # Prequantized for a graph converted after QAT
    recipe: Any = None
    # other libraries' internals patched for speed (same bytes as stock code): None follows
    # HRVIT_MOBILE_PATCHES (on unless "0"); False runs stock library code only (hrvit_mobile.patching)
    patches: bool | None = None

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.img_size = (int(self.img_size[0]), int(self.img_size[1]))
        if self.activations is not None:
            self.activations = normalize_activations(self.activations)
        if self.class_names is not None:
            self.class_names = list(self.class_names)
            if len(self.class_names) != self.num_classes:
                raise ExportError(
                    f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}"
                )
        validate_img_size(self.img_size)
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ExportError(f"unknown layout {self.layout!r}; allowed: {', '.join(LAYOUTS)}")

    @property
    def labels(self) -> list[str]:
        return list(self.class_names) if self.class_names else [f"class_{i}" for i in range(self.num_classes)]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, *self.img_size)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        h, w = self.img_size
        return (1, self.num_classes, h // 4, w // 4)

    def resolved_thresholds(self) -> ParityThresholds:
        assert self.activations is not None, "resolve the spec first"
        return self.thresholds or default_thresholds(self.bits, self.activations)


def normalize_activations(value: str | int) -> str:
    v = str(value).lower()
    if v in ("float", "fp", "none", "32", "16"):
        return "float"
    if v in ("8", "int8", "i8", "a8"):
        return "int8"
    raise UnsupportedExportError(f"activations must be 'float' or 8 (int8), got {value!r}")


def calibration_tensors(
    spec: ExportSpec, calib: Iterable[torch.Tensor] | np.ndarray | None
) -> list[torch.Tensor]:
    """Calibration inputs as normalized (1, 3, H, W) tensors; synthetic images when none are given."""
    if calib is None:
        check_calibration_count(spec.calib_samples)
        log.warning(
            "[%s] no calibration data given: calibrating on %d synthetic images; pass real images "
            "(--calib DIR) for a usable int8 model",
            spec.target,
            spec.calib_samples,
        )
        imgs = synthetic_images(spec.calib_samples, spec.img_size, seed=spec.seed + 1)
        return to_tensors(spec.normalization.apply(imgs))
    if isinstance(calib, np.ndarray):
        if calib.dtype == np.uint8:  # images (N, H, W, 3)
            return to_tensors(spec.normalization.apply(calib))
        return to_tensors(calib.astype(np.float32))
    out = []
    for t in calib:
        t = torch.as_tensor(t, dtype=torch.float32)
        out.extend(t.split(1) if t.dim() == 4 else [t.unsqueeze(0)])
    if not out:
        raise ExportError("calibration data is empty")
    return out


def input_description(spec: ExportSpec, name: str, layout: str = "NCHW") -> dict[str, Any]:
    n = spec.normalization
    return {
        "name": name,
        "shape": list(spec.input_shape),
        "dtype": "float32",
        "layout": layout,
        "color": "RGB",
        "normalization": {
            "mean": list(n.mean),
            "std": list(n.std),
            "pixel_range": n.pixel_range,
            "applied_by": "app",
        },
    }


def logits_description(spec: ExportSpec, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(spec.output_shape),
        "dtype": "float32",
        "layout": "NCHW",
        "meaning": "class logits at 1/4 input resolution; argmax over axis 1 gives the class map",
    }
