"""The Core ML evaluator's weight decompression against coremltools' own ``decompress`` of each
constexpr op (the reference the MIL spec ships), on random data of every storage form."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_module

from hrvit_mobile.exporters.coreml_eval import weights as w
from hrvit_mobile.exporters.coreml_eval.errors import MILEvaluationError

require_module("coremltools")
from coremltools.converters.mil.mil.ops.defs.iOS16 import constexpr_ops as ios16  # noqa: E402
from coremltools.converters.mil.mil.ops.defs.iOS18 import compression as ios18  # noqa: E402

RNG = np.random.default_rng(0)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def _packed_reference(values: np.ndarray, nbits: int) -> np.ndarray:
    """LSB-first packing written out bit by bit (the inverse of unpack_bits, independent of it)."""
    bits = [(int(v) >> k) & 1 for v in values for k in range(nbits)]
    bits += [0] * (-len(bits) % 8)
    return np.array([sum(b << k for k, b in enumerate(bits[i : i + 8])) for i in range(0, len(bits), 8)],
                    np.uint8)


@pytest.mark.parametrize("nbits", [1, 2, 3, 4, 6, 8])
def test_unpack_bits_round_trips(nbits: int) -> None:
    values = RNG.integers(0, 1 << nbits, 37)
    packed = _packed_reference(values, nbits)
    _same(w.unpack_bits(packed, nbits, 37), values.astype(np.uint8))
    signed = np.where(values >= 1 << (nbits - 1), values - (1 << nbits), values).astype(np.int8)
    _same(w.unpack_bits(packed, nbits, 37, signed=True), signed)
    _same(w.unpack_bits(packed, nbits, 5), values[:5].astype(np.uint8))  # only the first elements
    _same(w.unpack_bits(packed.tolist(), nbits, 37), values.astype(np.uint8))  # any integer sequence


def test_unpack_bits_needs_enough_bits() -> None:
    with pytest.raises(MILEvaluationError, match="16 packed bits cannot hold 5 4-bit elements"):
        w.unpack_bits(np.zeros(2, np.uint8), 4, 5)
    assert w.unpack_bits(np.zeros(2, np.uint8), 4, 4).shape == (4,)  # exactly enough


def test_axis_broadcast() -> None:
    assert w.axis_broadcast(np.float32(2), 4, None).shape == ()
    full = np.ones((2, 3))
    assert w.axis_broadcast(full, 2, None) is not None and w.axis_broadcast(full, 2, None).shape == (2, 3)
    assert w.axis_broadcast(np.arange(3), 4, 1).shape == (1, 3, 1, 1)
    assert w.axis_broadcast(np.arange(3), 4, -1).shape == (1, 1, 1, 3)
    assert w.axis_broadcast(np.arange(3), 2, 0).shape == (3, 1)
    with pytest.raises(MILEvaluationError, match=r"parameter of shape \(3,\) \(axis None\)"):
        w.axis_broadcast(np.arange(3), 4, None)
    with pytest.raises(MILEvaluationError, match=r"shape \(2, 3\)"):
        w.axis_broadcast(np.ones((2, 3)), 4, 0)


@pytest.mark.parametrize("scale_dtype", [np.float32, np.float16])
@pytest.mark.parametrize(("qdtype", "axis"), [(np.int8, 0), (np.uint8, 1), (np.int8, -1), (np.uint8, None)])
def test_affine_dequantize_is_coremltools(scale_dtype, qdtype, axis) -> None:
    info = np.iinfo(qdtype)
    q = RNG.integers(info.min, info.max + 1, (4, 3, 2)).astype(qdtype)
    if axis is None:
        scale, zp, ct_axis = scale_dtype(0.037), qdtype(3), 0
    else:
        n = q.shape[axis]
        scale = RNG.uniform(0.01, 0.2, n).astype(scale_dtype)
        zp = RNG.integers(info.min // 2, info.max // 2, n).astype(qdtype)
        ct_axis = axis % q.ndim
    got = w.affine_dequantize(q, zp, scale, axis)
    _same(got, ios16.constexpr_affine_dequantize.decompress(q, np.asarray(zp), np.asarray(scale), ct_axis))
    assert got.dtype == scale_dtype


@pytest.mark.parametrize("scale_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("with_offset", [True, False])
def test_blockwise_shift_scale_is_coremltools(scale_dtype, with_offset: bool) -> None:
    data = RNG.integers(-8, 8, (4, 6)).astype(np.int8)
    scale = RNG.uniform(0.01, 0.3, (2, 3)).astype(scale_dtype)
    offset = RNG.integers(-2, 3, (2, 3)).astype(np.int8) if with_offset else None
    got = w.blockwise_shift_scale(data, scale, offset)
    _same(got, ios18.constexpr_blockwise_shift_scale.decompress(data, scale, offset))


def test_blockwise_shift_scale_refuses_blocks_that_do_not_tile() -> None:
    with pytest.raises(MILEvaluationError, match=r"block scale \(4, 4\) does not tile data \(4, 6\)"):
        w.blockwise_shift_scale(np.zeros((4, 6), np.int8), np.ones((4, 4), np.float32), None)
    with pytest.raises(MILEvaluationError, match=r"block scale \(4,\) does not tile"):
        w.blockwise_shift_scale(np.zeros((4, 6), np.int8), np.ones(4, np.float32), None)


@pytest.mark.parametrize("nbits", [1, 2, 4, 6, 8])
def test_lut_to_dense_ios16_is_coremltools(nbits: int) -> None:
    shape = (3, 5, 2)
    lut = RNG.standard_normal(1 << nbits).astype(np.float16)
    indices = RNG.integers(0, 1 << nbits, int(np.prod(shape)))
    packed = _packed_reference(indices, nbits)
    got = w.lut_to_dense_ios16(lut, packed, shape)
    _same(got, ios16.constexpr_lut_to_dense.decompress(lut, packed, np.array(shape, np.uint32)))
    _same(got, lut[indices].reshape(shape))


@pytest.mark.parametrize("size", [3, 32, 512])
def test_lut_to_dense_ios16_refuses_other_lut_sizes(size: int) -> None:
    with pytest.raises(MILEvaluationError, match=f"LUT of {size} entries: must be 2, 4, 16, 64 or 256"):
        w.lut_to_dense_ios16(np.zeros(size, np.float32), np.zeros(64, np.uint8), (2,))


@pytest.mark.parametrize(("blocks", "vector_size", "vector_axis"),
                         [((1, 1), 1, None), ((2, 1), 1, None), ((2, 3), 1, None), ((1, 1), 2, 0),
                          ((2, 1), 2, 1), ((1, 3), 3, -1)])
def test_lut_to_dense_ios18_is_coremltools(blocks, vector_size: int, vector_axis) -> None:
    indices = RNG.integers(0, 4, (4, 6)).astype(np.uint8)
    lut = RNG.standard_normal((*blocks, 4, vector_size)).astype(np.float16)
    got = w.lut_to_dense_ios18(indices, lut, vector_axis)
    ct_axis = None if vector_axis is None else np.int32(vector_axis)
    _same(got, ios18.constexpr_lut_to_dense.decompress(indices, lut, ct_axis))


def test_lut_to_dense_ios18_refusals() -> None:
    indices = np.zeros((4, 6), np.uint8)
    with pytest.raises(MILEvaluationError, match="LUT rank 3 for indices of rank 2: expected 4"):
        w.lut_to_dense_ios18(indices, np.zeros((1, 4, 1), np.float32), None)
    with pytest.raises(MILEvaluationError, match=r"LUT blocks \(3, 1\) do not tile indices \(4, 6\)"):
        w.lut_to_dense_ios18(indices, np.zeros((3, 1, 4, 1), np.float32), None)
    with pytest.raises(MILEvaluationError, match=r"^vector palettization without vector_axis$"):
        w.lut_to_dense_ios18(indices, np.zeros((1, 1, 4, 2), np.float32), None)


def test_constexpr_ops_table_reads_op_attributes() -> None:
    """What the program loader passes: each op's named inputs as a dict."""
    q = np.array([[1, -2], [3, 4]], np.int8)
    got = w.CONSTEXPR_OPS["constexpr_affine_dequantize"](
        {"quantized_data": q, "zero_point": np.int8(1), "scale": np.float16(0.5), "axis": np.int32(0)})
    _same(got, np.array([[0, -1.5], [1, 1.5]], np.float16))
    got = w.CONSTEXPR_OPS["constexpr_affine_dequantize"](  # per output channel (axis 0)
        {"quantized_data": q, "zero_point": np.array([1, 0], np.int8), "scale": np.array([1, 2], np.float32),
         "axis": np.int32(0)})
    _same(got, np.array([[0, -3], [6, 8]], np.float32))
    got = w.CONSTEXPR_OPS["constexpr_blockwise_shift_scale"](
        {"data": q, "scale": np.full((1, 1), 2.0, np.float32), "offset": np.ones((1, 1), np.int8)})
    _same(got, np.array([[0, -6], [4, 6]], np.float32))
    got = w.CONSTEXPR_OPS["constexpr_blockwise_shift_scale"]({"data": q, "scale": np.full((1, 1), 2.0,
                                                                                          np.float32)})
    _same(got, 2 * q.astype(np.float32))
    lut = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    got = w.CONSTEXPR_OPS["constexpr_lut_to_dense"](
        {"lut": lut, "indices": _packed_reference(np.array([3, 2, 1, 0]), 2), "shape": np.array([[2, 2]])})
    _same(got, np.array([[3.0, 2.0], [1.0, 0.0]], np.float32))
    got = w.CONSTEXPR_OPS["constexpr_lut_to_dense"](
        {"indices": np.array([[1, 0]], np.uint8), "lut": np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2),
         "vector_axis": np.int32(1)})
    _same(got, np.array([[2.0, 3.0, 0.0, 1.0]], np.float32))
    got = w.CONSTEXPR_OPS["constexpr_lut_to_dense"](
        {"indices": np.array([[1, 0]], np.uint8), "lut": np.arange(2, dtype=np.float32).reshape(1, 1, 2, 1)})
    _same(got, np.array([[1.0, 0.0]], np.float32))
    got = w.CONSTEXPR_OPS["constexpr_cast"]({"source_val": np.array([1.5, -2.25], np.float16),
                                             "output_dtype": "fp32"})
    _same(got, np.array([1.5, -2.25], np.float32))
