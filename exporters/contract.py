"""The contract every backend shares: what to export, what came out, and how close it is to PyTorch.

One spec (:class:`ExportSpec`) goes in; a backend's ``convert`` turns a model into files and returns an
:class:`ArtifactResult`; its ``validate`` runs those files in the backend's own runtime and returns a
:class:`ParityResult` measured against the float PyTorch model on the same images. The helpers here
(atomic commits, hashing, peak memory, parity metrics, sidecar JSON) are what keeps the three backends
honest in the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import platform
import re
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrvit_mobile import patching
from hrvit_mobile.data.calibration import (  # noqa: F401 (part of the contract)
    check_calibration_count,
    load_calibration_images,
)
from hrvit_mobile.deploy.layout import LAYOUTS
from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.files import atomic_write, commit, path_size, staging_dir
from hrvit_mobile.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalization  # noqa: F401 (part of the contract)
from hrvit_mobile.sizes import validate_img_size

from .footprint import artifact_footprint

log = logging.getLogger("hrvit_mobile.exporters")


ACTIVATIONS: tuple[str, ...] = ("float", "int8")
SIDECAR_SCHEMA = "hrvit-mobile.export/1"


class ExportError(HRViTMobileError):
    """An export could not be produced; the message is one line meant for the user."""


class UnsupportedExportError(ExportError):
    """The (target, bits, activations) combination is not supported."""


class MissingDependencyError(ExportError, ImportError):
    """An optional backend package is not installed."""


@dataclass(frozen=True)
class ParityThresholds:
    """Limits an artifact must meet against the float PyTorch model; ``None`` disables a check."""

    max_abs_err: float | None = None
    min_cosine: float | None = None
    min_argmax_agreement: float | None = None


# Defaults per (bits, activations). fp32 keeps its promise (argmax >= 99.9 %, max |diff| <= 1e-3);
# the lossy variants are bounded by cosine and argmax agreement, because logit scale is model-dependent.
DEFAULT_THRESHOLDS: dict[tuple[int, str], ParityThresholds] = {
    (32, "float"): ParityThresholds(max_abs_err=1e-3, min_cosine=0.99999, min_argmax_agreement=0.999),
    (16, "float"): ParityThresholds(min_cosine=0.999, min_argmax_agreement=0.99),
    (8, "float"): ParityThresholds(min_cosine=0.99, min_argmax_agreement=0.95),
    (8, "int8"): ParityThresholds(min_cosine=0.98, min_argmax_agreement=0.90),
    (6, "float"): ParityThresholds(min_cosine=0.99, min_argmax_agreement=0.95),
    (4, "float"): ParityThresholds(min_cosine=0.95, min_argmax_agreement=0.85),
}


def default_thresholds(bits: int, activations: str) -> ParityThresholds:
    return DEFAULT_THRESHOLDS.get((bits, activations), ParityThresholds(min_cosine=0.95))


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
class ParityResult:
    """The artifact's output in its runtime vs the float PyTorch model on the same images."""

    runtime: str
    ran: bool
    passed: bool | None  # None when the runtime could not run here
    thresholds: ParityThresholds
    samples: int = 0
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    cosine: float | None = None  # the worst sample
    argmax_agreement: float | None = None  # over all pixels of all samples
    reason: str = ""  # why it did not run, or which check failed
    structural: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


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


# --------------------------------------------------------------------------------------------------
# files: atomic commit, hashing, sidecar


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


# --------------------------------------------------------------------------------------------------
# measurement


# the packages of hrvit-mobile's own extras that name no runtime
_TOOLING_EXTRAS = ("test", "docs")


def declared_packages() -> tuple[str, ...]:
    """torch, numpy, the runtimes and converters: every package hrvit-mobile or its runtime extras ask
    for (read from the installed package's metadata, so a new backend's packages appear by themselves)."""
    names = ["torch", "numpy"]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for req in importlib.metadata.requires("hrvit-mobile") or []:
            if any(f'extra == "{extra}"' in req for extra in _TOOLING_EXTRAS):
                continue
            match = re.match(r"[A-Za-z0-9._-]+", req)
            if match:
                names.append(match.group(0))
    return tuple(dict.fromkeys([*names, "torchao", "hrvit-mobile"]))


