"""Where an int8 artifact spends its time next to its fp32 twin, per op type, as JSON.

    python3 benchmarks/int8_profile.py A_int8.tflite A_fp32.tflite [--runs 5] [--json out.json]
    python3 benchmarks/int8_profile.py A_int8.pte A_fp32.pte
    python3 benchmarks/int8_profile.py --ratios A_fp32.tflite A_int8.tflite B_int8.tflite [--rounds 5]

LiteRT (``.tflite``): the interpreter has no per-op profiler in Python, so every operator of the model
is cut out into a model of its own (same tensors, shapes, quantization and constants; its other
inputs fed as they come) and timed in the LiteRT interpreter with its default XNNPACK delegate on,
``--threads`` threads. Each row is one (op type, input type, where it ran) kind: ``XNNPACK`` when the
delegate took the single-op model, ``builtin`` when it stayed in the interpreter's own kernels. The
whole model is timed in the same process; ``accounted`` is the ops' sum over it (partition switches
and cache effects make up the rest). Which ops of the whole model the delegate took is read from the
whole model's delegate partitions.

ExecuTorch (``.pte``): ETDump, through ``pte_ops.py``: XNNPACK operator events per kind.

``--ratios``: whole-model latency only, every artifact loaded once in this process and timed in
``--rounds`` interleaved rounds (order reversed on odd rounds); each artifact's median over rounds of
its best of ``--runs`` calls, and its ratio to the first artifact (e.g. int8 recipes against fp32).

LiteRT times are the best of ``--runs`` calls (ExecuTorch's: ETDump medians) on a shared machine: read
the shares and ratios, not the ms.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def _best_ms(fn, runs: int) -> float:
    """The fastest of ``runs`` calls after one untimed: on a shared host other load only adds time."""
    fn()
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


def _feed(interp) -> None:
    rng = np.random.default_rng(0)
    for d in interp.get_input_details():
        if np.issubdtype(d["dtype"], np.integer):
            info = np.iinfo(d["dtype"])
            value = rng.integers(info.min, info.max, d["shape"], dtype=d["dtype"], endpoint=True)
        else:
            value = rng.standard_normal(d["shape"]).astype(d["dtype"])
        interp.set_tensor(d["index"], value)


def _interpreter(content: bytes, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content, num_threads=threads)
    interp.allocate_tensors()
    return interp


def delegated_nodes(interp) -> set[int]:
    """Indices of the original nodes that sit inside one of the delegate's partitions."""
    ops = interp._get_ops_details()
    producer = {t: o["index"] for o in ops if o["op_name"] != "DELEGATE" for t in o["outputs"]}
    inside: set[int] = set()
    for part in (o for o in ops if o["op_name"] == "DELEGATE"):
        boundary, stack, seen = set(part["inputs"]), list(part["outputs"]), set()
        while stack:
            t = stack.pop()
            if t in seen or t in boundary or t not in producer:
                continue
            seen.add(t)
            inside.add(producer[t])
            stack.extend(ops[producer[t]]["inputs"])
    return inside


