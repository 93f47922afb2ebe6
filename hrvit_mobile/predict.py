"""Run an exported artifact on a real image of any size and write the overlay and the class map.

The artifact runs in its own runtime through :func:`hrvit_mobile.exporters.open_artifact` (which applies
the normalization recorded in its sidecar), so this is what an app computes, not the PyTorch model.

Two policies map an image of any size onto the model's fixed input (H, W):

- ``fit`` (default, what the demo apps do with a camera frame): scale the image so it fits inside
  H x W keeping its aspect ratio (bilinear), pad the rest bottom/right with the normalization mean
  colour (which the model sees as zeros), run once, upsample the logits x4 (bilinear), crop the padding,
  take the argmax and resize that class map to the image (nearest).
- ``stretch`` (what the demo apps do: Vision's ``scaleFill``, Android's ``createScaledBitmap``): resize
  to H x W ignoring the aspect ratio, run once, upsample x4, argmax, resize back (nearest).
- ``slide`` (for images larger than the input, at their native resolution): tile the image with
  H x W windows overlapping by a third, pad where the image is smaller than a window, average the
  logits of overlapping windows, upsample x4 (bilinear) and take the argmax. Costs one run per tile.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.files import atomic_write
from hrvit_mobile.labels import LabelSet, labels_for

MODES: tuple[str, ...] = ("fit", "stretch", "slide")
STRIDE = 4  # the logits are at 1/4 of the input resolution
OVERLAY_ALPHA = 0.5


class PredictError(HRViTMobileError):
    """The image or the model cannot be used for a prediction."""


@dataclass
class Prediction:
    class_map: np.ndarray  # (h, w) uint8 class indices at the image's size
    labels: LabelSet
    runtime: str
    mode: str
    runs: int
    seconds: float  # wall time of the runtime calls
    files: dict[str, Path] = field(default_factory=dict)

    def class_fractions(self) -> dict[str, float]:
        counts = np.bincount(self.class_map.ravel(), minlength=len(self.labels))
        total = max(1, int(counts.sum()))
        order = np.argsort(-counts, kind="stable")
        return {self.labels.classes[i]: counts[i] / total for i in order if counts[i]}

    def summary(self) -> str:
        h, w = self.class_map.shape
        top = ", ".join(f"{name} {100 * f:.1f}%" for name, f in list(self.class_fractions().items())[:5])
        written = ", ".join(str(p) for p in self.files.values())
        return (
            f"{written}: {w}x{h} image, {self.mode} ({self.runs} run{'s' if self.runs > 1 else ''}, "
            f"{1e3 * self.seconds:.0f} ms in {self.runtime}); classes: {top}"
        )


def load_image(path: Path | str) -> np.ndarray:
    """uint8 (h, w, 3) RGB from a JPEG/PNG/...; the EXIF orientation of camera photos is applied."""
    from PIL import ImageOps

    from hrvit_mobile.images import open_image

    path = Path(path)
    if not path.is_file():
        raise PredictError(f"image not found: {path}")
    with open_image(path, PredictError) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _mean_pixel(meta: dict[str, Any]) -> np.ndarray:
    mean = meta["input"]["normalization"]["mean"]
    return np.clip(np.round(np.asarray(mean) * 255), 0, 255).astype(np.uint8)


def _upsample_argmax(logits: np.ndarray, chunk: int = 64) -> np.ndarray:
    """argmax of the x4 bilinear upsampling (align_corners=False) of (K, h, w) logits -> (4h, 4w).

    Done in bands of ``chunk`` logit rows with one row of context on each side, so a large image never
    holds K full-resolution planes; for an integer factor each band is exact away from its margin.
    """
    import torch
    import torch.nn.functional as F

    k, h, w = logits.shape
    out = np.empty((h * STRIDE, w * STRIDE), np.uint8 if k <= 256 else np.int32)
    t = torch.from_numpy(np.ascontiguousarray(logits, np.float32))[None]
    for r0 in range(0, h, chunk):
        r1 = min(h, r0 + chunk)
        a, b = max(0, r0 - 1), min(h, r1 + 1)
        up = F.interpolate(t[:, :, a:b], scale_factor=STRIDE, mode="bilinear", align_corners=False)
        top = (r0 - a) * STRIDE
        out[r0 * STRIDE : r1 * STRIDE] = up[0, :, top : top + (r1 - r0) * STRIDE].argmax(0).numpy()
    return out


def _fit(runner, image: np.ndarray) -> tuple[np.ndarray, int]:
    from PIL import Image

    H, W = runner.img_size
    h, w = image.shape[:2]
    s = min(H / h, W / w)
    nh, nw = max(1, min(H, round(h * s))), max(1, min(W, round(w * s)))
    canvas = np.empty((H, W, 3), np.uint8)
    canvas[:] = _mean_pixel(runner.meta)
    canvas[:nh, :nw] = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    logits = runner.predict(canvas)[0][0]
    small = _upsample_argmax(logits)[:nh, :nw]
    full = Image.fromarray(small).resize((w, h), Image.NEAREST)
    return np.asarray(full), 1


def _stretch(runner, image: np.ndarray) -> tuple[np.ndarray, int]:
    from PIL import Image

    H, W = runner.img_size
    h, w = image.shape[:2]
    logits = runner.predict(np.asarray(Image.fromarray(image).resize((W, H), Image.BILINEAR)))[0][0]
    return np.asarray(Image.fromarray(_upsample_argmax(logits)).resize((w, h), Image.NEAREST)), 1


def _tile_origins(size: int, window: int) -> list[int]:
    """Window starts covering ``size`` (a multiple of STRIDE, >= window) with ~1/3 overlap."""
    if size <= window:
        return [0]
    stride = max(STRIDE, (window * 2 // 3) // STRIDE * STRIDE)
    n = math.ceil((size - window) / stride) + 1
    starts = [min(i * stride, size - window) for i in range(n)]
    return sorted(set(starts))


def _slide(runner, image: np.ndarray) -> tuple[np.ndarray, int]:
    H, W = runner.img_size
    h, w = image.shape[:2]
    # pad to at least one window and to a multiple of the logit stride, so tiles align on the logit grid
    ph = max(H, math.ceil(h / STRIDE) * STRIDE)
    pw = max(W, math.ceil(w / STRIDE) * STRIDE)
    padded = np.empty((ph, pw, 3), np.uint8)
    padded[:] = _mean_pixel(runner.meta)
    padded[:h, :w] = image
    acc: np.ndarray | None = None
    count = np.zeros((ph // STRIDE, pw // STRIDE), np.float32)
    runs = 0
    for y in _tile_origins(ph, H):
        for x in _tile_origins(pw, W):
            logits = runner.predict(padded[y : y + H, x : x + W])[0][0]
            if acc is None:
                acc = np.zeros((logits.shape[0], *count.shape), np.float32)
            ys, xs = y // STRIDE, x // STRIDE
            acc[:, ys : ys + logits.shape[1], xs : xs + logits.shape[2]] += logits
            count[ys : ys + logits.shape[1], xs : xs + logits.shape[2]] += 1
            runs += 1
    assert acc is not None
    acc /= count[None]
    return _upsample_argmax(acc)[:h, :w], runs


def colorize(class_map: np.ndarray, labels: LabelSet) -> np.ndarray:
    palette = np.asarray(labels.palette, np.uint8)
    return palette[class_map]


def overlay(
    image: np.ndarray, class_map: np.ndarray, labels: LabelSet, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """The image blended with each pixel's class colour (``alpha`` of colour)."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(class_map, labels).astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def _png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def class_map_png(class_map: np.ndarray, labels: LabelSet) -> bytes:
    """A palette PNG: pixel values are class indices (read back with ``np.asarray(Image.open(p))``),
    shown in the label set's colours."""
    from PIL import Image

    if len(labels) > 256:
        raise PredictError(f"a PNG class map holds at most 256 classes, the model has {len(labels)}")
    im = Image.fromarray(class_map.astype(np.uint8), mode="P")
    flat = [v for rgb in labels.palette for v in rgb]
    im.putpalette(flat + [0] * (768 - len(flat)))
    return _png_bytes(im)


