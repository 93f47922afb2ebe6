"""Input sizes HRViT can take, and parsing of user-given sizes."""

from __future__ import annotations

import re

from hrvit_mobile.errors import HRViTMobileError

# The stem divides by 4 and the fusion blocks down/up-sample branches by up to 8 more; the
# nearest-upsampled low-resolution branches only line up with the high-resolution ones when the
# input is a multiple of 32.
SIZE_MULTIPLE = 32


class InvalidImageSizeError(HRViTMobileError):
    """An input size the network cannot take."""


def parse_img_size(value: tuple[int, int] | list[int] | str | int) -> tuple[int, int]:
    """Accept ``512``, ``"512"``, ``"384x640"`` (height x width) or ``(384, 640)``."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", value)
        if not match:
            raise InvalidImageSizeError(
                f"image size {value!r} is not HEIGHTxWIDTH (e.g. 512x512) or a single integer"
            )
        height = int(match.group(1))
        return height, int(match.group(2) or height)
    if len(value) != 2:
        raise InvalidImageSizeError(f"image size {value!r} must be (height, width)")
    return int(value[0]), int(value[1])


def _nearest_multiples(n: int) -> list[int]:
    lower = max(SIZE_MULTIPLE, n // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return sorted({lower, lower + SIZE_MULTIPLE} if lower != n else {n})


def validate_img_size(size: tuple[int, int]) -> tuple[int, int]:
    """Return ``size`` if the network takes it, else raise naming the nearest valid sizes."""
    height, width = size
    if height % SIZE_MULTIPLE == 0 and width % SIZE_MULTIPLE == 0 and height > 0 and width > 0:
        return size
    options = [f"{h}x{w}" for h in _nearest_multiples(height) for w in _nearest_multiples(width)]
    raise InvalidImageSizeError(
        f"HRViT cannot take a {height}x{width} input: height and width must be positive "
        f"multiples of {SIZE_MULTIPLE}; nearest valid sizes: {', '.join(options)}"
    )
