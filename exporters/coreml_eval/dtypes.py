"""MIL data types as NumPy dtypes, and the float32 precision ops compute in."""

from __future__ import annotations

from typing import Any

import numpy as np

# MIL DataType enum value -> numpy dtype; sub-byte types hold one element per uint8/int8
NP_DTYPES: dict[str, Any] = {
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
SUB_BYTE_BITS = {"INT4": 4, "UINT1": 1, "UINT2": 2, "UINT3": 3, "UINT4": 4, "UINT6": 6}
# MIL dtype strings (cast's ``dtype``, quantize's ``output_dtype``) -> numpy
STR_DTYPES: dict[str, Any] = {
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


def dtype_name(tensor_type: Any) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(tensor_type.dataType)


def declared_shape(value_type: Any) -> tuple[int, ...] | None:
    """The static shape of a tensor type, or None when any dimension is unknown."""
    tt = value_type.tensorType
    dims = []
    for d in tt.dimensions:
        if d.WhichOneof("dimension") != "constant":
            return None
        dims.append(int(d.constant.size))
    return tuple(dims)


def f32(x: np.ndarray) -> np.ndarray:
    """Op-internal arithmetic precision: float32 for fp16 and fp32 tensors alike."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype.kind == "f" else x
