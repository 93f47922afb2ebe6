"""Where an ExecuTorch .pte spends its time, per XNNPACK operator kind (ETDump + devtools Inspector).

    python3 benchmarks/pte_ops.py exports/hrvit_b1_512x512_executorch_fp32.pte [--runs 5] [--json out.json]

Runs the program in ExecuTorch's runtime with ETDump on (``--threads``, default 2), reads the XNNPACK
operator events the delegate records, and sums each event's median time by operator kind (the event
name without its ``#N`` instance number, e.g. ``Convolution (NHWC, F32) DWConv``). The kinds' sum is the
time inside XNNPACK operators; the delegate call's own time is printed beside it. ``--json`` also holds
the 15 slowest operator instances.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


def profile(pte: Path, runs: int, threads: int) -> dict:
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
    module = portable_lib._load_for_executorch(str(pte), enable_etdump=True, debug_buffer_size=0)
    sidecar = pte.with_name(pte.name + ".json")
    meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    height, width = meta.get("img_size", (512, 512))
    x = torch.randn(1, 3, height, width)
    module.forward([x])  # warm-up; recorded too, so figures are medians over the runs
    for _ in range(runs):
        module.forward([x])
    with tempfile.TemporaryDirectory() as tmp:
        etdump = Path(tmp) / "run.etdp"
        module.write_etdump_result_to_file(str(etdump))
        inspector = Inspector(etdump_path=str(etdump))
    by_kind: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    instances: list[tuple[float, str]] = []
    delegate_ms = 0.0
    for block in inspector.event_blocks:
        for event in block.events:
            if event.perf_data is None:
                continue
            # median, not mean: the first (warm-up) run is in every event's samples
            ms = float(event.perf_data.p50)
            if event.name == "DELEGATE_CALL":
                delegate_ms += ms
            elif event.name not in ("Method::execute", "Program::load_method", "Method::init"):
                kind = re.sub(r"\s*#\d+$", "", event.name)
                by_kind[kind] += ms
                count[kind] += 1
                instances.append((ms, event.name))
    kinds = sorted(by_kind.items(), key=lambda kv: -kv[1])
    return {
        "artifact": str(pte),
        "runs": runs,
        "threads": threads,
        "delegate_call_ms": delegate_ms,
        "operators_ms": sum(by_kind.values()),
        "by_kind": [{"kind": k, "ms": ms, "instances": count[k]} for k, ms in kinds],
        "top_instances": [{"event": n, "ms": ms} for ms, n in sorted(instances, reverse=True)[:15]],
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['artifact']}: delegate call {result['delegate_call_ms']:.1f} ms (median of "
        f"{result['runs']} runs + warm-up, {result['threads']} threads), XNNPACK operators "
        f"{result['operators_ms']:.1f} ms",
        "",
        "| operator kind | instances | ms | share |",
        "| --- | --- | --- | --- |",
    ]
    total = result["operators_ms"] or 1.0
    for row in result["by_kind"]:
        share = 100 * row["ms"] / total
        lines.append(f"| {row['kind']} | {row['instances']} | {row['ms']:.2f} | {share:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pte", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not args.pte.is_file() or args.pte.suffix != ".pte":
        print(f"error: {args.pte} is not a .pte file", file=sys.stderr)
        return 2
    result = profile(args.pte, args.runs, args.threads)
    print(markdown(result), end="")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
