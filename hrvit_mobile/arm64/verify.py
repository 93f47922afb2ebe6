"""``hrvit-mobile verify --arch arm64``: an artifact's parity on the ARM64 kernels phones run.

The host prepares everything it can (the export's parity images in each artifact's input contract, the
float PyTorch model's logits, the x86 runtime's output), one ARM64 process per CPU model runs every
artifact (:mod:`.worker`, natively on an aarch64 host, else under qemu user-mode emulation in the cached
sysroot of :mod:`.sysroot`), and the host compares its output with the float model and with x86 through
the exporters' own :func:`~hrvit_mobile.exporters.parity.compare`. The export's thresholds decide;
the figures go into the sidecar under ``verification.arm64``, keyed by CPU model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.exporters import (
    ExportError,
    Normalization,
    ParityThresholds,
    default_thresholds,
    read_sidecar,
)
from hrvit_mobile.exporters.artifacts import sidecar_path
from hrvit_mobile.exporters.parity import (
    EXPORTER_SYNTHETIC_PARITY,
    ParityResult,
    compare,
    reference_outputs,
    synthetic_images,
    to_tensors,
)
from hrvit_mobile.exporters.registry import backends
from hrvit_mobile.files import atomic_write

from . import sysroot as sysroot_mod
from .sysroot import EmulationUnavailable

log = logging.getLogger("hrvit_mobile.arm64")

ARCH = "arm64"
DEFAULT_CPU = "cortex-a76"
WORKER = Path(__file__).with_name("worker.py")
# the files that run on ARM64 CPU kernels here, and what runs them
ENGINES = {".pte": "executorch.runtime (XNNPACK)", ".tflite": "ai_edge_litert.interpreter"}
TFLITE_SIGNATURE = "serving_default"
# the float model for one artifact: its sidecar -> the deploy form it was exported from
ModelFor = Callable[[dict[str, Any]], Any]


@dataclass
class Arm64Result:
    """One artifact on one CPU model: its output vs the float model (decides) and vs x86 (informs)."""

    artifact: Path
    cpu: str
    runtime: str
    versions: dict[str, str]
    vs_float: ParityResult | None = None
    vs_x86: ParityResult | None = None
    x86_vs_float: ParityResult | None = None  # the same images on this x86 host, for scale
    seconds_per_image: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and self.vs_float is not None and bool(self.vs_float.passed)

    def line(self) -> str:
        head = f"{self.artifact.name} on ARM64 {self.cpu} ({self.runtime})"
        if self.error:
            return f"{head}: FAIL, did not run: {self.error}"
        f, x = self.vs_float, self.vs_x86
        assert f is not None
        verdict = "PASS" if f.passed else f"FAIL ({f.reason})"
        text = (f"{head}: {verdict}; vs float max|d|={f.max_abs_err:.2e} mean|d|={f.mean_abs_err:.2e} "
                f"cos={f.cosine:.6f} argmax={100 * f.argmax_agreement:.2f}%")
        if x is not None:
            text += (f"; vs x86 max|d|={x.max_abs_err:.2e} cos={x.cosine:.6f} "
                     f"argmax={100 * x.argmax_agreement:.2f}%")
        return text


# --------------------------------------------------------------------------------------------------
# inputs: refused in one line before anything runs


def check_artifacts(paths: Sequence[Path | str]) -> list[tuple[Path, dict[str, Any]]]:
    """(path, sidecar) of each artifact; a Core ML package, another file type or a missing sidecar is
    refused with one line (HRViTMobileError, exit 2)."""
    if not paths:
        raise HRViTMobileError("no artifacts given: pass one or more .pte or .tflite files")
    out = []
    for p in map(Path, paths):
        if p.suffix == ".mlpackage" or p.suffix == ".mlmodel":
            raise HRViTMobileError(
                f"{p.name} is a Core ML package: Core ML runs only on Apple platforms and cannot run on ARM "
                f"Linux; check its parity with the MIL evaluator (`hrvit-mobile report {p.name}`), or on a "
                "Mac (macOS), where the same command runs Core ML itself")
        if p.suffix not in ENGINES:
            raise HRViTMobileError(
                f"{p.name}: verify --arch arm64 runs .pte and .tflite files, got {p.suffix!r}")
        if not p.is_file():
            raise ExportError(f"artifact not found: {p}")
        out.append((p, read_sidecar(p)))
    return out


def parity_images(meta: dict[str, Any]) -> tuple[np.ndarray, str]:
    """The images the export ran parity on, rebuilt from the sidecar's ``parity_images``."""
    from hrvit_mobile.demo import demo_dataset_seed, demo_samples

    size = (int(meta["img_size"][0]), int(meta["img_size"][1]))
    text = str(meta.get("parity_images") or f"2 {EXPORTER_SYNTHETIC_PARITY}")
    if text.endswith(EXPORTER_SYNTHETIC_PARITY):
        n = int(text.split()[0])
        return synthetic_images(n, size, seed=1000), text  # the exporter's parity seed (spec.seed + 1000)
    m = re.fullmatch(r"(\d+) held-out synthetic val images of the demo checkpoint \(seed (\d+)\)", text)
    if m:
        if int(m.group(2)) != demo_dataset_seed():
            raise HRViTMobileError(f"{meta['artifact']}: its parity images came from demo seed {m.group(2)}, "
                                   f"this install's demo dataset has seed {demo_dataset_seed()}")
        return demo_samples("val", int(m.group(1)), size)[0], text
    m = re.fullmatch(r"the first (\d+) images of (.+)", text)
    if m:
        from hrvit_mobile.data.calibration import calibration_images

        if not Path(m.group(2)).exists():
            raise HRViTMobileError(
                f"{meta['artifact']}: its parity images were {text}, which is not on this host")
        return calibration_images(m.group(2), size, limit=int(m.group(1))), text
    m = re.fullmatch(r"(\d+) shipped sample images .*", text)
    if m:
        from hrvit_mobile.selftest import sample_photos

        return sample_photos(size, int(m.group(1))), text
    raise HRViTMobileError(f"{meta['artifact']}: cannot rebuild its parity images ({text!r})")


