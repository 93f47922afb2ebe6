"""Runs artifacts in their runtimes on this (ARM64) process and writes the outputs as .npy.

Started by :mod:`hrvit_mobile.arm64.verify` as ``python worker.py JOB.json``, natively or under qemu,
with nothing of hrvit-mobile importable: the standard library, NumPy and the runtimes only. The job
names each artifact, how its runtime takes the input, and the .npy inputs the host prepared (already in
the artifact's input contract); the worker writes one .npy per output and ``result.json`` beside the job.
All artifacts run in this one process, so the runtimes are imported once.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def say(line: str) -> None:
    print(f"[arm64 worker] {line}", file=sys.stderr, flush=True)


def versions(packages: list[str]) -> dict[str, str]:
    out = {"python": platform.python_version(), "machine": platform.machine()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def pte_runner(item: dict, threads: int):
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(Path(item["path"])).load_method(item.get("method", "forward"))

    def run(x: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(x)])[0].numpy().copy()

    return run


def tflite_runner(item: dict, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=item["path"], num_threads=threads)
    runner = interpreter.get_signature_runner(item["signature"])

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(runner(**{item["input_name"]: x})[item["output_name"]])

    return run


# by file suffix; the job names each artifact's runtime package (the host asks the backend registry)
RUNNERS = {".pte": pte_runner, ".tflite": tflite_runner}


def run_item(item: dict, threads: int) -> dict:
    make, package = RUNNERS[item["kind"]], item["package"]
    t0 = time.perf_counter()
    run = make(item, threads)
    result = {"load_seconds": round(time.perf_counter() - t0, 2), "seconds_per_image": [], "outputs": []}
    out_dir = Path(item["outputs_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(item["inputs"]):
        x = np.load(path)
        t0 = time.perf_counter()
        y = np.asarray(run(x), np.float32)
        result["seconds_per_image"].append(round(time.perf_counter() - t0, 2))
        np.save(out_dir / f"{i}.npy", y)
        result["outputs"].append(str(out_dir / f"{i}.npy"))
        say(f"{Path(item['path']).name}: image {i + 1}/{len(item['inputs'])} in "
            f"{result['seconds_per_image'][-1]:.1f} s")
    result["package"] = package
    return result


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    threads = int(job.get("threads") or os.cpu_count() or 1)
    kinds = sorted({item["kind"] for item in job["artifacts"]})
    say(f"importing the runtimes for {', '.join(kinds)} (under emulation: minutes)")
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    for item in job["artifacts"]:
        try:
            results[item["id"]] = run_item(item, threads)
        except Exception as exc:  # one artifact that does not load must not hide the others' results
            first = (str(exc).strip().splitlines() or [""])[0]
            results[item["id"]] = {"error": f"{type(exc).__name__}: {first}",
                                   "traceback": traceback.format_exc()[-2000:]}
            say(f"{Path(item['path']).name}: {results[item['id']]['error']}")
    packages = sorted({item["package"] for item in job["artifacts"]} | {"numpy", "torch"})
    summary = {"versions": versions(packages), "seconds": round(time.perf_counter() - t0, 1),
               "results": results}
    tmp = Path(job_path).with_name("result.json.partial")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, Path(job_path).with_name("result.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
