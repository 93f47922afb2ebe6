"""Segmentation and parity metrics shared by evaluation, quantization, QAT and reports.

Everything here is NumPy over class maps or logits, so the same code scores a PyTorch model, an
ExecuTorch/LiteRT artifact and the Core ML evaluator alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = 255
"""Label skipped by every metric (ADE20K's class 0 after reduce_zero_label, Cityscapes' void)."""


@dataclass
class ConfusionMatrix:
    """Accumulates a (K, K) confusion matrix; rows are targets, columns are predictions."""

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> ConfusionMatrix:
        """Add class maps of equal shape (any rank); target pixels equal to ``ignore_index`` are skipped."""
        pred = np.asarray(pred).ravel().astype(np.int64)
        target = np.asarray(target).ravel().astype(np.int64)
        if pred.shape != target.shape:
            raise ValueError(f"prediction has {pred.size} pixels, target {target.size}")
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.size and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(f"target labels outside 0..{self.num_classes - 1} (and {self.ignore_index})")
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"predicted classes outside 0..{self.num_classes - 1}")
        self.matrix += np.bincount(
            target * self.num_classes + pred, minlength=self.num_classes**2
        ).reshape(self.num_classes, self.num_classes)
        return self

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both targets and predictions."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that occur (in targets or predictions), in [0, 1]."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def miou(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> float:
    """mIoU of one or more class maps against targets (or against another model's class maps)."""
    return ConfusionMatrix(num_classes, ignore_index).update(pred, target).miou()


def sqnr_db(output: np.ndarray, reference: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, 10*log10(|ref|^2 / |out - ref|^2); inf when identical."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((np.asarray(output, np.float64).reshape(ref.shape) - ref) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def cosine_similarity(output: np.ndarray, reference: np.ndarray) -> float:
    a = np.asarray(output, np.float64).ravel()
    b = np.asarray(reference, np.float64).ravel()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom else 0.0


def upsample_class_map(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Class map at ``size`` from (N, K, h, w) logits: bilinear resize of logits, then argmax.

    This is how HRViT/SegFormer heads are scored (mmseg resizes logits, not labels). Uses torch's
    bilinear (align_corners=False) so the result equals the training-time resize exactly.
    """
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(logits, np.float32))
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return t.argmax(1).numpy()