def runtime_inputs(meta: dict[str, Any], images: np.ndarray) -> list[np.ndarray]:
    """``images`` (uint8 N, H, W, 3) in the artifact's input contract, as its runner feeds them."""
    norm_meta = meta["input"]["normalization"]
    norm = Normalization(mean=tuple(norm_meta["mean"]), std=tuple(norm_meta["std"]))
    if meta["input"].get("layout") == "NHWC":  # the RGB image as it is (the MediaPipe contract)
        return [np.ascontiguousarray(img[None].astype(np.float32)) for img in images]
    return [np.ascontiguousarray(norm.apply(img[None]), dtype=np.float32) for img in images]


def to_nchw(meta: dict[str, Any], output: np.ndarray) -> np.ndarray:
    layout = (meta.get("outputs") or [{}])[0].get("layout", "NCHW")
    return np.ascontiguousarray(output.transpose(0, 3, 1, 2)) if layout == "NHWC" else output


def thresholds_of(meta: dict[str, Any]) -> ParityThresholds:
    """The export's thresholds (its own, maybe overridden on the command line), else the defaults."""
    recorded = (meta.get("parity") or {}).get("thresholds")
    return ParityThresholds(**recorded) if recorded else default_thresholds(meta["bits"], meta["activations"])


# --------------------------------------------------------------------------------------------------
# the ARM64 process


@dataclass(frozen=True)
class Arm64Host:
    """How this host runs aarch64 code: natively, or qemu with a sysroot."""

    native: bool
    qemu: str = ""
    qemu_version: str = ""
    sysroot: sysroot_mod.Sysroot | None = None

    def describe(self, cpu: str) -> str:
        return f"native {cpu}" if self.native else f"{cpu} under qemu-user {self.qemu_version}"


def is_arm64_host() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def native_cpu() -> str:
    """What this aarch64 host's CPU calls itself (the MIDR part on Linux, the brand on macOS)."""
    if sys.platform == "darwin":
        res = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        return res.stdout.strip() or "apple-silicon"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "native"
    parts = re.findall(r"CPU part\s*:\s*(\S+)", text)
    midr = {v >> 4 & 0xFFF: k for k, v in sysroot_mod.CPU_MIDR.items()}
    names = sorted({midr.get(int(p, 16), f"part {p}") for p in parts})
    return "+".join(names) or "native"


def arm64_host(progress: Callable[[str], None]) -> Arm64Host:
    """Check what running ARM64 code needs here, preparing the sysroot when emulating."""
    if is_arm64_host():
        return Arm64Host(native=True)
    if sys.platform != "linux":
        raise EmulationUnavailable(
            f"this {platform.machine()} {platform.system()} host cannot run ARM64 code: qemu user-mode "
            "emulation needs Linux; run verify on an ARM64 host (an Apple silicon Mac, an ARM Linux box) "
            "or on Debian/Ubuntu with qemu-user-static")
    qemu = sysroot_mod.qemu_binary()
    return Arm64Host(False, qemu, sysroot_mod.qemu_version(qemu), sysroot_mod.prepare_sysroot(progress))


