"""Speed harness: HRViT-b1 training form vs deploy form vs SegFormer-B1, each in the runtimes phones use.

    python3 benchmarks/speed.py --out runs/speed                       # everything (about an hour here)
    python3 benchmarks/speed.py --out runs/speed --runtimes eager executorch-fp32
    python3 benchmarks/speed.py --cases deploy --runtimes executorch-fp32 executorch-int8 --rounds 5

Every (case, runtime) pair is exported in its own process; then latency is timed in ``--rounds``
interleaved rounds: each round times every pair once, each timing in a fresh process of its own, in the
pairs' order on even rounds and in reverse order on odd ones, so a host that drifts over the run
weighs on every pair alike. A pair's latency is the median over rounds of its per-round medians, with
the spread over rounds (min, max, quartiles); the goals are judged on those medians. Cases:

- ``train``: HRViT-b1 training form exported as it is (the official code's graph, same numerics);
- ``deploy``: the deploy form (:func:`hrvit_mobile.deploy`);
- ``segformer``: SegFormer-B1 (MiT-b1 from ``transformers``, 150 classes, random weights), the peer a
  user would pick instead.

Runtimes: ``eager`` (PyTorch), ``executorch-fp32``/``executorch-int8`` (XNNPACK), ``tflite-fp32``/
``tflite-int8`` (LiteRT Interpreter). Per pair: export wall time (and its steps), latency median over
rounds and its spread, peak RSS of the timing processes, artifact size, MACs (torch FLOP counter on the
eager module) and the achieved GFLOP/s as a fraction of an fp32 GEMM peak measured in the same run.
Writes ``speed.json``, ``speed.md`` and (with matplotlib) ``speed.png`` into ``--out``, with the goal
ratios (int8 / fp32 per runtime among them), the runtime of each row, the CPU architecture and model,
and the run's command, date, host and library versions; ``python3 benchmarks/docs_pages.py --speed
OUT/speed.json`` turns it into the docs' page.
Weights are random/untrained (speed does not depend on them); batch 1; ``--threads`` for every runtime.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from docs_pages import cpu_model, run_record

CASES = ("train", "deploy", "segformer")
RUNTIMES = ("eager", "executorch-fp32", "executorch-int8", "tflite-fp32", "tflite-int8")


def _export_of(runtime: str) -> tuple[str, int, str]:
    """``TARGET-VARIANT`` (e.g. ``tflite-int8``) -> (target, bits, activations), from the backend registry."""
    from hrvit_mobile.exporters.registry import get_backend

    target, variant = runtime.rsplit("-", 1)
    found = get_backend(target).variant_named(variant)
    return target, found.bits, found.activations


# --------------------------------------------------------------------------------------------------
# worker side: one (case, runtime) pair


class _SegformerLogits:
    """Built lazily so the module imports without transformers."""

    @staticmethod
    def build(num_classes: int):
        import torch
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        # MiT-b1: the configuration of nvidia/mit-b1 (hidden sizes, depths, heads, reduction ratios)
        config = SegformerConfig(
            num_labels=num_classes,
            hidden_sizes=[64, 128, 320, 512],
            depths=[2, 2, 2, 2],
            num_attention_heads=[1, 2, 5, 8],
            sr_ratios=[8, 4, 2, 1],
            decoder_hidden_size=256,
        )
        torch.manual_seed(0)
        segformer = SegformerForSemanticSegmentation(config).eval()

        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.segformer = segformer

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.segformer(pixel_values=x).logits

        return Logits().eval()


def build_case(case: str, img_size: tuple[int, int], num_classes: int):
    import hrvit_mobile
    from hrvit_mobile.weights import load_recipe_weights

    if case == "segformer":
        return _SegformerLogits.build(num_classes)
    model = load_recipe_weights(
        hrvit_mobile.create_model("hrvit_b1", num_classes=num_classes, img_size=img_size)
    )
    model = model.eval()
    return hrvit_mobile.deploy(model, img_size=img_size) if case == "deploy" else model


def _eager_latency(model, img_size: tuple[int, int], runs: int, warmup: int) -> dict:
    import torch

    from hrvit_mobile.profile import time_calls

    x = torch.randn(1, 3, *img_size)
    with torch.no_grad():
        return time_calls(lambda: model(x), runs, warmup)


def run_worker(case: str, runtime: str, args: argparse.Namespace) -> dict:
    """Export one pair (nothing to export for ``eager``): the figures that do not change between rounds."""
    import torch

    from hrvit_mobile.profile import count_macs, count_params
    from hrvit_mobile.sizes import parse_img_size

    torch.set_num_threads(args.threads)
    img_size = parse_img_size(args.img_size)
    previous = Path(args.out) / "cases" / f"{case}_{runtime}.json"
    if args.reuse and runtime != "eager" and previous.exists():
        # latency again on an existing artifact (e.g. on a quieter machine); export figures carried over
        row = json.loads(previous.read_text())
        if row.get("artifact") and Path(row["artifact"]).exists():
            row["export_from_previous_run"] = True
            return row
    model = build_case(case, img_size, args.num_classes)
    row: dict = {
        "case": case,
        "runtime": runtime,
        "params": count_params(model),
        "macs": count_macs(model, img_size),
        "export_from_previous_run": False,
    }
    if runtime == "eager":
        return row
    from hrvit_mobile.exporters import ExportSpec, export

    target, bits, activations = _export_of(runtime)
    spec = ExportSpec(
        target=target,
        bits=bits,
        activations=activations,
        img_size=img_size,
        num_classes=args.num_classes,
        out_dir=Path(args.out) / "artifacts",
        model_name=f"speed_{case}",
        parity_samples=1,
        calib_samples=args.calib_samples,
    )
    report = export(model, spec)
    art = report.artifact
    row.update(
        export_seconds=art.export_seconds,
        step_seconds=art.details.get("step_seconds", {}),
        export_peak_rss_bytes=art.peak_rss_bytes,
        size_bytes=art.size_bytes,
        delegation={
            k: art.details.get(k)
            for k in ("delegate_calls", "non_delegated_compute_nodes")
            if k in art.details
        },
        parity=None
        if report.parity is None
        else {
            "passed": report.parity.passed,
            "cosine": report.parity.cosine,
            "max_abs_err": report.parity.max_abs_err,
            "argmax_agreement": report.parity.argmax_agreement,
        },
        artifact=str(art.path),
    )
    return row


def time_worker(case: str, runtime: str, args: argparse.Namespace) -> dict:
    """One round's latency of one pair, in a process that does nothing else."""
    import torch

    from hrvit_mobile.sizes import parse_img_size

    torch.set_num_threads(args.threads)
    if runtime == "eager":
        img_size = parse_img_size(args.img_size)
        model = build_case(case, img_size, args.num_classes)
        latency = _eager_latency(model, img_size, args.runs, args.warmup)
        runtime_name = f"PyTorch eager {torch.__version__}"
    else:
        from executorch.extension.pybindings import portable_lib

        from hrvit_mobile.exporters import open_artifact

        row = json.loads((Path(args.out) / "cases" / f"{case}_{runtime}.json").read_text())
        portable_lib._unsafe_reset_threadpool(args.threads)  # XNNPACK's pool defaults to all cores
        runner = open_artifact(row["artifact"], threads=args.threads)
        latency = runner.latency(runs=args.runs, warmup=args.warmup)
        runtime_name = runner.runtime
    return {
        "latency": latency,
        "latency_runtime": runtime_name,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def over_rounds(values: list[float]) -> dict:
    """Median, min, max and quartiles of per-round figures."""
    import numpy as np

    q1, med, q3 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    return {"median_ms": med, "min_ms": min(values), "max_ms": max(values), "q1_ms": q1, "q3_ms": q3}


def gemm_peak_gflops(threads: int, n: int = 1024, runs: int = 20) -> float:
    """fp32 GEMM throughput of this host (torch.mm, ``threads`` threads): the best of ``runs``."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# --------------------------------------------------------------------------------------------------
# parent side


def _worker_cmd(mode: str, case: str, runtime: str, args: argparse.Namespace, out: Path) -> list[str]:
    return [
        sys.executable,
        __file__,
        mode,
        case,
        runtime,
        "--out",
        str(out),
        "--img-size",
        args.img_size,
        "--threads",
        str(args.threads),
        "--runs",
        str(args.runs),
        "--warmup",
        str(args.warmup),
        "--num-classes",
        str(args.num_classes),
        "--calib-samples",
        str(args.calib_samples),
        *(["--reuse"] if args.reuse else []),
    ]


def _run_logged(cmd: list[str], log: Path, result: Path) -> dict:
    """Run ``cmd`` with its output in ``log``; its JSON result, or one line of what went wrong. (A worker
    that exits 0 has written ``result``; one that fails leaves an earlier one, e.g. for --reuse.)"""
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not result.exists():
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"exit {proc.returncode}: {tail[0][:200]}"}
    return json.loads(result.read_text())


def _spawn_export(case: str, runtime: str, args: argparse.Namespace, out: Path) -> dict:
    name = f"{case}_{runtime}"
    t0 = time.perf_counter()
    row = _run_logged(
        _worker_cmd("--worker", case, runtime, args, out),
        out / "logs" / f"{name}.log",
        out / "cases" / f"{name}.json",
    )
    row.update(case=case, runtime=runtime, process_seconds=time.perf_counter() - t0)
    return row


def _spawn_timing(case: str, runtime: str, round_index: int, args: argparse.Namespace, out: Path) -> dict:
    name = f"{case}_{runtime}_round{round_index}"
    cmd = [*_worker_cmd("--time", case, runtime, args, out), "--round", str(round_index)]
    return _run_logged(cmd, out / "logs" / f"{name}.log", out / "rounds" / f"{name}.json")


def round_order(pairs: list, round_index: int) -> list:
    """The pairs in their order on even rounds, reversed on odd ones."""
    return list(pairs) if round_index % 2 == 0 else list(reversed(pairs))


def timed_rounds(rows: list[dict], args: argparse.Namespace, out: Path) -> None:
    """Time every exported pair once per round, interleaved; fold the rounds into each row."""
    ready = [row for row in rows if "error" not in row]
    timings: dict[int, list[dict]] = {id(row): [] for row in ready}
    for r in range(args.rounds):
        for row in round_order(ready, r):
            timing = _spawn_timing(row["case"], row["runtime"], r, args, out)
            timing["round"] = r
            timings[id(row)].append(timing)
            shown = timing.get("error") or f"{timing['latency']['median_ms']:.1f} ms"
            print(f"    round {r + 1}/{args.rounds} {row['case']} / {row['runtime']}: {shown}", flush=True)
    for row in ready:
        done = sorted((t for t in timings[id(row)] if "error" not in t), key=lambda t: t["round"])
        if not done:
            row["error"] = timings[id(row)][0]["error"]
            continue
        per_round = [t["latency"]["median_ms"] for t in done]
        row["latency"] = {
            **over_rounds(per_round),
            "p90_ms": statistics.median(t["latency"]["p90_ms"] for t in done),
            "rounds_ms": per_round,
            "rounds": [t["round"] for t in done],
            "runs_per_round": args.runs,
        }
        row["latency_runtime"] = done[0]["latency_runtime"]
        row["peak_rss_bytes"] = max(t["peak_rss_bytes"] for t in done)
        failed = [t["error"] for t in timings[id(row)] if "error" in t]
        if failed:
            row["failed_rounds"] = failed


def _get(rows: list[dict], case: str, runtime: str, *keys: str):
    for row in rows:
        if row.get("case") == case and row.get("runtime") == runtime and "error" not in row:
            value = row
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            return value
    return None


def _round_ratios(rows: list[dict], a: tuple[str, str], b: tuple[str, str]) -> list[float]:
    """Latency ratio a / b within each round both pairs were timed in (the spread of a goal)."""
    ra, rb = (_get(rows, *pair, "latency") or {} for pair in (a, b))
    by_round = dict(zip(rb.get("rounds", []), rb.get("rounds_ms", []), strict=True))
    return [
        v / by_round[r]
        for r, v in zip(ra.get("rounds", []), ra.get("rounds_ms", []), strict=True)
        if by_round.get(r)
    ]


def goal_ratios(rows: list[dict], gemm_gflops: float) -> list[dict]:
    """The speed goals as ratios within this run (None where a pair is missing). A latency goal is judged
    on the median over rounds of the ratio within each round, and also carries that ratio's range and
    the ratio of the two pairs' medians over rounds."""

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    lat = "latency", "median_ms"
    deploy_fp32 = _get(rows, "deploy", "executorch-fp32", *lat)
    deploy_macs = _get(rows, "deploy", "executorch-fp32", "macs")
    gflops = (
        None if deploy_fp32 is None or deploy_macs is None else 2 * deploy_macs / (deploy_fp32 / 1e3) / 1e9
    )
    latency_goals = [
        ("ExecuTorch fp32 latency, deploy / SegFormer-B1",
         ("deploy", "executorch-fp32"), ("segformer", "executorch-fp32"), 0.8),
        ("ExecuTorch fp32 latency, deploy / training form as is",
         ("deploy", "executorch-fp32"), ("train", "executorch-fp32"), 0.5),
        ("ExecuTorch int8 latency, deploy / SegFormer-B1 fp32",
         ("deploy", "executorch-int8"), ("segformer", "executorch-fp32"), 0.5),
        ("ExecuTorch (XNNPACK) int8 / fp32 latency, deploy form",
         ("deploy", "executorch-int8"), ("deploy", "executorch-fp32"), 0.6),
        ("LiteRT int8 / fp32 latency, deploy form",
         ("deploy", "tflite-int8"), ("deploy", "tflite-fp32"), 0.8),
    ]
    goals = []
    for name, a, b, goal in latency_goals:
        per_round = _round_ratios(rows, a, b)
        of_medians = ratio(_get(rows, *a, *lat), _get(rows, *b, *lat))
        # judged on the median of the ratios taken within each round: the two pairs of a round ran
        # back to back, so host drift between rounds cancels (the ratio of the two medians mixes rounds)
        goals.append((name, statistics.median(per_round) if per_round else of_medians, goal, per_round,
                      of_medians))
    goals += [
        (
            "XNNPACK fp32 export time, deploy / SegFormer-B1",
            ratio(
                _get(rows, "deploy", "executorch-fp32", "export_seconds"),
                _get(rows, "segformer", "executorch-fp32", "export_seconds"),
            ),
            1.0,
            [],
            None,
        ),
        ("fp32 deploy GFLOP/s / fp32 GEMM peak (>= goal)", ratio(gflops, gemm_gflops), 0.6, [], None),
    ]
    out = []
    for name, value, goal, per_round, of_medians in goals:
        higher_is_better = name.endswith("(>= goal)")
        met = None if value is None else (value >= goal if higher_is_better else value <= goal)
        spread = (
            {"round_min": min(per_round), "round_max": max(per_round), "ratio_of_medians": of_medians}
            if per_round
            else {}
        )
        out.append({"goal": name, "ratio": value, "target": goal, "met": met, **spread})
    return out


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    rounds = result.get("rounds", 1)
    machine = result.get("machine", "?")
    lines = [
        f"# Speed: {result['img_size']}, batch 1, {result['threads']} threads, {rounds} interleaved "
        f"round(s), {machine}",
        "",
        f"CPU: {machine}, {result.get('cpu', result['host'])}. Each pair's latency is the median over "
        f"{rounds} round(s) of the median of {result['runs']} runs in a fresh process; the spread is over "
        "rounds. fp32 GEMM peak (torch.mm 1024^3, best of 20, measured before and after): "
        f"{result['gemm_peak_gflops']:.1f} GFLOP/s (before {result['gemm_gflops_before']:.1f}, "
        f"after {result['gemm_gflops_after']:.1f}). Host: {result['host']}.",
        "",
        "| case | runtime | runs in | latency median ms | min-max ms | IQR ms | p90 ms | GFLOP/s | "
        "% GEMM peak | export s | size MB | peak RSS GB | GMACs | parity cos | delegation |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['case']} | {row['runtime']} | FAILED: {row['error']} |" + " |" * 12)
            continue
        lat = row["latency"]
        med = lat["median_ms"]
        gflops = 2 * row["macs"] / (med / 1e3) / 1e9
        deleg = row.get("delegation") or {}
        deleg_s = (
            f"{deleg.get('delegate_calls')} delegate(s), {deleg.get('non_delegated_compute_nodes')} outside"
            if deleg
            else "-"
        )
        parity = row.get("parity") or {}
        spread = f"{lat.get('min_ms', med):.1f}-{lat.get('max_ms', med):.1f}"
        iqr = f"{lat.get('q1_ms', med):.1f}-{lat.get('q3_ms', med):.1f}"
        lines.append(
            f"| {row['case']} | {row['runtime']} | {row.get('latency_runtime', '?')}, {machine} | "
            f"{med:.1f} | {spread} | {iqr} | {lat['p90_ms']:.1f} | {gflops:.1f} | "
            f"{100 * gflops / result['gemm_peak_gflops']:.0f}% | {_fmt(row.get('export_seconds'), '.1f')} | "
            f"{_fmt(row.get('size_bytes') and row['size_bytes'] / 1e6, '.2f')} | "
            f"{row['peak_rss_bytes'] / 1e9:.2f} | {row['macs'] / 1e9:.2f} | "
            f"{_fmt(parity.get('cosine'), '.5f')} | {deleg_s} |"
        )
    if any(r.get("export_from_previous_run") for r in result["rows"]):
        lines += [
            "",
            "Rows run with --reuse: latency measured in this run, export figures from the run that "
            "built the artifact.",
        ]
    lines += [
        "",
        f"Goals on {machine}. A latency ratio is judged on its median over rounds, the ratio taken within "
        "each round (the two pairs timed back to back); its range over rounds and the ratio of the two "
        "pairs' medians stand beside it.",
        "",
        "| goal | ratio (median over rounds) | range over rounds | ratio of medians | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for g in result["goals"]:
        met = "n/a (pair missing)" if g["met"] is None else ("yes" if g["met"] else "NO")
        spread = f"{g['round_min']:.3f}-{g['round_max']:.3f}" if "round_min" in g else "-"
        lines.append(f"| {g['goal']} | {_fmt(g['ratio'], '.3f')} | {spread} | "
                     f"{_fmt(g.get('ratio_of_medians'), '.3f')} | {g['target']} | {met} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result["rows"] if "error" not in r]
    runtimes = [rt for rt in RUNTIMES if any(r["runtime"] == rt for r in rows)]
    cases = [c for c in CASES if any(r["case"] == c for r in rows)]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(cases))
    for i, case in enumerate(cases):
        values = [_get(rows, case, rt, "latency", "median_ms") or 0 for rt in runtimes]
        ax.bar([j + i * width for j in range(len(runtimes))], values, width, label=case)
    ax.set_xticks([j + width * (len(cases) - 1) / 2 for j in range(len(runtimes))], runtimes)
    ax.set_ylabel("latency median (ms), lower is better")
    ax.set_title(f"{result['img_size']}, batch 1, {result['threads']} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/speed")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--runtimes", nargs="*", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--img-size", default="512x512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per pair and round (their median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--rounds",
        type=_positive,
        default=3,
        help="interleaved timing rounds: each times every pair once in a fresh process, alternating order",
    )
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="re-measure latency on the artifacts of a previous run in --out (export figures carried over)",
    )
    parser.add_argument("--skip", nargs="*", metavar="CASE/RUNTIME", help="pairs to leave out")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "RUNTIME"), help=argparse.SUPPRESS)
    parser.add_argument("--time", nargs=2, metavar=("CASE", "RUNTIME"), help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.worker:
        row = run_worker(*args.worker, args)
        (out / "cases").mkdir(parents=True, exist_ok=True)
        (out / "cases" / "{}_{}.json".format(*args.worker)).write_text(json.dumps(row, indent=2))
        return 0
    if args.time:
        timing = time_worker(*args.time, args)
        (out / "rounds").mkdir(parents=True, exist_ok=True)
        name = "{}_{}_round{}.json".format(*args.time, args.round)
        (out / "rounds" / name).write_text(json.dumps(timing, indent=2))
        return 0

    for sub in ("cases", "logs", "rounds"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    before = gemm_peak_gflops(args.threads)
    rows = []
    pairs = [(c, r) for r in args.runtimes for c in args.cases if f"{c}/{r}" not in (args.skip or [])]
    for i, (case, runtime) in enumerate(pairs, 1):
        print(f"[{i}/{len(pairs)}] export {case} / {runtime} ...", flush=True)
        rows.append(_spawn_export(case, runtime, args, out))
        row = rows[-1]
        seconds = _fmt(row.get("export_seconds"), ".1f")
        done = "nothing to export" if runtime == "eager" else f"export {seconds} s"
        print("    " + (row.get("error") or done), flush=True)
    timed_rounds(rows, args, out)
    after = gemm_peak_gflops(args.threads)
    peak = max(before, after)
    result = {
        "img_size": args.img_size,
        "threads": args.threads,
        "runs": args.runs,
        "rounds": args.rounds,
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "host": f"{platform.machine()}, {cpu_model()}, {platform.platform()}",
        "gemm_gflops_before": before,
        "gemm_gflops_after": after,
        "gemm_peak_gflops": peak,
        "rows": rows,
        "goals": goal_ratios(rows, peak),
        "run": run_record(sys.argv, threads=args.threads),
    }
    (out / "speed.json").write_text(json.dumps(result, indent=2))
    (out / "speed.md").write_text(markdown(result))
    plotted = plot(result, out / "speed.png")
    print(markdown(result))
    print(f"wrote {out / 'speed.json'}, {out / 'speed.md'}" + (f", {out / 'speed.png'}" if plotted else ""))
    return 0 if all("error" not in r for r in rows) else 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
