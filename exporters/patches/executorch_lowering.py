"""Speed shortcuts inside ExecuTorch's lowering (to_edge_transform_and_lower, XNNPACK partitioning
and serialization): each replaces an internal of executorch or torch for the length of an export with
a checked equivalent that does less work, and writes the same .pte.

Every swap goes through :func:`hrvit_mobile.patching.library_patch`: it applies only with patches on
(``HRVIT_MOBILE_PATCHES``) and on the library versions in ``patching.WRITTEN_FOR``, else the stock
code runs; tests compare each shortcut's artifact with the stock one byte for byte.
"""

from __future__ import annotations

import functools
import io
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Any

import torch

from hrvit_mobile.patching import library_patch

from ..decompose import decomposed_without_retrace
from ..fx_codegen import memoized_signature_lookups, shared_node_provenance
from ..pass_rewrites import edge_ops_without_retrace, regenerated_without_retrace, view_copies_without_retrace
from .executorch_partition import (
    bitset_dependency_viewers,
    moving_node_legalization,
    unrendered_partition_logs,
)
from .executorch_program import memoized_dataclass_encoding


def _targets(ep: Any) -> set[str]:
    return {str(n.target) for n in ep.graph_module.graph.nodes if n.op == "call_function"}


def _has(*needles: str) -> Callable[[Any], bool]:
    return lambda ep: any(needle in target for target in _targets(ep) for needle in needles)


def _graph_copy(graph: torch.fx.Graph) -> torch.fx.Graph:
    """A copy of ``graph`` for a pass's checks to edit, its output node included (it counts as a user);
    each node's ``meta`` is a shallow copy."""
    copied = torch.fx.Graph()
    copied.output(copied.graph_copy(graph, {}))
    return copied


def _removes_a_copy(ep: Any) -> bool:
    """Whether RemoveRedundantCopyPass would remove any ``_to_copy``: its own checks, in its own order, on
    a copy of the graph (they edit what they find), up to the first that fires. The copy shares each
    node's ``meta`` (shallow), which the checks only read."""
    if not _has("aten._to_copy.default")(ep):
        return False
    from executorch.backends.xnnpack._passes.remove_redundant_copy_pass import RemoveRedundantCopyPass
    from executorch.backends.xnnpack.utils.quant_utils import is_dequant
    from executorch.exir.dialects._ops import ops as exir_ops

    probe = RemoveRedundantCopyPass(ep)
    graph = _graph_copy(ep.graph_module.graph)
    to_copy = exir_ops.edge.aten._to_copy.default
    for node in list(graph.nodes):
        if not node.all_input_nodes or node.target != to_copy:
            continue
        if is_dequant(node.args[0]):
            removed = probe._try_remove_quantized_redundant_to_copy(node, graph)
        else:
            removed = probe._try_remove_regular_redundant_to_copy(node, graph)
        if removed:
            return True
    return False


def _node_args(graph: torch.fx.Graph) -> list[tuple[Any, ...]]:
    return [(n, n.target, n.args, n.kwargs) for n in graph.nodes]


def _converts_to_linear(ep: Any) -> bool:
    """Whether ConvertToLinearPass would rewrite anything: an ``mm``/``addmm``/``bmm`` inside a linear's
    source partition (its loop), or a change made by its fallback ``apply_addmm_mm_to_linear_transform``,
    run on a copy of the graph (it edits what it finds; the copy shares nothing it writes to). Where
    neither holds, the pass would only retrace (and format the graph twice for debug logging)."""
    from executorch.backends.transforms.addmm_mm_to_linear import apply_addmm_mm_to_linear_transform
    from executorch.backends.xnnpack._passes.convert_to_linear import ConvertToLinearPass
    from torch.fx.passes.utils.source_matcher_utils import get_source_partitions

    graph = ep.graph_module.graph
    partitions = get_source_partitions(graph, ConvertToLinearPass.linear_modules)
    if any(
        node.target in ConvertToLinearPass.targets
        for found in partitions.values()
        for partition in found
        for node in partition.nodes
    ):
        return True
    probe = _graph_copy(graph)
    before = _node_args(probe)
    with redirect_stdout(io.StringIO()):  # it prints about linears it leaves alone
        probe = apply_addmm_mm_to_linear_transform(probe)
    return _node_args(probe) != before


