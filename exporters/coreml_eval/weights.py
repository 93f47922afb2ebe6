"""Constant-weight decompression, exact as the MIL spec defines it.

``constexpr_affine_dequantize``, ``constexpr_blockwise_shift_scale``, ``constexpr_lut_to_dense`` (iOS16
and iOS18 forms) and ``constexpr_cast`` run once when a program loads; ``dequantize`` shares
:func:`affine_dequantize`. Sub-byte storage is unpacked by :func:`unpack_bits`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .dtypes import STR_DTYPES
from .errors import MILEvaluationError


def unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool = False) -> np.ndarray:
    """Elements packed LSB-first, byte by byte (the MIL storage order for sub-byte data and for the
    iOS16 LUT indices), as uint8 (or int8 two's complement when ``signed``)."""
    bits = np.unpackbits(np.asarray(packed, np.uint8).ravel(), bitorder="little")
    if bits.size < nbits * count:
        raise MILEvaluationError(f"{bits.size} packed bits cannot hold {count} {nbits}-bit elements")
    bits = bits[: nbits * count].reshape(count, nbits).astype(np.int32)
    values = (bits << np.arange(nbits, dtype=np.int32)).sum(axis=1)
    if signed:
        values = np.where(values >= 1 << (nbits - 1), values - (1 << nbits), values)
        return values.astype(np.int8)
    return values.astype(np.uint8)


def axis_broadcast(param: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """A scalar or per-axis vector parameter shaped to broadcast against a rank-``rank`` tensor."""
    param = np.asarray(param)
    if param.ndim == 0 or param.ndim == rank:
        return param
    if param.ndim != 1 or axis is None:
        raise MILEvaluationError(f"cannot broadcast a parameter of shape {param.shape} (axis {axis})")
    shape = [1] * rank
    shape[axis % rank] = param.size
    return param.reshape(shape)


def _round_to(x: np.ndarray, dtype: Any) -> np.ndarray:
    """float32 arithmetic, rounded once to the declared dtype (round-to-nearest-even for fp16)."""
    return np.asarray(x).astype(dtype)


def affine_dequantize(
    quantized_data: np.ndarray, zero_point: np.ndarray, scale: np.ndarray, axis: int | None
) -> np.ndarray:
    """iOS16 ``constexpr_affine_dequantize`` / iOS17 ``dequantize``: ``scale * (q - zero_point)``."""
    q = np.asarray(quantized_data)
    rank = q.ndim
    zp = axis_broadcast(np.asarray(zero_point, np.float32), rank, axis)
    s = np.asarray(scale)
    out = (q.astype(np.float32) - zp) * axis_broadcast(s.astype(np.float32), rank, axis)
    return _round_to(out, s.dtype)


def blockwise_shift_scale(data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """iOS18 ``constexpr_blockwise_shift_scale``: ``scale[block] * (data - offset[block])``."""
    data = np.asarray(data)
    scale = np.asarray(scale)
    if data.ndim != scale.ndim or any(d % s for d, s in zip(data.shape, scale.shape, strict=True)):
        raise MILEvaluationError(f"block scale {scale.shape} does not tile data {data.shape}")
    x = data.astype(np.float32)

    def expand(p: np.ndarray) -> np.ndarray:
        for ax, (d, s) in enumerate(zip(data.shape, p.shape, strict=True)):
            if d != s:
                p = np.repeat(p, d // s, axis=ax)
        return p

    if offset is not None:
        x = x - expand(np.asarray(offset).astype(np.float32))
    return _round_to(x * expand(scale.astype(np.float32)), scale.dtype)


def lut_to_dense_ios16(lut: np.ndarray, indices: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """iOS16 ``constexpr_lut_to_dense``: one LUT of 2**n entries, indices packed LSB-first in uint8."""
    lut = np.asarray(lut).ravel()
    nbits = round(math.log2(lut.size))
    if 1 << nbits != lut.size or nbits not in (1, 2, 4, 6, 8):
        raise MILEvaluationError(f"LUT of {lut.size} entries: must be 2, 4, 16, 64 or 256")
    shape = tuple(int(s) for s in shape)
    idx = unpack_bits(indices, nbits, math.prod(shape))
    return lut[idx].reshape(shape)


def lut_to_dense_ios18(indices: np.ndarray, lut: np.ndarray, vector_axis: int | None) -> np.ndarray:
    """iOS18 ``constexpr_lut_to_dense``: per-block LUTs ``lut[*blocks, 2**n, vector_size]``.

    Element ``i`` of the indices takes its LUT from block ``i[k] // (indices.shape[k] / lut.shape[k])``;
    with ``vector_size > 1`` each index expands to a vector laid along ``vector_axis``.
    """
    indices = np.asarray(indices)
    lut = np.asarray(lut)
    rank = indices.ndim
    if lut.ndim != rank + 2:
        raise MILEvaluationError(f"LUT rank {lut.ndim} for indices of rank {rank}: expected {rank + 2}")
    blocks = lut.shape[:rank]
    if any(d % b for d, b in zip(indices.shape, blocks, strict=True)):
        raise MILEvaluationError(f"LUT blocks {blocks} do not tile indices {indices.shape}")
    # the block coordinate of every element, then one gather: lut[block..., index, :]
    grids = np.meshgrid(
        *[np.arange(d) // (d // b) for d, b in zip(indices.shape, blocks, strict=True)], indexing="ij"
    )
    vecs = lut[(*grids, indices.astype(np.intp))]  # indices.shape + (vector_size,)
    vsize = lut.shape[-1]
    if vsize == 1:
        return vecs[..., 0]
    if vector_axis is None:
        raise MILEvaluationError("vector palettization without vector_axis")
    ax = vector_axis % rank
    vecs = np.moveaxis(vecs, -1, ax + 1)  # (..., d_ax, vsize, ...)
    shape = list(indices.shape)
    shape[ax] *= vsize
    return vecs.reshape(shape)


def _op_lut_to_dense(a: dict[str, Any]) -> np.ndarray:
    if "shape" in a:  # iOS16: flat packed uint8 indices, a single LUT, the output shape as a parameter
        return lut_to_dense_ios16(a["lut"], a["indices"], np.asarray(a["shape"]).ravel())
    vector_axis = a.get("vector_axis")
    return lut_to_dense_ios18(a["indices"], a["lut"], None if vector_axis is None else int(vector_axis))


def _op_affine_dequantize(a: dict[str, Any]) -> np.ndarray:
    return affine_dequantize(a["quantized_data"], a["zero_point"], a["scale"], int(a["axis"]))


def _op_shift_scale(a: dict[str, Any]) -> np.ndarray:
    return blockwise_shift_scale(a["data"], a["scale"], a.get("offset"))


def _op_constexpr_cast(a: dict[str, Any]) -> np.ndarray:
    return np.asarray(a["source_val"]).astype(STR_DTYPES[str(a["output_dtype"])])


# compile-time weight ops (op type -> its decompression): evaluated once, when the program loads
CONSTEXPR_OPS: dict[str, Callable[[dict[str, Any]], np.ndarray]] = {
    "constexpr_affine_dequantize": _op_affine_dequantize,
    "constexpr_blockwise_shift_scale": _op_shift_scale,
    "constexpr_lut_to_dense": _op_lut_to_dense,
    "constexpr_cast": _op_constexpr_cast,
}
