"""ADEChallengeData2016 layout: ``images/{training,validation}/*.jpg`` + ``annotations/<same>/*.png``.

Annotations store 0 for "other" and 1..150 for the classes; as mmseg (``reduce_zero_label``) the
loader maps 0 -> 255 (ignored) and k -> k - 1, so the model's 150 outputs are the 150 classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hrvit_mobile.data.classes import ADE20K_CLASSES
from hrvit_mobile.data.folder import DatasetError, SegmentationDataset, _stem_map
from hrvit_mobile.metrics import IGNORE_INDEX

# Our split names -> ADE20K's folder names.
ADE20K_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def is_ade20k(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "annotations").is_dir() and any(
        (root / "images" / s).is_dir() for s in ("training", "validation")
    )


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """0 -> 255, k -> k - 1 (255 stays 255)."""
    out = mask.astype(np.int64) - 1
    out[(mask == 0) | (mask == IGNORE_INDEX)] = IGNORE_INDEX
    return out


class ADE20KSegmentation(SegmentationDataset):
    """ADE20K (SceneParsing 150). ``split`` is train/val (or training/validation); default val."""

    def __init__(
        self,
        root: Path | str,
        split: str | None = None,
        img_size: tuple[int, int] | None = None,
        transform=None,
    ) -> None:
        root = Path(root)
        split = split or "val"
        if split not in ADE20K_SPLITS:
            raise DatasetError(f"ADE20K split {split!r} unknown; use one of train, val")
        folder = ADE20K_SPLITS[split]
        images_dir, masks_dir = root / "images" / folder, root / "annotations" / folder
        if not images_dir.is_dir():
            raise DatasetError(f"{root} looks like ADE20K but has no images/{folder}/")
        images = _stem_map(images_dir)
        if not images:
            raise DatasetError(f"{images_dir} holds no images")
        masks = _stem_map(masks_dir) if masks_dir.is_dir() else {}
        unpaired = sorted(set(images) - set(masks)) if masks else []
        if unpaired:
            raise DatasetError(f"{len(unpaired)} image(s) in {images_dir} have no annotation in {masks_dir}, "
                               f"e.g. {unpaired[0]}")
        super().__init__([(images[s], masks.get(s)) for s in images], ADE20K_CLASSES, img_size, transform)

    def load_mask(self, path: Path) -> np.ndarray:
        return reduce_zero_label(super().load_mask(path))
