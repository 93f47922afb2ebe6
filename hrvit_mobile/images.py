"""Image files as every command reads them: the extensions looked for, and opening one with a clear error.

PIL raises ``UnidentifiedImageError`` for a file that is not an image and ``OSError`` for a truncated one,
from ``Image.open`` or later from ``convert``/``resize``; a traceback from deep in a calibration or a
report names neither the file nor what to do. :func:`open_image` turns both into the caller's one-line
error (``ExportError``, ``PredictError``, ``DatasetError``, ...) naming the file. An image with more than
:data:`MAX_IMAGE_PIXELS` pixels is refused the same way, from its header, before any pixel is decoded.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hrvit_mobile.errors import HRViTMobileError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# 8192x8192: a 48/50 MP phone photo fits (192 MB as RGB), a 108/200 MP one is to be downscaled first. Below
# PIL's own bomb limit (89.5 MP), so PIL's warning and error never reach the user: this line does.
MAX_IMAGE_PIXELS = 8192 * 8192


def image_files(directory: Path | str) -> list[Path]:
    """The image files under ``directory`` (subfolders included), by path."""
    return sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


@contextlib.contextmanager
def open_image(path: Path | str, error: type[HRViTMobileError] = HRViTMobileError) -> Iterator[Any]:
    """``PIL.Image.open(path)`` as a context; a file PIL cannot decode, there or in the ``with`` body,
    raises ``error`` with one line naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # PIL warns from 89.5 MP on; this limit is lower and refuses
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:  # beyond twice PIL's limit, refused in Image.open
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise error(_too_large(path, int(found.group(1)) if found else None)) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise error(_unreadable(path, exc)) from None
    try:
        with image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise error(_too_large(path, image.width * image.height, image.size))
            yield image
    except (UnidentifiedImageError, OSError) as exc:
        raise error(_unreadable(path, exc)) from None


def _unreadable(path: Path | str, exc: Exception) -> str:
    reason = str(exc).replace(str(path), "").strip(" '\"") or type(exc).__name__
    return f"{path} is not a readable image ({', '.join(IMAGE_EXTENSIONS)}): {reason}"


def _too_large(path: Path | str, pixels: int | None, size: tuple[int, int] | None = None) -> str:
    found = f"{size[0]}x{size[1]} = " if size else ""
    found += f"{pixels:,} pixels" if pixels else "over twice PIL's pixel limit"
    return (f"{path} is too large ({found}): images may have at most {MAX_IMAGE_PIXELS:,} pixels "
            "(8192x8192); downscale it first")


def fit_center(image: Any, size: tuple[int, int], resample: int) -> Any:
    """``image`` (PIL) with its shorter side scaled to ``size`` (H, W), then center-cropped to it: how
    calibration and verification images (and, with nearest resampling, their labels) are sized."""
    h, w = size
    s = max(h / image.height, w / image.width)
    image = image.resize((max(w, round(image.width * s)), max(h, round(image.height * s))), resample)
    top, left = (image.height - h) // 2, (image.width - w) // 2
    return image.crop((left, top, left + w, top + h))
