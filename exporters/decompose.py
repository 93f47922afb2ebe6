"""Core-ATen decomposition of an exported program without retracing it, where that is a node rewrite.

``ExportedProgram.run_decompositions(table)`` re-runs the whole program through AOT autograd's tracer
(functionalization plus the table's decompositions): 7 s on the b1 fp32 graph and 14-21 s on the
int8 one (9,750 nodes, most of them quantize/dequantize pairs). torch.export's graph is already
functional, and of the ops the retrace would replace the deploy form only uses a few whose
decomposition is a one-for-one rewrite: ``conv2d`` and ``conv_transpose2d`` -> ``convolution`` with
every default spelled out, ``softmax.int`` -> ``_softmax``, ``transpose.int`` -> ``permute``,
``to.dtype`` -> ``_to_copy`` and ``reshape`` -> ``view`` (after a contiguous ``clone`` where the
input's strides cannot be viewed). For such a graph :func:`decomposed_without_retrace` writes the
program the retrace writes: the same nodes in the same order, with the same names, arguments, fake
values, ``original_aten``, and a provenance (``from_node``) under which the nodes of one source node
share one ExecuTorch debug handle, as the retrace's do. It returns ``None`` for anything else (an op
it does not know, symbolic shapes, mutation, dead nodes) and the caller retraces as before. Not
reproduced: leftovers of the tracer's state in placeholder metadata and autograd's ``seq_nr``, which
nothing downstream reads.

tests/test_decompose.py compares the result node by node with ``run_decompositions`` on a graph of
every rewritten op and on the nano deploy form (fp32 and int8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.fx.passes.shape_prop import _extract_tensor_metadata

aten = torch.ops.aten

PASS_NAME = "decomposed_without_retrace"


Node = torch.fx.Node
Args = tuple[Any, ...]
Kwargs = dict[str, Any]
Table = Mapping[Any, Any]  # op -> decomposition, as run_decompositions takes it
# emit(target, args, kwargs[, original_aten]) adds a node to the new graph and returns it
Emit = Callable[..., Node]
# an op's rewrite: (its arguments and keyword arguments in the new graph, emit, the table) -> the node
# standing for the old one's output, or None where this node is not a plain rewrite
Rewrite = Callable[[Args, Kwargs, Emit, Table], "Node | None"]


def _pair(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value, value]


def _conv2d(args: Args, kwargs: Kwargs, emit: Emit, table: Table) -> Node | None:
    values = _bound(aten.conv2d.default, args, kwargs)
    return emit(aten.convolution.default, (
        values["input"], values["weight"], values["bias"], _pair(values["stride"]), _pair(values["padding"]),
        _pair(values["dilation"]), False, [0, 0], values["groups"],
    ), {})


def _conv_transpose2d(args: Args, kwargs: Kwargs, emit: Emit, table: Table) -> Node | None:
    values = _bound(aten.conv_transpose2d.input, args, kwargs)
    return emit(aten.convolution.default, (
        values["input"], values["weight"], values["bias"], _pair(values["stride"]), _pair(values["padding"]),
        _pair(values["dilation"]), True, _pair(values["output_padding"]), values["groups"],
    ), {})


def _softmax(args: Args, kwargs: Kwargs, emit: Emit, table: Table) -> Node | None:
    x, dim, *rest = args
    if (rest[0] if rest else kwargs.get("dtype")) is not None:  # a cast first: not a one-node rewrite
        return None
    return emit(aten._softmax.default, (x, dim, False), {})


def _transpose(args: Args, kwargs: Kwargs, emit: Emit, table: Table) -> Node | None:
    x, dim0, dim1 = args
    rank = x.meta["val"].dim()
    if rank == 0:
        return None
    order = list(range(rank))
    order[dim0 % rank], order[dim1 % rank] = order[dim1 % rank], order[dim0 % rank]
    return emit(aten.permute.default, (x, order), {})


def _viewable(value: torch.Tensor, shape: list[int]) -> bool:
    """Whether ``value``'s strides can be viewed as ``shape`` (else reshape copies first)."""
    try:
        torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta").view(shape)
    except RuntimeError:
        return False
    return True


def _reshape(args: Args, kwargs: Kwargs, emit: Emit, table: Table) -> Node | None:
    # ATen's reshape: a contiguous input is viewed with the sizes as given (-1 included); another
    # viewable one with -1 resolved; anything else is copied contiguous and the copy viewed through
    # _unsafe_view, which the core table turns into a plain view
    x, shape = args
    value = x.meta["val"]
    if value.is_contiguous():
        return emit(aten.view.default, (x, shape), {})
    sizes = _inferred(list(shape), value.numel())
    if _viewable(value, sizes):
        return emit(aten.view.default, (x, sizes), {})
    copied = emit(aten.clone.default, (x,), {"memory_format": torch.contiguous_format})
    unsafe_view = aten._unsafe_view.default
    if unsafe_view in table:
        return emit(aten.view.default, (copied, sizes), {}, unsafe_view)
    return emit(unsafe_view, (copied, sizes), {})


