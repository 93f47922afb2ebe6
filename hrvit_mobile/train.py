"""Float training of any HRViT variant on any dataset :func:`~hrvit_mobile.data.open_dataset` reads.

The recipe is the official one scaled to a CPU: cross-entropy (ignore 255) on logits upsampled to the
label size, AdamW, linear warmup then poly decay, periodic mIoU on the val split. ``last.pt`` holds
everything needed to resume; ``best.pt`` the weights with the best val mIoU so far. The loop, the
sample stream and the checkpoints are :mod:`hrvit_mobile.training`'s, shared with QAT: a run killed at
any step and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.metrics import IGNORE_INDEX
from hrvit_mobile.training import (
    TrainingLoop,
    restore_training_state,
    save_checkpoint,
    step_batches,
    training_state,
)

log = logging.getLogger("hrvit_mobile")


def poly_lr(
    step: int,
    total_steps: int,
    base_lr: float,
    warmup_steps: int = 0,
    power: float = 1.0,
    min_lr: float = 0.0,
    warmup_ratio: float = 1e-6,
) -> float:
    """Learning rate at ``step`` (0-based): linear warmup from ``base_lr * warmup_ratio``, then poly decay.

    As mmseg's ``PolyLrUpdaterHook`` with linear warmup (SegFormer/HRViT: power 1.0, warmup 1500 of 160k).
    """
    if total_steps <= 0:
        raise HRViTMobileError(f"total_steps must be > 0, got {total_steps}")
    progress = min(step, total_steps) / total_steps
    lr = (base_lr - min_lr) * (1 - progress) ** power + min_lr
    if step < warmup_steps:
        k = (1 - step / warmup_steps) * (1 - warmup_ratio)
        lr = lr * (1 - k)
    return lr


def segmentation_loss(logits: Tensor, masks: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy of ``logits`` (N, K, h, w) upsampled bilinearly to the masks' (N, H, W) size."""
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks, ignore_index=ignore_index)


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = "hrvit_b1"
    img_size: tuple[int, int] = (512, 512)
    crop_size: tuple[int, int] = (256, 256)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    steps: int = 1000
    batch_size: int = 8
    lr: float = 6e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    eval_every: int = 100
    eval_samples: int | None = 16
    seed: int = 0
    workers: int = 0
    threads: int | None = None  # torch intra-op threads; 1 is fastest on a shared, busy CPU


@dataclass
class TrainResult:
    step: int
    loss: float
    best_miou: float | None
    out: str


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``config.model`` on ``config.data``; checkpoints go to ``config.out``."""
    import hrvit_mobile
    from hrvit_mobile.data import open_dataset
    from hrvit_mobile.data.transforms import eval_transform, train_transform
    from hrvit_mobile.evaluate import evaluate

    out = Path(config.out)
    last_path = out / "last.pt"
    if resume and not last_path.is_file():
        raise HRViTMobileError(f"--resume: no {last_path} to resume from (train without --resume first)")
    if config.steps < 1 or config.batch_size < 1:
        raise HRViTMobileError(
            f"--steps and --batch-size must be >= 1, got {config.steps} and {config.batch_size}"
        )

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    train_set = open_dataset(
        config.data, split="train", img_size=config.img_size,
        transform=train_transform(config.img_size, config.crop_size, config.ratio_range, seed=config.seed),
    )
    num_classes = train_set.num_classes
    val_set = None
    try:
        val_set = open_dataset(config.data, split="val", img_size=config.img_size, num_classes=num_classes,
                               transform=eval_transform(config.img_size))
        if val_set.pairs == train_set.pairs or val_set.pairs[0][1] is None:
            val_set = None  # no separate labelled val split: skip evaluation rather than score train data
    except HRViTMobileError:
        val_set = None

    model = hrvit_mobile.create_model(config.model, num_classes=num_classes, img_size=config.img_size)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # norms and biases: no weight decay
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.999),
    )
    step, best_miou, history = 0, None, []
    if resume:
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        step, history = restore_training_state(state, model, optimizer)
        best_miou = state.get("best_miou")
        log.info("resumed from %s at step %d", last_path, step)
    if step >= config.steps:
        raise HRViTMobileError(f"{last_path} is already at step {step} >= --steps {config.steps}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    batches = step_batches(train_set, config.batch_size, config.seed, start_step=step, workers=config.workers)

    def train_step(k: int) -> dict[str, float]:
        lr = poly_lr(k, config.steps, config.lr, config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, masks = next(batches)
        loss = segmentation_loss(model(images), masks)
        if not torch.isfinite(loss):
            raise HRViTMobileError(f"loss is {loss.item()} at step {k}: lower --lr (now {config.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach()), "lr": lr}

    def run_eval(done: int) -> dict[str, float]:
        nonlocal best_miou
        result = evaluate(model, val_set, num_classes, limit=config.eval_samples)
        model.train()
        log.info("step %d: val mIoU %.4f on %d images", done, result.miou, result.samples)
        if best_miou is None or result.miou > best_miou:
            best_miou = result.miou
            best = {"model": model.state_dict(), "step": done, "val_miou": result.miou}
            save_checkpoint(out / "best.pt", best)
        return {"val_miou": result.miou}

    def save(done: int) -> None:
        save_checkpoint(last_path, {**training_state(model, optimizer, done, history),
                                    "best_miou": best_miou, "num_classes": num_classes})

    model.train()
    loop = TrainingLoop(
        steps=config.steps, step=train_step, save=save, evaluate=None if val_set is None else run_eval,
        eval_every=config.eval_every, save_every=config.eval_every, start=step, history=history,
        desc="train", progress=progress,
    )
    loss_value = loop.run()
    with open(out / "history.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in history)
    return TrainResult(config.steps, loss_value, best_miou, str(out))
