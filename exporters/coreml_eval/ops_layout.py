"""Resampling and layout ops: upsample/resize, reshape, transpose, slice, concat, split, pad."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .dtypes import f32
from .errors import UnsupportedOpError


def _bilinear_coords(size_in: int, size_out: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """Source coordinates of MIL ``upsample_bilinear`` (iOS15 docstring; iOS16 ``half_pixel_centers``)."""
    i = np.arange(size_out, dtype=np.float64)
    if align_corners:
        c = i * ((size_in - 1) / (size_out - 1)) if size_out > 1 else np.zeros_like(i)
    elif half_pixel:
        spacing = size_in / size_out
        c = i * spacing + 0.5 * spacing - 0.5
    else:
        c = i * (size_in / size_out)
    return np.clip(c, 0, size_in - 1)


def _interp_axis(x: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    lo = np.floor(coords).astype(np.intp)
    hi = np.minimum(lo + 1, x.shape[axis] - 1)
    frac = (coords - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def _reshape_target(shape_in: tuple[int, ...], shape: Sequence[int]) -> list[int]:
    """MIL reshape: ``0`` copies the input dim it right-aligns with (iOS17; the same index when ranks
    match, as in iOS15), one ``-1`` is inferred."""
    out = [int(s) for s in shape]
    for i, s in enumerate(out):
        if s == 0:
            j = len(shape_in) - (len(out) - i)
            out[i] = shape_in[j] if 0 <= j < len(shape_in) else 1
    return out


def _slice_by_index(
    x: np.ndarray,
    begin: np.ndarray,
    end: np.ndarray,
    stride: np.ndarray | None,
    begin_mask: np.ndarray | None,
    end_mask: np.ndarray | None,
    squeeze_mask: np.ndarray | None,
) -> np.ndarray:
    r = x.ndim
    stride = np.ones(r, int) if stride is None else np.asarray(stride)
    begin_mask = np.zeros(r, bool) if begin_mask is None else np.asarray(begin_mask)
    end_mask = np.zeros(r, bool) if end_mask is None else np.asarray(end_mask)
    squeeze_mask = np.zeros(r, bool) if squeeze_mask is None else np.asarray(squeeze_mask)
    index: list[Any] = []
    for i in range(r):
        if squeeze_mask[i]:
            index.append(int(begin[i]))
            continue
        b = None if begin_mask[i] else int(begin[i])
        e = None if end_mask[i] else int(end[i])
        index.append(slice(b, e, int(stride[i])))
    return x[tuple(index)]


def _op_upsample_bilinear(a: dict[str, Any]) -> np.ndarray:
    x = f32(a["x"])
    sh, sw = float(a.get("scale_factor_height", 1.0)), float(a.get("scale_factor_width", 1.0))
    align = bool(a.get("align_corners", True))  # the iOS15 default
    half = bool(a.get("half_pixel_centers", not align))  # the iOS16 default
    h, w = x.shape[-2:]
    ho, wo = math.floor(h * sh), math.floor(w * sw)
    y = _interp_axis(x, _bilinear_coords(h, ho, align, half), x.ndim - 2)
    return _interp_axis(y, _bilinear_coords(w, wo, align, half), x.ndim - 1)


def _op_resize_bilinear(a: dict[str, Any]) -> np.ndarray:
    x = f32(a["x"])
    mode = str(a.get("sampling_mode", "DEFAULT"))
    ho, wo = int(a.get("target_size_height", 1)), int(a.get("target_size_width", 1))
    if mode == "ALIGN_CORNERS" or mode == "STRICT_ALIGN_CORNERS":
        align, half = True, False
    elif mode == "DEFAULT":
        align, half = False, False
    elif mode == "UNALIGN_CORNERS":
        align, half = False, True
    else:
        raise UnsupportedOpError(f"resize_bilinear sampling_mode {mode!r} is not supported")
    h, w = x.shape[-2:]
    y = _interp_axis(x, _bilinear_coords(h, ho, align, half), x.ndim - 2)
    return _interp_axis(y, _bilinear_coords(w, wo, align, half), x.ndim - 1)


def _op_upsample_nearest(a: dict[str, Any]) -> np.ndarray:
    x = a["x"]
    sh, sw = float(a.get("scale_factor_height", 1.0)), float(a.get("scale_factor_width", 1.0))
    h, w = x.shape[-2:]
    ri = np.minimum(np.floor(np.arange(math.floor(h * sh)) / sh).astype(np.intp), h - 1)
    ci = np.minimum(np.floor(np.arange(math.floor(w * sw)) / sw).astype(np.intp), w - 1)
    return np.take(np.take(x, ri, axis=-2), ci, axis=-1)


def _op_concat(a: dict[str, Any]) -> np.ndarray:
    values = a["values"]
    axis = int(a["axis"])
    if bool(a.get("interleave", False)):
        # interleave: chunks of equal size taken round-robin along the axis
        stacked = np.stack(values, axis=axis % values[0].ndim + 1)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


def _op_split(a: dict[str, Any]) -> list[np.ndarray]:
    x, axis = a["x"], int(a["axis"])
    if a.get("split_sizes") is not None:
        bounds = np.cumsum(np.asarray(a["split_sizes"]).ravel())[:-1]
        return np.split(x, bounds, axis=axis)
    return np.split(x, int(a["num_splits"]), axis=axis)


def _op_pad(a: dict[str, Any]) -> np.ndarray:
    x = a["x"]
    p = [int(v) for v in np.asarray(a["pad"]).ravel()]
    pads = [(0, 0)] * (x.ndim - len(p) // 2) + [(p[2 * i], p[2 * i + 1]) for i in range(len(p) // 2)]
    mode = str(a.get("mode", "constant"))
    if mode == "constant":
        return np.pad(f32(x), pads, constant_values=float(a.get("constant_val", 0.0)))
    if mode in ("reflect", "replicate"):
        return np.pad(x, pads, mode="reflect" if mode == "reflect" else "edge")
    raise UnsupportedOpError(f"pad mode {mode!r} is not supported")


LAYOUT_OPS: dict[str, Callable[[dict[str, Any]], Any]] = {
    # resampling
    "upsample_bilinear": _op_upsample_bilinear,
    "resize_bilinear": _op_resize_bilinear,
    "upsample_nearest_neighbor": _op_upsample_nearest,
    # layout
    "reshape": lambda a: np.reshape(
        a["x"], _reshape_target(np.shape(a["x"]), np.asarray(a["shape"]).ravel())
    ),
    "transpose": lambda a: np.transpose(a["x"], [int(p) for p in np.asarray(a["perm"]).ravel()]),
    "slice_by_index": lambda a: _slice_by_index(
        a["x"],
        a["begin"],
        a["end"],
        a.get("stride"),
        a.get("begin_mask"),
        a.get("end_mask"),
        a.get("squeeze_mask"),
    ),
    "concat": _op_concat,
    "split": _op_split,
    "squeeze": lambda a: np.squeeze(
        a["x"], axis=None if a.get("axes") is None else tuple(int(v) for v in a["axes"])
    ),
    "expand_dims": lambda a: np.expand_dims(a["x"], tuple(int(v) for v in np.asarray(a["axes"]).ravel())),
    "tile": lambda a: np.tile(a["x"], [int(v) for v in np.asarray(a["reps"]).ravel()]),
    "pad": _op_pad,
    "identity": lambda a: a["x"],
}
