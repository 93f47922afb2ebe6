"""Model-level measurements: parameters, MACs, eager latency of both forms, export time.

These are measurements, not assertions: ``hrvit-mobile profile`` prints them, tests never time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import hrvit_mobile
from hrvit_mobile.deploy import deploy


def count_params(model: nn.Module) -> int:
    """Parameters (buffers excluded), the figure the paper and the reference manifests quote."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, img_size: tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch's FLOP counter / 2)."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 3, *img_size))
    return counter.get_total_flops() // 2


def time_calls(fn: Callable[[], object], runs: int = 5, warmup: int = 1) -> dict[str, float]:
    """Wall time of ``fn()`` over ``runs`` timed calls after ``warmup`` untimed ones: median and p90 in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "p90_ms": float(np.percentile(times, 90)),
        "runs": len(times),
    }


@torch.no_grad()
def median_latency(model: nn.Module, img_size: tuple[int, int], runs: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of ``runs`` forward passes after ``warmup`` untimed ones."""
    x = torch.randn(1, 3, *img_size)
    return time_calls(lambda: model(x), runs, warmup)["median_ms"] / 1e3


def export_seconds(model: nn.Module, img_size: tuple[int, int]) -> float:
    """Wall time of ``torch.export.export(model, (x,), strict=True)``."""
    x = torch.randn(1, 3, *img_size)
    start = time.perf_counter()
    torch.export.export(model, (x,), strict=True)
    return time.perf_counter() - start


@dataclass
class ModelProfile:
    model: str
    img_size: tuple[int, int]
    threads: int
    runs: int
    params: int
    gmacs: float
    deploy_gmacs: float
    train_latency_s: float
    deploy_latency_s: float
    deploy_speedup: float
    export_s: float | None

    def as_dict(self) -> dict:
        return asdict(self)

    def as_text(self) -> str:
        h, w = self.img_size
        lines = [
            f"model            {self.model} @ {h}x{w}, batch 1, {self.threads} threads",
            f"params           {self.params:,}",
            f"GMACs            {self.gmacs:.2f} (training form), {self.deploy_gmacs:.2f} (deploy form)",
            f"eager latency    training form {self.train_latency_s * 1e3:.0f} ms, deploy form "
            f"{self.deploy_latency_s * 1e3:.0f} ms (median of {self.runs}; "
            f"deploy is {self.deploy_speedup:.2f}x faster)",
        ]
        if self.export_s is not None:
            lines.append(f"torch.export     deploy form, strict: {self.export_s:.1f} s")
        return "\n".join(lines)


def profile_model(
    name: str,
    img_size: tuple[int, int] = (512, 512),
    threads: int = 2,
    runs: int = 5,
    with_export: bool = True,
    model: nn.Module | None = None,
) -> ModelProfile:
    """Measure a variant (random weights unless ``model`` is given) in this process."""
    torch.set_num_threads(threads)
    model = (model or hrvit_mobile.create_model(name, img_size=img_size)).eval()
    deployed = deploy(model, img_size=img_size)
    train_s = median_latency(model, img_size, runs)
    deploy_s = median_latency(deployed, img_size, runs)
    return ModelProfile(
        model=name,
        img_size=tuple(img_size),
        threads=threads,
        runs=runs,
        params=count_params(model),
        gmacs=count_macs(model, img_size) / 1e9,
        deploy_gmacs=count_macs(deployed, img_size) / 1e9,
        train_latency_s=train_s,
        deploy_latency_s=deploy_s,
        deploy_speedup=train_s / deploy_s,
        export_s=export_seconds(deployed, img_size) if with_export else None,
    )
