"""A segmentation dataset the project generates itself, so every flow (train, eval, calibration) runs offline.

Each image is a textured, lit scene of shapes from :data:`SYNTHETIC_CLASSES`: shapes at many scales,
background clutter (labelled background), occlusion (later shapes cover earlier ones, and so do their
masks), a lighting gradient and sensor noise. Every image is drawn from its own generator seeded by
``(seed, split, index)``, so the bytes do not depend on process or worker count or on generation order.

Shapes carry a characteristic hue per class (with jitter, texture and lighting on top) while the
background and clutter are low-saturation: that keeps the task learnable by a short CPU training run
while the masks still demand the exact shape outlines.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from hrvit_mobile.data.folder import DatasetError

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "background", "disc", "square", "triangle", "ring", "cross", "star", "stripes",
)
SPLITS = ("train", "val")


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random (cells x cells) grid, bilinearly upsampled to (h, w)."""
    grid = rng.random((cells + 1, cells + 1, channels), dtype=np.float32)
    ys = np.linspace(0, cells, h, dtype=np.float32)
    xs = np.linspace(0, cells, w, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), cells - 1)
    x0 = np.minimum(xs.astype(np.int64), cells - 1)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    rows = grid[:, x0] * (1 - fx) + grid[:, x0 + 1] * fx  # along x on the few grid rows first, then y
    return rows[y0] * (1 - fy) + rows[y0 + 1] * fy


