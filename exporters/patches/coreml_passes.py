"""Speed shortcuts in coremltools' MIL pass pipeline (written for coremltools 9.0, ``patching.WRITTEN_FOR``):
a program validated once per pipeline instead of after every pass, nonreplaceable-var sets kept as
bitmasks and propagated only after a change, and no debug dumps of the whole program while DEBUG
logging is off. Same ML program and weights; see :mod:`hrvit_mobile.exporters.patches`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from hrvit_mobile.patching import library_patch


@contextlib.contextmanager
def validate_once_per_pipeline() -> Iterator[None]:
    """Inside, coremltools checks a program once per pass pipeline instead of after every pass.

    ``PassPipelineManager.apply_pipeline`` runs ``Program.validate`` (var visibility, producer/consumer
    links, scopes: a walk of the whole program) after each of the ~130 passes of a conversion; on b1
    that was a third of ``ct.convert`` in a cProfile run. The checks only read the program; here they run
    before and after each pipeline, the final one with the essential-scope check when the pipeline
    ends in dead-code elimination, as the last per-pass check would. The program is unchanged.
    """
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager

    original = PassPipelineManager.apply_pipeline  # the plain function behind the staticmethod

    def apply_pipeline(prog: Any, pass_pipeline: Any) -> None:
        def deferred(check_essential_scope: bool = False) -> None:
            return None

        with library_patch(prog, validate=deferred):  # an instance attribute shadows Program.validate
            original(prog, pass_pipeline)
        passes = pass_pipeline.passes
        prog.validate(check_essential_scope=bool(passes) and passes[-1] == "common::dead_code_elimination")

    with library_patch(PassPipelineManager, apply_pipeline=staticmethod(apply_pipeline)):
        yield


class _NonreplaceableBits:
    """Nonreplaceable-var sets (see :func:`nonreplaceable_vars_as_bits`) as Python ints: bit ``i`` is the
    ``i``-th ``constexpr_`` output met."""

    def __init__(self) -> None:
        self.index: dict[Any, int] = {}  # Var hashes by identity
        self.members: list[Any] = []

    def bit(self, var: Any) -> int:
        i = self.index.get(var)
        if i is None:
            i = self.index[var] = len(self.members)
            self.members.append(var)
        return 1 << i

    def of(self, stored: Any) -> int:
        """The bits of a var's stored value: an int already, or a set a stock code path wrote."""
        if type(stored) is int:
            return stored
        bits = 0
        for var in stored:
            bits |= self.bit(var)
        return bits

    def as_set(self, bits: int) -> set[Any]:
        out = set()
        while bits:
            low = bits & -bits
            out.add(self.members[low.bit_length() - 1])
            bits ^= low
        return out


@contextlib.contextmanager
def nonreplaceable_vars_as_bits() -> Iterator[None]:
    """Inside, each MIL var's ``nonreplaceable_vars_upstream`` (the ``constexpr_`` outputs upstream of
    it) is stored as a bitmask and handed out as the same set when read.

    coremltools recomputes those sets for every var of a block whenever a pass leaves it
    (``Block._propagate_nonreplaceable_vars``, ~130 passes per conversion), each as the union of its
    inputs' sets. A W8A8 program has a ``constexpr_`` op per int8 weight, so on b1 the sets grow to
    hundreds of vars along the network (py-spy put 31 % of its ``ct.convert`` under the propagation,
    the walk included). An OR of ints gives the same membership, so the program and weights come out
    the same, in less of ``ct.convert``'s time. Passes only read the sets
    (a subset test before a var is replaced, emptiness checks), and each read returns a new set with
    the same members. At exit every var of the programs the pass pipelines ran on holds a set again.
    """
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager
    from coremltools.converters.mil.mil.var import Var

    table = _NonreplaceableBits()
    programs: list[Any] = []
    original_pipeline = PassPipelineManager.apply_pipeline

    def get(self: Any) -> set[Any]:
        return table.as_set(table.of(self._nonreplaceable_vars_upstream))

    def put(self: Any, value: set[Any]) -> None:
        assert isinstance(value, set)  # the stock setter's check
        self._nonreplaceable_vars_upstream = table.of(value)

    def reset(self: Any) -> None:
        self._nonreplaceable_vars_upstream = 0

    def set_upstream(self: Any) -> None:  # Var._set_nonreplaceable_vars_upstream, on bits
        op = self.op
        if op is None:
            return
        if op.op_type == "shape":  # metadata ops stop the propagation
            self._nonreplaceable_vars_upstream = 0
        elif Var._is_nonreplaceable_var(self):
            self._nonreplaceable_vars_upstream = table.bit(self)
        else:
            inputs = op.get_flattened_inputs()
            if inputs:
                bits = 0
                for var in inputs:
                    bits |= table.of(var._nonreplaceable_vars_upstream)
                self._nonreplaceable_vars_upstream = bits

    def apply_pipeline(prog: Any, pass_pipeline: Any) -> None:
        programs.append(prog)
        original_pipeline(prog, pass_pipeline)

    def back_to_sets(block: Any) -> None:
        inputs = block.inputs.values() if isinstance(block.inputs, dict) else block.inputs
        for var in [*inputs, *(o for op in block.operations for o in (op.outputs or ()))]:
            if type(var._nonreplaceable_vars_upstream) is int:
                var._nonreplaceable_vars_upstream = table.as_set(var._nonreplaceable_vars_upstream)
        for op in block.operations:
            for inner in op.blocks:
                back_to_sets(inner)

    try:
        with library_patch(
            Var,
            nonreplaceable_vars_upstream=property(get, put),
            _reset_nonreplaceable_vars_upstream=reset,
            _set_nonreplaceable_vars_upstream=set_upstream,
        ), library_patch(PassPipelineManager, apply_pipeline=staticmethod(apply_pipeline)):
            yield
    finally:
        for prog in programs:
            for function in prog.functions.values():
                back_to_sets(function)


