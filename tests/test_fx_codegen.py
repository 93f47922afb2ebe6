"""Deferred fx code generation: modules stay callable and their code follows the graph."""

from __future__ import annotations

import contextlib
import copy
import operator
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from hrvit_mobile.exporters.fx_codegen import deferred_graph_codegen


class _AddMul(torch.nn.Module):
    # no annotations: with postponed evaluation fx records them as strings, which GraphModule's own
    # pickling cannot import (deferred or not)
    def forward(self, x):
        return (x + 1) * 2


def _relu_after_mul(gm: torch.fx.GraphModule) -> None:
    """Edit the graph in place: relu on the mul's output."""
    mul = next(n for n in gm.graph.nodes if n.target is operator.mul)
    with gm.graph.inserting_after(mul):
        relu = gm.graph.call_function(torch.relu, (mul,))
    mul.replace_all_uses_with(relu, delete_user_cb=lambda user: user is not relu)


def test_recompile_is_deferred_until_the_code_is_needed() -> None:
    x = torch.tensor([-3.0, 0.5])
    original_recompile = torch.fx.GraphModule.recompile
    with deferred_graph_codegen() as stale:
        gm = torch.fx.symbolic_trace(_AddMul())
        assert gm in stale  # built, not compiled
        assert torch.equal(gm(x), (x + 1) * 2)  # the first call compiles
        assert gm not in stale
        _relu_after_mul(gm)
        gm.recompile()
        assert gm in stale and "relu" in gm.code  # .code compiles the graph as it is now
        _relu_after_mul(gm)  # a second relu, not compiled yet
        gm.recompile()
        assert "relu_1" in str(gm)
        copied = pickle.loads(pickle.dumps(gm))  # pickling needs the code too
        assert torch.equal(copied(x), torch.relu((x + 1) * 2))
        late = torch.fx.symbolic_trace(_AddMul())
        assert late in stale
    # the class is restored and nothing stale outlives the block
    assert torch.fx.GraphModule.recompile is original_recompile
    assert "add" in late.code and torch.equal(late(x), (x + 1) * 2)
    assert torch.equal(gm(x), torch.relu((x + 1) * 2))


def test_the_returned_python_code_is_real_on_access() -> None:
    """What a deferred ``recompile`` returns reads as the ``PythonCode`` stock fx returns for the graph as
    it is when read: the same source and globals, and the source runs."""
    stock_gm = torch.fx.symbolic_trace(_AddMul())
    _relu_after_mul(stock_gm)
    stock = stock_gm.recompile()
    x = torch.tensor([-3.0, 0.5])
    with deferred_graph_codegen() as stale:
        gm = torch.fx.symbolic_trace(_AddMul())
        python_code = gm.recompile()
        _relu_after_mul(gm)  # after the recompile call, before the code is read
        assert gm in stale
        assert python_code.src == stock.src and "relu" in python_code.src
        assert gm not in stale
        assert python_code.globals.keys() == stock.globals.keys()
        namespace = dict(python_code.globals)
        exec(python_code.src, namespace)
        assert torch.equal(namespace["forward"](gm, x), torch.relu((x + 1) * 2))


@pytest.mark.parametrize("target", ["executorch", "tflite", "coreml"])
def test_exports_are_byte_identical_with_eager_codegen(target: str, tmp_path: Path) -> None:
    """Every exporter runs its build with deferred code generation; the artifact is unchanged."""
    from hrvit_mobile.exporters import ExportSpec, fx_codegen, get_backend, resolve
    from hrvit_mobile.exporters.testing import TinySegmenter

    model = TinySegmenter(num_classes=5).eval()

    def artifact_bytes(out: str) -> bytes:
        spec = ExportSpec(target=target, bits=32, img_size=(32, 32), num_classes=5, out_dir=tmp_path / out,
                          run_parity=False)
        path = get_backend(target).convert(model, resolve(spec)[0]).path
        # an .mlpackage's Manifest.json names its files by fresh UUIDs
        files = [path] if path.is_file() else sorted(
            f for f in path.rglob("*") if f.is_file() and f.name != "Manifest.json"
        )
        return b"".join(f.read_bytes() for f in files)

    deferred = artifact_bytes("deferred")
    original = fx_codegen.deferred_graph_codegen
    fx_codegen.deferred_graph_codegen = contextlib.nullcontext  # run_build imports it at call time
    try:
        eager = artifact_bytes("eager")
    finally:
        fx_codegen.deferred_graph_codegen = original
    assert len(deferred) > 1000 and deferred == eager


class _ConvWithBuffer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.register_buffer("offset", torch.ones(1, 4, 1, 1))

    def forward(self, x):
        return self.conv(x) + self.offset