def tool_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in (*declared_packages(), *extra):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def _vm_hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak resident memory of this process while the block runs.

    On Linux the kernel's high-water mark is reset on entry (``/proc/self/clear_refs``), so the figure
    is this block's peak, including what the process already held. Elsewhere a sampling thread
    (20 ms) stands in.
    """

    def __init__(self) -> None:
        self.peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._use_hwm = False

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._use_hwm = _vm_hwm_bytes() is not None
        except OSError:
            self._use_hwm = False
        if not self._use_hwm:
            self.peak_bytes = 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _rss(self) -> int:
        try:
            import psutil  # optional

            return int(psutil.Process().memory_info().rss)
        except ImportError:
            scale = 1 if sys.platform == "darwin" else 1024
            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_bytes = max(self.peak_bytes or 0, self._rss())

    def __exit__(self, *exc: object) -> None:
        if self._use_hwm:
            self.peak_bytes = _vm_hwm_bytes()
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(self.peak_bytes or 0, self._rss())


_STEP_SECONDS: dict[str, float] = {}


@contextlib.contextmanager
def step(target: str, what: str) -> Iterator[None]:
    """Log the start and the duration of a long step, so a minute-long lowering is not silent.

    Durations are also recorded, and :func:`run_build` puts them in the sidecar's ``step_seconds``.
    """
    log.info("[%s] %s ...", target, what)
    t0 = time.perf_counter()
    yield
    seconds = time.perf_counter() - t0
    _STEP_SECONDS[what] = _STEP_SECONDS.get(what, 0.0) + seconds
    log.info("[%s] %s done in %.1f s", target, what, seconds)


# --------------------------------------------------------------------------------------------------
# inputs and parity metrics


def synthetic_images(n: int, img_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Deterministic uint8 RGB images (N, H, W, 3): smooth blobs plus texture, photo-like statistics.

    Pure noise would make every pixel's argmax a coin toss; smooth regions give the model something
    like real structure, which makes argmax agreement meaningful.
    """
    h, w = img_size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.zeros((h, w, 3), np.float32)
        for _ in range(6):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(0.1, 0.5) * max(h, w)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img += blob[..., None] * rng.uniform(-0.6, 0.6, 3)
        img += 0.5 + 0.05 * rng.standard_normal((h, w, 3))
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def to_tensors(batch: np.ndarray) -> list[torch.Tensor]:
    """(N, 3, H, W) float32 -> N tensors of (1, 3, H, W)."""
    return [torch.from_numpy(np.ascontiguousarray(batch[i : i + 1])) for i in range(batch.shape[0])]


@torch.no_grad()
def reference_outputs(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    model.eval()
    return [first_output(model(x)).float().numpy() for x in inputs]


def first_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0]


def compare(
    outputs: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    thresholds: ParityThresholds,
    runtime: str,
) -> ParityResult:
    """Parity metrics over samples of logits (1, K, h, w); the class axis is 1."""
    if len(outputs) != len(references) or not outputs:
        raise ValueError(f"got {len(outputs)} outputs for {len(references)} references")
    max_abs, abs_sum, count, agree, pixels, cos_min = 0.0, 0.0, 0, 0, 0, 1.0
    for out, ref in zip(outputs, references, strict=True):
        out = np.asarray(out, np.float64).reshape(ref.shape)
        ref = np.asarray(ref, np.float64)
        d = np.abs(out - ref)
        max_abs = max(max_abs, float(d.max()))
        abs_sum += float(d.sum())
        count += d.size
        denom = float(np.linalg.norm(out) * np.linalg.norm(ref))
        cos_min = min(cos_min, float(np.dot(out.ravel(), ref.ravel()) / denom) if denom else 0.0)
        agree += int((out.argmax(1) == ref.argmax(1)).sum())
        pixels += ref.shape[0] * int(np.prod(ref.shape[2:]))
    res = ParityResult(
        runtime=runtime,
        ran=True,
        passed=True,
        thresholds=thresholds,
        samples=len(outputs),
        max_abs_err=max_abs,
        mean_abs_err=abs_sum / count,
        cosine=cos_min,
        argmax_agreement=agree / pixels,
    )
    failed = []
    # NaN compares false against every threshold (and max() skips it): refuse it explicitly
    if not all(np.isfinite(np.asarray(out)).all() for out in outputs):
        failed.append("non-finite values (NaN/inf) in the artifact's output")
    if thresholds.max_abs_err is not None and max_abs > thresholds.max_abs_err:
        failed.append(f"max_abs_err {max_abs:.3g} > {thresholds.max_abs_err:g}")
    if thresholds.min_cosine is not None and cos_min < thresholds.min_cosine:
        failed.append(f"cosine {cos_min:.6f} < {thresholds.min_cosine:g}")
    if thresholds.min_argmax_agreement is not None and res.argmax_agreement < thresholds.min_argmax_agreement:
        failed.append(f"argmax agreement {res.argmax_agreement:.4f} < {thresholds.min_argmax_agreement:g}")
    if failed:
        res.passed = False
        res.reason = "; ".join(failed)
    return res


