"""A NumPy evaluator of the Core ML ML program an ``.mlpackage`` holds, so Core ML parity runs on Linux.

Core ML itself only predicts on macOS. This module reads what is *serialized* — the MIL program in the
package's protobuf and the weights in ``Data/com.apple.CoreML/weights/weight.bin`` — and executes it op
by op with NumPy, following the MIL op definitions (coremltools' ``mil/ops/defs``, opsets iOS15..iOS18).
Nothing is re-converted from PyTorch, so a wrong weight or a wrong op in the package shows up as a
parity failure.

Numerics:

* Constant-weight decompression (``constexpr_affine_dequantize``, ``constexpr_blockwise_shift_scale``,
  ``constexpr_lut_to_dense`` in its iOS16 and iOS18 forms, ``constexpr_cast``) is exact as the spec
  defines it: ``scale * (q - zero_point)`` and LUT lookups. For fp16 outputs the product is formed in
  float32 and rounded once to fp16; both factors are fp16/small integers, so that float32 product is exact
  and the single rounding equals an IEEE fp16 multiply.
* fp16 emulation: every tensor the program declares as fp16 is stored as ``np.float16`` — each op's
  result is rounded to the dtype the program declares for that output. Inside an op the arithmetic runs in
  float32 (a conv or matmul accumulates in float32, a softmax is normalized in float32). This is an
  approximation of the device: Core ML's CPU/GPU/Neural Engine kernels accumulate in their own order and,
  on the GPU and the Neural Engine, partly in fp16, so the device differs from this evaluator by a few
  fp16 ulps per op; parity thresholds for fp16 variants are bands, not bit-exactness.
* fp32 programs run in float32 throughout.

Use :func:`evaluate` for one image, or :class:`Program` to load once and run many.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import ExportError

RUNTIME = "hrvit-mobile MIL evaluator (NumPy, fp16 emulated)"


class MILEvaluationError(ExportError):
    """The program cannot be evaluated: an unsupported op, a malformed value, or a shape mismatch."""


class UnsupportedOpError(MILEvaluationError):
    """An op type (or an op variant) that the evaluator does not implement."""


# --------------------------------------------------------------------------------------------------
# values: immediate (in the protobuf) and blob (in weight.bin)

# MIL DataType enum value -> numpy dtype; sub-byte types hold one element per uint8/int8
_NP_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "FLOAT16": np.float16,
    "FLOAT32": np.float32,
    "FLOAT64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT4": np.int8,
    "UINT1": np.uint8,
    "UINT2": np.uint8,
    "UINT3": np.uint8,
    "UINT4": np.uint8,
    "UINT6": np.uint8,
}
_SUB_BYTE_BITS = {"INT4": 4, "UINT1": 1, "UINT2": 2, "UINT3": 3, "UINT4": 4, "UINT6": 6}
# MIL dtype strings (cast's ``dtype``, quantize's ``output_dtype``) -> numpy
_STR_DTYPES: dict[str, Any] = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "int64": np.int64,
    "bool": np.bool_,
}


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


def _dtype_name(tensor_type: Any) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(tensor_type.dataType)


def _declared_shape(value_type: Any) -> tuple[int, ...] | None:
    """The static shape of a tensor type, or None when any dimension is unknown."""
    tt = value_type.tensorType
    dims = []
    for d in tt.dimensions:
        if d.WhichOneof("dimension") != "constant":
            return None
        dims.append(int(d.constant.size))
    return tuple(dims)


class _Blobs:
    """weight.bin readers, one per file, through coremltools' own MIL storage reader."""

    _READERS: ClassVar[dict[str, str]] = {
        "FLOAT16": "read_fp16_data",
        "FLOAT32": "read_float_data",
        "INT8": "read_int8_data",
        "UINT8": "read_uint8_data",
        "INT16": "read_int16_data",
        "UINT16": "read_uint16_data",
        "INT32": "read_int32_data",
        "UINT32": "read_uint32_data",
        "INT4": "read_int4_data",
        "UINT1": "read_uint1_data",
        "UINT2": "read_uint2_data",
        "UINT3": "read_uint3_data",
        "UINT4": "read_uint4_data",
        "UINT6": "read_uint6_data",
    }

    def __init__(self, weights_dir: Path) -> None:
        self.weights_dir = weights_dir
        self._readers: dict[Path, Any] = {}

    def read(self, blob: Any, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        from coremltools.libmilstoragepython import _BlobStorageReader

        path = self.weights_dir / blob.fileName.split("/")[-1]
        if path not in self._readers:
            if not path.is_file():
                raise MILEvaluationError(f"weight file {path} referenced by the program is missing")
            self._readers[path] = _BlobStorageReader(str(path))
        method = self._READERS.get(dtype)
        if method is None:
            raise MILEvaluationError(f"blob values of dtype {dtype} are not supported")
        try:
            raw = np.asarray(getattr(self._readers[path], method)(int(blob.offset)))
        except Exception as e:  # the reader raises bare RuntimeErrors on a bad offset/sentinel
            raise MILEvaluationError(
                f"cannot read {dtype} blob at offset {blob.offset} of {path}: {e}"
            ) from e
        if dtype == "FLOAT16":
            raw = raw.view(np.float16)  # the reader hands fp16 back as its uint16 bit patterns
        count = math.prod(shape)
        if dtype in _SUB_BYTE_BITS and raw.size != count:
            raw = unpack_bits(raw.view(np.uint8), _SUB_BYTE_BITS[dtype], count, signed=dtype == "INT4")
        if raw.size != count:
            raise MILEvaluationError(f"blob at offset {blob.offset} has {raw.size} elements, shape {shape}")
        return raw.astype(_NP_DTYPES[dtype], copy=False).reshape(shape)


def _load_value(value: Any, blobs: _Blobs) -> Any:
    """A MIL ``Value`` (tensor type, immediate or blob) as a numpy array, or a str for string scalars."""
    if value.type.WhichOneof("type") != "tensorType":
        raise MILEvaluationError(f"values of type {value.type.WhichOneof('type')} are not supported")
    dtype = _dtype_name(value.type.tensorType)
    shape = _declared_shape(value.type)
    if shape is None:
        raise MILEvaluationError("a constant value with a dynamic shape")
    kind = value.WhichOneof("value")
    if kind == "blobFileValue":
        return blobs.read(value.blobFileValue, dtype, shape)
    if kind != "immediateValue":
        raise MILEvaluationError(f"value kind {kind} is not supported")
    tensor = value.immediateValue.tensor
    field = tensor.WhichOneof("value")
    if dtype == "STRING":
        strings = list(tensor.strings.values)
        return strings[0] if shape == () else np.array(strings, dtype=object).reshape(shape)
    count = math.prod(shape)
    if field == "bytes":
        data = tensor.bytes.values
        if dtype in _SUB_BYTE_BITS:
            arr = unpack_bits(np.frombuffer(data, np.uint8), _SUB_BYTE_BITS[dtype], count, dtype == "INT4")
        else:
            arr = np.frombuffer(data, _NP_DTYPES[dtype])[:count].copy()
    elif field in ("floats", "ints", "bools", "longInts", "doubles"):
        arr = np.asarray(list(getattr(tensor, field).values)).astype(_NP_DTYPES[dtype])
    elif field is None:
        arr = np.zeros(0, _NP_DTYPES[dtype])
    else:
        raise MILEvaluationError(f"immediate tensors stored as {field} are not supported")
    if arr.size != count:
        raise MILEvaluationError(f"immediate value has {arr.size} elements for shape {shape}")
    return arr.reshape(shape)


# --------------------------------------------------------------------------------------------------
# constexpr decompression (exact, as the MIL spec defines it)


def _axis_broadcast(param: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
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
    zp = _axis_broadcast(np.asarray(zero_point, np.float32), rank, axis)
    s = np.asarray(scale)
    out = (q.astype(np.float32) - zp) * _axis_broadcast(s.astype(np.float32), rank, axis)
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


# --------------------------------------------------------------------------------------------------
# compute ops


def _f32(x: np.ndarray) -> np.ndarray:
    """Op-internal arithmetic precision: float32 for fp16 and fp32 tensors alike."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype.kind == "f" else x


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


def _quantize(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int | None, dtype: Any
) -> np.ndarray:
    """iOS17 ``quantize``: ``clip(round_half_even(x / scale) + zero_point)``."""
    s = _axis_broadcast(np.asarray(scale, np.float32), x.ndim, axis)
    q = np.rint(_f32(x) / s)
    if zero_point is not None:
        q = q + _axis_broadcast(np.asarray(zero_point, np.float32), x.ndim, axis)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def _reduce(fn: Callable[..., np.ndarray]) -> Callable[[dict[str, Any]], np.ndarray]:
    def run(a: dict[str, Any]) -> np.ndarray:
        axes = a.get("axes")
        axes = None if axes is None else tuple(int(v) for v in np.asarray(axes).ravel())
        return fn(_f32(a["x"]), axis=axes, keepdims=bool(a.get("keep_dims", False)))

    return run


def _elementwise(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> Callable[[dict[str, Any]], np.ndarray]:
    return lambda a: fn(_f32(a["x"]), _f32(a["y"]))


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict[str, Any]], np.ndarray]:
    return lambda a: fn(_f32(a["x"]))


def _op_conv(a: dict[str, Any]) -> np.ndarray:
    x, w = _f32(a["x"]), _f32(a["weight"])
    if x.ndim != 4:
        raise UnsupportedOpError(f"conv on a rank-{x.ndim} input (only 2-D convolution is implemented)")
    strides = [int(v) for v in a.get("strides", [1, 1])]
    dilations = [int(v) for v in a.get("dilations", [1, 1])]
    pads = _spatial_pads(
        str(a.get("pad_type", "valid")), a.get("pad"), x.shape[2:], w.shape[2:], strides, dilations
    )
    out = _conv2d(x, w, strides, dilations, pads, int(a.get("groups", 1)))
    if a.get("bias") is not None:
        out += _f32(a["bias"])[None, :, None, None]
    return out


def _op_conv_transpose(a: dict[str, Any]) -> np.ndarray:
    x, w = _f32(a["x"]), _f32(a["weight"])
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
        full = full + _f32(a["bias"])[None, :, None, None]
    return full


def _op_matmul(a: dict[str, Any]) -> np.ndarray:
    x, y = _f32(a["x"]), _f32(a["y"])
    if a.get("transpose_x", False) and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if a.get("transpose_y", False) and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _op_linear(a: dict[str, Any]) -> np.ndarray:
    out = np.matmul(_f32(a["x"]), _f32(a["weight"]).T)
    if a.get("bias") is not None:
        out = out + _f32(a["bias"])
    return out


def _op_upsample_bilinear(a: dict[str, Any]) -> np.ndarray:
    x = _f32(a["x"])
    sh, sw = float(a.get("scale_factor_height", 1.0)), float(a.get("scale_factor_width", 1.0))
    align = bool(a.get("align_corners", True))  # the iOS15 default
    half = bool(a.get("half_pixel_centers", not align))  # the iOS16 default
    h, w = x.shape[-2:]
    ho, wo = math.floor(h * sh), math.floor(w * sw)
    y = _interp_axis(x, _bilinear_coords(h, ho, align, half), x.ndim - 2)
    return _interp_axis(y, _bilinear_coords(w, wo, align, half), x.ndim - 1)


def _op_resize_bilinear(a: dict[str, Any]) -> np.ndarray:
    x = _f32(a["x"])
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
        return np.pad(_f32(x), pads, constant_values=float(a.get("constant_val", 0.0)))
    if mode in ("reflect", "replicate"):
        return np.pad(x, pads, mode="reflect" if mode == "reflect" else "edge")
    raise UnsupportedOpError(f"pad mode {mode!r} is not supported")


def _op_layer_norm(a: dict[str, Any]) -> np.ndarray:
    x = _f32(a["x"])
    axes = tuple(int(v) for v in np.asarray(a["axes"]).ravel())
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    out = (x - mean) / np.sqrt(var + float(a.get("epsilon", 1e-5)))
    if a.get("gamma") is not None:
        out = out * _f32(a["gamma"])
    if a.get("beta") is not None:
        out = out + _f32(a["beta"])
    return out


def _op_batch_norm(a: dict[str, Any]) -> np.ndarray:
    x = _f32(a["x"])
    shape = [1, -1] + [1] * (x.ndim - 2)
    out = (x - _f32(a["mean"]).reshape(shape)) / np.sqrt(
        _f32(a["variance"]).reshape(shape) + float(a.get("epsilon", 1e-5))
    )
    if a.get("gamma") is not None:
        out = out * _f32(a["gamma"]).reshape(shape)
    if a.get("beta") is not None:
        out = out + _f32(a["beta"]).reshape(shape)
    return out


def _op_reduce_arg(fn: Callable[..., np.ndarray]) -> Callable[[dict[str, Any]], np.ndarray]:
    def run(a: dict[str, Any]) -> np.ndarray:
        axis = int(a.get("axis", -1))
        out = fn(a["x"], axis=axis)  # ties: the first index, as Core ML
        return np.expand_dims(out, axis) if bool(a.get("keep_dims", False)) else out

    return run


def _op_cast(a: dict[str, Any]) -> np.ndarray:
    dtype = _STR_DTYPES.get(str(a["dtype"]))
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
    dtype = _STR_DTYPES.get(str(a["output_dtype"]))
    if dtype not in (np.int8, np.uint8):
        raise UnsupportedOpError(f"quantize to {a['output_dtype']!r} is not supported")
    axis = a.get("axis")
    return _quantize(a["input"], a["scale"], a.get("zero_point"), None if axis is None else int(axis), dtype)


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
    return np.asarray(a["source_val"]).astype(_STR_DTYPES[str(a["output_dtype"])])


def _clip(a: dict[str, Any]) -> np.ndarray:
    return np.clip(_f32(a["x"]), float(a["alpha"]), float(a["beta"]))


OPS: dict[str, Callable[[dict[str, Any]], Any]] = {
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
    "select": lambda a: np.where(a["cond"], _f32(a["a"]), _f32(a["b"])),
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
    "rsqrt": lambda a: 1 / np.sqrt(_f32(a["x"]) + np.float32(a.get("epsilon", 1e-12))),
    "inverse": lambda a: 1 / (_f32(a["x"]) + np.float32(a.get("epsilon", 1e-4))),
    "log": lambda a: np.log(_f32(a["x"]) + np.float32(a.get("epsilon", 1e-45))),
    "clip": _clip,
    "gelu": lambda a: _gelu(_f32(a["x"]), str(a.get("mode", "EXACT"))),
    "silu": _unary(lambda x: x / (1 + np.exp(-x))),
    "softmax": lambda a: _softmax(_f32(a["x"]), int(a.get("axis", -1))),
    "thresholded_relu": lambda a: np.where(_f32(a["x"]) > np.float32(a.get("alpha", 1.0)), _f32(a["x"]), 0),
    "sigmoid_hard": lambda a: np.clip(
        np.float32(a.get("alpha", 0.2)) * _f32(a["x"]) + np.float32(a.get("beta", 0.5)), 0, 1
    ),
    "leaky_relu": lambda a: np.where(
        _f32(a["x"]) >= 0, _f32(a["x"]), np.float32(a.get("alpha", 0.01)) * _f32(a["x"])
    ),
    # linear algebra, convolution, resampling, normalization
    "linear": _op_linear,
    "matmul": _op_matmul,
    "conv": _op_conv,
    "conv_transpose": _op_conv_transpose,
    "upsample_bilinear": _op_upsample_bilinear,
    "resize_bilinear": _op_resize_bilinear,
    "upsample_nearest_neighbor": _op_upsample_nearest,
    "layer_norm": _op_layer_norm,
    "batch_norm": _op_batch_norm,
    # reductions
    "reduce_mean": _reduce(np.mean),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "reduce_argmax": _op_reduce_arg(np.argmax),
    "reduce_argmin": _op_reduce_arg(np.argmin),
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
    "cast": _op_cast,
    # quantization of activations (W8A8)
    "quantize": _op_quantize,
    "dequantize": _op_dequantize,
}

# compile-time weight ops: evaluated once, when the program loads
CONSTEXPR_OPS: dict[str, Callable[[dict[str, Any]], np.ndarray]] = {
    "constexpr_affine_dequantize": _op_affine_dequantize,
    "constexpr_blockwise_shift_scale": _op_shift_scale,
    "constexpr_lut_to_dense": _op_lut_to_dense,
    "constexpr_cast": _op_constexpr_cast,
}

SUPPORTED_OPS: frozenset[str] = frozenset({"const", *OPS, *CONSTEXPR_OPS})


# --------------------------------------------------------------------------------------------------
# the program


class Program:
    """The ``main`` function of an .mlpackage's ML program, loaded once (weights decompressed) and
    evaluated on demand.

    Raises :class:`UnsupportedOpError` at load time, naming every op type it cannot run, so a program
    fails fast rather than half-way through an image.
    """

    def __init__(self, mlpackage: Path | str, spec: Any | None = None) -> None:
        import coremltools as ct

        self.path = Path(mlpackage)
        if spec is None:
            spec = ct.models.MLModel(str(self.path), skip_model_load=True).get_spec()
        if spec.WhichOneof("Type") != "mlProgram":
            raise MILEvaluationError(f"{self.path} is not an ML program (it is a {spec.WhichOneof('Type')})")
        self.spec = spec
        fn = spec.mlProgram.functions.get("main")
        if fn is None:
            raise MILEvaluationError(f"{self.path} has no 'main' function")
        block = fn.block_specializations.get(fn.opset) or next(iter(fn.block_specializations.values()))
        self.opset = fn.opset
        self.block = block
        self.inputs = {i.name: i.type for i in fn.inputs}
        self.outputs = list(block.outputs)
        self.image_inputs = {
            i.name: i.type.imageType
            for i in spec.description.input
            if i.type.WhichOneof("Type") == "imageType"
        }
        unsupported = sorted(
            {op.type for op in block.operations if op.type not in SUPPORTED_OPS}
            | {op.type for op in block.operations if op.blocks}
        )
        if unsupported:
            raise UnsupportedOpError(
                f"{self.path.name}: the MIL evaluator does not implement op(s) {', '.join(unsupported)}"
            )
        self._blobs = _Blobs(self._weights_dir())
        self.constants: dict[str, Any] = {}
        self._steps: list[Any] = []
        for op in block.operations:
            if op.type == "const":
                self.constants[op.outputs[0].name] = _load_value(op.attributes["val"], self._blobs)
            elif op.type in CONSTEXPR_OPS:
                # iOS16 constexpr ops carry their parameters as attributes, iOS18 ones as const inputs
                args = {k: _load_value(v, self._blobs) for k, v in op.attributes.items() if k != "name"}
                args.update(self._bind(op, self.constants))
                out = self._finish(op, CONSTEXPR_OPS[op.type](args))
                self.constants[op.outputs[0].name] = out[0]
            else:
                self._steps.append(op)

    def _weights_dir(self) -> Path:
        candidates = sorted(self.path.glob("Data/*/weights"))
        return candidates[0] if candidates else self.path / "Data" / "com.apple.CoreML" / "weights"

    def _bind(self, op: Any, env: dict[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for key, binding in op.inputs.items():
            vals = []
            for arg in binding.arguments:
                if arg.WhichOneof("binding") == "value":  # iOS18 constexpr ops inline their parameters
                    vals.append(_load_value(arg.value, self._blobs))
                    continue
                if arg.name not in env:
                    raise MILEvaluationError(f"op {op.type} reads {arg.name!r} before it is computed")
                vals.append(env[arg.name])
            # variadic inputs (concat's values) are lists; the rest are single values
            args[key] = vals if key == "values" or len(vals) > 1 else vals[0]
        return args

    @staticmethod
    def _finish(op: Any, result: Any) -> list[np.ndarray]:
        """Round each result to the dtype the program declares for it, and check its shape."""
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        if len(results) != len(op.outputs):
            raise MILEvaluationError(
                f"op {op.type} gave {len(results)} outputs, the program declares {len(op.outputs)}"
            )
        out = []
        for value, decl in zip(results, op.outputs, strict=True):
            dtype = (
                _NP_DTYPES.get(_dtype_name(decl.type.tensorType))
                if decl.type.WhichOneof("type") == "tensorType"
                else None
            )
            arr = np.asarray(value)
            if dtype is not None:
                arr = arr.astype(dtype, copy=False)
            shape = _declared_shape(decl.type) if decl.type.WhichOneof("type") == "tensorType" else None
            if shape is not None and arr.shape != shape:
                raise MILEvaluationError(
                    f"op {op.type} -> {decl.name}: computed shape {arr.shape}, the program declares {shape}"
                )
            out.append(arr)
        return out

    def run(self, inputs: dict[str, np.ndarray], keep: bool = False) -> dict[str, np.ndarray]:
        """Evaluate with graph inputs by name (after any image preprocessing the program itself holds).

        Returns the function's outputs; with ``keep`` every intermediate tensor too (for debugging).
        """
        env: dict[str, Any] = dict(self.constants)
        for name, value_type in self.inputs.items():
            if name not in inputs:
                raise MILEvaluationError(f"missing input {name!r}")
            dtype = _NP_DTYPES[_dtype_name(value_type.tensorType)]
            env[name] = np.asarray(inputs[name]).astype(dtype)
        for op in self._steps:
            args = self._bind(op, env)
            try:
                result = OPS[op.type](args)
            except (MILEvaluationError, KeyError) as e:
                raise MILEvaluationError(f"op {op.type} ({op.outputs[0].name}): {e}") from e
            for decl, arr in zip(op.outputs, self._finish(op, result), strict=True):
                env[decl.name] = arr
        if keep:
            return env
        return {name: env[name] for name in self.outputs}

    def image_input(self, image: np.ndarray, name: str | None = None) -> dict[str, np.ndarray]:
        """A uint8 (H, W, 3) RGB image as the program's image input: (1, 3, H, W) pixel values 0..255.

        Core ML hands an ``ImageType`` input to the program as float pixels in the declared color
        layout; the scale/bias an ML program applies are ops inside it (``image__scaled__``,
        ``image__biased__``), so nothing else is done here.
        """
        if name is None:
            if len(self.image_inputs) != 1:
                raise MILEvaluationError(
                    f"expected one image input, the program has {sorted(self.image_inputs)}"
                )
            name = next(iter(self.image_inputs))
        it = self.image_inputs[name]
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise MILEvaluationError(f"expected a uint8 (H, W, 3) RGB image, got {img.dtype} {img.shape}")
        if (img.shape[0], img.shape[1]) != (it.height, it.width):
            raise MILEvaluationError(
                f"image is {img.shape[1]}x{img.shape[0]}, the model takes {it.width}x{it.height} (WxH)"
            )
        from coremltools.proto import FeatureTypes_pb2

        space = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(it.colorSpace)
        if space == "BGR":
            img = img[:, :, ::-1]
        elif space != "RGB":
            raise MILEvaluationError(f"image color space {space} is not supported")
        return {name: np.ascontiguousarray(img.transpose(2, 0, 1)[None]).astype(np.float32)}

    def predict(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One uint8 (H, W, 3) RGB image through the program, like ``MLModel.predict`` on macOS."""
        return self.run(self.image_input(image))


def evaluate(mlpackage_path: Path | str, image: np.ndarray) -> dict[str, np.ndarray]:
    """Run the .mlpackage's ML program on a uint8 (H, W, 3) RGB image; outputs by name, in the dtypes
    the program declares (fp16 logits for fp16 programs)."""
    return Program(mlpackage_path).predict(image)


def program_ops(mlpackage_path: Path | str) -> dict[str, int]:
    """Op types and counts of the program's main function (compare with :data:`SUPPORTED_OPS`)."""
    import coremltools as ct

    spec = ct.models.MLModel(str(mlpackage_path), skip_model_load=True).get_spec()
    fn = spec.mlProgram.functions["main"]
    counts: dict[str, int] = {}
    for block in fn.block_specializations.values():
        for op in block.operations:
            counts[op.type] = counts.get(op.type, 0) + 1
    return counts