def run_worker(host: Arm64Host, cpu: str, items: list[dict[str, Any]], work: Path, threads: int,
               progress: Callable[[str], None]) -> dict[str, Any]:
    """Run ``items`` in one ARM64 process on ``cpu``; returns the worker's result.json."""
    job = work / "job.json"
    (work / "result.json").unlink(missing_ok=True)  # a previous CPU model's
    job.write_text(json.dumps({"threads": threads, "artifacts": items}, indent=2))
    if host.native:
        cmd, features = [sys.executable, str(WORKER), str(job)], []
    else:
        assert host.sysroot is not None
        view, features = sysroot_mod.cpu_view(host.qemu, host.sysroot, cpu)
        cmd = sysroot_mod.emulated_command(host.qemu, host.sysroot, view, cpu, [str(WORKER), str(job)])
    progress(f"running {len(items)} artifact(s) on ARM64 {host.describe(cpu)}"
             + (f" (features: {' '.join(features)})" if features else ""))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tail: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        line = line.rstrip()
        if line.startswith("[arm64 worker]"):
            progress("  " + line[len("[arm64 worker] "):])
        elif line and "flop counting will not work" not in line:
            tail = [*tail, line][-20:]
    proc.wait()
    result_file = work / "result.json"
    if proc.returncode != 0 or not result_file.exists():
        last = tail[-1] if tail else f"exit code {proc.returncode}"
        raise HRViTMobileError(f"the ARM64 process on {cpu} failed: {last}")
    result = json.loads(result_file.read_text())
    result["features"] = features
    return result


# --------------------------------------------------------------------------------------------------
# the whole check


def verify_arm64(
    artifacts: Sequence[Path | str],
    model_for: ModelFor,
    cpus: Sequence[str] = (DEFAULT_CPU,),
    threads: int | None = None,
    progress: Callable[[str], None] = log.info,
    samples: int | None = None,
) -> list[Arm64Result]:
    """Run each artifact on ARM64 for each CPU model, compare, and record the figures in its sidecar.

    ``model_for(sidecar)`` builds the float model (deploy form) the artifact was exported from;
    ``samples`` keeps the first images of the export's parity set (a full model runs minutes per image
    under emulation). Bad input
    raises :class:`HRViTMobileError` before anything runs; the returned results say pass or fail.
    """
    from hrvit_mobile.exporters import open_artifact

    checked = check_artifacts(artifacts)
    cpus = list(dict.fromkeys(cpus or [DEFAULT_CPU]))
    if is_arm64_host():
        if cpus != [DEFAULT_CPU]:
            raise HRViTMobileError(
                "--cpu picks an emulated CPU model; this host is ARM64 and runs its own CPU")
        cpus = [native_cpu()]
    else:
        for cpu in cpus:
            sysroot_mod.check_cpu(cpu)
    threads = threads or os.cpu_count() or 1
    prepared = []
    for path, meta in checked:  # every input rebuilt before the slow part, so bad input fails first
        images, source = parity_images(meta)
        if samples is not None and samples < len(images):
            images, source = images[:samples], f"the first {samples} of {source}"
        prepared.append((path, meta, images, source))
    host = arm64_host(progress)
    results: list[Arm64Result] = []
    with tempfile.TemporaryDirectory(prefix="hrvit-arm64-") as tmp:
        work = Path(tmp)
        items, expected = [], {}
        models: dict[tuple, Any] = {}
        for i, (path, meta, images, source) in enumerate(prepared):
            key = (meta.get("model"), tuple(meta["img_size"]), meta["num_classes"])
            if key not in models:
                models[key] = model_for(meta)
            norm_meta = meta["input"]["normalization"]
            norm = Normalization(mean=tuple(norm_meta["mean"]), std=tuple(norm_meta["std"]))
            progress(f"{path.name}: the float model" + ("" if host.native else f" and x86 {meta['target']}")
                     + f" on {source}")
            refs = reference_outputs(models[key], to_tensors(norm.apply(images)))
            # on an ARM64 host this host's run is the ARM64 run: there is no x86 output to compare
            x86 = None if host.native else open_artifact(path, threads=threads).predict(images)
            inputs = []
            for k, x in enumerate(runtime_inputs(meta, images)):
                np.save(work / f"in_{i}_{k}.npy", x)
                inputs.append(str(work / f"in_{i}_{k}.npy"))
            item = {"id": str(i), "path": str(path.resolve()), "kind": path.suffix, "inputs": inputs,
                    "outputs_dir": str(work / f"out_{i}")}
            item["package"] = _runtime_package(path)
            if path.suffix == ".tflite":
                item.update(signature=TFLITE_SIGNATURE, input_name=meta["input"]["name"],
                            output_name=meta["outputs"][0]["name"])
            items.append(item)
            expected[str(i)] = (path, meta, refs, x86, source)
        for cpu in cpus:
            t0 = time.perf_counter()
            run = run_worker(host, cpu, [{**it, "outputs_dir": f"{it['outputs_dir']}_{cpu}"} for it in items],
                             work, threads, progress)
            progress(f"ARM64 {cpu}: {time.perf_counter() - t0:.0f} s in all (runtime imports included)")
            for item_id, (path, meta, refs, x86, source) in expected.items():
                res = _result(host, cpu, path, meta, refs, x86, run, item_id)
                results.append(res)
                _record(path, res, run, host, source, len(refs))
    return results


