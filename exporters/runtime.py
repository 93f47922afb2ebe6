"""Run an exported artifact in its own runtime: one interface for validation, reports, bench and predict.

``open_artifact(path)`` reads the sidecar written beside the artifact (normalization, target, image
size) and returns an :class:`ArtifactRunner` whose :meth:`~ArtifactRunner.predict` maps uint8 RGB
images to logits exactly as an app would: the runner applies the sidecar's normalization, never the
project's model code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrvit_mobile.normalization import Normalization

from .artifacts import read_sidecar
from .errors import ExportError
from .registry import get_backend
from .support import canonical_target, check_dependencies


@dataclass
class ArtifactRunner:
    """A loaded artifact. ``predict`` takes uint8 (N, H, W, 3) RGB, returns N arrays (1, K, h, w)."""

    path: Path
    meta: dict[str, Any]
    runtime: str
    _run_one: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    """uint8 (H, W, 3) -> logits (1, K, h, w)."""
    native: Any = field(default=None, repr=False)
    """The runtime's own handle (ExecuTorch method, LiteRT interpreter), for structural checks."""

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.meta["img_size"])  # type: ignore[return-value]

    @property
    def labels(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    def predict(self, images: np.ndarray) -> list[np.ndarray]:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        h, w = self.img_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, 3):
            raise ExportError(
                f"{self.path.name} takes uint8 RGB images of {h}x{w}x3, got {images.dtype} {images.shape}"
            )
        return [np.asarray(self._run_one(img), np.float32) for img in images]

    def latency(self, runs: int = 10, warmup: int = 2) -> dict[str, float]:
        """Median and p90 wall time (ms) of one image in this runtime, after ``warmup`` runs."""
        from hrvit_mobile.profile import time_calls

        image = np.full((*self.img_size, 3), 127, np.uint8)
        return time_calls(lambda: self._run_one(image), runs=max(1, runs), warmup=warmup)


def sidecar_normalization(meta: dict[str, Any]) -> Normalization:
    """The input normalization a sidecar records (what an app applies before the model)."""
    norm = meta["input"]["normalization"]
    return Normalization(mean=tuple(norm["mean"]), std=tuple(norm["std"]))


def open_artifact(path: Path | str, threads: int | None = None) -> ArtifactRunner:
    """Load ``path`` (.pte, .tflite or .mlpackage, with its sidecar JSON) in its runtime on this host.

    Raises :class:`ExportError` (one line) when the file or its sidecar is missing or unreadable, and
    :class:`MissingDependencyError` when the runtime's package is not installed.
    """
    path = Path(path)
    if not path.exists():
        raise ExportError(f"artifact not found: {path}")
    meta = read_sidecar(path)
    target = canonical_target(meta["target"])
    check_dependencies(target)
    try:
        return load_runner(path, meta, threads)
    except (RuntimeError, ValueError) as e:
        raise ExportError(f"{path.name}: the {target} runtime could not load it: {e}") from e


def load_runner(path: Path, meta: dict[str, Any], threads: int | None = None) -> ArtifactRunner:
    """:func:`open_artifact` without its checks: the runtime's own errors (RuntimeError, ValueError)
    pass through, for the validators that report them as parity failures."""
    return get_backend(meta["target"]).open_runner(Path(path), meta, threads)
