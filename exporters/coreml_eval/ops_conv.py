"""Convolution, matmul, linear and normalization ops (float32 accumulation)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .dtypes import f32
from .errors import MILEvaluationError, UnsupportedOpError


def _spatial_pads(
    pad_type: str,
    pad: np.ndarray | None,
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[tuple[int, int]]:
    """(before, after) per spatial dim for MIL's ``valid``/``same``/``same_lower``/``custom``."""
    n = len(in_sizes)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        p = [0] * (2 * n) if pad is None else [int(v) for v in np.asarray(pad).ravel()]
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if pad_type == "same" else (big, small))
        return out
    raise UnsupportedOpError(f"pad_type {pad_type!r} is not supported")


def _conv2d(
    x: np.ndarray,
    w: np.ndarray,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: list[tuple[int, int]],
    groups: int,
) -> np.ndarray:
    """Grouped 2-D convolution as a sum over kernel taps of batched matmuls (float32)."""
    n, cin, _, _ = x.shape
    cout, cin_g, kh, kw = w.shape
    if cin_g * groups != cin or cout % groups:
        raise MILEvaluationError(
            f"conv: weight {w.shape} and groups {groups} do not fit {cin} input channels"
        )
    sh, sw = strides
    dh, dw = dilations
    xp = np.pad(x, [(0, 0), (0, 0), pads[0], pads[1]])
    ho = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    cout_g = cout // groups
    depthwise = cin_g == 1 and cout_g == 1
    out = np.zeros((n, cout, ho, wo), np.float32)
    wg = w.reshape(groups, cout_g, cin_g, kh, kw)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
            if depthwise:
                out += tap * w[None, :, 0, i, j, None, None]
            else:
                t = tap.reshape(n, groups, cin_g, ho * wo)
                out += np.matmul(wg[None, :, :, :, i, j], t).reshape(n, cout, ho, wo)
    return out


def _conv_transpose2d(
    x: np.ndarray, w: np.ndarray, strides: Sequence[int], dilations: Sequence[int], groups: int
) -> np.ndarray:
    """The full (uncropped) transposed convolution; ``w`` is ``[C_in, C_out/groups, kh, kw]``."""
    n, cin, h, wd = x.shape
    _, cout_g, kh, kw = w.shape
    cin_g = cin // groups
    sh, sw = strides
    dh, dw = dilations
    ho = (h - 1) * sh + (kh - 1) * dh + 1
    wo = (wd - 1) * sw + (kw - 1) * dw + 1
    out = np.zeros((n, groups * cout_g, ho, wo), np.float32)
    xg = x.reshape(n, groups, cin_g, h * wd)
    wg = w.reshape(groups, cin_g, cout_g, kh, kw)
    for i in range(kh):
        for j in range(kw):
            # (G, cout_g, cin_g) @ (N, G, cin_g, HW) -> (N, G, cout_g, HW)
            contrib = np.matmul(np.swapaxes(wg[:, :, :, i, j], 1, 2)[None], xg)
            out[:, :, i * dh : i * dh + sh * (h - 1) + 1 : sh, j * dw : j * dw + sw * (wd - 1) + 1 : sw] += (
                contrib.reshape(n, groups * cout_g, h, wd)
            )
    return out


def _op_conv(a: dict[str, Any]) -> np.ndarray:
    x, w = f32(a["x"]), f32(a["weight"])
    if x.ndim != 4:
        raise UnsupportedOpError(f"conv on a rank-{x.ndim} input (only 2-D convolution is implemented)")
    strides = [int(v) for v in a.get("strides", [1, 1])]
    dilations = [int(v) for v in a.get("dilations", [1, 1])]
    pads = _spatial_pads(
        str(a.get("pad_type", "valid")), a.get("pad"), x.shape[2:], w.shape[2:], strides, dilations
    )
    out = _conv2d(x, w, strides, dilations, pads, int(a.get("groups", 1)))
    if a.get("bias") is not None:
        out += f32(a["bias"])[None, :, None, None]
    return out