@contextlib.contextmanager
def propagation_after_changes_only() -> Iterator[None]:
    """Inside, ``Block._propagate_nonreplaceable_vars`` (every ``with block:`` exit, each pass's included)
    skips a block whose program has not been rewired since the block's last propagation.

    A var's nonreplaceable set is a function of the ops upstream of it: which ``constexpr_`` ops feed it
    through which edges. coremltools computes it when the var is made and recomputes every var of the
    block on each exit, also after a pass that changed nothing. Every edge change goes through
    ``Var.add_child_op``/``remove_child_op`` (setting an op's inputs, removing ops), and ops enter a
    block through ``Block._insert_op_before``; those bump a generation count here, and a block
    propagates only when the count moved since its last propagation (or it never had one). The
    propagation still runs over the whole block when it runs, so every set is what the stock
    propagation gives at the same point.
    """
    from coremltools.converters.mil.mil import Block
    from coremltools.converters.mil.mil.var import Var

    generation = [0]
    propagated: dict[int, int] = {}  # id(block) -> the generation it last propagated at
    blocks: list[Any] = []  # kept alive while their ids are keys

    def bumping(method: Callable[..., Any]) -> Callable[..., Any]:
        def bump(*args: Any, **kwargs: Any) -> Any:
            generation[0] += 1
            return method(*args, **kwargs)

        return bump

    original = Block._propagate_nonreplaceable_vars

    def propagate(self: Any) -> None:
        if propagated.get(id(self)) == generation[0]:
            return
        original(self)
        if id(self) not in propagated:
            blocks.append(self)
        propagated[id(self)] = generation[0]

    with library_patch(
        Var, add_child_op=bumping(Var.add_child_op), remove_child_op=bumping(Var.remove_child_op)
    ), library_patch(
        Block,
        _insert_op_before=bumping(Block._insert_op_before),
        remove_ops=bumping(Block.remove_ops),
        _propagate_nonreplaceable_vars=propagate,
    ):
        yield


@contextlib.contextmanager
def passes_without_program_dumps() -> Iterator[None]:
    """Inside, coremltools' ``reduce_transposes`` and ``fuse_layernorm_or_instancenorm`` passes do not
    render the whole program as text for their debug log lines unless coremltools' logger would emit
    them.

    Both format the program (``"Block before ...{}".format(block)``) before they call ``logger.debug``,
    whatever the level: ~1 s of b1 W8A8's ``ct.convert`` (py-spy), for text nobody sees. They only
    format the program for those lines, so while the logger is not enabled for DEBUG a block renders as
    a short placeholder during these two passes; nothing else changes (tested: the same program).
    """
    import logging

    from coremltools import _logger
    from coremltools.converters.mil.mil import Block, Function
    from coremltools.converters.mil.mil.passes.defs.optimize_normalization import (
        fuse_layernorm_or_instancenorm,
    )
    from coremltools.converters.mil.mil.passes.defs.optimize_repeat_ops import reduce_transposes

    def placeholder(self: Any) -> str:
        return f"<{type(self).__name__} {getattr(self, 'name', '')}: not rendered, DEBUG logging is off>"

    def without_dumps(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def apply(self: Any, prog: Any) -> Any:
            if _logger.isEnabledFor(logging.DEBUG):
                return original(self, prog)
            with library_patch(Block, __str__=placeholder), library_patch(Function, __str__=placeholder):
                return original(self, prog)

        return apply

    norms = fuse_layernorm_or_instancenorm
    with library_patch(reduce_transposes, apply=without_dumps(reduce_transposes.apply)), \
            library_patch(norms, apply=without_dumps(norms.apply)):
        yield