class SingleOps:
    """The operators of a .tflite, each cut out into a model of its own."""

    def __init__(self, raw: bytes) -> None:
        from ai_edge_litert import schema_py_generated as fb

        self.fb, self.raw = fb, raw
        self.model = fb.ModelT.InitFromPackedBuf(bytearray(raw), 0)
        self.graph = self.model.subgraphs[0]

    def __len__(self) -> int:
        return len(self.graph.operators)

    def _data(self, buffer_index: int):
        buf = self.model.buffers[buffer_index]
        if buf.offset and buf.offset > 1:  # stored after the flatbuffer (large models)
            return np.frombuffer(self.raw, np.uint8, count=buf.size, offset=buf.offset)
        return buf.data

    def op_name(self, i: int) -> str:
        code = self.model.operatorCodes[self.graph.operators[i].opcodeIndex]
        value = max(code.builtinCode, code.deprecatedBuiltinCode)
        names = {v: k for k, v in vars(self.fb.BuiltinOperator).items() if not k.startswith("_")}
        return names.get(value, f"op{value}")

    def model_of(self, i: int) -> bytes:
        import flatbuffers

        fb = self.fb
        op = copy.copy(self.graph.operators[i])
        produced = set(op.outputs)
        tensors, buffers, remap = [], [fb.BufferT()], {}
        graph_inputs = []

        def add(t: int) -> int:
            if t < 0:
                return t
            if t not in remap:
                tensor = copy.copy(self.graph.tensors[t])
                data = self._data(tensor.buffer)
                if data is not None and len(data):
                    const = fb.BufferT()
                    const.data = np.asarray(data, np.uint8)
                    buffers.append(const)
                    tensor.buffer = len(buffers) - 1
                else:
                    tensor.buffer = 0
                    if t not in produced:
                        graph_inputs.append(len(tensors))
                remap[t] = len(tensors)
                tensors.append(tensor)
            return remap[t]

        op.outputs = [add(t) for t in self.graph.operators[i].outputs]
        op.inputs = [add(t) for t in self.graph.operators[i].inputs]
        op.intermediates = None
        graph = fb.SubGraphT()
        graph.tensors, graph.operators = tensors, [op]
        graph.inputs, graph.outputs = graph_inputs, list(op.outputs)
        model = fb.ModelT()
        model.version, model.operatorCodes = self.model.version, self.model.operatorCodes
        model.subgraphs, model.buffers, model.description = [graph], buffers, b"single op"
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def profile_tflite(path: Path, runs: int, threads: int) -> dict:
    raw = path.read_bytes()
    whole = _interpreter(raw, threads)
    _feed(whole)
    whole_ms = _best_ms(whole.invoke, runs)
    in_partition = delegated_nodes(whole)
    details = {t["index"]: t for t in whole.get_tensor_details()}
    ops = SingleOps(raw)
    kinds: dict[tuple[str, str, str], dict] = defaultdict(lambda: {"instances": 0, "ms": 0.0})
    slowest = []
    differs = 0
    for i in range(len(ops)):
        node = whole._get_op_details(i)
        first = next((t for t in node["inputs"] if t >= 0), None)
        dtype = details[first]["dtype"].__name__ if first is not None else "-"
        single = _interpreter(ops.model_of(i), threads)
        _feed(single)
        ms = _best_ms(single.invoke, runs)
        where = "XNNPACK" if i in in_partition else "builtin"
        # a single op the delegate takes alone but not inside the whole model (or the other way round)
        differs += (len(single._get_ops_details()) > 1) != (i in in_partition)
        kind = kinds[(node["op_name"], dtype, where)]
        kind["instances"] += 1
        kind["ms"] += ms
        slowest.append((ms, f"{node['op_name']} #{i} ({dtype}, {where})"))
        del single
    whole_ms = min(whole_ms, _best_ms(whole.invoke, runs))  # again after the ops: the quieter of the two
    ops_ms = sum(k["ms"] for k in kinds.values())
    rows = [
        {"op": op, "input": dtype, "runs_in": where, **k, "share": k["ms"] / ops_ms}
        for (op, dtype, where), k in sorted(kinds.items(), key=lambda kv: -kv[1]["ms"])
    ]
    builtin = [r for r in rows if r["runs_in"] == "builtin"]
    return {
        "artifact": str(path),
        "runtime": "LiteRT interpreter (default XNNPACK delegate)",
        "runs": runs,
        "threads": threads,
        "whole_model_ms": whole_ms,
        "ops_ms": ops_ms,
        "accounted": ops_ms / whole_ms,
        "delegate_partitions": sum(o["op_name"] == "DELEGATE" for o in whole._get_ops_details()),
        "ops": len(ops),
        "builtin_ops": sum(r["instances"] for r in builtin),
        "builtin_share": sum(r["ms"] for r in builtin) / ops_ms,
        "placed_differently_alone": differs,
        "by_kind": rows,
        "top_instances": [{"op": n, "ms": ms} for ms, n in sorted(slowest, reverse=True)[:15]],
    }