def _unfolded_qdq_ops() -> set[Any]:
    """The quantize/dequantize operators ConstPropPass leaves alone (XNNPACK runs it with
    ``propogate_quant=False``): the same set it builds, aten and edge dialect."""
    from executorch.exir.dialects._ops import ops as exir_ops

    names = ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel", "dequantize_per_channel")
    dialects = (torch.ops.quantized_decomposed, exir_ops.edge.quantized_decomposed)
    return {getattr(dialect, name).default for dialect in dialects for name in names}


def _const_prop_folds(ep: Any) -> bool:
    """Whether ConstPropPass would fold any operator: one (other than quantize/dequantize ``.default``)
    whose every argument is a constant by its ``is_const`` during the retrace: Python scalars, strings,
    dtypes, devices, layouts, real tensors (a ``get_attr`` of a tensor), and the results of operators
    it folds before (a ``getitem`` of one too); a graph input or ``None`` is not one."""
    from executorch.exir.dialects.edge._ops import EdgeOpOverload
    from torch._subclasses.fake_tensor import FakeTensor

    gm = ep.graph_module
    operators = (EdgeOpOverload, torch._ops.OpOverload, torch._ops.OpOverloadPacket)
    qdq = _unfolded_qdq_ops()
    constant: set[torch.fx.Node] = set()

    def is_const(arg: Any) -> bool:
        if isinstance(arg, torch.fx.Node):
            return arg in constant
        if isinstance(arg, FakeTensor):
            return False
        if isinstance(arg, (float, int, bool, str, torch.Tensor, torch.device, torch.dtype, torch.layout)):
            return True
        if isinstance(arg, (tuple, list)):
            return all(map(is_const, arg))
        if isinstance(arg, dict):
            return all(map(is_const, arg.values()))
        return False

    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = getattr(gm, node.target, None)  # flat names only: nested ones never hold tensors here
            if isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
                constant.add(node)
        elif node.op == "call_function":
            if node.target is operator.getitem:
                if node.args[0] in constant:
                    constant.add(node)
            elif isinstance(node.target, operators):  # what its retrace hands to call_operator
                if node.target not in qdq and is_const([node.args, node.kwargs]):
                    return True
    return False


def _has_wide_cat(ep: Any) -> bool:
    return any(
        n.op == "call_function" and "aten.cat" in str(n.target) and len(n.args[0]) > 5
        for n in ep.graph_module.graph.nodes
    )


def _has_conv1d(ep: Any) -> bool:
    """aten.conv1d before decomposition, aten.convolution of a rank-3 input in the edge dialect."""
    for n in ep.graph_module.graph.nodes:
        target = str(n.target) if n.op == "call_function" else ""
        if "conv1d" in target or ("convolution" in target and n.args[0].meta["val"].dim() == 3):
            return True
    return False


def op_name(target: Any) -> str:
    """``aten::upsample_bilinear2d.vec`` for aten and edge-dialect ops; ``str`` of anything else."""
    name = getattr(target, "name", None)
    return name() if callable(name) else str(target)


# The op names of ConvertToUpsampleBilinear2d's pattern graphs, per ExecuTorch release whose patterns
# were read. Building them (four small graphs exported and lowered to edge) took 2-3 s of every
# ExecuTorch export; other releases build them. tests/test_export_executorch.py checks the entry of
# the installed release against the graphs.
BILINEAR_PATTERN_OPS: dict[str, tuple[frozenset[str], ...]] = {
    "1.5.1": (frozenset({"aten::upsample_bilinear2d.vec"}),) * 4,
}


def bilinear_pattern_ops() -> tuple[frozenset[str], ...]:
    """The op names of each of ConvertToUpsampleBilinear2d's pattern graphs."""
    from executorch import version

    known = BILINEAR_PATTERN_OPS.get(version.__version__.split("+")[0])
    if known is not None:
        return known
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d

    return tuple(
        frozenset(op_name(n.target) for n in pattern.graph.nodes if n.op == "call_function")
        for pattern in bilinear_2d.get_graphs_dict()
    )


