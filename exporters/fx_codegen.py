"""Deferred Python code generation for torch.fx graph modules while an exporter lowers a graph.

``GraphModule.recompile`` generates Python source for the whole graph and compiles it with
``exec``. torch.export, ``run_decompositions`` and every ExecuTorch/XNNPACK pass call it after each
retrace (on ~3,900 nodes for b1 at 512x512), yet the lowering almost never calls the generated
``forward``: the passes retrace through ``torch.fx.Interpreter``, node by node. A py-spy profile of
the b1 fp32 ExecuTorch export (66 s) put 13.6 s (19 %) under ``recompile``, mostly code generation
and ``exec`` of source nobody ran.

The module also holds the other torch.fx/torch.export-level shortcuts every exporter runs under
(:func:`shared_node_provenance`, :func:`memoized_signature_lookups`).
"""

from __future__ import annotations

import collections
import copy
import operator
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from hrvit_mobile.patching import library_patch


class _DeferredPythonCode:
    """What ``recompile`` returns while deferred: the real ``PythonCode`` on first attribute access."""

    def __init__(self, materialize: Any, gm: torch.fx.GraphModule) -> None:
        self._materialize, self._gm, self._code = materialize, gm, None

    def __getattr__(self, name: str) -> Any:
        if self._code is None:  # compiled once, on the first attribute read
            self._code = self._materialize(self._gm)
        return getattr(self._code, name)


# what a module still stale when deferred_graph_codegen ends gets on its own class (forward is set already)
_LAZY_AFTER_EXIT = ("code", "__str__", "__reduce__")


