"""Segmentation augmentations on uint8 arrays, as mmseg's HRViT/SegFormer training pipeline does them.

Every transform takes and returns ``(rgb uint8 (H, W, 3), mask int64 (H, W))`` plus the
:class:`numpy.random.Generator` to draw from, so a pipeline is deterministic given its seed. Geometric
transforms move image and mask together; padding fills the mask with the ignore index (255).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from hrvit_mobile.metrics import IGNORE_INDEX

Pair = tuple[np.ndarray, np.ndarray]


def resize_pair(rgb: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> Pair:
    """Image bilinear, mask nearest (labels must not blend), to ``size`` = (height, width)."""
    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb, mask
    image = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    labels = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST))
    return image, labels.astype(np.int64)


class RandomResize:
    """Rescale keeping the aspect ratio so the image fits ``scale`` * r, r uniform in ``ratio_range``."""

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float] = (0.5, 2.0)) -> None:
        self.scale = scale
        self.ratio_range = ratio_range

    def __call__(self, rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        ratio = rng.uniform(*self.ratio_range)
        h, w = rgb.shape[:2]
        factor = min(self.scale[0] * ratio / h, self.scale[1] * ratio / w)
        return resize_pair(rgb, mask, (max(round(h * factor), 1), max(round(w * factor), 1)))


class RandomCrop:
    """A ``size`` crop; with ``cat_max_ratio`` < 1, redraws (``tries`` times) crops one class dominates."""

    def __init__(self, size: tuple[int, int], cat_max_ratio: float = 1.0, tries: int = 10) -> None:
        self.size = size
        self.cat_max_ratio = cat_max_ratio
        self.tries = tries

    def _window(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[slice, slice]:
        top = int(rng.integers(0, max(shape[0] - self.size[0], 0) + 1))
        left = int(rng.integers(0, max(shape[1] - self.size[1], 0) + 1))
        return slice(top, top + self.size[0]), slice(left, left + self.size[1])

    def __call__(self, rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        window = self._window(mask.shape, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.tries):
                labels, counts = np.unique(mask[window], return_counts=True)
                counts = counts[labels != IGNORE_INDEX]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                window = self._window(mask.shape, rng)
        return rgb[window], mask[window]


class RandomFlip:
    """Horizontal flip with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        if rng.random() < self.p:
            return rgb[:, ::-1], mask[:, ::-1]
        return rgb, mask


class PhotoMetricDistortion:
    """mmseg's photometric distortion: brightness, contrast, saturation, hue, each applied with p = 0.5.

    ``hue_delta`` is in OpenCV units (0..180 is the full circle), as in mmseg's defaults.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def __call__(self, rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        image = rgb.astype(np.float32)
        if rng.random() < 0.5:
            image += rng.uniform(-self.brightness_delta, self.brightness_delta)
        contrast_first = rng.random() < 0.5
        contrast = rng.uniform(*self.contrast_range) if rng.random() < 0.5 else None
        if contrast_first and contrast is not None:
            image *= contrast
        saturation = rng.uniform(*self.saturation_range) if rng.random() < 0.5 else None
        hue = rng.uniform(-self.hue_delta, self.hue_delta) if rng.random() < 0.5 else None
        if saturation is not None or hue is not None:
            hsv = np.asarray(
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).convert("HSV")
            ).astype(np.float32)
            if saturation is not None:
                hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
            if hue is not None:  # PIL's hue spans 0..255 for the circle that OpenCV maps to 0..180
                hsv[..., 0] = (hsv[..., 0] + hue * 256 / 180) % 256
            image = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")).astype(np.float32)
        if not contrast_first and contrast is not None:
            image *= contrast
        return np.clip(image, 0, 255).astype(np.uint8), mask


class Pad:
    """Pads bottom/right up to ``size``: the image with 0, the mask with the ignore index."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> Pair:
        dh, dw = max(self.size[0] - rgb.shape[0], 0), max(self.size[1] - rgb.shape[1], 0)
        if dh == 0 and dw == 0:
            return rgb, mask
        rgb = np.pad(rgb, ((0, dh), (0, dw), (0, 0)), constant_values=0)
        mask = np.pad(mask, ((0, dh), (0, dw)), constant_values=IGNORE_INDEX)
        return rgb, mask


class Resize:
    """Resize to exactly ``size`` (evaluation)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> Pair:
        return resize_pair(rgb, mask, self.size)


class Compose:
    """Applies ``steps`` in order with one generator seeded by ``seed`` (or the one passed per call)."""

    def __init__(self, steps: Sequence, seed: int | None = 0) -> None:
        self.steps = list(steps)
        self.rng = np.random.default_rng(seed)

    def __call__(self, rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> Pair:
        rng = self.rng if rng is None else rng
        for step in self.steps:
            rgb, mask = step(rgb, mask, rng)
        return np.ascontiguousarray(rgb), np.ascontiguousarray(mask)


def train_transform(
    img_size: tuple[int, int],
    crop_size: tuple[int, int] | None = None,
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    seed: int | None = 0,
) -> Compose:
    """mmseg's ADE20K pipeline: resize to ``img_size`` x ratio, crop, flip, photometric, pad to the crop."""
    crop = crop_size or img_size
    return Compose(
        [
            RandomResize(img_size, ratio_range),
            RandomCrop(crop, cat_max_ratio),
            RandomFlip(0.5),
            PhotoMetricDistortion(),
            Pad(crop),
        ],
        seed,
    )


def eval_transform(img_size: tuple[int, int]) -> Compose:
    """Resize to ``img_size``; no randomness."""
    return Compose([Resize(img_size)], seed=None)
