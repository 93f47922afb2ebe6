"""Speed shortcuts at the ends of ExecuTorch's lowering: delegate outputs answered from the recorded
metadata instead of running the delegate while the program is emitted, and the XNNPACK graph's
dataclass encoding memoized per class. Same .pte; see :mod:`hrvit_mobile.exporters.patches`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from hrvit_mobile.patching import library_patch


def _tensor_meta(t: torch.Tensor) -> tuple[Any, ...]:
    return (tuple(t.shape), tuple(t.stride()), t.dtype, t.device, t.requires_grad)


def _recorded_delegate_outputs(lowered_module: Any, args: tuple[Any, ...]) -> Any:
    """The fake outputs of a delegate call built from the delegated program's recorded output values, or
    None where that program's signature or the arguments are not the plain case (only fake tensors in,
    user outputs out, inputs with the recorded shapes, strides and dtypes)."""
    import torch.utils._pytree as pytree
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.export.graph_signature import OutputKind

    mode = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE)
    program = getattr(lowered_module, "original_module", None)
    if mode is None or not isinstance(program, torch.export.ExportedProgram):
        return None
    out_spec = program.call_spec.out_spec
    signature = program.graph_signature
    if out_spec is None or any(o.kind != OutputKind.USER_OUTPUT for o in signature.output_specs):
        return None
    leaves = pytree.tree_leaves(args)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    expected = [placeholders[name].meta.get("val") for name in signature.user_inputs]
    if len(leaves) != len(expected) or not all(
        isinstance(a, FakeTensor) and a.fake_mode is mode and isinstance(v, torch.Tensor)
        and _tensor_meta(a)[:4] == _tensor_meta(v)[:4]
        for a, v in zip(leaves, expected)
    ):
        return None
    output = next(n for n in reversed(program.graph.nodes) if n.op == "output")
    values = [node.meta.get("val") if isinstance(node, torch.fx.Node) else None for node in output.args[0]]
    if not all(isinstance(v, torch.Tensor) for v in values):
        return None
    outs = [torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device) for v in values]
    if not all(isinstance(o, FakeTensor) and o.fake_mode is mode for o in outs):
        return None
    return pytree.tree_unflatten(outs, out_spec)


@contextmanager
def delegate_outputs_from_metadata(verify: bool = False) -> Iterator[Counter[str]]:
    """Answer ``executorch_call_delegate`` under fake tensors from the delegated program's recorded
    output values instead of running that program.

    ``to_executorch`` retraces the outer program twice (``SpecPropPass`` and one more pass), and each
    time the delegate call's fake implementation runs the whole delegated program (``.module()`` of the
    original edge program) on fake tensors to learn its outputs' shapes: 9.4 s of the b1 int8 emit step
    (py-spy), for outputs the program records in its output node. Where the inputs have the recorded
    shapes, strides and dtypes (and the program's outputs are all user outputs), the outputs are fake
    tensors made with those recorded shapes, strides and dtypes in the same structure; anything else runs
    the program as before. ``verify=True`` (tests) runs it as well and asserts the two agree. Yields
    the count of calls answered."""
    import importlib

    module = importlib.import_module("torch._higher_order_ops.executorch_call_delegate")
    original = module.call_delegate_cpu
    answered: Counter[str] = Counter()

    def call_delegate(lowered_module: Any, *args: Any) -> Any:
        recorded = _recorded_delegate_outputs(lowered_module, args)
        if recorded is None:
            return original(lowered_module, *args)
        answered["delegate calls answered from recorded outputs"] += 1
        if verify:
            import torch.utils._pytree as pytree

            ran = original(lowered_module, *args)
            assert pytree.tree_structure(ran) == pytree.tree_structure(recorded)
            assert [_tensor_meta(t) for t in pytree.tree_leaves(ran)] == [
                _tensor_meta(t) for t in pytree.tree_leaves(recorded)
            ]
        return recorded

    with library_patch(module, call_delegate_cpu=call_delegate):
        yield answered


@functools.cache
def _dataclass_json_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    """``cls``'s fields in order, each with whether ExecuTorch's JSON encoder tags it with its value's
    type name (a string-annotated Union field)."""
    hints = typing.get_type_hints(cls)
    return tuple(
        (f.name, isinstance(f.type, str) and typing.get_origin(hints[f.name]) == typing.Union)
        for f in dataclasses.fields(cls)
    )


@contextmanager
def memoized_dataclass_encoding() -> Iterator[None]:
    """XNNPACK's serializer writes its graph as JSON (for ``flatc``) with ExecuTorch's
    ``_DataclassEncoder``, which calls ``typing.get_type_hints`` on the object's class for every field
    of every dataclass object: ~95 % of the encoding, ~4 s of b1 int8's lowering under py-spy. Within
    the block it encodes with the fields and their Union tags looked up once per class: the same keys
    in the same order, so the same JSON and delegate payload."""
    from executorch.backends.xnnpack.serialization import xnnpack_graph_serialize

    stock = xnnpack_graph_serialize._DataclassEncoder

    class MemoizedDataclassEncoder(stock):  # type: ignore[misc, valid-type]
        def default(self, o: Any) -> Any:
            if dataclasses.is_dataclass(o) and not isinstance(o, type):
                props = {}
                for name, tagged in _dataclass_json_fields(type(o)):
                    props[name] = value = getattr(o, name)
                    if tagged:
                        props[f"{name}_type"] = type(value).__name__
                return props
            return super().default(o)

    with library_patch(xnnpack_graph_serialize, _DataclassEncoder=MemoizedDataclassEncoder):
        yield
