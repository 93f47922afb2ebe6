"""Image files as every command reads them: the extensions looked for, and opening one with a clear error.

PIL raises ``UnidentifiedImageError`` for a file that is not an image and ``OSError`` for a truncated one,
from ``Image.open`` or later from ``convert``/``resize``; a traceback from deep in a calibration or a
report names neither the file nor what to do. :func:`open_image` turns both into the caller's one-line
error (``ExportError``, ``PredictError``, ``DatasetError``, ...) naming the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hrvit_mobile.errors import HRViTMobileError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_files(directory: Path | str) -> list[Path]:
    """The image files under ``directory`` (subfolders included), by path."""
    return sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


@contextlib.contextmanager
def open_image(path: Path | str, error: type[HRViTMobileError] = HRViTMobileError) -> Iterator[Any]:
    """``PIL.Image.open(path)`` as a context; a file PIL cannot decode, there or in the ``with`` body,
    raises ``error`` with one line naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            yield image
    except (UnidentifiedImageError, OSError) as exc:
        reason = str(exc).replace(str(path), "").strip(" '\"") or type(exc).__name__
        raise error(f"{path} is not a readable image ({', '.join(IMAGE_EXTENSIONS)}): {reason}") from None


def fit_center(image: Any, size: tuple[int, int], resample: int) -> Any:
    """``image`` (PIL) with its shorter side scaled to ``size`` (H, W), then center-cropped to it: how
    calibration and verification images (and, with nearest resampling, their labels) are sized."""
    h, w = size
    s = max(h / image.height, w / image.width)
    image = image.resize((max(w, round(image.width * s)), max(h, round(image.height * s))), resample)
    top, left = (image.height - h) // 2, (image.width - w) // 2
    return image.crop((left, top, left + w, top + h))
