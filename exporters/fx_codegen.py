"""Deferred Python code generation for torch.fx graph modules while an exporter lowers a graph.

``GraphModule.recompile`` generates Python source for the whole graph and compiles it with
``exec``. torch.export, ``run_decompositions`` and every ExecuTorch/XNNPACK pass call it after each
retrace (on ~3,900 nodes for b1 at 512x512), yet the lowering almost never calls the generated
``forward``: the passes retrace through ``torch.fx.Interpreter``, node by node. A py-spy profile of
the b1 fp32 ExecuTorch export (66 s) put 13.6 s (19 %) under ``recompile``, mostly code generation
and ``exec`` of source nobody ran.

The module also holds the other torch.fx-level shortcut every exporter runs under
(:func:`shared_node_provenance`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class _DeferredPythonCode:
    """What ``recompile`` returns while deferred: the real ``PythonCode`` on first attribute access."""

    def __init__(self, materialize: Any, gm: torch.fx.GraphModule) -> None:
        self._materialize, self._gm = materialize, gm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._materialize(self._gm), name)


@contextmanager
def deferred_graph_codegen() -> Iterator[weakref.WeakSet]:
    """Within the block, ``GraphModule.recompile`` only marks a module stale; the code is generated
    when something needs it (``forward``/``__call__``, ``.code``, ``str``, pickling, or the returned
    ``PythonCode``), from the graph as it is then.

    The same idea as torch's own ``_LazyGraphModule``, which only modules built through
    ``_make_graph_module`` get; export and ExecuTorch build theirs with ``torch.fx.GraphModule(...)``.
    The specs of pytree code generators are still set at once (cheap, and read without a call).
    Modules still stale at exit get their code then, so nothing outlives the block half-built.
    Yields the set of stale modules (for tests). The graphs, the lowered program and the .pte are
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
            materialize(self)
        return original_reduce(self)

    gm_cls.recompile = recompile  # type: ignore[method-assign]
    gm_cls.code = property(code)  # type: ignore[assignment]
    gm_cls.__str__ = to_str  # type: ignore[method-assign]
    gm_cls.__reduce__ = reduce  # type: ignore[method-assign]
    try:
        yield stale
    finally:
        gm_cls.recompile = original_recompile  # type: ignore[method-assign]
        gm_cls.code = original_code  # type: ignore[assignment]
        gm_cls.__str__ = original_str  # type: ignore[method-assign]
        gm_cls.__reduce__ = original_reduce  # type: ignore[method-assign]
        for gm in list(stale):
            materialize(gm)


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
    cls.__init__ = init
    try:
        yield
    finally:
        cls.__init__ = original
