"""Calibration images from any folder: a dataset root (its images, never its masks) or loose images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hrvit_mobile.data.layouts import detect_layout
from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.images import fit_center, image_files, open_image


class CalibrationError(HRViTMobileError):
    """Calibration images that cannot be used (none found, unreadable, a count below 1)."""


def check_calibration_count(count: int) -> int:
    """``count`` when it is a usable number of calibration images, else one line saying what is allowed
    (a slice ``[:count]`` would silently take none, or all but the last few)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CalibrationError(f"the number of calibration images (--calib-samples) must be 1 or more, "
                          f"got {count!r}")
    return count


def load_calibration_images(directory: Path, img_size: tuple[int, int], limit: int = 32) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB from a folder of images (the first ``limit`` by name): shorter side resized,
    then center-cropped."""
    check_calibration_count(limit)
    paths = image_files(directory)[:limit]
    if not paths:
        raise CalibrationError(f"no images (*.jpg, *.png, ...) found in calibration folder {directory}")
    h, w = img_size
    out = np.empty((len(paths), h, w, 3), np.uint8)
    for i, p in enumerate(paths):
        with open_image(p, CalibrationError) as im:
            out[i] = np.asarray(fit_center(im.convert("RGB"), img_size, Image.BILINEAR))
    return out


def image_folder(root: Path | str, split: str = "train") -> Path:
    """The folder holding only the images of ``split`` in a dataset root; ``root`` itself otherwise.

    Reading a dataset root recursively would pick up masks (PNG too) as calibration images.
    """
    root = Path(root)
    layout = detect_layout(root)
    if layout == "ade20k":
        candidates = [root / "images" / ("training" if split == "train" else "validation")]
    elif layout == "cityscapes":
        candidates = [root / "leftImg8bit" / split]
    else:
        candidates = [root / split / "images", root / "images"]
    return next((c for c in candidates if c.is_dir()), root)


def calibration_images(root: Path | str, img_size: tuple[int, int], limit: int = 32,
                       split: str = "train") -> np.ndarray:
    """uint8 (N, H, W, 3) RGB for int8 calibration (shorter side resized, then center-cropped)."""
    return load_calibration_images(image_folder(root, split), img_size, limit=limit)


# the sidecar's ``calibration_source`` for an export of the demo model without --calib
DEMO_CALIBRATION = "demo checkpoint's synthetic train split"


def default_calibration(
    calib: Path | str | None, samples: int, img_size: tuple[int, int], demo_model: bool
) -> tuple[np.ndarray | None, str | None]:
    """The int8 calibration images of an export and where they came from: ``calib`` (a folder or dataset
    root), else the demo checkpoint's own train images when the demo model is exported, else ``(None,
    None)`` (the exporter then calibrates on its synthetic images and says so).

    ``report`` and ``bench`` call this with the export's arguments to rebuild the same set for the
    per-layer simulation.
    """
    check_calibration_count(samples)
    if calib:
        images = calibration_images(calib, img_size, limit=samples)
        return images, f"{len(images)} images of {Path(calib).resolve()}"
    if demo_model:
        from hrvit_mobile.demo import demo_calibration_images

        return demo_calibration_images(samples, img_size), DEMO_CALIBRATION
    return None, None