def _runtime_package(path: Path) -> str:
    """The distribution whose version names the runtime of ``path`` (its backend's, by file suffix)."""
    return next(b.runtime_package for b in backends() if b.suffix == path.suffix)


def _runtime_name(host: Arm64Host, cpu: str, path: Path, versions: dict[str, str]) -> str:
    package = _runtime_package(path)
    return f"{ENGINES[path.suffix]} {versions.get(package, '?')}, ARM64 {host.describe(cpu)}"


def _result(host: Arm64Host, cpu: str, path: Path, meta: dict[str, Any], refs: list[np.ndarray],
            x86: list[np.ndarray] | None, run: dict[str, Any], item_id: str) -> Arm64Result:
    r = run["results"][item_id]
    package = _runtime_package(path)
    versions = {k: v for k, v in run["versions"].items() if k in (package, "numpy", "python", "machine")}
    res = Arm64Result(path, cpu, _runtime_name(host, cpu, path, run["versions"]), versions)
    if "error" in r:
        res.error = r["error"]
        return res
    outs = [to_nchw(meta, np.load(p)) for p in r["outputs"]]
    th = thresholds_of(meta)
    res.vs_float = compare(outs, refs, th, res.runtime)
    if x86 is not None:
        res.vs_x86 = compare(outs, x86, th, res.runtime)
        res.x86_vs_float = compare(x86, refs, th, "x86")
    res.seconds_per_image = r["seconds_per_image"]
    return res


def _figures(p: ParityResult, verdict: bool = True) -> dict[str, Any]:
    keys = ("max_abs_err", "mean_abs_err", "cosine", "argmax_agreement")
    keys += ("passed", "reason") if verdict else ()
    return {k: v for k, v in dataclasses.asdict(p).items() if k in keys}


def _record(path: Path, res: Arm64Result, run: dict[str, Any], host: Arm64Host, source: str, n: int) -> None:
    """Write ``res`` into the sidecar's ``verification.arm64[cpu]`` (atomically; other CPUs' kept)."""
    meta = read_sidecar(path)  # fresh: another verify may have added another CPU model meanwhile
    entry: dict[str, Any] = {
        "cpu": res.cpu,
        "execution": "native" if host.native else f"qemu-user {host.qemu_version} -cpu {res.cpu}",
        "cpu_features": run.get("features") or [],
        "runtime": res.runtime,
        "versions": res.versions,
        "images": source,
        "samples": n,
        "thresholds": dataclasses.asdict(thresholds_of(meta)),
        "passed": res.passed,
    }
    if res.error:
        entry["error"] = res.error
    else:
        assert res.vs_float is not None
        entry.update(vs_float=_figures(res.vs_float), seconds_per_image=res.seconds_per_image)
        if res.vs_x86 is not None and res.x86_vs_float is not None:
            entry["vs_x86"] = _figures(res.vs_x86, verdict=False)
            entry["x86_vs_float"] = _figures(res.x86_vs_float, verdict=False)
    meta.setdefault("verification", {}).setdefault(ARCH, {})[res.cpu] = entry
    atomic_write(sidecar_path(path), json.dumps(meta, indent=2) + "\n")


def run_verify(args: Any, build_model: Callable[[Any, tuple[int, int]], Any]) -> int:
    """``hrvit-mobile verify``: one line per artifact and CPU model; exit 1 when one fails."""
    import argparse

    from hrvit_mobile.deploy import deploy

    def model_for(meta: dict[str, Any]) -> Any:
        size = (int(meta["img_size"][0]), int(meta["img_size"][1]))
        ns = argparse.Namespace(model=args.model or meta.get("model") or "hrvit_b1",
                                checkpoint=args.checkpoint, num_classes=meta["num_classes"])
        return deploy(build_model(ns, size), img_size=size)

    for name in ("threads", "samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise HRViTMobileError(f"--{name} must be >= 1, got {getattr(args, name)}")
    results = verify_arm64(args.artifacts, model_for, cpus=args.cpu or [DEFAULT_CPU], threads=args.threads,
                           samples=args.samples)
    for res in results:
        print(res.line())
    failed = [r for r in results if not r.passed]
    for r in failed:
        reason = r.error or (r.vs_float.reason if r.vs_float else "")
        print(f"hrvit-mobile: ARM64 verification failed: {r.artifact.name} on {r.cpu}: {reason}",
              file=sys.stderr)
    return 1 if failed else 0
