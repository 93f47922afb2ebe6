"""Mask pictures: image | float prediction | artifact prediction | disagreement, as one PNG strip."""

from __future__ import annotations

import colorsys
import io

import numpy as np

GAP = 4
"""White pixels between the four panels."""

MAX_PANEL = 256
"""Panels are shrunk by an integer factor to at most this many pixels a side: four 512x512 panels
per picture and two pictures per artifact made a 23 MB HTML report for the 13-artifact bench."""

DISAGREE_RGB = (255, 0, 0)
"""Where the artifact's class differs from the float model's; agreeing pixels show the image, dimmed."""


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours, distinct and deterministic (golden-angle hue walk, as the Core ML preview)."""
    out = np.empty((num_classes, 3), np.uint8)
    for i in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
        out[i] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def colorize(class_map: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) int class map -> (H, W, 3) uint8 colours; ignore/out-of-range classes are black."""
    pal = np.concatenate([palette(num_classes), np.zeros((1, 3), np.uint8)])
    idx = np.where((class_map >= 0) & (class_map < num_classes), class_map, num_classes)
    return pal[idx]


def disagreement(image: np.ndarray, differ: np.ndarray) -> np.ndarray:
    """The image at 40 % grey brightness with the ``differ`` pixels painted red."""
    dim = (0.4 * image.astype(np.float32).mean(-1, keepdims=True)).repeat(3, -1).astype(np.uint8)
    dim[differ] = DISAGREE_RGB
    return dim


def _blocks(a: np.ndarray, f: int) -> np.ndarray:
    """(H, W, ...) -> (H//f, W//f, f, f, ...) non-overlapping f x f blocks (edges cropped)."""
    h, w = a.shape[0] // f, a.shape[1] // f
    a = a[: h * f, : w * f]
    return a.reshape(h, f, w, f, *a.shape[2:]).swapaxes(1, 2)


def mask_strip(
    image: np.ndarray,
    float_map: np.ndarray,
    artifact_map: np.ndarray,
    num_classes: int,
    max_panel: int = MAX_PANEL,
) -> np.ndarray:
    """(h, 4w + 3*GAP, 3) uint8: the four panels side by side. Class maps must have the image's size.

    Panels larger than ``max_panel`` shrink by the smallest integer factor that fits: the image by
    block means, class maps by each block's first pixel, and a disagreement block is red when any
    of its pixels differ, so no disagreement disappears from the picture.
    """
    h, w = image.shape[:2]
    if float_map.shape != (h, w) or artifact_map.shape != (h, w):
        raise ValueError(f"class maps {float_map.shape}, {artifact_map.shape} must match the image {h}x{w}")
    differ = float_map != artifact_map
    f = -(-max(h, w) // max_panel)
    if f > 1:
        image = _blocks(image.astype(np.float32), f).mean((2, 3)).round()
        float_map, artifact_map = _blocks(float_map, f)[:, :, 0, 0], _blocks(artifact_map, f)[:, :, 0, 0]
        differ = _blocks(differ, f).any((2, 3))
        h, w = differ.shape
    panels = [
        image.astype(np.uint8),
        colorize(float_map, num_classes),
        colorize(artifact_map, num_classes),
        disagreement(image, differ),
    ]
    strip = np.full((h, 4 * w + 3 * GAP, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        strip[:, i * (w + GAP) : i * (w + GAP) + w] = panel
    return strip


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
