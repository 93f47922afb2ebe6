"""Quantization-aware fine-tuning with the target's PT2E quantizer in QAT mode.

What is trained is the graph that gets exported: the deploy form (BatchNorms folded into their convs,
static stripes, batch 1) captured with ``torch.export`` and prepared with ``prepare_qat_pt2e``. Training
the folded form also sidesteps PT2E's simulated conv-BN fold, which divides by the BN scale and so turns
the official init's ``attn_bn.weight = 0`` into NaN; here a zero scale is just a zero conv weight that
trains. The graph has a fixed batch of 1, so a batch of B samples is B forward/backward passes whose
gradients add up; with no BatchNorm left that is the same gradient as one batched pass.

Loop (:class:`hrvit_mobile.training.TrainingLoop`, shared with float training): AdamW, poly
learning-rate decay, cross-entropy (ignore 255) on logits upsampled to the mask, tqdm progress, periodic
mIoU of the *converted* int8 model (``convert_pt2e``: the quantize/dequantize graph the exporters lower,
run in PyTorch), checkpoints written atomically (model, optimizer, scheduler, step, RNG) so that
``resume`` continues exactly where a run stopped. Under ``torchrun`` (``WORLD_SIZE`` > 1) it
initialises gloo, gives every rank its slice of each global batch, averages gradients and observer
statistics with ``all_reduce``, and only rank 0 evaluates and writes.

The checkpoint exports with no extra step: ``hrvit-mobile export --checkpoint OUT/last.pt`` recognises it
(:func:`is_qat_checkpoint`) and lowers the converted graph without recalibrating.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.files import atomic_write
from hrvit_mobile.metrics import IGNORE_INDEX
from hrvit_mobile.training import (
    TrainingLoop,
    batch_indices,
    restore_training_state,
    save_checkpoint,
    training_state,
)

from .recipes import Prequantized, PT2ERecipe, XNNPACKInt8, get_qat_recipe

log = logging.getLogger("hrvit_mobile.quant")

FORMAT = "hrvit-mobile.qat/1"
CHECKPOINT_NAME = "last.pt"
LOG_NAME = "qat_log.json"


class QATError(HRViTMobileError):
    """A QAT run that cannot start or resume; one line."""


@dataclass
class QATConfig:
    """One QAT run. ``eval_every``/``save_every`` of 0 mean: only at the end."""

    data: str
    target: str = XNNPACKInt8.target  # the export target whose quantizer trains
    steps: int = 100
    model: str = "hrvit_b1"
    checkpoint: str | None = None  # float weights to start from (trained); None = embedded default/demo
    img_size: tuple[int, int] = (512, 512)
    num_classes: int | None = None  # from the dataset's classes.txt when None
    batch_size: int = 8  # per process
    lr: float = 1e-4
    weight_decay: float = 0.01
    poly_power: float = 0.9
    eval_every: int = 0
    save_every: int = 0
    eval_limit: int | None = None
    calib_batches: int = 4  # observer warm-up before the first step (fresh runs only)
    # from this step on the fake-quant ranges stay fixed, so the last steps train against the scales the
    # int8 graph will use (None: ranges follow the activations to the end)
    freeze_observers_at: int | None = None
    out: str = "qat_out"
    resume: bool = False
    seed: int = 0
    progress: bool = True

    # what must match between a checkpoint and a run resuming it
    IDENTITY = ("target", "model", "img_size", "num_classes", "steps", "batch_size", "lr", "seed",
                "freeze_observers_at")


@dataclass
class QATResult:
    checkpoint: Path
    step: int
    history: list[dict[str, float]] = field(default_factory=list)  # per step: loss, lr
    evals: list[dict[str, Any]] = field(default_factory=list)  # per evaluation: step, miou, ...

    @property
    def final_miou(self) -> float | None:
        return self.evals[-1]["miou"] if self.evals else None


# --- distributed -----------------------------------------------------------------------------------


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _init_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return _Dist(world, torch.distributed.get_rank())


def _sum_gradients(model: nn.Module, dist: _Dist) -> None:
    """DDP by hand (the prepared GraphModule is not a module DistributedDataParallel can wrap reliably).

    Each rank's loss is its share of one global mean (divided by the global count of labelled pixels),
    so the sum of the ranks' gradients is the gradient of the global batch, as on one process.
    """
    if dist.world <= 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)


def _sync_buffers(model: nn.Module, dist: _Dist) -> None:
    """Observer statistics (moving min/max, scales) saw different data on every rank: average the
    floating ones, take rank 0's integer ones (zero points, flags), so all ranks hold one model."""
    if dist.world <= 1:
        return
    for b in model.buffers():
        if b.is_floating_point():
            torch.distributed.all_reduce(b, op=torch.distributed.ReduceOp.SUM)
            b.div_(dist.world)
        else:
            torch.distributed.broadcast(b, 0)


