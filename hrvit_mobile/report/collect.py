"""Measure artifacts into one plain structure: size, parity, latency, delegation, tool versions, masks.

Every runtime figure comes from :func:`hrvit_mobile.exporters.open_artifact` (the artifact in its own
runtime, inputs prepared from its sidecar); the reference is the float PyTorch model on the same images.
An artifact whose runtime is not installed here is kept in the report with the reason and the command
that measures it on a host that has the runtime.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.exporters import (
    ExportError,
    MissingDependencyError,
    Normalization,
    default_thresholds,
    open_artifact,
    read_sidecar,
)
from hrvit_mobile.exporters.build import tool_versions
from hrvit_mobile.exporters.parity import reference_outputs, to_tensors
from hrvit_mobile.exporters.registry import get_backend, target_names

from . import layers as layers_mod
from .masks import mask_strip, png_bytes
from .metrics import class_maps, float_vs_labels, parity

log = logging.getLogger("hrvit_mobile.report")

MASK_SAMPLES = 2
"""Mask pictures per artifact (the first images of the verification set)."""


@dataclass
class ArtifactEntry:
    name: str
    path: str
    target: str
    variant: str
    bits: int
    activations: str
    status: str  # "measured", "not run" (runtime missing here), "error"
    runtime: str = ""
    reason: str = ""
    verify_command: str = ""
    size_bytes: int = 0
    compression_vs_fp32: float | None = None
    compression_basis: str = ""
    parity: dict[str, Any] | None = None
    thresholds: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, float] | None = None
    latency_note: str = ""
    delegation: str = ""
    delegation_details: dict[str, Any] = field(default_factory=dict)
    export_seconds: float | None = None
    tool_versions: dict[str, str] = field(default_factory=dict)  # at export time (from the sidecar)
    runtime_versions: dict[str, str] = field(default_factory=dict)  # of the runtime that measured it here
    masks: list[str] = field(default_factory=list)  # file names under masks/
    layers: dict[str, Any] | None = None
    layers_note: str = ""
    arm64: dict[str, Any] = field(default_factory=dict)  # `hrvit-mobile verify --arch arm64`, per CPU model


@dataclass
class Report:
    model: str
    img_size: list[int]
    num_classes: int
    params: int
    images: int
    images_source: str
    labels: bool
    host: dict[str, str]
    created: str
    float_vs_labels: dict[str, float] | None = None
    artifacts: list[ArtifactEntry] = field(default_factory=list)
    pngs: dict[str, bytes] = field(default_factory=dict, repr=False)  # relative path -> PNG (not in JSON)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("pngs")
        return _finite(d)


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: write them as strings ("inf"), which a reader can still parse with float()."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def verify_command(meta: dict[str, Any], path: Path, target: str) -> str:
    h, w = meta["img_size"]
    cmd = (
        f"hrvit-mobile report {path.name} --model {meta.get('model', 'hrvit_b1')} --img-size {h}x{w} "
        f"--num-classes {meta['num_classes']} [--checkpoint CKPT] --out report"
    )
    backend = get_backend(target)
    where = f"{backend.verify_hint}: " if backend.verify_hint else ""
    return f"{where}pip install 'hrvit-mobile[{backend.extra}]' && {cmd}"


def _delegation(meta: dict[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    """One line on what runs inside the accelerated backend, plus the details it comes from."""
    return get_backend(meta["target"]).delegation(meta, path)


def _compression(entries: list[ArtifactEntry], params: int) -> None:
    """fp32 size / artifact size: against the same target's fp32 artifact when present, else 4 bytes/param."""
    fp32 = {e.target: e.size_bytes for e in entries if e.variant == "fp32" and e.size_bytes}
    for e in entries:
        if not e.size_bytes:
            continue
        if e.target in fp32:
            e.compression_vs_fp32 = fp32[e.target] / e.size_bytes
            e.compression_basis = f"{e.target} fp32 artifact"
        elif params:
            e.compression_vs_fp32 = 4 * params / e.size_bytes
            e.compression_basis = "float parameters at 4 bytes each"


def _check_consistent(metas: list[tuple[Path, dict[str, Any]]]) -> tuple[list[int], int]:
    sizes = {tuple(m["img_size"]) for _, m in metas}
    classes = {m["num_classes"] for _, m in metas}
    if len(sizes) > 1 or len(classes) > 1:
        raise HRViTMobileError(
            "artifacts in one report must share input size and classes; got "
            + ", ".join(f"{p.name}: {m['img_size'][0]}x{m['img_size'][1]}/{m['num_classes']}"
                        for p, m in metas)
        )
    return list(sizes.pop()), classes.pop()


