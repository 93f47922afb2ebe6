"""An export's files: what came out (:class:`ArtifactResult`), their hashes, and the sidecar JSON.

Every artifact gets a sidecar (``<artifact>.json``) that records its input and output contract, its
files with sha256 and size, tool versions, timing and parity; apps, bundles and reports read it back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrvit_mobile.files import atomic_write

from .errors import ExportError
from .parity import EXPORTER_SYNTHETIC_PARITY, ParityResult
from .spec import ExportSpec

SIDECAR_SCHEMA = "hrvit-mobile.export/1"


@dataclass
class FileInfo:
    path: str  # relative to the artifact's directory
    sha256: str
    size_bytes: int


@dataclass
class ArtifactResult:
    """Files one export produced (already committed to their final place) and how it went."""

    target: str
    variant: str
    path: Path  # the artifact an app loads (.pte, .tflite, .mlpackage)
    files: list[FileInfo]
    size_bytes: int  # of the main artifact (a .mlpackage counts all its files)
    export_seconds: float
    peak_rss_bytes: int | None
    tool_versions: dict[str, str]
    input: dict[str, Any]
    outputs: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)  # backend-specific facts (op counts, ...)
    sidecar: Path | None = None


@dataclass
class ExportReport:
    spec: ExportSpec
    artifact: ArtifactResult
    parity: ParityResult | None

    @property
    def ok(self) -> bool:
        """False only when parity ran and missed a threshold (not-run parity is not a failure)."""
        return self.parity is None or self.parity.passed is not False

    def to_dict(self) -> dict[str, Any]:
        return sidecar_dict(self.spec, self.artifact, self.parity)

    def summary(self) -> str:
        a, p = self.artifact, self.parity
        line = f"{a.target}/{a.variant}: {a.path} {a.size_bytes / 1e6:.2f} MB in {a.export_seconds:.1f} s"
        if p is None:
            return line + ", parity skipped"
        if not p.ran:
            return line + f", parity not run ({p.reason})"
        verdict = "PASS" if p.passed else f"FAIL ({p.reason})"
        return (
            line
            + f", parity {verdict}: max|d|={p.max_abs_err:.2e} cos={p.cosine:.6f} "
            + f"argmax={100 * (p.argmax_agreement or 0):.2f}%"
        )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_files(paths: Iterable[Path], root: Path) -> list[FileInfo]:
    """sha256 and size of every file (directories are walked), paths relative to ``root``."""
    out: list[FileInfo] = []
    for p in paths:
        items = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for q in items:
            out.append(FileInfo(str(q.relative_to(root)), sha256_file(q), q.stat().st_size))
    return out


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def sidecar_dict(spec: ExportSpec, art: ArtifactResult, parity: ParityResult | None) -> dict[str, Any]:
    return {
        "schema": SIDECAR_SCHEMA,
        "artifact": art.path.name,
        "target": art.target,
        "variant": art.variant,
        "model": spec.model_name,
        "bits": spec.bits,
        "activations": spec.activations,
        "img_size": list(spec.img_size),
        "num_classes": spec.num_classes,
        "classes": spec.labels,
        "input": art.input,
        "outputs": art.outputs,
        "files": _jsonable(art.files),
        "size_bytes": art.size_bytes,
        "export_seconds": round(art.export_seconds, 3),
        "peak_rss_bytes": art.peak_rss_bytes,
        "tool_versions": art.tool_versions,
        "details": _jsonable(art.details),
        "parity": _jsonable(parity) if parity is not None else None,
        "parity_images": spec.parity_source or f"{spec.parity_samples} {EXPORTER_SYNTHETIC_PARITY}",
    }


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")


def write_sidecar(spec: ExportSpec, art: ArtifactResult, parity: ParityResult | None) -> Path:
    path = sidecar_path(art.path)
    atomic_write(path, json.dumps(sidecar_dict(spec, art, parity), indent=2) + "\n")
    art.sidecar = path
    return path


def read_sidecar(artifact: Path) -> dict[str, Any]:
    path = sidecar_path(Path(artifact))
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path} not found: an artifact needs the sidecar JSON its export wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON ({e})") from None
