"""Speed shortcuts inside XNNPACK partitioning: the partitioner's dependency checks on bit sets, its
logs left unrendered, and node moves legalized in one pass. Same partitions, same .pte; see
:mod:`hrvit_mobile.exporters.patches` for the switch and the version check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from hrvit_mobile.patching import library_patch

from ..fx_codegen import legalize_graph_moving_nodes


def xnnpack_partitioner() -> Any:
    """XNNPACK's partitioner, told when its per-node check on preserved ops has nothing to reject.

    XnnpackPartitioner asks ExecuTorch to keep some aten ops whole (linear, hardswish, bilinear
    upsample, ...) and hands it a per-node check, which sends ``to_edge_transform_and_lower`` down its
    EDGE_DO_NOT_DECOMP path: two more ``run_decompositions`` retraces of the whole graph (about 10 s of
    the ~60 s b1 fp32 lowering). Where every node of a preserved op passes that check, both paths keep
    exactly the same nodes, so this partitioner then reports no check and the cheaper path runs; where
    any node fails it, the original answer (and path) is kept. tests/test_export_executorch.py checks
    the .pte is byte-identical either way.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir.program._program import _remove_invalid_ops_for_not_decompose

    class _CheckedXnnpackPartitioner(XnnpackPartitioner):
        def ops_to_not_decompose(self, ep: Any) -> tuple[list[Any], Any]:
            ops, check = super().ops_to_not_decompose(ep)
            if check is None:
                return ops, check
            # ExecuTorch's own filter (mutable or aliasing ops are never preserved)
            preserved = set(_remove_invalid_ops_for_not_decompose(list(ops)))
            for gm in ep.graph_module.modules():  # the graph and any control-flow submodules
                for node in gm.graph.nodes if isinstance(gm, torch.fx.GraphModule) else ():
                    if node.op == "call_function" and node.target in preserved and not check(node):
                        return ops, check
            return sorted(preserved, key=str), None

    return _CheckedXnnpackPartitioner()


