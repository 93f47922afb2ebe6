"""Where an artifact's bytes go: weights by storage type, quantization parameters, the graph itself.

``artifact_footprint(path)`` parses the serialized artifact (not the model it came from) and returns
byte counts whose parts add up to the file size exactly (``other`` takes alignment, headers and
whatever the format keeps besides the named parts). Every export records it in its sidecar
(``details.footprint``), so a size ratio that misses a goal comes with what it is made of.

- ``.pte`` (ExecuTorch, XNNPACK): the named data store's tensors (weights, biases, constant buffers,
  deduplicated by content as ExecuTorch stores them), the per-channel scales XNNPACK keeps beside them,
  the XNNPACK graph flatbuffers, the ExecuTorch program and any constants outside the delegate.
- ``.tflite``: buffers by tensor type (int8 weights, int32 biases, float32, ...), quantization
  parameter vectors (scales, zero points) as stored, everything else (ops, tensors, names).
- ``.mlpackage``: the weight file, the tensor values the program description (``model.mlmodel``)
  holds inline (small constants, per-channel scales and zero points), the rest of the program, and
  the package's other files.

:func:`tensor_data_bytes` sums the parts that are the network's tensors and their quantization
parameters as the format stores them: what a leaner graph description alone cannot shrink. Against
the fp32 artifact it is the floor of a variant's size ratio in that format for this network
(``benchmarks/export_matrix.py`` reports it beside the ratio).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.files import path_size


class FootprintError(HRViTMobileError):
    """An artifact whose bytes cannot be accounted for (unknown kind, parts larger than the file)."""


def _pte_footprint(path: Path) -> dict[str, int]:
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._program import deserialize_pte_binary

    data = path.read_bytes()
    pte = deserialize_pte_binary(data)
    parts: Counter[str] = Counter()
    named = pte.named_data
    if named is not None:
        for key, entry in named.pte_data.items():
            kind = "named_data_scales" if key.startswith("scale_") else "named_data_tensors"
            parts[kind] += len(named.buffers[entry.buffer_index])
    for blob in pte.program.backend_delegate_data:
        header = XNNHeader.from_bytes(blob.data[: XNNHeader.EXPECTED_LENGTH])
        parts["xnnpack_graph"] += header.flatbuffer_size
        # XNNPACK payloads of older programs carry their constants inline
        parts["xnnpack_inline_constants"] += header.constant_data_size
    for buffer in pte.program.constant_buffer or []:
        parts["program_constants"] += len(buffer.storage)
    return _with_other(parts, len(data))


_TFLITE_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}


def _tflite_footprint(path: Path) -> dict[str, int]:
    import numpy as np
    from ai_edge_litert import schema_py_generated as fb

    data = bytearray(path.read_bytes())
    model = fb.Model.GetRootAs(data, 0)
    parts: Counter[str] = Counter()
    stored: set[int] = set()  # by address: a vector several tables point at is stored once

    def count(part: str, vector: Any) -> None:
        if isinstance(vector, np.ndarray) and vector.size:
            address = vector.__array_interface__["data"][0]
            if address not in stored:
                stored.add(address)
                parts[part] += vector.nbytes

    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            kind = _TFLITE_TYPES.get(tensor.Type(), f"type{tensor.Type()}")
            count(f"buffers_{kind}", model.Buffers(tensor.Buffer()).DataAsNumpy())
            q = tensor.Quantization()
            if q is not None:
                count("quantization_scales", q.ScaleAsNumpy())
                count("quantization_zero_points", q.ZeroPointAsNumpy())
    return _with_other(parts, len(data))


# bytes per element of the MIL TensorValue fields that hold numbers (``bytes`` holds int8/uint8/fp16
# data as raw bytes; ``strings`` hold names and dtype words, not tensor data)
_MIL_VALUE_WIDTHS = {"floats": 4, "ints": 4, "bools": 1, "longInts": 8, "doubles": 8}


def _inline_tensor_bytes(value: Any) -> int:
    """Payload bytes of one MIL ``Value`` held in the program itself (not a blob file reference)."""
    if value.WhichOneof("value") != "immediateValue":
        return 0
    immediate = value.immediateValue
    if immediate.WhichOneof("value") == "tuple":
        return sum(_inline_tensor_bytes(v) for v in immediate.tuple.values)
    if immediate.WhichOneof("value") != "tensor":
        return 0
    tensor = immediate.tensor
    field = tensor.WhichOneof("value")
    if field == "bytes":
        return len(tensor.bytes.values)
    width = _MIL_VALUE_WIDTHS.get(field or "")
    return width * len(getattr(tensor, field).values) if width else 0


def _mil_inline_tensor_bytes(program: Any) -> int:
    """Tensor payload bytes held inline by a MIL program's ops (``const`` values, the scales and zero
    points of ``constexpr_*`` ops, immediate input bindings), nested blocks included."""

    def block_bytes(block: Any) -> int:
        total = 0
        for op in block.operations:
            total += sum(_inline_tensor_bytes(v) for v in op.attributes.values())
            for argument in op.inputs.values():
                total += sum(_inline_tensor_bytes(b.value) for b in argument.arguments if b.HasField("value"))
            total += sum(block_bytes(b) for b in op.blocks)
        return total

    return sum(
        block_bytes(block)
        for function in program.functions.values()
        for block in function.block_specializations.values()
    )


def _mlpackage_footprint(path: Path) -> dict[str, int]:
    from coremltools.proto import Model_pb2

    parts: Counter[str] = Counter()
    for file in path.rglob("*"):
        if file.is_file():
            if file.parent.name == "weights":
                parts["weights"] += file.stat().st_size
            elif file.name == "model.mlmodel":
                spec = Model_pb2.Model()
                spec.ParseFromString(file.read_bytes())
                inline = _mil_inline_tensor_bytes(spec.mlProgram) if spec.HasField("mlProgram") else 0
                parts["program_constants"] += inline
                parts["program"] += file.stat().st_size - inline
    return _with_other(parts, path_size(path))


def _with_other(parts: Counter[str], total: int) -> dict[str, int]:
    named = {k: int(v) for k, v in sorted(parts.items()) if v}
    other = total - sum(named.values())
    if other < 0:  # a reader that counted something twice
        raise FootprintError(f"footprint parts add up to {total - other} bytes, more than the file's {total}")
    return {**named, "other": other, "total": total}


# the footprint parts that are tensor data (weights, biases, constants and their quantization
# parameters), by name or name prefix, across the three readers
_TENSOR_PARTS = ("named_data_", "xnnpack_inline_constants", "program_constants", "buffers_", "quantization_",
                 "weights")


def tensor_data_bytes(footprint: Mapping[str, Any]) -> int:
    """Bytes of ``footprint`` (an :func:`artifact_footprint` result) that hold tensor data: the
    network's weights, biases and constants and their scales and zero points, as stored. The rest
    (``xnnpack_graph``, ``program``, ``other``) describes the graph and the container."""
    return sum(int(v) for k, v in footprint.items() if k.startswith(_TENSOR_PARTS))


def artifact_footprint(path: Path | str) -> dict[str, Any]:
    """Byte counts of ``path``'s parts (see the module doc); ``total`` is the artifact's size."""
    path = Path(path)
    readers = {".pte": _pte_footprint, ".tflite": _tflite_footprint, ".mlpackage": _mlpackage_footprint}
    reader = readers.get(path.suffix)
    if reader is None:
        raise FootprintError(f"no footprint reader for {path.name}; known: {', '.join(readers)}")
    return reader(path)
