"""The verification set: images (and optional label maps) from folders, or synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.images import fit_center, image_files, open_image
from hrvit_mobile.metrics import IGNORE_INDEX


def load_verification_set(
    images_dir: Path | str,
    size: tuple[int, int],
    labels_dir: Path | str | None = None,
    limit: int = 8,
    reduce_zero_label: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (N, H, W, 3) RGB images and, with ``labels_dir``, (N, H, W) int64 class maps.

    Labels are single-channel PNGs named like their image (``a.jpg`` -> ``a.png``), resized with
    nearest neighbour and cropped exactly like the image. ``reduce_zero_label`` maps 0 to ignore and
    shifts the rest down by one (ADE20K's convention in mmseg).
    """
    from PIL import Image

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise HRViTMobileError(f"--images {images_dir} is not a folder of images")
    paths = image_files(images_dir)[:limit]
    if not paths:
        raise HRViTMobileError(f"no images (*.jpg, *.png, ...) found in {images_dir}")
    label_paths: list[Path] = []
    if labels_dir is not None:
        labels_dir = Path(labels_dir)
        index = {p.stem: p for p in labels_dir.rglob("*.png")} if labels_dir.is_dir() else {}
        missing = [p.name for p in paths if p.stem not in index]
        if missing:
            raise HRViTMobileError(
                f"no label PNG in {labels_dir} for {len(missing)} image(s), e.g. {missing[0]}: "
                "labels must be single-channel PNGs with the image's name"
            )
        label_paths = [index[p.stem] for p in paths]
    h, w = size
    images = np.empty((len(paths), h, w, 3), np.uint8)
    labels = np.empty((len(paths), h, w), np.int64) if label_paths else None
    for i, p in enumerate(paths):
        with open_image(p) as im:
            images[i] = np.asarray(fit_center(im.convert("RGB"), size, Image.BILINEAR))
        if labels is not None:
            with open_image(label_paths[i]) as lab:
                if lab.mode not in ("L", "P", "I", "I;16"):
                    raise HRViTMobileError(
                        f"label {label_paths[i].name} is {lab.mode}: labels must be single-channel class maps"
                    )
                labels[i] = np.asarray(fit_center(lab, size, Image.NEAREST), np.int64)
    if labels is not None and reduce_zero_label:
        labels = np.where(labels == 0, IGNORE_INDEX, labels - 1)
        labels[labels == IGNORE_INDEX - 1] = IGNORE_INDEX
    return images, labels
