"""Parity of an artifact's logits against the float model's, in the figures a report prints.

Extends the export contract's ``compare`` (max/mean abs error, worst cosine, argmax agreement, pass or
fail against thresholds) with SQNR, mean cosine, and mIoU of the artifact's class map against the float
model's and, when the verification set has labels, against ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hrvit_mobile.exporters.parity import ParityThresholds, compare
from hrvit_mobile.metrics import IGNORE_INDEX, ConfusionMatrix, cosine_similarity, sqnr_db, upsample_class_map


@dataclass
class Parity:
    samples: int
    max_abs_err: float
    mean_abs_err: float
    cosine_min: float
    cosine_mean: float
    sqnr_db: float
    argmax_agreement: float
    """Over all pixels of the logits (1/4 resolution), as the export's parity check counts it."""
    miou_vs_float: float
    """Artifact class map vs the float model's, both upsampled to the image size (how mmseg scores)."""
    miou_vs_labels: float | None
    pixel_acc_vs_labels: float | None
    passed: bool
    reason: str


def class_maps(logits: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) class maps at ``size`` from N logits of (1, K, h, w)."""
    return np.concatenate([upsample_class_map(x, size) for x in logits])


def parity(
    outputs: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    image_size: tuple[int, int],
    thresholds: ParityThresholds,
    labels: np.ndarray | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Parity:
    """All parity figures of ``outputs`` (artifact logits) against ``references`` (float logits).

    ``labels``: optional (N, H, W) ground truth at ``image_size`` (``ignore_index`` skipped).
    """
    base = compare(outputs, references, thresholds, runtime="")
    out = np.concatenate([np.asarray(o, np.float64).reshape(r.shape) for o, r in zip(outputs, references)])
    ref = np.concatenate([np.asarray(r, np.float64) for r in references])
    k = ref.shape[1]
    out_maps, ref_maps = class_maps(outputs, image_size), class_maps(references, image_size)
    miou_labels = acc_labels = None
    if labels is not None:
        cm = ConfusionMatrix(k, ignore_index).update(out_maps, labels)
        miou_labels, acc_labels = cm.miou(), cm.pixel_accuracy()
    return Parity(
        samples=len(outputs),
        max_abs_err=float(base.max_abs_err),
        mean_abs_err=float(base.mean_abs_err),
        cosine_min=float(base.cosine),
        cosine_mean=float(np.mean([cosine_similarity(o, r) for o, r in zip(out, ref)])),
        sqnr_db=sqnr_db(out, ref),
        argmax_agreement=float(base.argmax_agreement),
        miou_vs_float=ConfusionMatrix(k, ignore_index).update(out_maps, ref_maps).miou(),
        miou_vs_labels=miou_labels,
        pixel_acc_vs_labels=acc_labels,
        passed=bool(base.passed),
        reason=base.reason,
    )


def float_vs_labels(
    references: Sequence[np.ndarray], labels: np.ndarray, ignore_index: int = IGNORE_INDEX
) -> dict[str, float]:
    """mIoU and pixel accuracy of the float model itself: the ceiling each artifact is measured against."""
    maps = class_maps(references, labels.shape[1:])
    cm = ConfusionMatrix(references[0].shape[1], ignore_index).update(maps, labels)
    return {"miou": cm.miou(), "pixel_accuracy": cm.pixel_accuracy()}
