"""The one input normalization: RGB pixels to the model's input, ``(pixel / 255 - mean) / std``.

Training, calibration, parity and every exported artifact's sidecar use it; the exporters record it
so that an app applies exactly this (or the artifact applies it inside its graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """How the app turns an RGB image into the model's input: ``(pixel / 255 - mean) / std``."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pixel_range: str = "RGB uint8 0..255, divided by 255 before mean/std"

    def apply(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W) normalized."""
        x = images.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