@contextmanager
def deferred_graph_codegen() -> Iterator[weakref.WeakSet]:
    """Within the block, ``GraphModule.recompile`` only marks a module stale; the code is generated
    when something needs it (``forward``/``__call__``, ``.code``, ``str``, pickling, or the returned
    ``PythonCode``), from the graph as it is then.

    The same idea as torch's own ``_LazyGraphModule``, which only modules built through
    ``_make_graph_module`` get; export and ExecuTorch build theirs with ``torch.fx.GraphModule(...)``.
    The specs of pytree code generators are still set at once (cheap, and read without a call).
    Modules still stale at exit stay lazy through their own class (every GraphModule instance has one):
    its ``forward``, ``code``, ``__str__`` and ``__reduce__`` generate the code on first use, then give
    way to GraphModule's own. An export keeps ~20 such modules alive (b1 int8: five of ~9,500 nodes,
    held from outside Python's object graph) and never runs them; compiling them at exit was ~2 s of
    it. Yields the set of stale modules (for tests). The graphs, the lowered program and the .pte are
    unaffected: tests/test_export_executorch.py checks the .pte is byte-identical.
    """
    from torch.fx.graph import _PyTreeCodeGen

    gm_cls = torch.fx.GraphModule
    original_recompile = gm_cls.recompile
    original_code = gm_cls.__dict__["code"]
    original_str = gm_cls.__str__
    original_reduce = gm_cls.__reduce__
    stale: weakref.WeakSet = weakref.WeakSet()

    def materialize(gm: torch.fx.GraphModule) -> Any:
        stale.discard(gm)
        cls = type(gm)
        # the hooks a module left stale at exit got on its class go once no stale module shares it
        if "code" in vars(cls) and not any(type(other) is cls for other in stale):
            for name in _LAZY_AFTER_EXIT:
                delattr(cls, name)
        return original_recompile(gm)

    def lazy_forward(self: torch.fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
        materialize(self)  # installs the real forward and __call__ on the module's own class
        return self(*args, **kwargs)

    def recompile(self: torch.fx.GraphModule) -> Any:
        if isinstance(self._graph._codegen, _PyTreeCodeGen):
            self._in_spec = self._graph._codegen.pytree_info.in_spec
            self._out_spec = self._graph._codegen.pytree_info.out_spec
        # every GraphModule instance has a class of its own (GraphModule.__new__), as recompile assumes
        type(self).forward = lazy_forward
        stale.add(self)
        return _DeferredPythonCode(materialize, self)

    def code(self: torch.fx.GraphModule) -> str:
        if self in stale:
            materialize(self)
        return original_code.fget(self)

    def to_str(self: torch.fx.GraphModule) -> str:
        if self in stale:
            materialize(self)
        return original_str(self)

    def reduce(self: torch.fx.GraphModule) -> Any:
        if self in stale:
            materialize(self)  # GraphModule.__reduce__ copies __dict__ (with the code) before its recompile
        return original_reduce(self)

    try:
        with library_patch(gm_cls, recompile=recompile, code=property(code), __str__=to_str,
                           __reduce__=reduce):
            yield stale
    finally:
        # GraphModule's own methods are back; each module still stale keeps lazy ones on its own class
        # (a deep copy shares the class, so the hooks pass modules that are not stale to the originals)
        for gm in list(stale):
            cls = type(gm)
            if cls is gm_cls or not issubclass(cls, gm_cls):  # no class of its own: compile it now
                materialize(gm)
                continue
            cls.code = property(code)
            cls.__str__ = to_str
            cls.__reduce__ = reduce


@contextmanager
def shared_node_provenance() -> Iterator[None]:
    """While exporting, let torch.fx share each node's provenance history instead of deep-copying it.

    Every pass of the lowering retraces the graph, and for every node it builds a
    ``torch.fx.traceback.NodeSource`` whose ``__init__`` deep-copies ``node.meta["from_node"]``,
    the node's whole history, which gains one level per retrace. Over the ~30 retraces of
    ``to_edge_transform_and_lower`` + XNNPACK preprocessing that copy is a large share of the
    lowering time. The history entries are never mutated once built (torch builds new lists when it
    edits provenance), so sharing them changes no metadata value, only the copying; the graph, the
    delegate payload and the .pte are unaffected. The original ``__init__`` is restored on exit.

    The same copy dominates litert-torch's conversion (four ``run_decompositions`` and its own
    passes): 31 of 161 s of ``litert_torch.convert`` in a cProfile run on b1. ``run_build`` enters
    this for every target; nested entries are no-ops.
    """
    from torch.fx import traceback as fx_traceback

    cls = fx_traceback.NodeSource
    original = cls.__init__
    if getattr(original, "_shares_provenance", False):  # already inside
        yield
        return

    def init(self: Any, node: Any, pass_name: str = "", action: Any = None) -> None:
        original(self, None, pass_name, action)
        if node:
            self.node_info = cls.NodeInfo(name=node.name, target=str(node.target), graph_id=id(node.graph))
            self.from_node = list(node.meta.get("from_node", []))

    init._shares_provenance = True  # type: ignore[attr-defined]
    with library_patch(cls, __init__=init):
        yield


# the ExportGraphSignature properties that rebuild a dict from every input spec on each access
SIGNATURE_LOOKUPS = ("inputs_to_parameters", "inputs_to_buffers", "inputs_to_lifted_tensor_constants")


@contextmanager
def memoized_signature_lookups() -> Iterator[dict[str, int]]:
    """While exporting, answer ``ExportGraphSignature.inputs_to_{parameters,buffers,...}`` from a cache.

    Each access of those properties builds a fresh dict from every input spec, and torch's
    ``is_param``/``is_buffer``/``is_lifted_tensor_constant`` (which XNNPACK's partitioner and passes
    call for every node they look at) access them once per call: quadratic in graph size. In a py-spy
    profile of the b1 int8 ExecuTorch export (9,740 edge nodes) the dict building was 947 of 8,421
    samples, 11 % of the whole export and about a fifth of the lowering.

    A cached answer is reused only while nothing it was built from can have changed: the signature's
    ``input_specs`` is the same list object with the same length, and since the answer was built no
    ``InputSpec``, ``TensorArgument`` or ``ExportGraphSignature`` has been constructed or had a field
    assigned anywhere (a global generation counter bumped by their ``__setattr__``, which dataclass
    ``__init__`` and ``dataclasses.replace`` go through). torch and ExecuTorch edit signatures only that
    way (appending or inserting specs, assigning fields, putting new specs in place of old ones), so the
    answers are the dicts the properties would build; the .pte is byte-identical with or without the
    cache (tests/test_export_executorch.py). Yields hit/miss counts. Nested entries are no-ops.
    """
    from torch.export import graph_signature as gs

    sig_cls = gs.ExportGraphSignature
    if getattr(sig_cls.__dict__[SIGNATURE_LOOKUPS[0]].fget, "_memoized", False):  # already inside
        yield {}
        return

    generation = [0]
    counts = {"hits": 0, "misses": 0}
    # id(signature), property -> (signature, its input_specs list, that list's length, generation, answer);
    # holding the signature keeps its id from being reused while the entry exists
    cache: dict[tuple[int, str], tuple[Any, list, int, int, Any]] = {}

    def setattr_counted(self: Any, name: str, value: Any) -> None:
        generation[0] += 1
        object.__setattr__(self, name, value)

    def memoized(name: str, build: Any) -> property:
        def fget(self: Any) -> Any:
            key = (id(self), name)
            entry = cache.get(key)
            specs = self.input_specs
            if (
                entry is not None
                and entry[0] is self
                and entry[1] is specs
                and entry[2] == len(specs)
                and entry[3] == generation[0]
            ):
                counts["hits"] += 1
                return entry[4]
            counts["misses"] += 1
            answer = build(self)
            cache[key] = (self, specs, len(specs), generation[0], answer)
            return answer

        fget._memoized = True  # type: ignore[attr-defined]
        return property(fget)

    lookups = {name: memoized(name, sig_cls.__dict__[name].fget) for name in SIGNATURE_LOOKUPS}
    try:
        with (
            library_patch(gs.InputSpec, __setattr__=setattr_counted),
            library_patch(gs.TensorArgument, __setattr__=setattr_counted),
            library_patch(sig_cls, __setattr__=setattr_counted, **lookups),
        ):
            yield counts
    finally:
        cache.clear()



# torch.fx.passes.tools_common.legalize_graph's PRIORITIZED_OPS (a local list there) as of the torch
# releases in LEGALIZE_ORDER_TORCH: ops its sort moves to the front of the queue
_PRIORITIZED_OPS = (
    operator.add, operator.mul, operator.sub, operator.floordiv, operator.truediv, operator.mod,
    operator.le, operator.lt, operator.ge, operator.gt, operator.eq, operator.ne,
    torch.ops.aten.sym_constrain_range.default, torch.ops.aten.sym_constrain_range_for_size.default,
    torch.ops.aten._assert_async.msg, torch.ops.aten.scalar_tensor.default,
    torch.ops.aten._assert_scalar.default,
)  # fmt: skip
LEGALIZE_ORDER_TORCH = ("2.13.",)


def _legalized_order(graph: torch.fx.Graph) -> list[torch.fx.Node] | None:
    """The node order torch's ``legalize_graph`` gives ``graph`` (Kahn's sort over ``users`` in their
    order, prioritized ops to the front of the queue), or None where it would raise (a cycle)."""
    indeg = dict.fromkeys(graph.nodes, 0)
    for node in graph.nodes:
        for user in node.users:
            indeg[user] += 1
    queue = collections.deque(node for node in graph.nodes if indeg[node] == 0)
    order: list[torch.fx.Node] = []
    while queue:
        current = queue.popleft()
        order.append(current)
        for user in current.users:
            indeg[user] -= 1
            if indeg[user] == 0:
                if user.op == "call_function" and user.target in _PRIORITIZED_OPS:
                    queue.appendleft(user)
                else:
                    queue.append(user)
    return order if len(order) == len(indeg) else None


def _input_nodes_as_built(node: torch.fx.Node) -> dict[torch.fx.Node, None]:
    """``node._input_nodes`` as a new node with the same args and kwargs would have it."""
    inputs: dict[torch.fx.Node, None] = {}
    torch.fx.node.map_arg(node.args, inputs.setdefault)
    torch.fx.node.map_arg(node.kwargs, inputs.setdefault)
    return inputs


def legalize_graph_moving_nodes(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """torch's ``legalize_graph`` that moves the nodes into the new graph instead of copying them.

    ``legalize_graph`` topologically sorts a graph by copying every node into a fresh ``Graph``.
    ExecuTorch runs it on the whole graph after cutting out each delegate partition: on the b1 fp16
    graph (~50 partitions of ~4,000 nodes) that was ~3 s, mostly building ``Node`` objects. Here the
    same nodes move, in the same order, into a fresh graph, and every piece of state a copy would
    have is rebuilt as the copy builds it: names through the new graph's namespace (each must come
    out unchanged), ``users`` in the new order, the find-nodes table, sort keys from appending,
    a shallow copy of ``meta``. A node with state a copy would drop (a custom ``repr``, instance
    attributes) or inputs that differ from its args, an unlisted torch release, or a cycle: the stock
    function runs. tests/test_fx_codegen.py compares every piece of that state with the stock result.
    """
    from torch.fx.passes.tools_common import legalize_graph

    old = gm.graph
    order = _legalized_order(old)
    if (
        order is None
        or not torch.__version__.startswith(LEGALIZE_ORDER_TORCH)
        or any(
            node._repr_fn is not None
            or node.__dict__
            or list(node._input_nodes) != list(_input_nodes_as_built(node))
            for node in order
        )
    ):
        return legalize_graph(gm)
    new = torch.fx.Graph()
    namespace = new._graph_namespace
    for node in order:
        if namespace.create_name(node.name, None) != node.name:  # the copy would be renamed
            return legalize_graph(gm)  # nothing moved yet: the namespace is the new graph's
    new = torch.fx.Graph()
    for node in order:
        node.users.clear()
    for node in order:
        node.graph = new
        new._graph_namespace.create_name(node.name, None)
        new._graph_namespace.associate_name_with_obj(node.name, node)
        # root.prepend: unlinks it from the old list and find-nodes table, appends it, files it in
        # the new table and sets its sort key, as for a new node
        new._insert(node)
        new._len += 1
        for source in node._input_nodes:
            source.users[node] = None
        node.meta = copy.copy(node.meta)
    new._codegen = old._codegen
    gm.graph = new
    return gm