def _bilinear_patterns_rewrite(ep: Any) -> bool:
    """Whether ConvertToUpsampleBilinear2d could rewrite anything in ``ep``.

    It matches XNNPACK's bilinear pattern graphs and replaces each match's output with one
    upsample_bilinear2d node, returning early where that output is one already. ExecuTorch keeps
    upsample_bilinear2d whole for XNNPACK, so the patterns are that single node: every match is one,
    and the pass only retraces. It applies where a pattern holds other ops, all present in ``ep``.
    """
    present = {op_name(n.target) for n in ep.graph_module.graph.nodes if n.op == "call_function"}
    return any(
        any("upsample_bilinear2d" not in op for op in ops) and ops <= present
        for ops in bilinear_pattern_ops()
    )


def _has_custom_meta_to_propagate(ep: Any) -> bool:
    """PropagateCustomMetaPass copies ``meta["custom"]`` from a node to the quantize/dequantize nodes
    reading it: it has something to do only where such a pair exists."""
    from executorch.backends.xnnpack.utils.quant_utils import is_dequant, is_quant

    return any(
        (is_quant(n) or is_dequant(n))
        and n.args
        and isinstance(n.args[0], torch.fx.Node)
        and "custom" in n.args[0].meta
        for n in ep.graph_module.graph.nodes
    )


# XNNPACK preprocessing passes that rewrite only nodes of a given kind, with the test for whether the
# graph holds any. Each pass, even one with nothing to do, costs a full retrace + verification of the
# graph (about 1/17 of XNNPACK preprocessing for the ~4,000-node b1 deploy graph).
_PASS_APPLIES: dict[str, Callable[[Any], bool]] = {
    "ConvertToUpsampleBilinear2d": _bilinear_patterns_rewrite,
    "FuseBatchNormPass": _has("batch_norm"),
    "DecomposeBatchNorm": _has("batch_norm"),
    "PReLUReshapePass": _has("prelu"),
    "Conv1dUnsqueezePass": _has_conv1d,
    "ConvertToSDPAPass": _has("aten.mul.Scalar"),  # its pattern starts at a mul.Scalar
    "DecomposeConcatenate": _has_wide_cat,  # only cats of more than 5 inputs are rewritten
    "RemoveGetItemPass": _has("getitem"),
    "XNNPACKRemoveCloneOpsTransform": _has("clone"),
    "DimOrderOpsRevertPass": _has("dim_order"),
    "PropagateCustomMetaPass": _has_custom_meta_to_propagate,
    "FuseActivationPass": _has("aten.relu.default", "aten.hardtanh.default"),  # its FUSEABLE_ACTIVATIONS
    "RemoveRedundantCopyPass": _removes_a_copy,
    "ConvertToLinearPass": _converts_to_linear,
    "ConstPropPass": _const_prop_folds,
}


@contextmanager
def applicable_xnnpack_passes() -> Iterator[Counter[str]]:
    """Skip XNNPACK preprocessing passes whose target ops are absent from the graph they would get.

    The test runs on the graph each pass would receive (after the passes before it), so a pass is
    skipped only where it would find nothing to rewrite: the delegate payload and the .pte are
    byte-identical (tests/test_export_executorch.py checks this). Yields the names of skipped passes.
    """
    import executorch.backends.xnnpack._passes as xnnpack_passes

    original = xnnpack_passes._transform
    skipped: Counter[str] = Counter()

    def transform(ep: Any, pass_: Any) -> Any:
        applies = _PASS_APPLIES.get(type(pass_).__name__)
        if applies is not None and not applies(ep):
            skipped[type(pass_).__name__] += 1
            return ep
        if type(pass_).__name__ in _RETRACE_ONLY_REGENERATES_META:
            skipped[f"{type(pass_).__name__}'s retrace"] += 1
            with retrace_skipped(pass_):
                return original(ep, pass_)
        if type(pass_).__name__ in _RETRACE_AFTER_IN_PLACE_EDITS:
            with retrace_rebuilt(pass_, ep.graph_module, skipped):
                return original(ep, pass_)
        return original(ep, pass_)

    with library_patch(xnnpack_passes, _transform=transform):
        yield skipped


# XNNPACK passes that rewrite the graph in place and then retrace it only "to regenerate meta data and
# shape information" (their comment) that the rewrite leaves valid. FuseActivationPass deletes a
# relu/hardtanh whose input has no other user and tags that input's node: every remaining node keeps
# its value, shape and dtype, and the tag is node metadata the retrace copies over as it is.
_RETRACE_ONLY_REGENERATES_META = frozenset({"FuseActivationPass"})