def resolve_model(model: Path | str) -> Path:
    """An artifact path as given, or the first model of a bundle folder whose runtime is installed."""
    from hrvit_mobile.bundle import MANIFEST, bundled_model
    from hrvit_mobile.exporters import MissingDependencyError, check_dependencies, target_names

    path = Path(model)
    if path.is_dir() and (path / MANIFEST).is_file():
        runtimes = []
        for runtime in target_names():
            try:
                check_dependencies(runtime)
                runtimes.append(runtime)
            except MissingDependencyError:
                continue
        return bundled_model(path, tuple(runtimes))
    return path


def predict(
    model: Path | str,
    image: Path | str | np.ndarray,
    out: Path | str | None = None,
    class_map_out: Path | str | None = None,
    mode: str = "fit",
    labels: str | Path | None = None,
    threads: int | None = None,
) -> Prediction:
    """Segment one image with an exported artifact (or a bundle folder) and optionally write PNGs.

    Args:
        model: a .pte / .tflite / .mlpackage with its sidecar, or a bundle folder.
        image: a path (JPEG, PNG, ...) or uint8 (h, w, 3) RGB of any size.
        out: overlay PNG to write (image blended with the class colours).
        class_map_out: class-map PNG (palette PNG of class indices); default ``<out stem>_classes.png``.
        mode: ``fit``, ``stretch`` or ``slide`` (see the module docstring).
        labels: class names/palette (``ade20k``, ``cityscapes``, ``synthetic`` or a JSON path); default
            the artifact's own or the shipped set with the model's class count.
    """
    from PIL import Image

    from hrvit_mobile.exporters import open_artifact

    if mode not in MODES:
        raise PredictError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if out is not None and Path(out).suffix.lower() != ".png":
        raise PredictError(f"--out must be a .png file, got {out}")
    if class_map_out is not None and Path(class_map_out).suffix.lower() != ".png":
        raise PredictError(f"--class-map must be a .png file, got {class_map_out}")
    rgb = load_image(image) if not isinstance(image, np.ndarray) else np.asarray(image)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise PredictError(f"expected a uint8 RGB image (h, w, 3), got {rgb.dtype} {rgb.shape}")
    runner = open_artifact(resolve_model(model), threads=threads)
    k = int(runner.meta["num_classes"])
    label_set = labels_for(k, labels, runner.labels)

    t0 = time.perf_counter()
    class_map, runs = {"fit": _fit, "stretch": _stretch, "slide": _slide}[mode](runner, rgb)
    seconds = time.perf_counter() - t0
    result = Prediction(np.ascontiguousarray(class_map), label_set, runner.runtime, mode, runs, seconds)
    if out is not None:
        out = Path(out)
        class_map_out = Path(class_map_out) if class_map_out else out.with_name(f"{out.stem}_classes.png")
        # encode both before writing either, so a failure leaves neither file half-written
        overlay_png = _png_bytes(Image.fromarray(overlay(rgb, result.class_map, label_set)))
        classes_png = class_map_png(result.class_map, label_set)
        atomic_write(out, overlay_png)
        try:
            atomic_write(class_map_out, classes_png)
        except BaseException:  # both files or neither
            out.unlink(missing_ok=True)
            raise
        result.files = {"overlay": out, "class_map": class_map_out}
    elif class_map_out is not None:
        class_map_out = Path(class_map_out)
        atomic_write(class_map_out, class_map_png(result.class_map, label_set))
        result.files = {"class_map": class_map_out}
    return result
