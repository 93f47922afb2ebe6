"""Cityscapes layout: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` + ``gtFine/{split}/{city}/
*_gtFine_labelTrainIds.png`` (19 train ids, 255 ignore), as cityscapesscripts' createTrainIdLabelImgs
writes them."""

from __future__ import annotations

from pathlib import Path

from hrvit_mobile.data.classes import CITYSCAPES_CLASSES
from hrvit_mobile.data.folder import DatasetError, SegmentationDataset

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"


def is_cityscapes(root: Path) -> bool:
    return (root / "leftImg8bit").is_dir()


class CityscapesSegmentation(SegmentationDataset):
    """Cityscapes fine annotations. ``split`` is train/val/test; default val."""

    def __init__(
        self,
        root: Path | str,
        split: str | None = None,
        img_size: tuple[int, int] | None = None,
        transform=None,
    ) -> None:
        root = Path(root)
        split = split or "val"
        images_dir = root / "leftImg8bit" / split
        if not images_dir.is_dir():
            found = sorted(p.name for p in (root / "leftImg8bit").iterdir() if p.is_dir())
            raise DatasetError(f"{root}: no leftImg8bit/{split}/ (splits here: {', '.join(found) or 'none'})")
        images = sorted(images_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not images:
            raise DatasetError(f"{images_dir} holds no <city>/*{IMAGE_SUFFIX} images")
        labels_dir = root / "gtFine" / split
        pairs = []
        for image in images:
            label = labels_dir / image.parent.name / image.name.replace(IMAGE_SUFFIX, LABEL_SUFFIX)
            if not label.is_file() and labels_dir.is_dir():
                raise DatasetError(f"{image} has no {label} (create labelTrainIds with cityscapesscripts' "
                                   "createTrainIdLabelImgs)")
            pairs.append((image, label if label.is_file() else None))
        super().__init__(pairs, CITYSCAPES_CLASSES, img_size, transform)
