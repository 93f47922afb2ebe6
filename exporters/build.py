"""The build skeleton every backend's ``convert`` shares: staging, timing, peak memory, commit.

:func:`run_build` runs a backend's build step in a staging directory under time and memory watch,
commits its files atomically and writes the sidecar; :func:`step` logs and times the long steps
inside it; :func:`tool_versions` records what built the artifact.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import platform
import re
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hrvit_mobile import patching
from hrvit_mobile.files import commit, path_size, staging_dir

from .artifacts import ArtifactResult, describe_files, write_sidecar
from .footprint import artifact_footprint
from .spec import ExportSpec

log = logging.getLogger("hrvit_mobile.exporters")


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