class NodeBitSet:
    """A read-only set of fx nodes stored as the bits of a Python int (bit i = i-th node of a graph)."""

    __slots__ = ("_bits", "_index", "_nodes")

    def __init__(self, bits: int, nodes: list[torch.fx.Node], index: dict[torch.fx.Node, int]) -> None:
        self._bits, self._nodes, self._index = bits, nodes, index

    def __contains__(self, node: object) -> bool:
        i = self._index.get(node)  # type: ignore[call-overload]
        return i is not None and (self._bits >> i) & 1 == 1

    def __len__(self) -> int:
        return self._bits.bit_count()

    def __iter__(self) -> Iterator[torch.fx.Node]:
        if not self._bits:
            return iter(())
        raw = np.frombuffer(self._bits.to_bytes((self._bits.bit_length() + 7) // 8, "little"), np.uint8)
        return (self._nodes[i] for i in np.flatnonzero(np.unpackbits(raw, bitorder="little")))


class BitSetDependencyViewer:
    """Every node's transitive users (and inputs) as bit sets instead of Python sets of nodes.

    The XNNPACK partitioner (ExecuTorch's ``GroupBasedPartitioner`` over torch's
    ``CapabilityBasedPartitioner``) builds three ``_DependencyViewer`` closures at once: each node's
    set of all downstream nodes, twice, and of all upstream nodes (which nothing reads). That is
    quadratic in nodes: on the b1 int8 graph (9,740 edge nodes) they took the process from 0.95 to
    4.56 GB for ~20 s, the peak of the whole int8 export (now 1.28 GB). As bits of one int per node a
    closure is at most N^2/8 bytes (12 MB there) and builds with word-wide ORs. The sets hold the same
    nodes (a test compares them for every node) and the partitioners only test membership or iterate
    them, so the partitions and the .pte are unchanged (byte-identity tests in
    tests/test_export_executorch.py).
    """

    def __init__(self, graph_module: torch.fx.GraphModule) -> None:
        self._nodes = list(graph_module.graph.nodes)
        self._index = {node: i for i, node in enumerate(self._nodes)}
        self._down = self._closure(reversed(range(len(self._nodes))), lambda node: node.users)
        self._up: list[int] | None = None
        self._users: list[int] | None = None  # each node's direct users, built on first use
        # id of a partition's node dict -> (that dict, its length, its bits, its users' bits)
        self._partition_bits: dict[int, tuple[dict, int, int, int]] = {}

    def _closure(
        self, order: Iterable[int], neighbours: Callable[[torch.fx.Node], Iterable[Any]]
    ) -> list[int]:
        closure = [0] * len(self._nodes)
        for i in order:
            bits = 0
            for other in neighbours(self._nodes[i]):
                j = self._index[other]
                bits |= (1 << j) | closure[j]
            closure[i] = bits
        return closure

    def _set(self, closure: list[int], node: torch.fx.Node) -> NodeBitSet:
        i = self._index.get(node)
        return NodeBitSet(closure[i] if i is not None else 0, self._nodes, self._index)

    def downstreams_of(self, node: torch.fx.Node) -> NodeBitSet:
        return self._set(self._down, node)

    def mask_of(self, nodes: Iterable[torch.fx.Node]) -> int:
        """The bits of ``nodes`` (nodes the viewer does not know have none: no closure holds them)."""
        index, bits = self._index, 0
        for node in nodes:
            i = index.get(node)
            if i is not None:
                bits |= 1 << i
        return bits

    def partition_bits(self, nodes: dict[torch.fx.Node, Any]) -> tuple[int, int]:
        """The bits of a partition's nodes and of all their users (inside the partition or not).

        Cached per node dict while its length stays the same: partitions only grow, by merges that
        add nodes to the dict, so a stale entry always has a different length."""
        entry = self._partition_bits.get(id(nodes))
        if entry is not None and entry[0] is nodes and entry[1] == len(nodes):
            return entry[2], entry[3]
        if self._users is None:
            self._users = [self.mask_of(node.users) for node in self._nodes]
        users_bits, index = self._users, self._index
        mask = users = 0
        for node in nodes:
            i = index.get(node)
            if i is not None:
                mask |= 1 << i
                users |= users_bits[i]
        self._partition_bits[id(nodes)] = (nodes, len(nodes), mask, users)
        return mask, users

    def merge_partition_bits(
        self, into: dict[torch.fx.Node, Any], other: dict[torch.fx.Node, Any]
    ) -> Callable[[], None]:
        """Before ``other``'s nodes are added to ``into``: returns the call that files the merged
        partition's bits (the ORs of both) once the merge is done, so they are not rebuilt node by node."""
        mask1, users1 = self.partition_bits(into)
        mask2, users2 = self.partition_bits(other)

        def file_merged() -> None:
            self._partition_bits[id(into)] = (into, len(into), mask1 | mask2, users1 | users2)

        return file_merged

    def any_downstream_of_bits_in(self, bits: int, mask: int) -> bool:
        """Whether some node downstream of one of the nodes in ``bits`` is in ``mask``."""
        down = self._down
        while bits:
            low = bits & -bits
            if down[low.bit_length() - 1] & mask:
                return True
            bits ^= low
        return False

    def upstreams_of(self, node: torch.fx.Node) -> NodeBitSet:
        if self._up is None:  # built on first use: the partitioners never ask
            self._up = self._closure(range(len(self._nodes)), lambda node: node.all_input_nodes)
        return self._set(self._up, node)


def _bitset_can_merge_partitions(original: Callable[..., bool]) -> Callable[..., bool]:
    """``GroupBasedPartitioner._can_merge_partitions`` answered from bits.

    The stock check builds the union of the two partitions, asks for each of its external users
    whether any node downstream of it is in the union (iterating the closure: on the b1 fp16 graph
    that was 90 % of XNNPACK's partitioning), then runs torch's ``validate_partition``, a graph walk
    from those same external users that fails when it reaches the union: the same question again, so
    it can only say yes once the first test has passed (for the viewer's graph, which partitioning
    does not edit). Here each partition's nodes and their users are bit masks (cached per partition,
    recomputed when a merge grows it), the external users are ``users & ~union``, and each is one AND of
    its downstream closure with the union: the same answer without walking the nodes. On the b1 int8
    graph the stock check was 16 s (py-spy), quadratic in partition size. Partitioners with another
    viewer get the stock method. Tested against the stock check for every pair of a branching graph
    and, end to end, by the .pte byte-identity tests.
    """

    def can_merge(self: Any, p1: int, p2: int, partitions_by_id: dict[int, Any]) -> bool:
        viewer = self.dependency_viewer
        if not isinstance(viewer, BitSetDependencyViewer):
            return original(self, p1, p2, partitions_by_id)
        mask1, users1 = viewer.partition_bits(partitions_by_id[p1].nodes)
        mask2, users2 = viewer.partition_bits(partitions_by_id[p2].nodes)
        union = mask1 | mask2
        return not viewer.any_downstream_of_bits_in((users1 | users2) & ~union, union)

    return can_merge


def _bitset_perform_partition_merge(original: Callable[..., None]) -> Callable[..., None]:
    """``GroupBasedPartitioner._perform_partition_merge`` that also files the merged partition's bits.

    XNNPACK's partitioner merges partitions one at a time into the first (4,185 merges on the b1 int8
    graph), so rebuilding the growing partition's bits from its nodes after each merge would be
    quadratic again (20 s there); the merged bits are the ORs of the two partitions' bits."""

    def perform_merge(self: Any, p1: int, p2: int, partitions_by_id: dict[int, Any], *args: Any) -> None:
        viewer = self.dependency_viewer
        if not isinstance(viewer, BitSetDependencyViewer):
            return original(self, p1, p2, partitions_by_id, *args)
        into, other = partitions_by_id[p1].nodes, partitions_by_id[p2].nodes
        sizes = len(into) + len(other)
        file_merged = viewer.merge_partition_bits(into, other)
        original(self, p1, p2, partitions_by_id, *args)
        if len(into) == sizes:  # other's nodes were added to into's dict (else: rebuilt when next asked)
            file_merged()

    return perform_merge


@contextmanager
def bitset_dependency_viewers() -> Iterator[None]:
    """Within the block, fx's and ExecuTorch's partitioners use :class:`BitSetDependencyViewer`, and
    ExecuTorch's group partitioner tests merges on its bits (:func:`_bitset_can_merge_partitions`,
    :func:`_bitset_perform_partition_merge`)."""
    import torch.fx.passes.infra.partitioner as fx_partitioner
    from executorch.exir.backend.canonical_partitioners import group_partitioner

    partitioner_cls = group_partitioner.GroupBasedPartitioner
    can_merge = _bitset_can_merge_partitions(partitioner_cls.__dict__["_can_merge_partitions"])
    perform_merge = _bitset_perform_partition_merge(partitioner_cls.__dict__["_perform_partition_merge"])
    with (
        library_patch(fx_partitioner, _DependencyViewer=BitSetDependencyViewer),
        library_patch(group_partitioner, _DependencyViewer=BitSetDependencyViewer),
        library_patch(partitioner_cls, _can_merge_partitions=can_merge,
                      _perform_partition_merge=perform_merge),
    ):
        yield


@contextmanager
def unrendered_partition_logs() -> Iterator[None]:
    """Keep ExecuTorch from generating a whole graph's code for debug messages that are dropped.

    ``_create_partitions_in_graph_module`` formats ``logging.debug(f"Partitioned graph module: {gm}")``
    once per delegate partition, before ``logging`` decides to drop it, and ``str`` of a GraphModule
    generates the Python code of the whole graph (under deferred code generation the only thing left
    that forced it there). The b1 fp16 graph has ~50 partitions: ~3 s of its export (py-spy). While
    that function runs with the root logger below DEBUG, ``str`` of the graph module it partitions
    is a short placeholder, set on the module's own class (every GraphModule has one); with debug
    logging on, the messages are rendered as before. The .pte is unaffected (byte-identity tests).
    """
    import logging

    from executorch.exir.backend import backend_api

    original = backend_api._create_partitions_in_graph_module

    def placeholder(self: torch.fx.GraphModule) -> str:
        return f"<GraphModule of {len(self.graph.nodes)} nodes, code not rendered: debug logging is off>"

    def create_partitions(tagged_graph_module: torch.fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
        own_class = type(tagged_graph_module)
        if (
            logging.getLogger().isEnabledFor(logging.DEBUG)
            or own_class is torch.fx.GraphModule
            or "__str__" in own_class.__dict__
        ):
            return original(tagged_graph_module, *args, **kwargs)
        # own_class has no __str__ of its own (checked above)
        with library_patch(own_class, __str__=placeholder):
            return original(tagged_graph_module, *args, **kwargs)

    with library_patch(backend_api, _create_partitions_in_graph_module=create_partitions):
        yield


@contextmanager
def moving_node_legalization() -> Iterator[None]:
    """ExecuTorch re-sorts the whole graph after cutting out each delegate partition with torch's
    ``legalize_graph``, which copies every node; within the block it uses
    :func:`~hrvit_mobile.exporters.fx_codegen.legalize_graph_moving_nodes` (the same graph, nodes
    moved instead of copied)."""
    from executorch.exir import lowered_backend_module

    with library_patch(lowered_backend_module, legalize_graph=legalize_graph_moving_nodes):
        yield