# XNNPACK passes that edit the graph in place (insert nodes, rewire inputs) and then retrace it to
# regenerate metadata: the retrace is rebuilt node by node, values recomputed only from the edits on
# (exporters/pass_rewrites.py::regenerated_without_retrace); 4.1 s of the b1 int8 lowering
_RETRACE_AFTER_IN_PLACE_EDITS = frozenset({"ChannelsLastTaggedReshapePass"})


@contextmanager
def closing_retrace_answered(pass_: Any, answer: Callable[[torch.fx.GraphModule], Any]) -> Iterator[None]:
    """Within the block, ``pass_``'s call of ``ExportPass.call`` (the whole-graph retrace it ends with,
    through its ``super().call``) returns ``answer(graph_module)``, or retraces where that is None; every
    other pass retraces as usual."""
    # the class whose ``call`` its ``super().call`` reaches (ExecuTorch's _ExportPassBase)
    owner = next(c for c in type(pass_).__mro__[1:] if "call" in c.__dict__)
    retrace = owner.__dict__["call"]

    def call(self: Any, graph_module: torch.fx.GraphModule) -> Any:
        if self is pass_ and (result := answer(graph_module)) is not None:
            return result
        return retrace(self, graph_module)

    with library_patch(owner, call=call):
        yield


@contextmanager
def retrace_rebuilt(pass_: Any, graph_module: torch.fx.GraphModule, skipped: Counter[str]) -> Iterator[None]:
    """Within the block, ``pass_``'s closing retrace is
    :func:`~hrvit_mobile.exporters.pass_rewrites.regenerated_without_retrace` of the graph it edited,
    the edited nodes being those ``graph_module`` did not have on entry or whose arguments changed since;
    where the rebuild does not apply it retraces as usual."""
    from torch.fx.passes.infra.pass_base import PassResult

    before = {node: (node.args, node.kwargs) for node in graph_module.graph.nodes}

    def rebuild(gm: torch.fx.GraphModule) -> Any:
        stale = frozenset(n for n in gm.graph.nodes if before.get(n, None) != (n.args, n.kwargs))
        rebuilt = regenerated_without_retrace(gm, stale)
        if rebuilt is None:
            return None
        skipped[f"{type(pass_).__name__}'s retrace"] += 1
        return PassResult(rebuilt, True)

    with closing_retrace_answered(pass_, rebuild):
        yield


@contextmanager
def retrace_skipped(pass_: Any) -> Iterator[None]:
    """Within the block, ``pass_``'s closing retrace returns its graph module as it is. On b1 int8 the
    retrace was 5-6 s for a rewrite of 3 nodes; the .pte is byte-identical
    (tests/test_export_executorch.py)."""
    from torch.fx.passes.infra.pass_base import PassResult

    with closing_retrace_answered(pass_, lambda gm: PassResult(gm, True)):
        yield


def _call_nodes(gm: torch.fx.GraphModule) -> Iterator[torch.fx.Node]:
    return (n for n in gm.graph.nodes if n.op == "call_function")


def _has_control_flow(gm: torch.fx.GraphModule) -> bool:
    return any(isinstance(m, torch.fx.GraphModule) for m in gm.children())


def _schema_values(node: torch.fx.Node) -> Iterator[tuple[Any, Any]]:
    """(schema argument, value given) for each argument of an op node that was given a value."""
    for i, argument in enumerate(node.target._schema.arguments):
        if not argument.kwarg_only and i < len(node.args):
            yield argument, node.args[i]
        elif argument.name in node.kwargs:
            yield argument, node.kwargs[argument.name]


def _scalar_for_a_tensor(gm: torch.fx.GraphModule) -> bool:
    """ScalarToTensorPass: a Python scalar given for a Tensor argument, which it turns into a tensor."""
    return any(
        isinstance(value, (float, int, bool)) and isinstance(argument.type, torch.TensorType)
        for n in _call_nodes(gm)
        if isinstance(n.target, torch._ops.OpOverload)
        for argument, value in _schema_values(n)
    )


