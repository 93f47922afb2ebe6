"""The optimizer loop float training and QAT share: steps, progress, records, evaluation, checkpoints.

A run is a pure function of its seed and its step: the samples of step ``k`` and their augmentation
come from :func:`sample_index` and :func:`sample_rng` of the global sample number, and a checkpoint
holds the weights, the optimizer and the torch RNG (:func:`training_state`). A run killed at any step
and resumed from its last checkpoint therefore ends with the same bytes as one that never stopped.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hrvit_mobile.files import atomic_write

log = logging.getLogger("hrvit_mobile")


# --- the sample stream ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist())


def sample_index(n: int, sample: int, seed: int) -> int:
    """Dataset index of global sample number ``sample``: each pass over ``n`` samples is its own
    shuffle of (seed + epoch), so any step's samples can be read without replaying the ones before."""
    return _epoch_order(n, seed, sample // n)[sample % n]


def batch_indices(n: int, step: int, batch: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Dataset indices of this rank's share of global ``step``: global batches of ``batch * world``
    samples, rank ``r`` reading the ``r``-th slice (DistributedSampler's partition, addressable by step)."""
    start = step * batch * world + rank * batch
    return [sample_index(n, k, seed) for k in range(start, start + batch)]


def sample_rng(seed: int, sample: int) -> np.random.Generator:
    """The augmentation generator of global sample number ``sample``: independent of every other one,
    and of which process (worker, rank, resumed run) draws it."""
    return np.random.default_rng([seed, sample])


class _StepSamples(Dataset):
    """Global sample number -> the augmented pair (the transform's generator set per sample)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __getitem__(self, sample: int) -> Any:
        transform = getattr(self.dataset, "transform", None)
        if transform is not None and hasattr(transform, "rng"):
            transform.rng = sample_rng(self.seed, sample)
        return self.dataset[sample_index(len(self.dataset), sample, self.seed)]


def _numbered_batches(start_step: int, batch: int) -> Iterator[list[int]]:
    step = start_step
    while True:
        yield list(range(step * batch, (step + 1) * batch))
        step += 1


def step_batches(dataset: Dataset, batch: int, seed: int, start_step: int = 0,
                 workers: int = 0) -> Iterator[Any]:
    """Endless collated batches from ``start_step`` on; batch ``k`` is the same whether the run started
    at 0 or resumed at ``k`` (``workers`` load them in parallel, in order)."""
    # its own generator: starting an iterator draws a seed, which must not move the torch RNG that
    # dropout draws from (a resumed run starts one at another step)
    return iter(DataLoader(_StepSamples(dataset, seed), batch_sampler=_numbered_batches(start_step, batch),
                           num_workers=workers, generator=torch.Generator().manual_seed(seed)))


# --- checkpoints -----------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write next to ``path``, then rename: a killed run never leaves a torn checkpoint."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                   history: list[dict[str, Any]], scheduler: Any = None) -> dict[str, Any]:
    """What resuming needs: weights, optimizer (and scheduler), completed steps, record, torch RNG."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "history": history, "rng": torch.get_rng_state()}
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    return state


def restore_training_state(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: Any = None) -> tuple[int, list[dict[str, Any]]]:
    """Load :func:`training_state` back; returns (completed steps, record so far)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if "rng" in state:  # checkpoints written before the RNG was kept resume without it
        torch.set_rng_state(state["rng"])
    return int(state["step"]), list(state.get("history", []))


# --- the loop --------------------------------------------------------------------------------------------


def is_due(done: int, every: int, steps: int) -> bool:
    """Every ``every`` completed steps (0: never) and after the last one."""
    return done == steps or (every > 0 and done % every == 0)


@dataclass
class TrainingLoop:
    """Steps ``start``..``steps`` of a run, with a progress bar, a record of every step, evaluation and
    checkpoints every few steps and after the last, and a checkpoint of the last completed step when
    Ctrl-C stops it.

    ``step(k)`` runs the optimizer step of 0-based step ``k`` and returns at least ``loss`` and ``lr``;
    ``evaluate(done)`` may return fields for that step's record; ``save(done)`` writes the checkpoint.
    """

    steps: int
    step: Callable[[int], dict[str, float]]
    save: Callable[[int], None]
    evaluate: Callable[[int], dict[str, Any] | None] | None = None
    eval_every: int = 0
    save_every: int = 0
    start: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    desc: str = "train"
    progress: bool = True
    on_step: Callable[[int, float], None] | None = None

    def run(self) -> float:
        """Run to ``steps``; returns the last step's loss (NaN when there was no step to run)."""
        from tqdm import tqdm

        bar = tqdm(total=self.steps, initial=self.start, desc=self.desc, unit="step",
                   disable=not self.progress or None)
        loss, done, started = math.nan, self.start, time.time()
        try:
            for k in range(self.start, self.steps):
                values = self.step(k)
                done, loss = k + 1, float(values["loss"])
                entry = {"step": done, **values, "seconds": round(time.time() - started, 1)}
                self.history.append(entry)  # before evaluating: an interrupt there still saves this step
                if self.evaluate is not None and is_due(done, self.eval_every, self.steps):
                    entry.update(self.evaluate(done) or {})
                if is_due(done, self.save_every, self.steps):
                    self.save(done)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{values['lr']:.2e}")
                if self.on_step is not None:
                    self.on_step(done, loss)
        except KeyboardInterrupt:
            completed = len(self.history) and self.history[-1]["step"]
            if completed > self.start:
                log.warning("%s: interrupted; saving step %d (continue with --resume)", self.desc, completed)
                self.save(completed)
            raise
        finally:
            bar.close()
        return loss
