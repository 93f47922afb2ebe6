"""Layout probe: the same HRViT blocks in the token and the channels-first layout, per runtime.

Four consecutive deploy-form blocks of one b1 branch (demo checkpoint weights) at that branch's
resolution for a 512x512 input, lowered in both layouts and timed interleaved in one process, so
load on the machine hits both alike. It is how ``hrvit_mobile.deploy.layout.EXPORT_LAYOUT`` was
chosen:

    python3 benchmarks/layout.py --branch 0 --runtimes executorch tflite

Prints lowering time, op count (LiteRT), max |diff| against the eager token layout, and the median
and minimum latency of each layout, plus their ratio. ``--copies`` instead counts, for the whole b1
deploy form at 512x512 in each layout, the nodes and the elements that transposes and layout copies
move after XNNPACK's own preprocessing passes (what the delegate will run):

    python3 benchmarks/layout.py --copies
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from hrvit_mobile.demo import load_demo_model
from hrvit_mobile.deploy.channels_first import ChannelsFirstAttentionBlock
from hrvit_mobile.deploy.layout import to_channels_first, to_channels_last
from hrvit_mobile.deploy.modules import DeployAttentionBlock


class _Blocks(nn.Module):
    """``repeat`` applications of one block on a (B, C, H, W) map, in the block's own layout."""

    def __init__(self, block: nn.Module, repeat: int, tokens: bool) -> None:
        super().__init__()
        self.block, self.repeat, self.tokens = block, repeat, tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = to_channels_last(x) if self.tokens else x
        for _ in range(self.repeat):
            y = self.block(y)
        return to_channels_first(y) if self.tokens else y


def _executorch(model: nn.Module, x: torch.Tensor):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    ep = torch.export.export(model, (x,), strict=True)
    buffer = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    program = Runtime.get().load_program(buffer)  # kept alive: the method borrows from it
    method = program.load_method("forward")

    def run() -> np.ndarray:
        return method.execute([x])[0].numpy()

    run.program = program  # type: ignore[attr-defined]
    return run, None


def _tflite(model: nn.Module, x: torch.Tensor):
    import tempfile

    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/m.tflite"
        litert_torch.convert(model.eval(), (x,)).export(path)
        interpreter = Interpreter(model_path=path, num_threads=2)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], x.numpy())

    def run() -> np.ndarray:
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return run, len(interpreter._get_ops_details())


RUNTIMES = {"executorch": _executorch, "tflite": _tflite}
_COPY_OPS = ("permute_copy", "_to_copy", "slice_copy", "cat")


def xnnpack_copy_counts(model: nn.Module, x: torch.Tensor) -> dict:
    """Nodes, and nodes/elements per copying op, of ``model``'s graph after XNNPACK's preprocessing."""
    import collections

    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.exir import EdgeCompileConfig, to_edge

    ep = torch.export.export(model, (x,))
    # XNNPACK's layout pass inserts _to_copy nodes, which the dim-order verifier would reject
    edge = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False))
    graph = XNNPACKPassManager(edge.exported_program()).transform().graph
    nodes, elements = collections.Counter(), collections.Counter()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target).split(": schema")[0].removeprefix("<EdgeOpOverload: ").rstrip(">")
        nodes["all"] += 1
        op = next((o for o in _COPY_OPS if f"aten.{o}." in name), None)
        if op:
            nodes[op] += 1
            elements[op] += node.meta["val"].numel()
    copies = {o: {"nodes": nodes[o], "elements": elements[o]} for o in _COPY_OPS}
    return {"nodes": nodes["all"], "copies": copies}


def _copies_main(as_json: bool) -> int:
    import copy

    import hrvit_mobile
    from hrvit_mobile.deploy.channels_first import use_channels_first

    tokens = hrvit_mobile.deploy(load_demo_model((512, 512)), img_size=(512, 512))
    switched = copy.deepcopy(tokens)
    use_channels_first(switched)
    x = torch.zeros(1, 3, 512, 512)
    rows = {"tokens": xnnpack_copy_counts(tokens, x), "channels_first": xnnpack_copy_counts(switched, x)}
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    for layout, row in rows.items():
        moved = sum(c["elements"] for o, c in row["copies"].items() if o in ("permute_copy", "_to_copy"))
        print(f"{layout}: {row['nodes']} nodes; transposes + layout copies move {moved / 1e6:.1f} M elements")
        for op, c in row["copies"].items():
            print(f"   {op}: {c['nodes']} nodes, {c['elements'] / 1e6:.2f} M elements")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branch", type=int, default=0, help="b1 branch: 0 (128x128, 32 ch) .. 3")
    parser.add_argument("--repeat", type=int, default=4, help="blocks chained")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--runtimes", nargs="+", choices=sorted(RUNTIMES), default=["executorch"])
    parser.add_argument("--copies", action="store_true",
                        help="count the copies XNNPACK will run for the whole b1 (no timing)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.copies:
        return _copies_main(args.json)
    torch.set_num_threads(2)
    model = load_demo_model((512, 512)).eval()
    stages = [f for f in model.backbone.features if hasattr(f, "branches")]
    stage = [s for s in stages if len(s.branches) > args.branch][-1]
    size = 128 >> args.branch
    tokens = DeployAttentionBlock(stage.branches[args.branch][0], size, size).eval()
    layouts = {"tokens": _Blocks(tokens, args.repeat, True),
               "channels_first": _Blocks(ChannelsFirstAttentionBlock.from_tokens(tokens), args.repeat, False)}
    x = torch.randn(1, tokens.dim, size, size, generator=torch.Generator().manual_seed(0))
    reference = layouts["tokens"](x).numpy()
    results = []
    for runtime in args.runtimes:
        runners = {}
        for layout, module in layouts.items():
            t0 = time.perf_counter()
            run, ops = RUNTIMES[runtime](module, x)
            seconds = time.perf_counter() - t0
            runners[layout] = run
            results.append({"runtime": runtime, "layout": layout, "lower_seconds": round(seconds, 2),
                            "ops": ops, "max_abs_diff": float(np.abs(run() - reference).max())})
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.runs):  # interleaved: drift on a shared machine hits both layouts
            for layout, run in runners.items():
                t0 = time.perf_counter()
                run()
                times[layout].append(time.perf_counter() - t0)
        for row in results[-len(runners):]:
            t = sorted(times[row["layout"]])
            row["median_ms"], row["min_ms"] = 1e3 * t[len(t) // 2], 1e3 * t[0]
        first, second = results[-2:]
        second["ratio_vs_tokens"] = second["median_ms"] / first["median_ms"]
    if args.json:
        doc = {"branch": args.branch, "size": size, "channels": tokens.dim, "rows": results}
        print(json.dumps(doc, indent=1))
        return 0
    print(f"b1 branch {args.branch}: {args.repeat} blocks, {tokens.dim} channels at {size}x{size}")
    for r in results:
        ratio = f"  ({r['ratio_vs_tokens']:.2f}x tokens)" if "ratio_vs_tokens" in r else ""
        ops = f", {r['ops']} ops" if r["ops"] else ""
        print(f"  {r['runtime']:>10} {r['layout']:>14}: lower {r['lower_seconds']:.1f} s{ops}, "
              f"max|d| {r['max_abs_diff']:.1e}, median {r['median_ms']:.2f} ms, "
              f"min {r['min_ms']:.2f} ms{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