def _inferred(shape: list[int], numel: int) -> list[int]:
    if -1 in shape:
        known = 1
        for size in shape:
            known *= size if size != -1 else 1
        shape[shape.index(-1)] = numel // known if known else 0
    return shape


def _to_dtype(args: Args, kwargs: Kwargs, emit: Emit, table: Table) -> Node | None:
    values = _bound(aten.to.dtype, args, kwargs)
    if values["dtype"] == values["self"].meta["val"].dtype and not values["copy"]:
        return None  # ATen returns the input itself: an alias, not a node
    copy_kwargs = {k: values[k] for k in ("dtype", "non_blocking", "memory_format")}
    return emit(aten._to_copy.default, (values["self"],), copy_kwargs)


REWRITES: Mapping[Any, Rewrite] = {
    aten.conv2d.default: _conv2d,
    aten.conv_transpose2d.input: _conv_transpose2d,
    aten.softmax.int: _softmax,
    aten.transpose.int: _transpose,
    aten.reshape.default: _reshape,
    aten.to.dtype: _to_dtype,
}
"""The ops :func:`decomposed_without_retrace` decomposes, each as the core-ATen table does."""


def normalized_arguments(
    target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args``/``kwargs`` as the dispatcher hands them to a tracer: positional arguments up to the last
    one that differs from its default, keyword-only ones only where they differ from theirs."""
    values = _given(target, args, kwargs)

    def is_default(arg: Any, value: Any) -> bool:
        if value is _DEFAULT:
            return True
        if not arg.has_default_value():
            return False
        default = arg.default_value
        if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
            return list(value) == list(default)
        return type(value) is type(default) and value == default

    positional = [(arg, v) for arg, v in values if not arg.kwarg_only]
    while positional and is_default(*positional[-1]) and positional[-1][0].has_default_value():
        positional.pop()
    out_args = [_value_or_default(target, arg, v) for arg, v in positional]
    out_kwargs = {arg.name: v for arg, v in values if arg.kwarg_only and not is_default(arg, v)}
    return tuple(out_args), out_kwargs


_DEFAULT: Any = object()  # an argument that was not given


def _given(target: Any, args: Args, kwargs: Kwargs) -> list[tuple[Any, Any]]:
    """Each argument of ``target``'s schema with the value given for it, or ``_DEFAULT``."""
    given = dict(kwargs)
    values = [
        (arg, args[i] if i < len(args) and not arg.kwarg_only else given.pop(arg.name, _DEFAULT))
        for i, arg in enumerate(target._schema.arguments)
    ]
    if given:
        raise TypeError(f"{target}: unexpected keyword arguments {sorted(given)}")
    return values


def _value_or_default(target: Any, arg: Any, value: Any) -> Any:
    if value is not _DEFAULT:
        return value
    if not arg.has_default_value():
        raise TypeError(f"{target}: missing argument {arg.name}")
    return arg.default_value


def _bound(target: Any, args: Args, kwargs: Kwargs) -> dict[str, Any]:
    """Every argument of ``target`` by name: as given, else its schema default."""
    return {arg.name: _value_or_default(target, arg, value) for arg, value in _given(target, args, kwargs)}


def decomposes(op: Any, table: Mapping[Any, Any]) -> bool:
    """Whether ``run_decompositions(table)`` replaces ``op``: it is in the table, or it is a
    CompositeImplicitAutograd op export cannot keep (an aliasing one such as ``reshape``), which the
    dispatcher decomposes whatever the table says."""
    from torch._export.utils import _check_valid_to_preserve, _is_cia_op

    return op in table or (_is_cia_op(op) and not _check_valid_to_preserve(op))


def unsupported(ep: ExportedProgram, table: Mapping[Any, Any]) -> str | None:
    """Why ``ep`` needs the retrace for ``table`` (None: :func:`decomposed_without_retrace` applies)."""
    signature = ep.graph_signature
    if ep.range_constraints:
        return "symbolic shapes"
    if signature.input_tokens or signature.output_tokens:
        return "effect tokens"
    kinds = {spec.kind.name for spec in [*signature.input_specs, *signature.output_specs]}
    if kinds - {"PARAMETER", "BUFFER", "CONSTANT_TENSOR", "USER_INPUT", "USER_OUTPUT"}:
        return f"signature kinds {sorted(kinds)}"
    for node in ep.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            return f"{node.op} {target}"
        if target._schema.is_mutable:
            return f"mutating op {target}"
        if decomposes(target, table) and target not in REWRITES:
            return f"decomposition of {target}"
        if not node.users and not node.is_impure():
            return f"dead node {node.name}"  # the retrace drops it
        returns = target._schema.returns
        if returns and (len(returns) > 1 or not isinstance(node.meta.get("val"), torch.Tensor)):
            return f"not one tensor out of {target}"
    return None


def decomposed_without_retrace(ep: ExportedProgram, table: Mapping[Any, Any]) -> ExportedProgram | None:
    """``ep.run_decompositions(table)`` as a node rewrite, or ``None`` when that needs the retrace.

    The graph must be a flat, static-shape, functional ATen graph whose only ops the table decomposes
    are in :data:`REWRITES`; the table's entries for those ops must be the default ones (callers pass
    ExecuTorch's core-ATen table less the partitioner's ops, or an empty one). Every rewritten node's
    fake value is computed again and must match the old node's shape, strides and dtype."""
    from torch.fx.traceback import NodeSource, NodeSourceAction

    if unsupported(ep, table) is not None:
        return None
    from torch._export.utils import _is_cia_op

    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    fake_mode = next(n.meta["val"].fake_mode for n in ep.graph.nodes
                     if isinstance(n.meta.get("val"), torch.Tensor))

    def provenance(source: torch.fx.Node) -> list[Any]:
        # one source node per new node: the nodes of one rewrite share ExecuTorch's debug handle
        return [NodeSource(source, PASS_NAME, NodeSourceAction.CREATE)]

    def emitter(source: torch.fx.Node) -> Emit:
        def emit(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], original: Any = None) -> Node:
            args, kwargs = normalized_arguments(target, args, kwargs)
            # the tracer names a node after its op packet (convolution, view, _softmax), numbered in order
            name = target.overloadpacket.__name__
            node = graph.create_node("call_function", target, args, kwargs, name=name)
            node.meta = {k: v for k, v in source.meta.items() if k not in ("val", "tensor_meta")}
            if target is source.target:
                val = source.meta["val"]
            else:
                val = fake_value(target, args, kwargs, fake_mode)
            if val is not None:  # an op without outputs (an assert) has no value
                node.meta["val"] = val
                node.meta["tensor_meta"] = _extract_tensor_metadata(val)
            # a table decomposition records the op it replaced, a CompositeImplicit one the op it ran
            node.meta["original_aten"] = original or (target if _is_cia_op(source.target) else source.target)
            node.meta["seq_nr"] = -1
            node.meta["from_node"] = provenance(source)
            return node

        return emit

    for node in ep.graph.nodes:
        if node.op == "placeholder":
            new = graph.placeholder(node.name)
            new.meta = {**node.meta, "from_node": provenance(node)}
            env[node] = new
            continue
        args, kwargs = torch.fx.map_arg((node.args, node.kwargs), lambda n: env[n])
        if node.op == "output":
            graph.output(args[0]).meta = {**node.meta, "from_node": provenance(node)}
            continue
        emit = emitter(node)
        rewrite = REWRITES.get(node.target) if decomposes(node.target, table) else None
        new = rewrite(args, kwargs, emit, table) if rewrite else emit(node.target, args, kwargs)
        if new is None or not same_tensor_meta(new.meta.get("val"), node.meta.get("val")):
            return None
        env[node] = new
    return _program(ep, graph)