def collect(
    artifacts: Sequence[Path | str],
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    images_source: str = "synthetic images",
    latency_runs: int = 10,
    layer_error: bool = True,
    calib: Sequence[torch.Tensor] | np.ndarray | None = None,
    calib_source: str | None = None,
    threads: int | None = None,
) -> Report:
    """Measure every artifact against the float ``model`` on ``images`` (uint8 (N, H, W, 3) RGB).

    Args:
        model: the float model the artifacts came from (deploy form, eval), normalized (1, 3, H, W) in.
        labels: optional (N, H, W) ground truth class maps at the image size (255 = ignore).
        layer_error: per-layer SQNR for the PT2E int8 variants (PyTorch-side simulation).
        calib: calibration inputs for that simulation (tensors, or uint8 images), described by
            ``calib_source``; default: the set the sidecar says the export used (the demo checkpoint's
            train images, or the exporter's synthetic images).
    """
    if not artifacts:
        raise HRViTMobileError("no artifacts given: pass one or more .pte, .tflite or .mlpackage paths")
    metas = [(Path(a), read_sidecar(Path(a))) for a in artifacts]
    for p, _ in metas:
        if not p.exists():
            raise ExportError(f"artifact not found: {p}")
    img_size, num_classes = _check_consistent(metas)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or list(images.shape[1:3]) != img_size:
        raise HRViTMobileError(
            f"verification images must be uint8 (N, {img_size[0]}, {img_size[1]}, 3), got "
            f"{images.dtype} {images.shape}"
        )
    if labels is not None and labels.shape != images.shape[:3]:
        raise HRViTMobileError(f"labels {labels.shape} do not match images {images.shape[:3]}")
    model = model.eval()
    norm_meta = metas[0][1]["input"]["normalization"]
    norm = Normalization(mean=tuple(norm_meta["mean"]), std=tuple(norm_meta["std"]))
    inputs = to_tensors(norm.apply(images))
    refs = reference_outputs(model, inputs)
    if refs[0].shape[1] != num_classes:
        raise HRViTMobileError(
            f"the float model gives {refs[0].shape[1]} classes, the artifacts {num_classes}: "
            f"use --num-classes {num_classes}"
        )
    size = (img_size[0], img_size[1])
    ref_maps = class_maps(refs, size)
    params = count_params(model)
    report = Report(
        model=str(norm_meta and metas[0][1].get("model", "model")),
        img_size=img_size,
        num_classes=num_classes,
        params=params,
        images=len(images),
        images_source=images_source,
        labels=labels is not None,
        host={"platform": platform.platform(), "machine": platform.machine(),
              "python": platform.python_version()},
        created=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        float_vs_labels=float_vs_labels(refs, labels) if labels is not None else None,
    )
    # one order in every report: by target, then from the largest to the smallest variant
    order = target_names()
    metas.sort(key=lambda pm: (order.index(pm[1]["target"]) if pm[1]["target"] in order else len(order),
                               -pm[1]["bits"], pm[1]["activations"] != "float", pm[0].name))
    for path, meta in tqdm(metas, desc="report", unit="artifact", disable=None):
        entry = _measure(path, meta, refs, ref_maps, images, labels, latency_runs, threads, report)
        if layer_error and entry.status == "measured" and layers_mod.supports(entry.target, entry.variant):
            entry.layers, entry.layers_note = _layers(model, entry, meta, inputs, calib, calib_source)
        elif layers_mod.supports(entry.target, entry.variant):
            entry.layers_note = (
                "not computed here (the artifact did not run, or it was skipped): "
                f"hrvit-mobile report {path.name} --out DIR computes it"
            )
        report.artifacts.append(entry)
    _compression(report.artifacts, params)
    return report


