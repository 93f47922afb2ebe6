"""mIoU of anything that maps images to logits: a PyTorch model, a QAT model, an exported artifact."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hrvit_mobile.metrics import ConfusionMatrix, upsample_class_map


@dataclass
class EvalResult:
    miou: float
    pixel_accuracy: float
    per_class_iou: list[float]
    samples: int

    def as_dict(self) -> dict:
        return {
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "per_class_iou": [None if np.isnan(v) else v for v in self.per_class_iou],
            "samples": self.samples,
        }


@torch.no_grad()
def evaluate(
    predict: Callable[[torch.Tensor], torch.Tensor | np.ndarray] | torch.nn.Module,
    dataset: Dataset,
    num_classes: int,
    batch_size: int = 1,
    progress: bool = False,
    limit: int | None = None,
) -> EvalResult:
    """Scores ``predict`` (normalized (N, 3, H, W) -> logits (N, K, h, w)) on ``(image, mask)`` samples.

    Logits are resized bilinearly to the mask's size before the argmax, as mmseg scores HRViT.
    """
    if isinstance(predict, torch.nn.Module):
        predict.eval()
    cm = ConfusionMatrix(num_classes)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    seen = 0
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc="evaluate", unit="batch", leave=False)
    for images, masks in batches:
        logits = predict(images)
        if isinstance(logits, torch.Tensor):
            logits = logits.float().numpy()
        cm.update(upsample_class_map(np.asarray(logits), tuple(masks.shape[-2:])), masks.numpy())
        seen += images.shape[0]
        if limit is not None and seen >= limit:
            break
    return EvalResult(cm.miou(), cm.pixel_accuracy(), cm.iou().tolist(), seen)


def evaluate_artifact(
    runner,
    dataset,
    num_classes: int,
    transform=None,
    progress: bool = False,
    limit: int | None = None,
) -> EvalResult:
    """mIoU of an exported artifact in its own runtime (an :class:`~hrvit_mobile.exporters.ArtifactRunner`).

    The runner takes uint8 RGB as an app would; ``transform`` maps the dataset's full-size
    ``(rgb, mask)`` to the artifact's input size (e.g. ``eval_transform(runner.img_size)``).
    """
    cm = ConfusionMatrix(num_classes)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    indices = range(count)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"evaluate {runner.path.name}", unit="image", leave=False)
    for i in indices:
        rgb, mask = dataset.load_pair(i)
        if transform is not None:
            rgb, mask = transform(rgb, mask)
        logits = runner.predict(np.ascontiguousarray(rgb, np.uint8)[None])[0]
        cm.update(upsample_class_map(logits, tuple(mask.shape[-2:])), mask[None])
    return EvalResult(cm.miou(), cm.pixel_accuracy(), cm.iou().tolist(), count)