def same_tensor_meta(a: Any, b: Any) -> bool:
    """Whether two recorded values are tensors of the same shape, strides, dtype and device, or else the
    same object (both None: an op without outputs)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return (a.shape, a.stride(), a.dtype, a.device) == (b.shape, b.stride(), b.dtype, b.device)
    return a is b


def fake_value(target: Any, args: Args, kwargs: Kwargs, fake_mode: Any) -> Any:
    """``target`` run in ``fake_mode`` on the recorded values of the nodes among its arguments."""
    fake_args, fake_kwargs = torch.fx.map_arg((args, kwargs), lambda n: n.meta["val"])
    with fake_mode:
        return target(*fake_args, **fake_kwargs)


def _program(ep: ExportedProgram, graph: torch.fx.Graph) -> ExportedProgram:
    """The exported program of the rewritten graph: ``ep``'s state, the signature's output names
    updated, core-ATen dialect (the verifier ``run_decompositions`` gives)."""
    from torch.export.exported_program import _get_updated_module_call_graph

    gm = torch.fx.GraphModule(ep.graph_module, graph)
    gm.meta.update(ep.graph_module.meta)
    outputs = next(iter(reversed(graph.nodes))).args[0]
    names = [n.name for n in outputs] if isinstance(outputs, (list, tuple)) else [outputs.name]
    output_specs = [
        dataclasses.replace(spec, arg=dataclasses.replace(spec.arg, name=name))
        for spec, name in zip(ep.graph_signature.output_specs, names, strict=True)
    ]
    signature = dataclasses.replace(ep.graph_signature, output_specs=output_specs)
    module_call_graph = _get_updated_module_call_graph(
        ep.graph_module, ep.graph_signature, gm, signature, ep.module_call_graph
    )
    return ExportedProgram(
        root=gm,
        graph=gm.graph,
        graph_signature=signature,
        state_dict=ep.state_dict,
        range_constraints=ep.range_constraints,
        module_call_graph=module_call_graph,
        example_inputs=ep.example_inputs,
        constants=ep.constants,
    )


def decompose(ep: ExportedProgram, table: Mapping[Any, Any]) -> tuple[ExportedProgram, bool]:
    """``ep.run_decompositions(table)``, as a node rewrite where :func:`decomposed_without_retrace`
    applies; the second value says whether it did."""
    rewritten = decomposed_without_retrace(ep, table)
    if rewritten is not None:
        return rewritten, True
    return ep.run_decompositions(table), False