def _mixed_type_operands(gm: torch.fx.GraphModule) -> bool:
    """RemoveMixedTypeOperators: a binary op of its list with a tensor operand of another dtype than
    the promoted one, which it casts."""
    from executorch.exir.passes.remove_mixed_type_operators import RemoveMixedTypeOperators
    from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND, elementwise_dtypes

    del RemoveMixedTypeOperators  # the pass whose allow list this mirrors
    aten = torch.ops.aten
    kinds = {
        aten.add.Tensor: ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT,
        aten.mul.Tensor: ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT,
        aten.sub.Tensor: ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT,
        aten.div.Tensor: ELEMENTWISE_TYPE_PROMOTION_KIND.INT_TO_FLOAT,
        aten.div.Tensor_mode: ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT,
        aten.minimum.default: ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT,
    }
    for n in _call_nodes(gm):
        kind = kinds.get(n.target)
        if kind is None or len(n.args) <= 1:
            continue
        if n.target == aten.div.Tensor_mode and n.kwargs.get("rounding_mode") is None:
            kind = ELEMENTWISE_TYPE_PROMOTION_KIND.INT_TO_FLOAT
        values = [a.meta.get("val") if isinstance(a, torch.fx.Node) else a for a in n.args]
        if any(v is None or isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool)) for v in values):
            return True  # not decidable from here: let the pass look
        promoted = elementwise_dtypes(*values, type_promotion_kind=kind)[1]
        if any(isinstance(v, torch.Tensor) and v.dtype != promoted for v in values):
            return True
    return False


# ExecuTorch's ATen-to-edge passes (run by to_edge_transform_and_lower before partitioning) that are
# a full fake-tensor retrace of the graph each, with the test for whether they would change it.
_EDGE_PASS_APPLIES: dict[str, Callable[[torch.fx.GraphModule], bool]] = {
    "NormalizeTransposePass": lambda gm: any(n.target == torch.ops.aten.t.default for n in _call_nodes(gm)),
    "ReplaceBrokenOpsWithFunctionalOpsPass": lambda gm: any(
        isinstance(n.target, torch._ops.OpOverload) and n.target.is_view for n in _call_nodes(gm)
    ),
    "SymToTensorPass": lambda gm: any(
        isinstance(n.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool)) for n in gm.graph.nodes
    ),
    "ScalarToTensorPass": _scalar_for_a_tensor,
    "RemoveMixedTypeOperators": _mixed_type_operands,
}


def _edge_pass_name(pass_: Any) -> str:
    return getattr(pass_, "__name__", None) or type(pass_).__name__


@contextmanager
def applicable_edge_passes(skipped: Counter[str] | None = None) -> Iterator[Counter[str]]:
    """Skip ExecuTorch's ATen-to-edge passes where they would rewrite nothing.

    Five of them retrace the whole graph through fake tensors to rewrite a kind of op (``aten.t``, view
    ops, SymInt operands, Python scalars for tensor operands, mixed-dtype operands): on the b1 int8
    graph each retrace is 3-4 s. Each gets the test of :data:`_EDGE_PASS_APPLIES` on the graph it
    would receive; a graph with control-flow submodules runs every pass. Counts skipped passes by name
    in ``skipped`` (a new Counter if not given) and yields it. The .pte is byte-identical
    (tests/test_export_executorch.py).
    """
    from executorch.exir.pass_base import PassResult
    from executorch.exir.program import _program

    original = _program._get_aten_to_edge_passes
    skipped = Counter() if skipped is None else skipped

    def guarded(pass_: Any) -> Any:
        name = _edge_pass_name(pass_)
        applies = _EDGE_PASS_APPLIES.get(name)
        if applies is None:
            return pass_

        def run(gm: torch.fx.GraphModule) -> Any:
            if not _has_control_flow(gm) and not applies(gm):
                skipped[name] += 1
                return PassResult(gm, False)
            return pass_(gm)

        run.__name__ = name
        return run

    def passes(config: Any) -> tuple[list[Any], list[Any]]:
        pre, post = original(config)
        return [guarded(p) for p in pre], list(post)

    with library_patch(_program, _get_aten_to_edge_passes=passes):
        yield skipped


def core_aten_table_keeping(ops: Iterable[Any]) -> Any:
    """ExecuTorch's core-ATen decomposition table without ``ops`` (those a partitioner keeps whole)."""
    from executorch.exir.program import _program

    table = _program._default_decomposition_table()
    for op in ops:
        table.pop(op, None)
    return table


