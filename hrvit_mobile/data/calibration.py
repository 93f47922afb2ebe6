"""Calibration images from any folder: a dataset root (its images, never its masks) or loose images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hrvit_mobile.data.folder import detect_layout


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
    """uint8 (N, H, W, 3) RGB for int8 calibration, via the exporters' loader (resize + center crop)."""
    from hrvit_mobile.exporters import load_calibration_images

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
    from hrvit_mobile.exporters.contract import check_calibration_count

    check_calibration_count(samples)
    if calib:
        images = calibration_images(calib, img_size, limit=samples)
        return images, f"{len(images)} images of {Path(calib).resolve()}"
    if demo_model:
        from hrvit_mobile.demo import demo_calibration_images

        return demo_calibration_images(samples, img_size), DEMO_CALIBRATION
    return None, None
