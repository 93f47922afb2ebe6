"""The plain layout: ``images/`` + ``masks/`` (PNG class indices, same stem), optionally per split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.images import IMAGE_EXTENSIONS, open_image
from hrvit_mobile.metrics import IGNORE_INDEX
from hrvit_mobile.normalization import Normalization


class DatasetError(HRViTMobileError):
    """A data folder that cannot be used (missing, empty, unpaired files, labels out of range)."""


def normalize_image(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W): ``(x / 255 - mean) / std``, as the sidecars say."""
    return torch.from_numpy(Normalization().apply(np.asarray(rgb)[None])[0])


class SegmentationDataset(Dataset):
    """Base: subclasses list ``pairs`` (image path, mask path) and may override :meth:`load_mask`.

    Samples are resized to ``img_size`` (image bilinear, mask nearest) unless ``img_size`` is None;
    ``transform`` (if given) gets and returns uint8 ``(rgb, mask)`` arrays before normalization, which
    is where augmentations plug in.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path | None]],
        classes: Sequence[str],
        img_size: tuple[int, int] | None = None,
        transform=None,
    ) -> None:
        self.pairs = list(pairs)
        self.classes = list(classes)
        self.img_size = img_size
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.pairs)

    def load_image(self, path: Path) -> np.ndarray:
        with open_image(path, DatasetError) as im:
            return np.asarray(im.convert("RGB"))

    def load_mask(self, path: Path) -> np.ndarray:
        """Class indices as stored (PNG, mode L or P); subclasses remap (e.g. reduce_zero_label)."""
        with open_image(path, DatasetError) as im:
            return np.asarray(im).astype(np.int64)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB and int64 mask at full resolution, before resize and transform."""
        image_path, mask_path = self.pairs[index]
        rgb = self.load_image(image_path)
        if mask_path is None:
            mask = np.full(rgb.shape[:2], IGNORE_INDEX, np.int64)
        else:
            mask = self.load_mask(mask_path)
        if mask.shape != rgb.shape[:2]:
            raise DatasetError(f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}, its image {image_path} is "
                               f"{rgb.shape[1]}x{rgb.shape[0]}: masks must match their images")
        bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= self.num_classes))
        if bad.any():
            raise DatasetError(f"{mask_path} has labels outside 0..{self.num_classes - 1} (and "
                               f"{IGNORE_INDEX} = ignore): {sorted(np.unique(mask[bad]).tolist())[:5]}")
        return rgb, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        rgb, mask = self.load_pair(index)
        if self.transform is not None:
            rgb, mask = self.transform(rgb, mask)
        elif self.img_size is not None and rgb.shape[:2] != tuple(self.img_size):
            h, w = self.img_size
            rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST))
        return normalize_image(rgb), torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))


def _stem_map(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


class FolderSegmentation(SegmentationDataset):
    """``root/images/*.jpg|png`` with ``root/masks/<same stem>.png``; or ``root/<split>/images`` etc.

    Classes come from ``root/classes.txt`` (one name per line) when present, else ``num_classes``.
    """

    def __init__(
        self,
        root: Path | str,
        split: str | None = None,
        img_size: tuple[int, int] | None = None,
        num_classes: int | None = None,
        transform=None,
    ) -> None:
        root = Path(root)
        base = root / split if split and (root / split / "images").is_dir() else root
        images_dir, masks_dir = base / "images", base / "masks"
        if not images_dir.is_dir():
            raise DatasetError(f"{root}: expected an images/ folder (and masks/), or {split}/images/")
        images = _stem_map(images_dir)
        if not images:
            raise DatasetError(f"{images_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        masks = _stem_map(masks_dir) if masks_dir.is_dir() else {}
        unpaired = sorted(set(images) - set(masks)) if masks else []
        if unpaired:
            raise DatasetError(f"{len(unpaired)} image(s) in {images_dir} have no mask in {masks_dir}, "
                               f"e.g. {unpaired[0]}")
        classes_file = root / "classes.txt"
        if classes_file.exists():
            classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
        elif num_classes:
            classes = [f"class_{i}" for i in range(num_classes)]
        elif masks:
            raise DatasetError(f"{root}: give --num-classes or a classes.txt (one name per line)")
        else:
            classes = []
        super().__init__([(images[s], masks.get(s)) for s in images], classes, img_size, transform)