def profile_pte(path: Path, runs: int, threads: int) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from pte_ops import profile

    result = profile(path, runs, threads)
    total = result["operators_ms"] or 1.0
    for row in result["by_kind"]:
        row["share"] = row["ms"] / total
    result["runtime"] = "ExecuTorch runtime (XNNPACK delegate), ETDump"
    return result


def profile_artifact(path: Path, runs: int, threads: int) -> dict:
    return (profile_pte if path.suffix == ".pte" else profile_tflite)(path, runs, threads)


def _invoker(path: Path, threads: int):
    """A no-argument call running ``path`` once on a fixed input, in its runtime."""
    if path.suffix == ".pte":
        import torch
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)
        module = portable_lib._load_for_executorch(str(path))
        sidecar = path.with_name(path.name + ".json")
        height, width = json.loads(sidecar.read_text())["img_size"] if sidecar.exists() else (512, 512)
        x = torch.randn(1, 3, height, width)
        return lambda: module.forward([x])
    interp = _interpreter(path.read_bytes(), threads)
    _feed(interp)
    return interp.invoke


def ratios(paths: list[Path], rounds: int, runs: int, threads: int) -> dict:
    """Whole-model latency of each artifact, interleaved over rounds in one process; ratios to the first."""
    calls = [_invoker(p, threads) for p in paths]
    per_round: list[list[float]] = [[] for _ in paths]
    for r in range(rounds):
        order = range(len(paths)) if r % 2 == 0 else reversed(range(len(paths)))
        for i in order:
            calls[i]()
            best = float("inf")
            for _ in range(runs):
                t0 = time.perf_counter()
                calls[i]()
                best = min(best, (time.perf_counter() - t0) * 1e3)
            per_round[i].append(best)
    medians = [statistics.median(v) for v in per_round]
    return {
        "rounds": rounds, "runs": runs, "threads": threads,
        "artifacts": [
            {"artifact": str(p), "median_ms": m, "rounds_ms": v, "vs_first": m / medians[0],
             "round_ratios": [a / b for a, b in zip(v, per_round[0], strict=True)]}
            for p, m, v in zip(paths, medians, per_round, strict=True)
        ],
    }


def markdown(result: dict) -> str:
    if "whole_model_ms" not in result:
        sys.path.insert(0, str(Path(__file__).parent))
        from pte_ops import markdown as pte_markdown

        return pte_markdown(result)
    lines = [
        f"{result['artifact']} ({result['runtime']}, {result['threads']} threads): whole model "
        f"{result['whole_model_ms']:.1f} ms, single ops sum {result['ops_ms']:.1f} ms "
        f"({100 * result['accounted']:.0f} % accounted); "
        f"{result['delegate_partitions']} delegate partitions; "
        f"{result['builtin_ops']} of {result['ops']} ops outside XNNPACK take "
        f"{100 * result['builtin_share']:.1f} % of the ops' time",
        "",
        "| op | input | runs in | instances | ms | share |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["by_kind"]:
        lines.append(f"| {r['op']} | {r['input']} | {r['runs_in']} | {r['instances']} | {r['ms']:.2f} | "
                     f"{100 * r['share']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path, nargs="+", help=".tflite or .pte files (int8, its fp32 twin)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--ratios", action="store_true", help="whole-model ratios to the first artifact only")
    parser.add_argument("--rounds", type=int, default=5, help="--ratios: interleaved rounds")
    args = parser.parse_args(argv)
    for path in args.artifacts:
        if not path.is_file() or path.suffix not in (".tflite", ".pte"):
            print(f"error: {path} is not a .tflite or .pte file", file=sys.stderr)
            return 2
    if args.ratios:
        result = ratios(args.artifacts, args.rounds, args.runs, args.threads)
        for a in result["artifacts"]:
            spread = f"{min(a['round_ratios']):.2f}-{max(a['round_ratios']):.2f}"
            print(f"{a['artifact']}: {a['median_ms']:.1f} ms, x{a['vs_first']:.3f} of the first "
                  f"(per round {spread})")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return 0
    results = []
    for path in args.artifacts:
        results.append(profile_artifact(path, args.runs, args.threads))
        print(markdown(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
