"""Export every supported target x bits pair of one model, each in its own process, and tabulate.

    python3 benchmarks/export_matrix.py --model hrvit_b1 --img-size 512x512 --out runs/matrix

Each pair runs ``hrvit-mobile export`` in a fresh process (so peak memory and wall time belong to
that export alone) and the table is read back from the sidecar JSON each export writes: size,
size relative to the same target's fp32 artifact, the tensor data alone relative to it (weights,
biases, constants and their scales as stored: ``exporters/footprint.py::tensor_data_bytes``, the floor
of the ratio in that format), export wall time, peak RSS and parity. Writes
``matrix.json`` (with the command, date, host and library versions of the run) and ``matrix.md`` into
``--out``; ``python3 benchmarks/docs_pages.py --matrix OUT/matrix.json`` turns it into the docs' page.
Pairs may be filtered with ``--only``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from docs_pages import matrix_table, run_record

from hrvit_mobile.exporters import supported
from hrvit_mobile.exporters.footprint import tensor_data_bytes
from hrvit_mobile.report.bench import export_command, export_pair, find_artifact


def _pairs(only: list[str] | None) -> list[tuple[str, int, str, str]]:
    rows = [(t, b, a, v) for (t, b, a), v in supported().items()]
    if only:
        rows = [r for r in rows if f"{r[0]}/{r[3]}" in only or r[0] in only]
    return rows


def _run(target: str, bits: int, activations: str, args: argparse.Namespace, log: Path) -> dict:
    # the export only (no report): this table is about export time, size and memory
    cmd = export_command(target, bits, activations, args.model, args.img_size, Path(args.out) / "artifacts",
                         args.checkpoint, args.num_classes)
    code, seconds = export_pair(cmd, log)
    return {"returncode": code, "process_seconds": seconds, "command": " ".join(cmd[2:])}


def _sidecar(out: Path, model: str, img_size: str, target: str, variant: str) -> dict | None:
    art = find_artifact(out / "artifacts", model, img_size, target, variant)
    return json.loads(art.with_name(art.name + ".json").read_text()) if art else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hrvit_b1")
    parser.add_argument("--img-size", default="512x512")
    parser.add_argument("--checkpoint")
    parser.add_argument("--num-classes", type=int)
    parser.add_argument("--out", default="runs/matrix")
    parser.add_argument("--only", nargs="*", help="targets or target/variant, e.g. tflite coreml/w8")
    args = parser.parse_args(argv)
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    rows = []
    for target, bits, activations, variant in _pairs(args.only):
        print(f"[{target}/{variant}] exporting ...", flush=True)
        run = _run(target, bits, activations, args, out / "logs" / f"{target}_{variant}.log")
        meta = _sidecar(out, args.model, args.img_size, target, variant)
        parity = (meta or {}).get("parity") or {}
        row = {"target": target, "variant": variant, "bits": bits, "activations": activations, **run,
               "size_bytes": (meta or {}).get("size_bytes"),
               "export_seconds": (meta or {}).get("export_seconds"),
               "peak_rss_bytes": (meta or {}).get("peak_rss_bytes"),
               "parity": parity, "details": (meta or {}).get("details", {})}
        rows.append(row)
        print(f"[{target}/{variant}] exit {run['returncode']} in {run['process_seconds']:.0f} s", flush=True)
    fp32 = {r["target"]: r["size_bytes"] for r in rows if r["variant"] == "fp32" and r["size_bytes"]}
    for r in rows:
        base = fp32.get(r["target"])
        r["size_vs_fp32"] = r["size_bytes"] / base if base and r["size_bytes"] else None
        footprint = r["details"].get("footprint") or {}
        known = base and "total" in footprint and "error" not in footprint
        r["tensor_data_vs_fp32"] = tensor_data_bytes(footprint) / base if known else None
    import torch

    record = run_record(sys.argv, threads=torch.get_num_threads())
    (out / "matrix.json").write_text(json.dumps({"model": args.model, "img_size": args.img_size,
                                                 "run": record, "rows": rows}, indent=2))
    lines = [f"# Export matrix: {args.model} @ {args.img_size}", "", *matrix_table(rows)]
    (out / "matrix.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
