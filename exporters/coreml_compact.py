"""A smaller ML program description: one const op per distinct inline value, short variable names.

coremltools emits a separate ``const`` op for every small operand (permutations, axes, pad modes,
scalars) and names every variable after the PyTorch node it came from. On HRViT-b1 that is ~3,700
inline consts holding only ~70 distinct values and names averaging 24 characters, which makes
``model.mlmodel`` 1.3 MB: a fifth of a 4-bit palettized package. Rewriting the protobuf leaves every
op, operand value and weight blob as it was; only duplicate small consts are merged (a var may feed
any number of ops) and names change. The function's input and output names are kept, since apps bind
to them. Pass ``keep_op_names`` to the exporter to keep the PyTorch-derived names for profiling.
"""

from __future__ import annotations

from collections import Counter
from itertools import count
from typing import Any


def compact_program(model_spec: Any) -> dict[str, int]:
    """Compact every function of ``model_spec.mlProgram`` in place; returns what changed.

    Blocks that contain nested blocks (control flow) are left as they are: their scoping rules
    would need more than a flat rename, and HRViT has none.
    """
    stats: Counter[str] = Counter()
    for function in model_spec.mlProgram.functions.values():
        keep = {inp.name for inp in function.inputs}
        for block in function.block_specializations.values():
            if any(len(op.blocks) for op in block.operations):
                stats["blocks_skipped"] += 1
                continue
            _merge_inline_consts(block, keep | set(block.outputs), stats)
            _shorten_names(block, keep | set(block.outputs), stats)
    return dict(stats)


def _is_inline_const(op: Any) -> bool:
    return op.type == "const" and not op.attributes["val"].HasField("blobFileValue")


def _merge_inline_consts(block: Any, keep: set[str], stats: Counter[str]) -> None:
    first_of: dict[tuple[bytes, bytes], str] = {}
    alias: dict[str, str] = {}
    for op in block.operations:
        if not _is_inline_const(op) or op.outputs[0].name in keep:
            continue
        out = op.outputs[0]
        key = (out.type.SerializeToString(), op.attributes["val"].SerializeToString())
        if key in first_of:
            alias[out.name] = first_of[key]  # the first copy precedes every use of a later one
        else:
            first_of[key] = out.name
    if not alias:
        return
    kept = []
    for op in block.operations:
        if op.type == "const" and op.outputs[0].name in alias:
            continue
        for argument in op.inputs.values():
            for binding in argument.arguments:
                if binding.HasField("name") and binding.name in alias:
                    binding.name = alias[binding.name]
        kept.append(op.__deepcopy__())
    del block.operations[:]
    block.operations.extend(kept)
    stats["consts_merged"] += len(alias)


def _shorten_names(block: Any, keep: set[str], stats: Counter[str]) -> None:
    short: dict[str, str] = {}
    fresh = (f"v{i:x}" for i in count())
    for op in block.operations:
        for out in op.outputs:
            if out.name not in keep:
                name = next(fresh)
                while name in keep:  # never shadow a kept input/output name
                    name = next(fresh)
                short[out.name] = out.name = name
        if "name" in op.attributes and op.outputs:
            # the op's own name (its profiling label) follows its first output
            op.attributes["name"].immediateValue.tensor.strings.values[0] = op.outputs[0].name
    for op in block.operations:
        for argument in op.inputs.values():
            for binding in argument.arguments:
                if binding.HasField("name") and binding.name in short:
                    binding.name = short[binding.name]
    stats["vars_renamed"] += len(short)