def _broadcast_state(model: nn.Module, dist: _Dist) -> None:
    if dist.world <= 1:
        return
    for t in [*model.parameters(), *model.buffers()]:
        torch.distributed.broadcast(t.data, 0)


# --- model --------------------------------------------------------------------------------------------


def _float_model(cfg: QATConfig, num_classes: int) -> nn.Module:
    """The trained float weights QAT starts from (``hrvit_mobile.weights.create_model_with_weights``
    decides: --checkpoint, else the demo checkpoint when it fits, else untrained recipe weights)."""
    from hrvit_mobile.weights import create_model_with_weights

    model, source = create_model_with_weights(cfg.model, num_classes, cfg.img_size, cfg.checkpoint)
    log.info("qat: %s starts from %s", cfg.model, source)
    return model


def build_qat_model(
    model: nn.Module, img_size: tuple[int, int], recipe: PT2ERecipe
) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """The deploy form of ``model`` (training form), captured and prepared for QAT with ``recipe``."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    import hrvit_mobile

    deployed = hrvit_mobile.deploy(
        model, img_size=img_size, factored_des_from=recipe.factored_des_from()
    ).requires_grad_(True)
    example = torch.zeros(1, 3, *img_size)
    prepared = recipe.prepare(deployed, example)
    allow_exported_model_train_eval(prepared)  # .train()/.eval() switch observers the PT2E way
    return prepared, example


def _seg_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over labelled pixels of logits upsampled to the mask's size."""
    up = F.interpolate(logits, size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
    return F.cross_entropy(up, mask, ignore_index=IGNORE_INDEX, reduction="sum")


def _poly(total: int, power: float) -> Callable[[int], float]:
    return lambda step: max(0.0, 1.0 - step / max(1, total)) ** power


# --- checkpoints ----------------------------------------------------------------------------------------


def _identity(cfg: QATConfig, num_classes: int) -> dict[str, Any]:
    d = asdict(cfg)
    d["num_classes"] = num_classes
    d["img_size"] = list(cfg.img_size)
    return {k: d[k] for k in QATConfig.IDENTITY}


# what a recipe may choose about the graph it trains, and what a checkpoint that records no choice was
# trained with (it predates the choice)
_GRAPH_CHOICES = {"layout": "tokens", "upsampler": "transposed_conv", "des": "dense"}


def _layout_of(recipe: PT2ERecipe) -> dict[str, str]:
    """The deploy layout (upsampler and DES forms) a recipe trains in, for the checkpoint (recipes
    without a choice: nothing)."""
    return {key: getattr(recipe, key) for key in _GRAPH_CHOICES if hasattr(recipe, key)}


def _use_checkpoint_layout(recipe: PT2ERecipe, config: dict[str, Any]) -> None:
    """Rebuild a checkpoint's graph in the layout, upsampler and DES forms it was trained in; a
    checkpoint from before a choice was recorded was trained with what came before it."""
    for key, before in _GRAPH_CHOICES.items():
        if hasattr(recipe, key):
            setattr(recipe, key, config.get(key, before))


def load_qat_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise QATError(f"QAT checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file or one the weights-only loader refuses
        from hrvit_mobile.checkpoint import load_failure_reason

        raise QATError(f"cannot read QAT checkpoint {path}: {load_failure_reason(exc)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise QATError(f"{path} is not a hrvit-mobile QAT checkpoint (format {FORMAT})")
    from hrvit_mobile.checkpoint import check_finite

    check_finite(state.get("model", {}), path)  # the weights, where the checkpoint holds them
    return state


def is_qat_checkpoint(path: str | Path | None) -> bool:
    """True when ``path`` is a checkpoint written by :func:`train_qat` (cheap: reads it once)."""
    if not path or not Path(path).is_file():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an official .pth, a safetensors file: not ours
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def converted_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The int8 graph (``convert_pt2e``) of a QAT checkpoint and its run's config, ready to export."""

    import hrvit_mobile

    state = load_qat_checkpoint(path)
    ident = state["config"]
    model = hrvit_mobile.create_model(ident["model"], num_classes=ident["num_classes"],
                                      img_size=tuple(ident["img_size"]))
    recipe = get_qat_recipe(ident["target"])
    _use_checkpoint_layout(recipe, ident)
    prepared, _ = build_qat_model(model.eval(), tuple(ident["img_size"]), recipe)
    prepared.load_state_dict(state["model"])
    info = {**ident, **_layout_of(recipe), "step": state["step"], "recipe": recipe.name}
    return ConvertedGraph(recipe.convert(prepared)), info


class ConvertedGraph(nn.Module):
    """A converted PT2E graph as a module the exporters can call ``.eval()`` on.

    Exported graphs refuse ``train()``/``eval()``; the converted deploy form has no mode-dependent ops
    (BatchNorm is folded, there is no dropout), so switching modes is a no-op here.
    """

    def __init__(self, graph_module: torch.fx.GraphModule) -> None:
        super().__init__()
        self.graph_module = graph_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x)

    def train(self, mode: bool = True) -> ConvertedGraph:
        return self


def prequantized_recipe(meta: dict[str, Any]) -> Prequantized:
    """The exporters' recipe for a converted QAT graph: lowered as it is, no calibration."""
    return Prequantized(
        target=meta["target"],
        qat=True,
        source="QAT",
        info={"qat_recipe": meta["recipe"], "qat_steps": meta["step"],
              **{key: meta[key] for key in _GRAPH_CHOICES if key in meta}},
    )


# --- the run ---------------------------------------------------------------------------------------------


def _convert_copy(prepared: torch.fx.GraphModule, recipe: PT2ERecipe) -> torch.fx.GraphModule:
    import copy

    return recipe.convert(copy.deepcopy(prepared))


def evaluate_int8(prepared: torch.fx.GraphModule, recipe: PT2ERecipe, dataset, num_classes: int,
                  limit: int | None = None, progress: bool = False):
    """mIoU of the converted int8 graph (PyTorch quantize/dequantize reference ops) on ``dataset``."""
    from hrvit_mobile.evaluate import evaluate

    converted = _convert_copy(prepared, recipe)
    return evaluate(lambda x: converted(x), dataset, num_classes, progress=progress, limit=limit)


def evaluate_float(prepared: torch.fx.GraphModule, dataset, num_classes: int, limit: int | None = None,
                   progress: bool = False):
    """mIoU of the QAT weights in float (fake-quant off): separates what quantization costs after QAT
    from what the extra training steps gained."""
    import copy

    from torchao.quantization.pt2e import disable_fake_quant

    from hrvit_mobile.evaluate import evaluate

    float_graph = copy.deepcopy(prepared)
    float_graph.apply(disable_fake_quant)
    float_graph.eval()
    with torch.no_grad():
        return evaluate(lambda x: float_graph(x), dataset, num_classes, progress=progress, limit=limit)


def train_qat(cfg: QATConfig, on_step: Callable[[int, float], None] | None = None) -> QATResult:
    """Run (or resume) QAT as ``cfg`` says; returns the history and the final checkpoint's path.

    ``on_step(step, loss)`` is called after every completed step (after any checkpoint of that step).
    A KeyboardInterrupt saves the last completed step before it propagates.
    """
    from hrvit_mobile.data import open_dataset

    if cfg.steps < 1:
        raise QATError(f"--steps must be >= 1, got {cfg.steps}")
    if cfg.freeze_observers_at is not None and not 0 <= cfg.freeze_observers_at <= cfg.steps:
        raise QATError(
            f"--freeze-observers-at must be in 0..{cfg.steps} (--steps), got {cfg.freeze_observers_at}"
        )
    dist = _init_distributed()
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT_NAME
    train_ds = open_dataset(cfg.data, split="train", img_size=cfg.img_size, num_classes=cfg.num_classes)
    val_ds = open_dataset(cfg.data, split="val", img_size=cfg.img_size, num_classes=cfg.num_classes)
    num_classes = cfg.num_classes or train_ds.num_classes
    if num_classes < 1:
        raise QATError(f"{cfg.data}: no classes; give --num-classes or a classes.txt")
    state = None
    if cfg.resume:
        if not ckpt_path.is_file():
            raise QATError(f"--resume: no checkpoint at {ckpt_path}; start without --resume")
        state = load_qat_checkpoint(ckpt_path)
        saved, now = state["config"], _identity(cfg, num_classes)
        diff = [k for k in QATConfig.IDENTITY if saved.get(k) != now.get(k)]
        if diff:
            raise QATError(f"--resume: {ckpt_path} was trained with other settings ("
                           + ", ".join(f"{k} {saved.get(k)} vs {now.get(k)}" for k in diff) + ")")

    torch.manual_seed(cfg.seed)
    recipe = get_qat_recipe(cfg.target)
    if state is not None:  # a resumed run keeps the deploy layout its checkpoint was trained in
        _use_checkpoint_layout(recipe, state["config"])
    model = _float_model(cfg, num_classes) if state is None else _shell_model(cfg, num_classes)
    prepared, _ = build_qat_model(model, cfg.img_size, recipe)
    params = [p for p in prepared.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _poly(cfg.steps, cfg.poly_power))
    history: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    start = 0
    if state is not None:
        start, history = restore_training_state(state, prepared, optimizer, scheduler)
        evals = list(state["evals"])
        log.info("qat: resumed from %s at step %d/%d", ckpt_path, start, cfg.steps)
    else:
        _warm_up_observers(prepared, train_ds, cfg, dist)
    _broadcast_state(prepared, dist)

    def save(step: int) -> None:
        if dist.main:
            save_checkpoint(ckpt_path, {
                "format": FORMAT,
                "config": {**_identity(cfg, num_classes), **_layout_of(recipe)},
                **training_state(prepared, optimizer, step, history, scheduler),
                "evals": evals,
            })
            log_text = json.dumps({"step": step, "history": history, "evals": evals}, indent=1)
            atomic_write(out / LOG_NAME, log_text)
        dist.barrier()

    def run_eval(step: int) -> None:
        if dist.main:
            t0 = time.perf_counter()
            r = evaluate_int8(prepared, recipe, val_ds, num_classes, limit=cfg.eval_limit)
            evals.append({"step": step, "miou": r.miou, "pixel_accuracy": r.pixel_accuracy,
                          "samples": r.samples, "model": "converted int8 (convert_pt2e), PyTorch"})
            log.info("qat: step %d int8 mIoU %.4f (%d samples, %.1f s)", step, r.miou, r.samples,
                     time.perf_counter() - t0)
            if step == cfg.steps:  # the same weights without fake-quant: the final figure's float reference
                t0 = time.perf_counter()
                r = evaluate_float(prepared, val_ds, num_classes, limit=cfg.eval_limit)
                evals[-1]["float_miou"] = r.miou
                log.info("qat: step %d float mIoU of the QAT weights (fake-quant off) %.4f (%.1f s)", step,
                         r.miou, time.perf_counter() - t0)
        dist.barrier()
        if step < cfg.steps:
            prepared.train()

    def qat_step(step: int) -> dict[str, float]:
        if step == cfg.freeze_observers_at or (step == start and _frozen(cfg, start)):
            _freeze_observers(prepared, step)
        loss = _train_step(prepared, train_ds, step, cfg, dist, optimizer)
        scheduler.step()
        return {"loss": loss, "lr": optimizer.param_groups[0]["lr"]}

    prepared.train()
    TrainingLoop(
        steps=cfg.steps, step=qat_step, save=save, evaluate=run_eval, eval_every=cfg.eval_every,
        save_every=cfg.save_every, start=start, history=history, desc=f"qat {cfg.target}",
        progress=cfg.progress and dist.main, on_step=on_step,
    ).run()
    return QATResult(ckpt_path, cfg.steps, history, evals)


def _frozen(cfg: QATConfig, step: int) -> bool:
    return cfg.freeze_observers_at is not None and step >= cfg.freeze_observers_at


def _freeze_observers(prepared: torch.fx.GraphModule, step: int) -> None:
    """Stop every fake-quant observer: scales and zero points keep their values from here on.

    The on/off flag is a buffer of each fake-quant module, so a checkpoint carries it; the loop calls
    this again when it resumes past the freeze step anyway, which is idempotent.
    """
    from torchao.quantization.pt2e import disable_observer

    prepared.apply(disable_observer)
    log.info("qat: step %d: observers frozen (fake-quant ranges fixed)", step)


def _shell_model(cfg: QATConfig, num_classes: int) -> nn.Module:
    """The architecture only: every weight comes from the checkpoint being resumed."""
    import hrvit_mobile

    return hrvit_mobile.create_model(cfg.model, num_classes=num_classes, img_size=cfg.img_size).eval()


@torch.no_grad()
def _warm_up_observers(prepared: torch.fx.GraphModule, dataset, cfg: QATConfig, dist: _Dist) -> None:
    """Initialise the fake-quant ranges on a few training batches before the first step (as PTQ would),
    so the first steps do not train against ranges seen on one image."""
    prepared.train()
    for b in range(cfg.calib_batches):
        for i in batch_indices(len(dataset), b, 1, cfg.seed + 7919, dist.rank, dist.world):
            prepared(dataset[i][0][None])
    _sync_buffers(prepared, dist)


def _train_step(prepared: torch.fx.GraphModule, dataset, step: int, cfg: QATConfig, dist: _Dist,
                optimizer: torch.optim.Optimizer) -> float:
    """One optimizer step over this rank's share of the global batch; returns the global mean loss."""
    indices = batch_indices(len(dataset), step, cfg.batch_size, cfg.seed, dist.rank, dist.world)
    samples = [dataset[i] for i in indices]
    labelled = torch.tensor(float(sum(int((m != IGNORE_INDEX).sum()) for _, m in samples)))
    if dist.world > 1:  # normalise by the global count of labelled pixels
        torch.distributed.all_reduce(labelled)
    labelled = labelled.clamp(min=1.0)
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros(())
    for image, mask in samples:
        loss = _seg_loss(prepared(image[None]), mask[None]) / labelled
        loss.backward()
        total += loss.detach()
    _sum_gradients(prepared, dist)
    if dist.world > 1:
        torch.distributed.all_reduce(total)  # sum of per-rank shares of one global mean
    for p in prepared.parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            raise QATError(
                f"non-finite gradients at step {step + 1}: lower --lr, or start from trained weights"
            )
    optimizer.step()
    _sync_buffers(prepared, dist)
    value = float(total)
    if not math.isfinite(value):
        raise QATError(f"loss is {value} at step {step + 1}: lower --lr, or start from trained weights")
    return value