def _op_conv_transpose(a: dict[str, Any]) -> np.ndarray:
    x, w = f32(a["x"]), f32(a["weight"])
    if x.ndim != 4:
        raise UnsupportedOpError(f"conv_transpose on a rank-{x.ndim} input (only 2-D is implemented)")
    strides = [int(v) for v in a.get("strides", [1, 1])]
    dilations = [int(v) for v in a.get("dilations", [1, 1])]
    full = _conv_transpose2d(x, w, strides, dilations, int(a.get("groups", 1)))
    pad_type = str(a.get("pad_type", "valid"))
    out_shape = a.get("output_shape")
    if pad_type == "custom":
        p = [int(v) for v in np.asarray(a.get("pad", [0, 0, 0, 0])).ravel()]
        full = full[:, :, p[0] : full.shape[2] - p[1], p[2] : full.shape[3] - p[3]]
    elif pad_type == "same" and out_shape is None:
        # conv 'same' maps ceil(in/stride) outputs: the transposed output is in*stride, cropped evenly
        target = [x.shape[2] * strides[0], x.shape[3] * strides[1]]
        crops = [(full.shape[2 + i] - target[i]) for i in range(2)]
        full = full[
            :, :, crops[0] // 2 : crops[0] // 2 + target[0], crops[1] // 2 : crops[1] // 2 + target[1]
        ]
    elif pad_type != "valid" and pad_type != "same":
        raise UnsupportedOpError(f"conv_transpose pad_type {pad_type!r} is not supported")
    if out_shape is not None:
        oh, ow = (int(v) for v in np.asarray(out_shape).ravel()[-2:])
        if pad_type == "same":
            ch, cw = full.shape[2] - oh, full.shape[3] - ow
            full = full[:, :, max(ch, 0) // 2 :, max(cw, 0) // 2 :]
        # positions past the computed extent (PyTorch's output_padding) get no taps, only the bias
        full = np.pad(
            full, [(0, 0), (0, 0), (0, max(oh - full.shape[2], 0)), (0, max(ow - full.shape[3], 0))]
        )
        full = full[:, :, :oh, :ow]
    if a.get("bias") is not None:
        full = full + f32(a["bias"])[None, :, None, None]
    return full


def _op_matmul(a: dict[str, Any]) -> np.ndarray:
    x, y = f32(a["x"]), f32(a["y"])
    if a.get("transpose_x", False) and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if a.get("transpose_y", False) and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _op_linear(a: dict[str, Any]) -> np.ndarray:
    out = np.matmul(f32(a["x"]), f32(a["weight"]).T)
    if a.get("bias") is not None:
        out = out + f32(a["bias"])
    return out


def _op_layer_norm(a: dict[str, Any]) -> np.ndarray:
    x = f32(a["x"])
    axes = tuple(int(v) for v in np.asarray(a["axes"]).ravel())
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    out = (x - mean) / np.sqrt(var + float(a.get("epsilon", 1e-5)))
    if a.get("gamma") is not None:
        out = out * f32(a["gamma"])
    if a.get("beta") is not None:
        out = out + f32(a["beta"])
    return out


def _op_batch_norm(a: dict[str, Any]) -> np.ndarray:
    x = f32(a["x"])
    shape = [1, -1] + [1] * (x.ndim - 2)
    out = (x - f32(a["mean"]).reshape(shape)) / np.sqrt(
        f32(a["variance"]).reshape(shape) + float(a.get("epsilon", 1e-5))
    )
    if a.get("gamma") is not None:
        out = out * f32(a["gamma"]).reshape(shape)
    if a.get("beta") is not None:
        out = out + f32(a["beta"]).reshape(shape)
    return out


CONV_OPS: dict[str, Callable[[dict[str, Any]], Any]] = {
    # linear algebra, convolution, normalization
    "linear": _op_linear,
    "matmul": _op_matmul,
    "conv": _op_conv,
    "conv_transpose": _op_conv_transpose,
    "layer_norm": _op_layer_norm,
    "batch_norm": _op_batch_norm,
}
