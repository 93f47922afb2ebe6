"""The exported program of a quantized graph module without tracing it again.

PT2E quantizes ``torch.export``'s graph (``ExportedProgram.module()``: parameters and buffers as
``get_attr`` nodes) and gives back a graph module; lowering it needs an :class:`ExportedProgram`, and
``torch.export.export(graph_module, ...)`` gets one by re-running every node through make_fx's
tracer: 2.5 s on the nano int8 graph, 5.5-7 s on the b1 one (9,750 nodes, most of them
quantize/dequantize pairs), with no hotspot to speed up. The graph is already a flat, functional ATen
graph, so that retrace only lifts the state into placeholders, renames nodes and records fake values.
:func:`exported_without_retrace` writes that program directly: the placeholders in the retrace's order
and names (parameters ``p_*``, buffers ``b_*``, then the user input), the same nodes in the same order
with the names and argument normalization the tracer gives (an op's packet name, numbered), every fake
value computed again in the capture's fake mode (a dequantize after a view makes the view's input
contiguous, so captured strides can be stale), and a provenance (``from_node``) whose oldest ancestor is
the retrace's, so ExecuTorch's debug handles come out the same. It returns ``None`` for a graph it does
not cover (call_module nodes other than ``ExportedProgram.module()``'s input guard, non-ATen callables,
mutation, dead nodes, constants that are not registered state, shared tensors, more than one input) and
the caller retraces.

Not reproduced: meta the retrace adds that nothing downstream reads (``eager_input_vals``, the tracer's
wrapper ``nn_module_stack`` on nodes the capture had none for, ``seq_nr`` numbering).
tests/test_reexport.py compares the result with the retrace node by node and the exported artifacts
(.pte; Core ML program and weights) byte by byte.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.export.exported_program import ModuleCallEntry, ModuleCallSignature
from torch.export.graph_signature import (
    ExportGraphSignature,
    InputKind,
    InputSpec,
    OutputKind,
    OutputSpec,
    TensorArgument,
)
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from .decompose import fake_value, normalized_arguments

PASS_NAME = "exported_without_retrace"
# the submodule ExportedProgram.module() calls to check its inputs' shapes (torch.export._unlift)
GUARDS = "_guards_fn"
# meta the capture recorded that describes the node itself (not PT2E's annotations)
_KEPT_META = ("stack_trace", "nn_module_stack", "torch_fn", "source_fn_stack", "custom")


def unsupported(gm: torch.fx.GraphModule, args: tuple[Any, ...]) -> str | None:
    """Why :func:`exported_without_retrace` does not apply to ``gm`` called on ``args`` (None: it does)."""
    if not isinstance(gm, torch.fx.GraphModule):
        return f"not a graph module: {type(gm).__name__}"
    if len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return "not one tensor input"
    if getattr(gm, "_in_spec", None) is None or getattr(gm, "_out_spec", None) is None:
        return "no pytree specs (not an ExportedProgram.module() graph)"
    state = dict(gm.named_parameters(remove_duplicate=False))
    state.update(gm.named_buffers(remove_duplicate=False))
    if len({id(t) for t in state.values()}) != len(state):
        return "a tensor registered under two names"
    placeholders = 0
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            placeholders += 1
        elif node.op == "get_attr":
            if node.target not in state:
                return f"get_attr {node.target} is not a parameter or buffer"
        elif node.op == "call_function":
            target = node.target
            if not isinstance(target, torch._ops.OpOverload):
                return f"call_function {target}"
            if target._schema.is_mutable:
                return f"mutating op {target}"
            if not node.users and not node.is_impure():
                return f"dead node {node.name}"  # the retrace drops it
            returns = target._schema.returns
            # one tensor, or nothing (an assert such as ``.to(dtype)``'s _assert_tensor_metadata)
            if len(returns) > 1 or (returns and str(returns[0].type) != "Tensor"):
                return f"not one tensor out of {target}"
        elif node.op == "call_module" and node.target == GUARDS and not node.users:
            continue  # ExportedProgram.module()'s input-shape check: the retrace leaves no node for it
        elif node.op != "output":
            return f"{node.op} {node.target}"
    if placeholders != 1:
        return f"{placeholders} placeholders"
    return None


def _fake_mode(gm: torch.fx.GraphModule) -> Any:
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and hasattr(val, "fake_mode"):
            return val.fake_mode
    return None


def _state_name(prefix: str, target: str) -> str:
    # torch._export.utils.placeholder_naming_pass: the FQN, non-alphanumerics as "_", lower case
    return prefix + re.sub(r"[^a-zA-Z0-9]", "_", target).lower()


def exported_without_retrace(gm: torch.fx.GraphModule, args: tuple[Any, ...]) -> ExportedProgram | None:
    """``torch.export.export(gm, args)`` for a graph module made from an exported program (PT2E's
    converted graph), written without the retrace; ``None`` where :func:`unsupported` says why not."""
    from torch.export._trace import _get_forward_arg_names, _get_non_persistent_buffers
    from torch.fx.traceback import NodeSource, NodeSourceAction

    if unsupported(gm, args) is not None:
        return None
    fake_mode = _fake_mode(gm)
    if fake_mode is None:
        return None
    (user_name,) = _get_forward_arg_names(gm, args)
    non_persistent = _get_non_persistent_buffers(gm)
    graph = torch.fx.Graph()
    input_specs: list[InputSpec] = []
    state_dict: dict[str, torch.Tensor] = {}
    constants: dict[str, torch.Tensor] = {}
    lifted: dict[str, torch.fx.Node] = {}

    def placeholder(name: str, value: torch.Tensor) -> torch.fx.Node:
        node = graph.placeholder(name)
        if node.name != name:  # fx numbered it (taken) or changed it: the retrace's name may differ
            raise _Collision(name)
        val = fake_mode.from_tensor(value, static_shapes=True)  # requires_grad as the tensor's, as traced
        node.meta = {"val": val, "tensor_meta": _extract_tensor_metadata(val)}
        return node

    try:
        for kind, prefix, named in (
            (InputKind.PARAMETER, "p_", gm.named_parameters(remove_duplicate=False)),
            (InputKind.BUFFER, "b_", gm.named_buffers(remove_duplicate=False)),
        ):
            for target, tensor in named:
                node = placeholder(_state_name(prefix, target), tensor)
                persistent = None if kind is InputKind.PARAMETER else target not in non_persistent
                input_specs.append(InputSpec(kind, TensorArgument(node.name), target, persistent))
                (constants if persistent is False else state_dict)[target] = tensor
                lifted[target] = node
        user = placeholder(user_name, args[0])
    except _Collision:
        return None
    input_specs.append(InputSpec(InputKind.USER_INPUT, TensorArgument(user.name), None))

    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = user
        elif node.op == "get_attr":
            env[node] = lifted[node.target]
        elif node.op == "call_module":  # the input guard (unsupported() allows no other module)
            continue
        elif node.op == "call_function":
            new_args, new_kwargs = normalized_arguments(
                node.target, *torch.fx.map_arg((node.args, node.kwargs), lambda n: env[n])
            )
            # the tracer names a node after its op packet, numbered in graph order
            new = graph.create_node(
                "call_function", node.target, new_args, new_kwargs, name=node.target.overloadpacket.__name__
            )
            # computed again: a dequantize between a view and its user makes the view's input contiguous,
            # so the capture's strides no longer hold
            val = fake_value(node.target, new_args, new_kwargs, fake_mode)
            new.meta = {key: node.meta[key] for key in _KEPT_META if key in node.meta}
            new.meta["val"] = val
            if val is not None:  # an op without outputs (an assert) has no value
                new.meta["tensor_meta"] = _extract_tensor_metadata(val)
            new.meta.update(
                original_aten=node.target,
                seq_nr=-1,
                # one source node per new node: its oldest ancestor is the retrace's, and so are the
                # ExecuTorch debug handles derived from it
                from_node=[NodeSource(node, PASS_NAME, NodeSourceAction.CREATE)],
            )
            env[node] = new
        else:  # output: the flat outputs (the graph module's out_spec rebuilds the user's structure)
            flat = torch.fx.map_arg(node.args[0], lambda n: env[n])
            outputs = list(flat) if isinstance(flat, (list, tuple)) else [flat]
            graph.output(tuple(outputs))
    output_specs = [OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(n.name), None) for n in outputs]

    root = torch.fx.GraphModule(torch.nn.Module(), graph)
    root.meta.update(gm.meta)
    root.meta.setdefault("inline_constraints", {})
    signature = ModuleCallSignature(
        inputs=[], outputs=[], in_spec=gm._in_spec, out_spec=gm._out_spec, forward_arg_names=[user_name]
    )
    module_call_graph = [
        ModuleCallEntry(fqn=fqn, signature=signature if fqn == "" else None)
        for fqn, _ in gm.named_modules(remove_duplicate=False)
    ]
    return ExportedProgram(
        root=root,
        graph=root.graph,
        graph_signature=ExportGraphSignature(input_specs=input_specs, output_specs=output_specs),
        state_dict=state_dict,
        range_constraints={},
        module_call_graph=module_call_graph,
        example_inputs=(tuple(args), {}),
        constants=constants,
    )


class _Collision(Exception):
    """A placeholder name the graph would not take as given: two state names that sanitize to one (the
    retrace numbers them) or one fx renames."""


def export_graph_module(
    gm: torch.nn.Module, args: tuple[Any, ...], strict: bool = False
) -> tuple[ExportedProgram, bool]:
    """``torch.export.export(gm, args, strict=strict)``, written without the retrace where
    :func:`exported_without_retrace` applies (any other module is exported as usual); the second value
    says whether it was."""
    # strict asks for dynamo's tracing, whose checks are the point of it: only the retrace gives that
    ep = None if strict else exported_without_retrace(gm, args)
    if ep is not None:
        return ep, True
    return torch.export.export(gm, args, strict=strict), False