@contextmanager
def single_decomposition(skipped: Counter[str]) -> Iterator[None]:
    """``to_edge_transform_and_lower`` with one decomposition retrace instead of two.

    ExecuTorch first retraces each program with ``run_decompositions({})`` (functionalization only),
    asks the partitioner which ops to keep whole, and retraces again with the core-ATen table minus
    those ops: on b1 each retrace is 5-15 s. Where the only partitioner reports no per-node check
    (see :func:`xnnpack_partitioner`), the first call is answered with the second's result: the program
    decomposed once with that table. ExecuTorch then finds nothing left to decompose and skips its
    second retrace. The partitioner's answer is asked again on the result; if it differs, the stock
    functionalization runs instead. Where the decomposition is a node rewrite
    (:func:`~hrvit_mobile.exporters.decompose.decomposed_without_retrace`: the deploy forms' conv2d,
    softmax, transpose, reshape) that one retrace is skipped as well (7 s on b1 fp32, 14-21 s on int8).
    tests/test_export_executorch.py checks the .pte is byte-identical
    (b1 fp32, fp16 and int8 were compared with ``cmp``). Counts ``run_decompositions({})`` in
    ``skipped`` where it was folded.
    """
    from executorch.exir.program import _program
    from torch.export import ExportedProgram

    original_gen = _program._gen_edge_manager_for_partitioners
    original_decompose = ExportedProgram.run_decompositions

    def gen(partitioner: Any, aten_programs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        # the programs as handed in, each with its single partitioner (XNNPACK's pre-decomposition
        # transform returns the program itself, so ExecuTorch calls run_decompositions on these objects;
        # aten_programs keeps them alive while this runs, so their ids are not reused)
        planned = {
            id(program): parts[0]
            for name, program in aten_programs.items()
            if len(parts := (partitioner or {}).get(name, [])) == 1
        }

        def run_decompositions(self: Any, *d_args: Any, **d_kwargs: Any) -> Any:
            part = planned.get(id(self))
            # ExecuTorch's call is run_decompositions({}); a CustomDecompTable also compares equal to {}
            empty_dict = len(d_args) == 1 and type(d_args[0]) is dict and not d_args[0]
            if part is not None and empty_dict and not d_kwargs:
                ops, check = part.ops_to_not_decompose(self)
                if check is None:
                    table = core_aten_table_keeping(ops)
                    decomposed = decomposed_without_retrace(self, table)
                    rewritten = decomposed is not None
                    if not rewritten:
                        decomposed = original_decompose(self, table)
                    ops_after, check_after = part.ops_to_not_decompose(decomposed)
                    if check_after is None and set(ops_after) == set(ops):
                        skipped["run_decompositions({})"] += 1
                        if rewritten:
                            skipped["run_decompositions retrace (nodes rewritten)"] += 1
                        return decomposed
            return original_decompose(self, *d_args, **d_kwargs)

        with library_patch(ExportedProgram, run_decompositions=run_decompositions):
            return original_gen(partitioner, aten_programs, *args, **kwargs)

    with library_patch(_program, _gen_edge_manager_for_partitioners=gen):
        yield


def _value_key(value: Any) -> Any:
    """What the edge dtype check can learn from a node's value or argument: a tensor's class, dtype,
    shape, strides and device; containers element by element; graph nodes by name."""
    if isinstance(value, torch.fx.Node):
        return ("node", value.name)
    if isinstance(value, torch.Tensor):
        strides = tuple(value.stride()) if value.layout == torch.strided else None
        return ("tensor", type(value), value.dtype, tuple(value.shape), strides, value.device, value.layout)
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_value_key(v) for v in value))
    if isinstance(value, dict):
        return (dict, tuple((k, _value_key(v)) for k, v in value.items()))
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device, torch.layout,
                                           torch.memory_format)):
        return (type(value), value)
    return (type(value), repr(value))  # SymInts and the like: by what they print


def edge_check_key(gm: torch.fx.GraphModule) -> tuple[Any, ...] | None:
    """Everything ExecuTorch's edge dtype check reads from a graph, or None where it reads more
    (submodules: delegates, control flow). The check runs the graph on fake tensors made from the
    placeholders' recorded values, so its outcome is a function of each node's kind, name, target
    (the op object itself), arguments and recorded value, and of the tensors behind ``get_attr``."""
    if any(True for _ in gm.children()):
        return None
    key = []
    for node in gm.graph.nodes:
        attr = _value_key(getattr(gm, node.target, None)) if node.op == "get_attr" else None
        key.append((node.op, node.name, node.target, _value_key(node.args), _value_key(node.kwargs),
                    _value_key(node.meta.get("val")), attr))
    return tuple(key)


