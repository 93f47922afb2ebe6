"""Which dataset layout a folder holds, and the dataset that reads it."""

from __future__ import annotations

from pathlib import Path

from hrvit_mobile.data.ade20k import ADE20KSegmentation, is_ade20k
from hrvit_mobile.data.cityscapes import CityscapesSegmentation, is_cityscapes
from hrvit_mobile.data.folder import DatasetError, FolderSegmentation, SegmentationDataset


def open_dataset(
    root: Path | str,
    split: str | None = None,
    img_size: tuple[int, int] | None = None,
    num_classes: int | None = None,
    transform=None,
) -> SegmentationDataset:
    """The dataset at ``root``, whatever its layout (detected from the folders it holds)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder not found: {root}")
    layout = detect_layout(root)
    if layout == "ade20k":
        dataset: SegmentationDataset = ADE20KSegmentation(root, split, img_size, transform)
    elif layout == "cityscapes":
        dataset = CityscapesSegmentation(root, split, img_size, transform)
    else:
        return FolderSegmentation(root, split, img_size, num_classes, transform)
    if num_classes is not None and num_classes != dataset.num_classes:
        raise DatasetError(f"{root} is {layout} with {dataset.num_classes} classes, not {num_classes}")
    return dataset


def detect_layout(root: Path | str) -> str:
    """``ade20k``, ``cityscapes`` or ``folder`` (images/ + masks/, optionally per split)."""
    root = Path(root)
    if is_ade20k(root):
        return "ade20k"
    if is_cityscapes(root):
        return "cityscapes"
    return "folder"