def _measure(
    path: Path,
    meta: dict[str, Any],
    refs: list[np.ndarray],
    ref_maps: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray | None,
    latency_runs: int,
    threads: int | None,
    report: Report,
) -> ArtifactEntry:
    from hrvit_mobile.exporters.parity import ParityThresholds
    from hrvit_mobile.exporters.support import canonical_target
    from hrvit_mobile.files import path_size

    target = canonical_target(meta["target"])
    thresholds = default_thresholds(meta["bits"], meta["activations"])
    sidecar_parity = meta.get("parity") or {}
    if sidecar_parity.get("thresholds"):
        thresholds = ParityThresholds(**sidecar_parity["thresholds"])  # the export's own (maybe overridden)
    entry = ArtifactEntry(
        name=path.name,
        path=str(path),
        target=target,
        variant=meta["variant"],
        bits=meta["bits"],
        activations=meta["activations"],
        status="measured",
        size_bytes=int(meta.get("size_bytes") or path_size(path)),
        thresholds=dataclasses.asdict(thresholds),
        export_seconds=meta.get("export_seconds"),
        tool_versions={**(meta.get("tool_versions") or {})},
        arm64=(meta.get("verification") or {}).get("arm64") or {},
    )
    entry.delegation, entry.delegation_details = _delegation(meta, path)
    try:
        runner = open_artifact(path, threads=threads)
    except MissingDependencyError as e:
        entry.status, entry.reason = "not run", f"runtime not installed here: {e}"
        entry.verify_command = verify_command(meta, path, target)
        return entry
    except ExportError as e:
        from hrvit_mobile.exporters.coreml_eval import MILEvaluationError

        if isinstance(e, MILEvaluationError):  # an op the evaluator does not know: Core ML itself can
            entry.status, entry.reason = "not run", f"the MIL evaluator cannot run it here: {e}"
            entry.verify_command = verify_command(meta, path, target)
        else:
            entry.status, entry.reason = "error", str(e)
        return entry
    entry.runtime = runner.runtime
    package = get_backend(target).runtime_package
    entry.runtime_versions = {k: v for k, v in tool_versions().items() if k in (package, "numpy", "python")}
    try:
        outputs = runner.predict(images)
    except (ExportError, RuntimeError, ValueError, NotImplementedError, KeyError) as e:
        # e.g. an op the Core ML evaluator does not know: say so, and how to measure it for real
        entry.status, entry.reason = "not run", f"{runner.runtime} could not run it: {str(e).splitlines()[0]}"
        entry.verify_command = verify_command(meta, path, target)
        return entry
    p = parity(outputs, refs, tuple(report.img_size), thresholds, labels)
    entry.parity = dataclasses.asdict(p)
    art_maps = class_maps(outputs, tuple(report.img_size))
    stem = path.name.replace(".", "_")
    for i in range(min(MASK_SAMPLES, len(images))):
        rel = f"masks/{stem}_{i}.png"
        report.pngs[rel] = png_bytes(mask_strip(images[i], ref_maps[i], art_maps[i], report.num_classes))
        entry.masks.append(rel)
    if _is_reference_evaluator(runner.runtime):
        entry.latency_note = (
            "not measured: the MIL evaluator is a NumPy reference of the program, not Core ML; "
            "measure on a Mac or iPhone (Xcode's Performance report of the .mlpackage)"
        )
    else:
        entry.latency = runner.latency(runs=latency_runs)
        entry.latency_note = f"host CPU, {runner.runtime}, median/p90 of {entry.latency['runs']} runs"
    return entry


def _is_reference_evaluator(runtime: str) -> bool:
    from hrvit_mobile.exporters.coreml_eval import RUNTIME as EVALUATOR

    return runtime == EVALUATOR


def _layers(
    model: torch.nn.Module,
    entry: ArtifactEntry,
    meta: dict[str, Any],
    inputs: list[torch.Tensor],
    calib: Sequence[torch.Tensor] | np.ndarray | None,
    calib_source: str | None = None,
) -> tuple[dict[str, Any] | None, str]:
    from hrvit_mobile.data.calibration import DEMO_CALIBRATION
    from hrvit_mobile.demo import demo_calibration_images
    from hrvit_mobile.exporters import ExportSpec
    from hrvit_mobile.exporters.parity import EXPORTER_SYNTHETIC, synthetic_images
    from hrvit_mobile.exporters.spec import calibration_tensors

    spec = ExportSpec(target=entry.target, img_size=tuple(meta["img_size"]), num_classes=meta["num_classes"])
    example = to_tensors(spec.normalization.apply(synthetic_images(1, spec.img_size, seed=spec.seed)))[0]
    if calib is not None:
        calib = calibration_tensors(spec, calib)
        note = f"calibrated on {len(calib)} images: {calib_source or 'given by the caller'}"
    else:
        quant = (meta.get("details") or {}).get("quantization") or {}
        spec.calib_samples = int(quant.get("calibration_samples") or spec.calib_samples)
        source = quant.get("calibration_source")
        if source == DEMO_CALIBRATION:  # rebuild the export's own set: the generator is deterministic
            calib = calibration_tensors(spec, demo_calibration_images(spec.calib_samples, spec.img_size))
            note = f"calibrated like the export: {len(calib)} images of the {source}"
        elif source and source != EXPORTER_SYNTHETIC:
            return None, (f"per-layer error skipped: the export calibrated on {source}; pass the same "
                          "images with --calib to simulate it")
        else:
            calib = calibration_tensors(spec, None)  # what the exporter used when given no --calib
            note = f"calibrated on the exporter's {len(calib)} synthetic images" + (
                "" if source else " (the sidecar records no calibration source: an export's own --calib "
                "is not known)")
    t0 = time.perf_counter()
    try:
        res = layers_mod.layer_errors(model, entry.target, entry.variant, example, calib, inputs)
    except Exception as e:  # the simulation is an aid: its failure must not sink the report
        log.warning("per-layer error for %s failed: %s", entry.name, e)
        return None, f"per-layer error failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    log.info("per-layer error for %s in %.1f s", entry.name, time.perf_counter() - t0)
    return res.to_dict(), note