@contextmanager
def edge_dtype_checked_once(skipped: Counter[str] | None = None) -> Iterator[Counter[str]]:
    """Run ExecuTorch's edge-dialect dtype check once per distinct graph.

    ``to_edge_transform_and_lower`` validates the edge program when it is made, again when the edge
    manager wraps it, before and after its ATen-to-edge passes, when ``to_backend`` starts and on the
    fake-tensor copy it partitions: the dtype check (a fake-tensor run of the whole graph) was ~12 s of
    the b1 int8 lowering (py-spy), four of its six runs on a graph it had just passed. Within the block a
    graph whose :func:`edge_check_key` equals one that passed is not checked again; a changed graph, or
    one with submodules, is checked as before, and a failure raises as before (failures are not
    remembered). A graph it does check is checked on the nodes' recorded values, without the fake-tensor
    run (:func:`_recorded_value_arg_validator`; 3.9 s of the b1 int8 lowering). Counts skipped checks
    and runs in ``skipped`` (a new Counter if not given) and yields it."""
    from executorch.exir.verification import verifier

    original = verifier._check_tensor_args_matching_op_allowed_dtype
    passed: set[tuple[Any, ...]] = set()
    skipped = Counter() if skipped is None else skipped

    def check(gm: torch.fx.GraphModule) -> None:
        key = edge_check_key(gm)
        if key is not None and key in passed:
            skipped["edge dtype check of an unchanged graph"] += 1
            return
        if key is not None and _every_value_recorded(gm):
            with library_patch(verifier, EdgeOpArgValidator=_recorded_value_arg_validator()):
                original(gm)
            skipped["edge dtype check's fake-tensor run"] += 1
        else:
            original(gm)
        if key is not None:
            passed.add(key)

    with library_patch(verifier, _check_tensor_args_matching_op_allowed_dtype=check):
        yield skipped


def _every_value_recorded(gm: torch.fx.GraphModule) -> bool:
    return all("val" in node.meta for node in gm.graph.nodes if node.op in ("placeholder", "call_function"))


@functools.cache
def _recorded_value_arg_validator() -> type:
    """ExecuTorch's edge dtype validator answering every node with its recorded value.

    The stock validator runs the graph on fake tensors to learn the dtypes of each op's tensor
    arguments (its outputs' dtypes it already reads from the recorded values). Every node's recorded
    value was computed by the fake-tensor retrace that made the node, and the rest of the lowering
    (memory planning, the delegate's tensor definitions) reads those values too; so the check reads the
    arguments' dtypes from them as well, and applies the same per-op dtype constraints with the same
    error."""
    from executorch.exir.verification.arg_validator import EdgeOpArgValidator

    class _RecordedValues(torch.fx.Interpreter):
        def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
            return self.node.meta["val"]  # type: ignore[attr-defined]

    # the validator's own call_function checks the dtypes, then calls super(): _RecordedValues
    class RecordedValueArgValidator(EdgeOpArgValidator, _RecordedValues):
        pass

    return RecordedValueArgValidator


@functools.cache
def _op_replace_with_dim_order_pass() -> type:
    """ExecuTorch's ``OpReplacePass`` and ``MemoryFormatOpsPass`` as one pass: each operator becomes its
    edge op (OpReplacePass's rule) and that edge op then gets MemoryFormatOpsPass's rewrite (memory
    format -> dim order), in one retrace instead of two."""
    from executorch.exir.passes.memory_format_ops_pass import MemoryFormatOpsPass
    from executorch.exir.passes.replace_aten_with_edge_pass import aten_to_edge, should_lower_to_edge

    class OpReplaceWithDimOrderPass(MemoryFormatOpsPass):  # type: ignore[misc, valid-type]
        def call_operator(self, op: Any, args: Any, kwargs: Any, meta: Any) -> Any:
            if should_lower_to_edge(op):
                op = aten_to_edge(op)
            return super().call_operator(op, args, kwargs, meta)

    return OpReplaceWithDimOrderPass


