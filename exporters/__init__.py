"""Exporters: ExecuTorch (.pte), Core ML (.mlpackage) and LiteRT (.tflite), each proven in its runtime.

Installed as ``hrvit_mobile.exporters``. Per backend there is a ``convert`` (model -> files + sidecar)
and a ``validate`` (files -> parity in the backend's own runtime); :func:`export` runs both::

    from hrvit_mobile.exporters import ExportSpec, export
    report = export(deploy_model, ExportSpec(target="coreml", bits=8, img_size=(512, 512)))
    print(report.summary()); assert report.ok

Each backend is one module that registers a :class:`~.registry.Backend` (see :mod:`.registry`);
everything here asks the registry. The exporters are model-agnostic: any ``nn.Module`` mapping a
normalized float32 (1, 3, H, W) image to (1, K, H/4, W/4) logits will do.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from hrvit_mobile.data.calibration import load_calibration_images
from hrvit_mobile.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalization

from .artifacts import ArtifactResult, ExportReport, read_sidecar, write_sidecar
from .errors import ExportError, MissingDependencyError, UnsupportedExportError
from .parity import (
    ParityResult,
    ParityThresholds,
    default_thresholds,
    reference_outputs,
    synthetic_images,
    to_tensors,
)
from .registry import Backend, Variant, backends, get_backend, target_names
from .runtime import ArtifactRunner, open_artifact
from .spec import ExportSpec, log
from .support import (
    check_dependencies,
    describe_supported,
    resolve,
    supported,
    supported_pairs,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArtifactResult",
    "ArtifactRunner",
    "Backend",
    "ExportError",
    "ExportReport",
    "ExportSpec",
    "MissingDependencyError",
    "Normalization",
    "ParityResult",
    "ParityThresholds",
    "UnsupportedExportError",
    "Variant",
    "backends",
    "check_dependencies",
    "default_thresholds",
    "describe_supported",
    "export",
    "export_all",
    "get_backend",
    "load_calibration_images",
    "open_artifact",
    "parity_inputs",
    "read_sidecar",
    "resolve",
    "supported",
    "supported_pairs",
    "synthetic_images",
    "target_names",
    "validate",
]

def parity_inputs(spec: ExportSpec, images: np.ndarray | None = None) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB images for parity; deterministic synthetic ones unless given."""
    if images is not None:
        return images
    return synthetic_images(spec.parity_samples, spec.img_size, seed=spec.seed + 1000)


def validate(
    artifact: Path | str,
    model: torch.nn.Module,
    images: np.ndarray | None = None,
    thresholds: ParityThresholds | None = None,
) -> ParityResult:
    """Parity of an existing artifact (its sidecar beside it) against the float ``model``."""
    artifact = Path(artifact)
    meta = read_sidecar(artifact)
    mean, std = meta["input"]["normalization"]["mean"], meta["input"]["normalization"]["std"]
    norm = Normalization(mean=tuple(mean), std=tuple(std))
    if images is None:
        images = synthetic_images(2, tuple(meta["img_size"]), seed=1000)
    refs = reference_outputs(model, to_tensors(norm.apply(images)))
    return get_backend(meta["target"]).validate(artifact, images, refs, thresholds)


def export(
    model: torch.nn.Module,
    spec: ExportSpec,
    calib: Iterable[torch.Tensor] | np.ndarray | None = None,
    images: np.ndarray | None = None,
) -> ExportReport:
    """Convert ``model`` for ``spec.target``, write the artifact and its sidecar atomically, then run
    parity in the artifact's runtime and record it in the sidecar.

    Args:
        model: the deploy form, float32, eval mode, static input shape ``spec.img_size``.
        spec: what to export (see :class:`ExportSpec`); ``activations=None`` takes the target's default.
        calib: calibration inputs for static int8 (normalized (1, 3, H, W) tensors, or uint8 (N, H, W, 3)
            RGB images); synthetic images with a warning when omitted.
        images: uint8 (N, H, W, 3) RGB images for parity; synthetic when omitted.

    Returns an :class:`ExportReport`; ``report.ok`` is False when parity ran and missed a threshold
    (the artifact and its report are kept, so the miss can be inspected).

    Raises:
        UnsupportedExportError: the (target, bits, activations) pair is no registered variant.
        MissingDependencyError: the backend's packages are not installed (the message says what to
            pip install).
    """
    resolved, _variant = resolve(spec)  # fail fast, before any heavy work
    check_dependencies(resolved.target, _variant)
    mod = get_backend(resolved.target)
    model = model.eval()
    artifact = mod.convert(model, resolved, calib)
    parity = None
    if resolved.run_parity:
        imgs = parity_inputs(resolved, images)
        refs = reference_outputs(model, to_tensors(resolved.normalization.apply(imgs)))
        t0 = time.perf_counter()
        parity = mod.validate(artifact.path, imgs, refs, resolved.resolved_thresholds())
        log.info("[%s] parity in %.1f s", resolved.target, time.perf_counter() - t0)
        write_sidecar(resolved, artifact, parity)
    report = ExportReport(resolved, artifact, parity)
    log.info("%s", report.summary())
    return report


def export_all(
    model: torch.nn.Module,
    spec: ExportSpec,
    calib: Iterable[torch.Tensor] | np.ndarray | None = None,
    images: np.ndarray | None = None,
    targets: Sequence[str] | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
) -> list[ExportReport]:
    """``--target all``: the same bits/activations for every target that supports them.

    Targets that do not support the pair, or whose packages are missing, are skipped with a warning
    (passed to ``on_error`` when given) rather than stopping the others.
    """
    reports = []
    for target in targets or target_names():
        try:
            reports.append(export(model, dataclasses.replace(spec, target=target, name=None), calib, images))
        except (UnsupportedExportError, MissingDependencyError) as e:
            log.warning("skipping %s: %s", target, e)
            if on_error is not None:
                on_error(target, e)
    return reports
