"""Float training of any HRViT variant on any dataset :func:`~hrvit_mobile.data.open_dataset` reads.

The recipe is the official one scaled to a CPU: cross-entropy (ignore 255) on logits upsampled to the
label size, AdamW, linear warmup then poly decay, periodic mIoU on the val split. ``last.pt`` holds
everything needed to resume; ``best.pt`` the weights with the best val mIoU so far. The small pieces
(:func:`poly_lr`, :func:`segmentation_loss`) are shared with the QAT loop.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.files import atomic_write
from hrvit_mobile.metrics import IGNORE_INDEX

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


def _atomic_save(obj: object, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))  # a killed run never leaves a torn checkpoint


def _batches(loader_factory, start_step: int):
    """Endless batches; each pass over the data is shuffled by its own (seed, epoch) generator."""
    epoch = 0
    while True:
        yield from loader_factory(epoch)
        epoch += 1


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
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best_miou, history = int(state["step"]), state.get("best_miou"), list(state.get("history", []))
        train_set.transform.rng = np.random.default_rng([config.seed, step])  # fresh, not a replay of step 0
        log.info("resumed from %s at step %d", last_path, step)
    if step >= config.steps:
        raise HRViTMobileError(f"{last_path} is already at step {step} >= --steps {config.steps}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")

    def loader(epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 7919 + epoch)
        return DataLoader(
            train_set, batch_size=config.batch_size, drop_last=len(train_set) >= config.batch_size,
            sampler=RandomSampler(train_set, generator=generator), num_workers=config.workers,
        )

    batches = _batches(loader, step)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=step, desc="train", unit="step")
    model.train()
    loss_value = math.nan
    started = time.time()
    while step < config.steps:
        lr = poly_lr(step, config.steps, config.lr, config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, masks = next(batches)
        loss = segmentation_loss(model(images), masks)
        if not torch.isfinite(loss):
            raise HRViTMobileError(f"loss is {loss.item()} at step {step}: lower --lr (now {config.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        entry = {"step": step, "loss": loss_value, "lr": lr, "seconds": round(time.time() - started, 1)}
        if val_set is not None and (step % config.eval_every == 0 or step == config.steps):
            result = evaluate(model, val_set, num_classes, limit=config.eval_samples)
            model.train()
            entry["val_miou"] = result.miou
            log.info("step %d: loss %.4f, val mIoU %.4f on %d images", step, loss_value, result.miou,
                     result.samples)
            if best_miou is None or result.miou > best_miou:
                best_miou = result.miou
                _atomic_save({"model": model.state_dict(), "step": step, "val_miou": result.miou},
                             out / "best.pt")
        history.append(entry)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
        if step % config.eval_every == 0 or step == config.steps:
            _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                          "best_miou": best_miou, "history": history, "num_classes": num_classes}, last_path)
    if bar is not None:
        bar.close()
    with open(out / "history.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in history)
    return TrainResult(step, loss_value, best_miou, str(out))