def _box(
    cy: float, cx: float, reach: float, h: int, w: int
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Row and column ranges of the pixels within ``reach`` of the centre, clipped; None if empty."""
    y0, y1 = max(int(cy - reach) - 1, 0), min(int(cy + reach) + 2, h)
    x0, x1 = max(int(cx - reach) - 1, 0), min(int(cx + reach) + 2, w)
    return None if y1 <= y0 or x1 <= x0 else ((y0, y1), (x0, x1))


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def _class_colour(rng: np.random.Generator, cls: int) -> np.ndarray:
    hue = ((cls - 1) / (len(SYNTHETIC_CLASSES) - 1) + rng.uniform(-0.05, 0.05)) % 1.0
    return _hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.5, 1.0))


def _shape_mask(
    cls: int, u: np.ndarray, v: np.ndarray, radius: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean mask of shape ``cls`` in rotated, centred coordinates ``(u, v)`` (pixels)."""
    r = np.hypot(u, v)
    name = SYNTHETIC_CLASSES[cls]
    if name == "disc":
        return r <= radius
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= radius * 0.8
    if name == "triangle":  # equilateral: three half-planes at 120 degrees
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = np.pi / 2 + k * 2 * np.pi / 3
            inside &= u * np.cos(a) + v * np.sin(a) <= radius * 0.5
        return inside
    if name == "ring":
        return (r <= radius) & (r >= radius * rng.uniform(0.5, 0.7))
    if name == "cross":
        arm = radius * 0.3
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    if name == "star":  # five points: the boundary radius is a triangle wave of the angle
        phase = (np.arctan2(v, u) * 5 / (2 * np.pi)) % 1.0
        return r <= radius * (0.45 + 0.55 * np.abs(1 - 2 * phase))
    if name == "stripes":  # a rotated rectangle; its class shows in its texture (see _paint)
        return (np.abs(u) <= radius) & (np.abs(v) <= radius * rng.uniform(0.4, 0.9))
    raise ValueError(name)


def generate_sample(
    seed: int, split: str, index: int, size: tuple[int, int] = (512, 512)
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(uint8 (H, W, 3) RGB, uint8 (H, W) class mask)`` pair; the same arguments give the same bytes."""
    rng = _rng(seed, split, index)
    h, w = size
    side = min(h, w)
    # Textured, low-saturation background: a grey level, a faint tint and two octaves of noise.
    grey = rng.uniform(0.25, 0.75)
    tint = rng.uniform(-0.06, 0.06, 3).astype(np.float32)
    image = grey + tint + 0.35 * (_smooth_noise(rng, h, w, int(rng.integers(2, 6)), 1) - 0.5)
    image = image + 0.15 * (_smooth_noise(rng, h, w, int(rng.integers(16, 48)), 1) - 0.5)
    image = np.broadcast_to(image, (h, w, 3)).copy()
    mask = np.zeros((h, w), np.uint8)
    # row and column coordinates as broadcastable vectors: full grids cost time and memory for nothing
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]

    # Clutter: thin grey lines and specks that belong to the background.
    for _ in range(int(rng.integers(3, 12))):
        cy, cx, angle = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, np.pi)
        half, width = rng.uniform(0.05, 0.5) * side, rng.uniform(0.5, 2.5)
        box = _box(cy, cx, half + width, h, w)  # only the pixels the line can touch
        if box is None:
            continue
        (y0, y1), (x0, x1) = box
        dy, dx = yy[y0:y1] - cy, xx[:, x0:x1] - cx
        line = (np.abs(dx * np.sin(angle) - dy * np.cos(angle)) <= width) & (
            np.abs(dx * np.cos(angle) + dy * np.sin(angle)) <= half
        )
        image[y0:y1, x0:x1][line] = rng.uniform(0.1, 0.9)

    # Shapes, back to front; each class appears at least once per few images.
    count = int(rng.integers(3, 9))
    classes = rng.integers(1, len(SYNTHETIC_CLASSES), count)
    for cls in classes:
        radius = side * float(np.exp(rng.uniform(np.log(0.03), np.log(0.3))))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        box = _box(cy, cx, radius * 1.45, h, w)  # rotated squares reach 0.8 * sqrt(2) * radius
        if box is None:
            continue
        (y0, y1), (x0, x1) = box
        angle = rng.uniform(0, 2 * np.pi)
        dy, dx = yy[y0:y1] - cy, xx[:, x0:x1] - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        inside = _shape_mask(int(cls), u, v, radius, rng)
        colour = _class_colour(rng, int(cls))
        patch = image[y0:y1, x0:x1]
        if SYNTHETIC_CLASSES[cls] == "stripes":
            period = rng.uniform(0.15, 0.4) * radius + 2
            on = ((u / period) % 1.0) < 0.5
            dark = colour * rng.uniform(0.15, 0.35)
            fill = np.where(on[..., None], colour, dark)
        else:  # mottled fill: the class colour modulated by smooth noise
            shade = 0.75 + 0.5 * _smooth_noise(rng, y1 - y0, x1 - x0, int(rng.integers(2, 6)), 1)
            fill = colour * shade
        patch[inside] = fill[inside] if fill.ndim == 3 else fill
        mask[y0:y1, x0:x1][inside] = cls

    # Lighting: a linear gradient in a random direction, then sensor noise.
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle)) / side
    image *= (1.0 + rng.uniform(0.1, 0.6) * ramp)[..., None] * rng.uniform(0.7, 1.2)
    image += rng.uniform(0.005, 0.03) * rng.standard_normal(image.shape, dtype=np.float32)
    rgb = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return rgb, mask


def write_synthetic(
    out: Path | str,
    train: int,
    val: int,
    size: tuple[int, int] = (512, 512),
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Writes ``out/{train,val}/{images,masks}/NNNNNN.png`` and ``out/classes.txt``; returns ``out``.

    Existing files with the same names are overwritten with identical bytes (the data are a function of
    the arguments), so an interrupted run can simply be repeated.
    """
    from PIL import Image

    if train < 0 or val < 0 or train + val == 0:
        raise DatasetError(f"--train and --val must be >= 0 and not both 0, got {train} and {val}")
    out = Path(out)
    counts = {"train": train, "val": val}
    jobs = [(split, i) for split in SPLITS for i in range(counts[split])]
    for split in SPLITS:
        if counts[split]:
            (out / split / "images").mkdir(parents=True, exist_ok=True)
            (out / split / "masks").mkdir(parents=True, exist_ok=True)
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="synthetic", unit="img")
    for split, i in jobs:
        rgb, mask = generate_sample(seed, split, i, size)
        for folder, array in (("images", rgb), ("masks", mask)):
            final = out / split / folder / f"{i:06d}.png"
            tmp = final.with_suffix(".tmp.png")
            Image.fromarray(array).save(tmp, compress_level=1)
            tmp.replace(final)  # a killed run never leaves a truncated PNG under a real name
    (out / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES) + "\n")
    return out