def test_memoized_signature_lookups_follow_every_edit_of_the_signature() -> None:
    """Repeated lookups come from the cache; after appending a spec, assigning a field of a spec or of its
    argument, putting a new spec in place of one or replacing the list, every lookup equals what the
    stock property computes from the edited signature."""
    from torch.export.graph_signature import ExportGraphSignature, InputKind, InputSpec, TensorArgument

    from hrvit_mobile.exporters.fx_codegen import SIGNATURE_LOOKUPS, memoized_signature_lookups

    sig = torch.export.export(_ConvWithBuffer().eval(), (torch.randn(1, 3, 8, 8),)).graph_signature
    stock = {name: ExportGraphSignature.__dict__[name].fget for name in SIGNATURE_LOOKUPS}

    def lookups() -> list:
        return [getattr(sig, name) for name in SIGNATURE_LOOKUPS]

    def expected() -> list:
        return [stock[name](sig) for name in SIGNATURE_LOOKUPS]

    with memoized_signature_lookups() as counts:
        first = lookups()
        for _ in range(5):
            assert lookups() == first
        assert counts == {"hits": 15, "misses": 3}
        assert dict(first[0]) == {"p_conv_weight": "conv.weight", "p_conv_bias": "conv.bias"}
        assert dict(first[1]) == {"b_offset": "offset"}

        sig.input_specs.append(  # a new spec appended
            InputSpec(kind=InputKind.CONSTANT_TENSOR, arg=TensorArgument(name="c_scale"), target="scale")
        )
        assert lookups() == expected() and dict(sig.inputs_to_lifted_tensor_constants) == {"c_scale": "scale"}
        sig.input_specs[0].arg.name = "p_renamed"  # an argument renamed in place: same list and length
        assert lookups() == expected() and "p_renamed" in sig.inputs_to_parameters
        sig.input_specs[2].kind = InputKind.PARAMETER  # a spec's kind changed in place
        assert lookups() == expected() and not sig.inputs_to_buffers
        sig.input_specs[2] = InputSpec(
            kind=InputKind.BUFFER, arg=TensorArgument(name="b_new"), target="new", persistent=True
        )
        assert lookups() == expected() and dict(sig.inputs_to_buffers) == {"b_new": "new"}
        sig.input_specs = sig.input_specs[:1]  # the list replaced
        assert lookups() == expected() and dict(sig.inputs_to_parameters) == {"p_renamed": "conv.weight"}
        with memoized_signature_lookups():  # nested: a no-op
            assert lookups() == expected()
        hits = counts["hits"]
        lookups()
        assert counts["hits"] == hits + 3  # unedited since: cached again
    # restored on exit: the stock properties, and the dataclasses' own setattr
    assert {name: ExportGraphSignature.__dict__[name].fget for name in SIGNATURE_LOOKUPS} == stock
    assert all("__setattr__" not in cls.__dict__ for cls in (InputSpec, TensorArgument, ExportGraphSignature))


def _messy_graph_module() -> torch.fx.GraphModule:
    """A graph out of topological order, with users dicts in edit order rather than graph order,
    renamed-on-collision names, prioritized ops (scalar_tensor, operator.add) and kwargs inputs. Built
    the same way on every call, so two calls give graphs with the same history."""

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            a = torch.relu(x)
            b = torch.sigmoid(a) + y
            c = torch.tanh(a)
            return torch.cat([b, c], dim=1) * 2

    gm = torch.fx.symbolic_trace(Net())
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    # a node that reads `cat` placed before it, and a chain of edits that reorders users dicts
    with graph.inserting_before(nodes["relu"]):
        early = graph.call_function(torch.add, (nodes["cat"], nodes["cat"]), {"alpha": 1})
        scalar = graph.call_function(torch.ops.aten.scalar_tensor.default, (3.0,))
        plus = graph.call_function(operator.add, (1, 2))
        # x's users in edit order: relu, first, relu_1; sorted, `first` (which waits for tanh) is last
        first = graph.call_function(torch.sub, (nodes["tanh"], nodes["x"]))
        relu = graph.call_function(torch.relu, (nodes["x"],))  # named relu_1 (collision)
    nodes["tanh"].replace_input_with(nodes["relu"], relu)
    nodes["mul"].args = (nodes["mul"].args[0], early)
    with graph.inserting_after(nodes["y"]):
        late = graph.call_function(torch.mul, (scalar, plus))
    nodes["sigmoid"].kwargs = {}
    nodes["add"].args = (nodes["sigmoid"], late)
    nodes["output"].args = ((nodes["mul"], first),)
    gm.recompile()
    return gm


