"""Elementwise, activation, reduction, cast and activation-quantization ops (float32 inside)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .dtypes import STR_DTYPES, f32
from .errors import UnsupportedOpError
from .weights import affine_dequantize, axis_broadcast


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 (NumPy has none; torch is a hard dependency of this package), as float32."""
    import torch

    return torch.special.erf(torch.from_numpy(np.asarray(x, np.float64))).numpy().astype(np.float32)


def _gelu(x: np.ndarray, mode: str) -> np.ndarray:
    if mode == "EXACT":
        return 0.5 * x * (1.0 + _erf(x * np.float32(math.sqrt(0.5))))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1.0 + np.exp(-1.702 * x))
    raise UnsupportedOpError(f"gelu mode {mode!r} is not supported")


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _quantize(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int | None, dtype: Any
) -> np.ndarray:
    """iOS17 ``quantize``: ``clip(round_half_even(x / scale) + zero_point)``."""
    s = axis_broadcast(np.asarray(scale, np.float32), x.ndim, axis)
    q = np.rint(f32(x) / s)
    if zero_point is not None:
        q = q + axis_broadcast(np.asarray(zero_point, np.float32), x.ndim, axis)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def _reduce(fn: Callable[..., np.ndarray]) -> Callable[[dict[str, Any]], np.ndarray]:
    def run(a: dict[str, Any]) -> np.ndarray:
        axes = a.get("axes")
        axes = None if axes is None else tuple(int(v) for v in np.asarray(axes).ravel())
        return fn(f32(a["x"]), axis=axes, keepdims=bool(a.get("keep_dims", False)))

    return run


def _elementwise(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> Callable[[dict[str, Any]], np.ndarray]:
    return lambda a: fn(f32(a["x"]), f32(a["y"]))


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict[str, Any]], np.ndarray]:
    return lambda a: fn(f32(a["x"]))


def _op_reduce_arg(fn: Callable[..., np.ndarray]) -> Callable[[dict[str, Any]], np.ndarray]:
    def run(a: dict[str, Any]) -> np.ndarray:
        axis = int(a.get("axis", -1))
        out = fn(a["x"], axis=axis)  # ties: the first index, as Core ML
        return np.expand_dims(out, axis) if bool(a.get("keep_dims", False)) else out

    return run


def _op_cast(a: dict[str, Any]) -> np.ndarray:
    dtype = STR_DTYPES.get(str(a["dtype"]))
    if dtype is None:
        raise UnsupportedOpError(f"cast to {a['dtype']!r} is not supported")
    return np.asarray(a["x"]).astype(dtype)


def _op_dequantize(a: dict[str, Any]) -> np.ndarray:
    axis = a.get("axis")
    zp = a.get("zero_point")
    return affine_dequantize(
        a["input"], 0 if zp is None else zp, a["scale"], None if axis is None else int(axis)
    )


def _op_quantize(a: dict[str, Any]) -> np.ndarray:
    dtype = STR_DTYPES.get(str(a["output_dtype"]))
    if dtype not in (np.int8, np.uint8):
        raise UnsupportedOpError(f"quantize to {a['output_dtype']!r} is not supported")
    axis = a.get("axis")
    return _quantize(a["input"], a["scale"], a.get("zero_point"), None if axis is None else int(axis), dtype)


def _clip(a: dict[str, Any]) -> np.ndarray:
    return np.clip(f32(a["x"]), float(a["alpha"]), float(a["beta"]))


MATH_OPS: dict[str, Callable[[dict[str, Any]], Any]] = {
    # elementwise binary (NumPy broadcasting is MIL's)
    "add": _elementwise(np.add),
    "sub": _elementwise(np.subtract),
    "mul": _elementwise(np.multiply),
    "real_div": _elementwise(np.divide),
    "maximum": _elementwise(np.maximum),
    "minimum": _elementwise(np.minimum),
    "pow": _elementwise(np.power),
    "equal": lambda a: np.equal(a["x"], a["y"]),
    "greater": lambda a: np.greater(a["x"], a["y"]),
    "less": lambda a: np.less(a["x"], a["y"]),
    "select": lambda a: np.where(a["cond"], f32(a["a"]), f32(a["b"])),
    # elementwise unary
    "relu": _unary(lambda x: np.maximum(x, 0)),
    "relu6": _unary(lambda x: np.clip(x, 0, 6)),
    "sigmoid": _unary(lambda x: 1 / (1 + np.exp(-x))),
    "tanh": _unary(np.tanh),
    "exp": _unary(np.exp),
    "sqrt": _unary(np.sqrt),
    "abs": _unary(np.abs),
    "square": _unary(np.square),
    "erf": _unary(_erf),
    "rsqrt": lambda a: 1 / np.sqrt(f32(a["x"]) + np.float32(a.get("epsilon", 1e-12))),
    "inverse": lambda a: 1 / (f32(a["x"]) + np.float32(a.get("epsilon", 1e-4))),
    "log": lambda a: np.log(f32(a["x"]) + np.float32(a.get("epsilon", 1e-45))),
    "clip": _clip,
    "gelu": lambda a: _gelu(f32(a["x"]), str(a.get("mode", "EXACT"))),
    "silu": _unary(lambda x: x / (1 + np.exp(-x))),
    "softmax": lambda a: _softmax(f32(a["x"]), int(a.get("axis", -1))),
    "thresholded_relu": lambda a: np.where(f32(a["x"]) > np.float32(a.get("alpha", 1.0)), f32(a["x"]), 0),
    "sigmoid_hard": lambda a: np.clip(
        np.float32(a.get("alpha", 0.2)) * f32(a["x"]) + np.float32(a.get("beta", 0.5)), 0, 1
    ),
    "leaky_relu": lambda a: np.where(
        f32(a["x"]) >= 0, f32(a["x"]), np.float32(a.get("alpha", 0.01)) * f32(a["x"])
    ),
    # reductions
    "reduce_mean": _reduce(np.mean),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "reduce_argmax": _op_reduce_arg(np.argmax),
    "reduce_argmin": _op_reduce_arg(np.argmin),
    "cast": _op_cast,
    # quantization of activations (W8A8)
    "quantize": _op_quantize,
    "dequantize": _op_dequantize,
}
