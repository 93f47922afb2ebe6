"""Values of a serialized MIL program: immediates in the protobuf and blobs in ``weight.bin``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .dtypes import NP_DTYPES, SUB_BYTE_BITS, declared_shape, dtype_name
from .errors import MILEvaluationError
from .weights import unpack_bits


class Blobs:
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
        if dtype in SUB_BYTE_BITS and raw.size != count:
            raw = unpack_bits(raw.view(np.uint8), SUB_BYTE_BITS[dtype], count, signed=dtype == "INT4")
        if raw.size != count:
            raise MILEvaluationError(f"blob at offset {blob.offset} has {raw.size} elements, shape {shape}")
        return raw.astype(NP_DTYPES[dtype], copy=False).reshape(shape)


def load_value(value: Any, blobs: Blobs) -> Any:
    """A MIL ``Value`` (tensor type, immediate or blob) as a numpy array, or a str for string scalars."""
    if value.type.WhichOneof("type") != "tensorType":
        raise MILEvaluationError(f"values of type {value.type.WhichOneof('type')} are not supported")
    dtype = dtype_name(value.type.tensorType)
    shape = declared_shape(value.type)
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
        if dtype in SUB_BYTE_BITS:
            arr = unpack_bits(np.frombuffer(data, np.uint8), SUB_BYTE_BITS[dtype], count, dtype == "INT4")
        else:
            arr = np.frombuffer(data, NP_DTYPES[dtype])[:count].copy()
    elif field in ("floats", "ints", "bools", "longInts", "doubles"):
        arr = np.asarray(list(getattr(tensor, field).values)).astype(NP_DTYPES[dtype])
    elif field is None:
        arr = np.zeros(0, NP_DTYPES[dtype])
    else:
        raise MILEvaluationError(f"immediate tensors stored as {field} are not supported")
    if arr.size != count:
        raise MILEvaluationError(f"immediate value has {arr.size} elements for shape {shape}")
    return arr.reshape(shape)