def _fx_state(gm: torch.fx.GraphModule) -> dict[str, Any]:
    graph = gm.graph
    ns = graph._graph_namespace
    return {
        "nodes": [
            (n.name, n.op, str(n.target), str(n.args), str(n.kwargs), n.type, n._sort_key, n._erased,
             [u.name for u in n.users], [i.name for i in n._input_nodes], list(n.meta.items()))
            for n in graph.nodes
        ],
        "namespace": (sorted(ns._used_names), list(ns._base_count.items()),
                      [(getattr(k, "name", k), v) for k, v in ns._obj_to_name.items()]),
        "table": [(str(k), [n.name for n in v]) for k, v in graph._find_nodes_lookup_table.table.items()],
        "graph": (graph._len, graph._tracer_cls, graph._tracer_extras, graph._co_fields,
                  type(graph._codegen)),
        "code": gm.code,
    }  # fmt: skip


def test_legalize_moving_nodes_leaves_the_state_a_copy_would() -> None:
    """Order, names, users, inputs, sort keys, metadata, namespace, find-nodes table and code: the same
    as torch's legalize_graph gives, and nodes made afterwards get the same names."""
    from torch.fx.passes.tools_common import legalize_graph

    from hrvit_mobile.exporters.fx_codegen import legalize_graph_moving_nodes

    stock, moved = _messy_graph_module(), _messy_graph_module()
    assert _fx_state(stock) == _fx_state(moved)
    before = [n.name for n in moved.graph.nodes]
    legalize_graph(stock)
    kept = list(moved.graph.nodes)
    metas = {n: n.meta for n in kept}
    legalize_graph_moving_nodes(moved)
    assert _fx_state(moved) == _fx_state(stock)
    assert [n.name for n in moved.graph.nodes] != before  # it did reorder
    x_users = [u.name for u in next(n for n in moved.graph.nodes if n.name == "x").users]
    assert x_users == ["relu", "relu_1", "sub"]  # rebuilt in the new order (edit order: relu, sub, relu_1)
    assert set(moved.graph.nodes) == set(kept)  # the same node objects, moved
    assert not any(n.meta is metas[n] for n in kept)  # each with a copy of its meta, as a copy has
    for gm in (stock, moved):
        relu = next(n for n in gm.graph.nodes if n.name == "relu")
        with gm.graph.inserting_after(relu):
            gm.graph.call_function(torch.relu, (relu,))
        gm.recompile()
    assert _fx_state(moved) == _fx_state(stock)
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(moved(x, y), stock(x, y))


def test_legalize_moving_nodes_falls_back_where_a_copy_differs() -> None:
    """A custom node repr (which a copy drops) or a cycle: torch's function runs (new nodes; its error)."""
    from hrvit_mobile.exporters.fx_codegen import legalize_graph_moving_nodes

    gm = _messy_graph_module()
    kept = list(gm.graph.nodes)
    kept[1]._repr_fn = lambda node: "custom"
    legalize_graph_moving_nodes(gm)
    assert not set(gm.graph.nodes) & set(kept)  # copied, as the stock function does
    gm = _messy_graph_module()
    relu = next(n for n in gm.graph.nodes if n.name == "relu")
    relu.args = (next(n for n in gm.graph.nodes if n.name == "add"),)  # relu -> sigmoid -> add -> relu
    with pytest.raises(RuntimeError, match="cycles"):
        legalize_graph_moving_nodes(gm)


def test_modules_stale_at_exit_get_their_code_on_first_use() -> None:
    """A module nobody compiled inside the block stays lazy after it: no code generated at exit, the
    code on the first call, ``.code``, ``str`` or pickling, and then GraphModule's own methods."""
    x = torch.tensor([-3.0, 0.5])
    compiled: list[int] = []
    stock = torch.fx.GraphModule.recompile

    def counting(self: torch.fx.GraphModule) -> Any:
        compiled.append(id(self))
        return stock(self)

    torch.fx.GraphModule.recompile = counting
    try:
        with deferred_graph_codegen() as stale:
            called, read, printed, pickled = (torch.fx.symbolic_trace(_AddMul()) for _ in range(4))
            twin = copy.deepcopy(printed)  # a deep copy shares its original's class
            _relu_after_mul(twin)
            twin.recompile()
            assert {called, read, printed, pickled, twin} <= set(stale)
        assert compiled == []  # nothing generated at exit
        assert torch.equal(called(x), (x + 1) * 2)
        assert "add" in read.code
        assert "relu" not in str(printed) and "relu" in twin.code
        assert torch.equal(pickle.loads(pickle.dumps(pickled))(x), (x + 1) * 2)
        assert torch.equal(twin(x), torch.relu((x + 1) * 2)) and torch.equal(printed(x), (x + 1) * 2)
        # each once; pickling twice, as GraphModule.__reduce__ itself recompiles (the unpickled copy
        # compiles in its own __init__)
        assert [compiled.count(id(gm)) for gm in (called, read, printed, pickled, twin)] == [1, 1, 1, 2, 1]
        for gm in (called, read, printed, pickled, twin):  # the hooks are gone: GraphModule's own again
            assert "code" not in vars(type(gm)) and "__reduce__" not in vars(type(gm))
    finally:
        torch.fx.GraphModule.recompile = stock