def _without_retrace(pass_class: type, rewrite: Callable[[torch.fx.GraphModule], Any], label: str,
                     skipped: Counter[str]) -> type:
    """``pass_class`` answering with ``rewrite(gm)`` where that applies (``exporters/pass_rewrites.py``)."""
    from executorch.exir.pass_base import PassResult

    class WithoutRetrace(pass_class):  # type: ignore[misc, valid-type]
        def __call__(self, graph_module: torch.fx.GraphModule) -> Any:
            rebuilt = rewrite(graph_module)
            if rebuilt is None:
                return super().__call__(graph_module)
            skipped[label] += 1
            return PassResult(rebuilt, True)

    WithoutRetrace.__name__ = pass_class.__name__
    return WithoutRetrace


class _DimOrderDoneWithOpReplace:
    """Stands in for ``MemoryFormatOpsPass`` after :func:`_op_replace_with_dim_order_pass`'s pass: the
    graph it gets has had that rewrite already."""

    def __call__(self, graph_module: torch.fx.GraphModule) -> Any:
        from executorch.exir.pass_base import PassResult

        return PassResult(graph_module, False)


@contextmanager
def edge_ops_in_one_retrace(skipped: Counter[str] | None = None) -> Iterator[Counter[str]]:
    """ATen-to-edge conversion with the op replacement and the dim-order rewrite in one retrace.

    ``to_edge_transform_and_lower`` ends its ATen-to-edge passes with ``OpReplacePass`` (every op to its
    edge op) and ``MemoryFormatOpsPass`` (``_to_copy``/``clone``/``empty`` with a memory format to their
    dim-order variants), each a whole-graph retrace through fake tensors: ~3-6 s each on b1 int8. The
    second only rewrites edge ops the first produced, node by node, so composing the two per operator
    gives the same ops, arguments and values. Graphs with control-flow submodules and configs that skip
    the dim-order pass take ExecuTorch's own passes. Counts the retrace saved in ``skipped``.
    """
    from executorch.exir.program import _program

    original = _program._generate_edge_program
    skipped = Counter() if skipped is None else skipped

    def generate(config: Any, program: Any, *args: Any, **kwargs: Any) -> Any:
        if config._skip_dim_order or _has_control_flow(program.graph_module):
            return original(config, program, *args, **kwargs)
        with library_patch(
            _program,
            OpReplacePass=_without_retrace(
                _op_replace_with_dim_order_pass(), edge_ops_without_retrace, "OpReplacePass's retrace",
                skipped,
            ),
            MemoryFormatOpsPass=_DimOrderDoneWithOpReplace,
            ReplaceViewOpsWithViewCopyOpsPass=_without_retrace(
                _program.ReplaceViewOpsWithViewCopyOpsPass, view_copies_without_retrace,
                "ReplaceViewOpsWithViewCopyOpsPass's retrace", skipped,
            ),
        ):
            result = original(config, program, *args, **kwargs)
        skipped["MemoryFormatOpsPass's own retrace"] += 1
        return result

    with library_patch(_program, _generate_edge_program=generate):
        yield skipped


@contextmanager
def lowering_shortcuts() -> Iterator[Counter[str]]:
    """This module's lowering shortcuts together (each leaves the .pte byte-identical): shared node
    provenance, memoized graph-signature lookups, bit-set dependency closures, unrendered debug
    messages, nodes moved rather than copied when re-sorting, inapplicable ATen-to-edge and XNNPACK
    passes skipped, one decomposition retrace instead of two, the edge dtype check once per distinct
    graph, edge ops and their dim-order form in one retrace, the delegate's JSON encoded with type
    hints looked up once per class (yields the names of what was skipped).
    Pair with :func:`xnnpack_partitioner`; code generation is deferred by ``run_build`` for every
    target."""
    with (
        shared_node_provenance(),
        memoized_signature_lookups(),
        bitset_dependency_viewers(),
        unrendered_partition_logs(),
        moving_node_legalization(),
        applicable_xnnpack_passes() as skipped,
        applicable_edge_passes(skipped),
        single_decomposition(skipped),
        edge_dtype_checked_once(skipped),
        edge_ops_in_one_retrace(skipped),
        memoized_dataclass_encoding(),
    ):
        yield skipped