# --------------------------------------------------------------------------------------------------
# the shared convert skeleton


@dataclass
class Built:
    """What a backend's build step left in the staging directory."""

    main: Path  # staged artifact (file or directory)
    extras: list[Path] = field(default_factory=list)  # staged companions (.bpte, .etrecord, ...)
    input: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def cyclic_collection_deferred() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the block, and one full collection at its end.

    An export builds and drops whole fx graphs again and again (each retrace: ~10k nodes on b1 int8, with
    their metadata dicts and fake tensors, all tracked by the collector), and every automatic full
    collection walks everything alive. With gc.callbacks timing, b1 ExecuTorch int8 spent 15.4 s of a
    245.6 s export in collections (12.0 s in 18 full ones), Core ML W8A8 20.0 s. Reference counting still
    frees everything outside cycles during the block; cyclic garbage (fx graphs are full of cycles) waits
    for the collection at the end (b1 int8 peak RSS 1.38 -> 1.77 GB). A caller that had the collector off
    keeps it off and gets no collection.
    """
    import gc

    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def run_build(spec: ExportSpec, variant: str, suffix: str, build: Callable[[Path], Built]) -> ArtifactResult:
    """Time and memory-watch ``build`` in a staging dir, then commit its files and write the sidecar.

    Nothing reaches ``spec.out_dir`` unless ``build`` returned: a failure leaves no partial artifact.
    ``build`` runs with fx code generation deferred, node provenance shared and graph-signature lookups
    memoized (:mod:`.fx_codegen`): every backend retraces the graph many times, almost never runs the
    generated code, never edits a node's history in place and asks the same signature about every node.
    The cyclic garbage collector waits until ``build`` returns (:func:`cyclic_collection_deferred`; its
    collection is inside the timed and memory-watched block, and before the graph modules still stale
    get their code).
    """
    from .fx_codegen import deferred_graph_codegen, memoized_signature_lookups, shared_node_provenance

    assert spec.name is not None
    _STEP_SECONDS.clear()
    with staging_dir(spec.out_dir, spec.name) as stage:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            # the collection runs before the deferred code generation ends: graph modules that died in
            # cycles are gone by then, so only the live ones get their code (b1 int8: the dead ones'
            # code was ~3 s of the export)
            with deferred_graph_codegen(), shared_node_provenance(), memoized_signature_lookups():
                with cyclic_collection_deferred():
                    built = build(stage)
            seconds = time.perf_counter() - t0
        final_main = spec.out_dir / f"{spec.name}{suffix}"
        finals = []
        # companions first, the artifact last: a reader that sees the artifact sees its companions
        for extra in built.extras:
            finals.append(commit(extra, spec.out_dir / extra.name))
        commit(built.main, final_main)
    art = ArtifactResult(
        target=spec.target,
        variant=variant,
        path=final_main,
        files=describe_files([final_main, *finals], spec.out_dir),
        size_bytes=path_size(final_main),
        export_seconds=seconds,
        peak_rss_bytes=mem.peak_bytes,
        tool_versions=tool_versions(),
        input=built.input,
        outputs=built.outputs,
        details={**built.details, "step_seconds": {k: round(v, 3) for k, v in _STEP_SECONDS.items()},
                 "patches": patching.applied()},
    )
    art.details["footprint"] = _footprint(final_main)
    write_sidecar(spec, art, None)
    log.info("[%s] wrote %s (%.2f MB) in %.1f s", spec.target, final_main, art.size_bytes / 1e6, seconds)
    return art


def _footprint(path: Path) -> dict[str, Any]:
    """Where the artifact's bytes go (exporters/footprint.py); an accounting failure is recorded, not fatal:
    the artifact itself is complete by then."""
    try:
        return artifact_footprint(path)
    except Exception as exc:  # a format change in a runtime package must not fail a finished export
        log.warning("footprint of %s not read: %s", path.name, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


EXPORTER_SYNTHETIC = "the exporter's synthetic images"
EXPORTER_SYNTHETIC_PARITY = "synthetic blob images (the exporter's own; not from the model's domain)"


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
