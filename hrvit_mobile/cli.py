"""``hrvit-mobile`` command line: wires the Python API, holds no logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from hrvit_mobile.errors import HRViTMobileError


def _cmd_models(args: argparse.Namespace) -> int:
    from hrvit_mobile.models import get_config, list_models

    for name in list_models():
        config = get_config(name)
        print(f"{name:12s} branches {config.out_channels}  head {config.head_channels}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from hrvit_mobile.profile import profile_model

    size = _size(args.img_size)
    result = profile_model(
        args.model, size, threads=args.threads, runs=args.runs, with_export=not args.no_export
    )
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.as_text())
    return 0


def _build_model(args: argparse.Namespace, size: tuple[int, int]):
    """Training form from --model/--checkpoint, or the embedded default (recipe weights)."""
    import hrvit_mobile
    from hrvit_mobile.weights import load_recipe_weights

    model = hrvit_mobile.create_model(args.model, num_classes=args.num_classes, img_size=size)
    if args.checkpoint:
        hrvit_mobile.load_checkpoint(model, args.checkpoint)
    else:
        _log().warning(
            "no --checkpoint: using the embedded default %s with deterministic untrained weights "
            "(parity figures are meaningful, predictions are not)", args.model,
        )
        load_recipe_weights(model)
    return model.eval()


def _log():
    import logging

    return logging.getLogger("hrvit_mobile")


def _setup_logging(verbose: bool) -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("hrvit_mobile")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _cmd_export(args: argparse.Namespace) -> int:
    from hrvit_mobile.deploy import deploy
    from hrvit_mobile.exporters import (
        ExportSpec,
        ParityThresholds,
        check_dependencies,
        export,
        export_all,
        load_calibration_images,
        resolve,
    )

    _setup_logging(args.verbose)
    size = _size(args.img_size)
    thresholds = None
    if any(v is not None for v in (args.max_abs_err, args.min_cosine, args.min_argmax)):
        thresholds = ParityThresholds(args.max_abs_err, args.min_cosine, args.min_argmax)
    spec = ExportSpec(
        target=args.target if args.target != "all" else "executorch",
        bits=args.bits,
        activations=args.activations,
        img_size=size,
        num_classes=args.num_classes,
        out_dir=args.out,
        model_name=args.model,
        min_ios=args.min_ios,
        argmax_output=args.argmax_output,
        bundled_program=args.bundled_program,
        etrecord=args.etrecord,
        thresholds=thresholds,
        run_parity=not args.no_parity,
    )
    if args.keep_float is not None:
        spec.keep_float = "auto" if args.keep_float == "auto" else args.keep_float
    from hrvit_mobile.quant.qat import is_qat_checkpoint

    if is_qat_checkpoint(args.checkpoint):
        return _export_qat(args, spec)
    if args.target != "all":  # refuse a bad pair or a missing package before building anything
        resolved, _ = resolve(spec)
        check_dependencies(spec.target)
        if spec.keep_float is not None:
            from hrvit_mobile.exporters.quantize import recipe_for

            recipe_for(resolved)  # --keep-float on a post-conversion variant
    model = _build_model(args, size)
    calib = load_calibration_images(args.calib, size, limit=args.calib_samples) if args.calib else None
    deployed = deploy(model, img_size=size)
    reports = export_all(deployed, spec, calib) if args.target == "all" else [export(deployed, spec, calib)]
    for report in reports:
        print(report.summary())
    if not reports:
        raise HRViTMobileError(f"no target supports --bits {args.bits} with these activations")
    return 0 if all(r.ok for r in reports) else 1


def _export_qat(args: argparse.Namespace, spec) -> int:
    """A QAT checkpoint exports its converted int8 graph as it is: no calibration, the run's own size."""
    import dataclasses

    from hrvit_mobile.exporters import export, resolve
    from hrvit_mobile.quant.qat import converted_from_checkpoint, load_qat_checkpoint, prequantized_recipe

    meta = load_qat_checkpoint(args.checkpoint)["config"]
    if args.target != meta["target"] or spec.bits != 8 or spec.activations not in (None, "int8"):
        raise HRViTMobileError(
            f"{args.checkpoint} is a QAT checkpoint for --target {meta['target']}: export it with "
            f"--target {meta['target']} --bits 8 --activations 8"
        )
    if spec.keep_float is not None:
        raise HRViTMobileError("--keep-float does not apply to a QAT checkpoint (it is quantized already)")
    if meta["target"] == "tflite":
        # litert-torch's conversion of a converted PT2E graph is not wired into the LiteRT exporter yet
        raise HRViTMobileError(
            f"{args.checkpoint}: exporting a LiteRT QAT checkpoint is not supported yet; "
            "QAT checkpoints export to --target executorch or coreml"
        )
    spec = dataclasses.replace(
        spec, activations="int8", img_size=tuple(meta["img_size"]), num_classes=meta["num_classes"],
        model_name=meta["model"],
    )
    resolve(spec)
    converted, info = converted_from_checkpoint(args.checkpoint)
    spec.recipe = prequantized_recipe(info)
    report = export(converted, spec)
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_qat(args: argparse.Namespace) -> int:
    from hrvit_mobile.quant.qat import QATConfig, train_qat

    _setup_logging(args.verbose)
    cfg = QATConfig(
        data=args.data, target=args.target, steps=args.steps, model=args.model, checkpoint=args.checkpoint,
        img_size=_size(args.img_size), num_classes=args.num_classes, batch_size=args.batch_size, lr=args.lr,
        eval_every=args.eval_every, save_every=args.save_every, eval_limit=args.eval_limit, out=args.out,
        resume=args.resume, seed=args.seed,
    )
    result = train_qat(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        ckpt = result.checkpoint
        print(f"qat {cfg.target}: {result.step} steps, last loss {result.history[-1]['loss']:.4f}, "
              f"int8 mIoU {result.final_miou:.4f}, checkpoint {ckpt} "
              f"(export: hrvit-mobile export --target {cfg.target} --bits 8 --checkpoint {ckpt})")
    return 0


def _size(text: str) -> tuple[int, int]:
    from hrvit_mobile.sizes import parse_img_size, validate_img_size

    return validate_img_size(parse_img_size(text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrvit-mobile",
        description="HRViT semantic segmentation for phones: deploy form, exporters, reports.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list the model variants")
    models.set_defaults(func=_cmd_models)

    profile = commands.add_parser(
        "profile", help="params, MACs, eager latency (training vs deploy form), export time"
    )
    profile.add_argument("--model", default="hrvit_b1")
    profile.add_argument("--img-size", default="512x512", help="HEIGHTxWIDTH, multiples of 32")
    profile.add_argument("--threads", type=int, default=2)
    profile.add_argument("--runs", type=int, default=5, help="timed runs; the median is reported")
    profile.add_argument("--no-export", action="store_true", help="skip timing torch.export")
    profile.add_argument("--json", action="store_true", help="print JSON instead of text")
    profile.set_defaults(func=_cmd_profile)

    export = commands.add_parser(
        "export",
        help="export to ExecuTorch / Core ML / LiteRT and check parity in the artifact's runtime",
        description="Exports the deploy form of a model and proves the artifact: parity against "
        "the float PyTorch model in the artifact's own runtime, written beside it as JSON.",
    )
    export.add_argument("--target", required=True, choices=["executorch", "coreml", "tflite", "all"])
    export.add_argument("--bits", type=int, default=32, choices=[32, 16, 8, 6, 4])
    export.add_argument("--activations", choices=["float", "8"], default=None,
                        help="int8 activations (static, calibrated) or float; default per target")
    export.add_argument("--model", default="hrvit_b1")
    export.add_argument("--checkpoint", help="official/mmseg or own checkpoint (.pth, .safetensors)")
    export.add_argument("--img-size", default="512x512", help="HEIGHTxWIDTH, multiples of 32")
    export.add_argument("--num-classes", type=int, default=150)
    export.add_argument("--calib", help="folder of images for int8 calibration (default: synthetic)")
    export.add_argument("--calib-samples", type=int, default=32)
    export.add_argument("--out", default="exports", help="output folder")
    export.add_argument("--min-ios", type=int, default=17, help="Core ML deployment target")
    export.add_argument("--argmax-output", action="store_true", help="Core ML: add a class-map output")
    export.add_argument("--bundled-program", action="store_true",
                        help="ExecuTorch: embed a test input and expected output in the .pte")
    export.add_argument("--etrecord", action="store_true", help="ExecuTorch: write an ETRecord")
    export.add_argument("--max-abs-err", type=float, help="parity threshold override")
    export.add_argument("--min-cosine", type=float, help="parity threshold override")
    export.add_argument("--min-argmax", type=float, help="parity threshold override (0..1)")
    export.add_argument("--no-parity", action="store_true", help="skip the parity run")
    export.add_argument("--keep-float", metavar="auto|NAMES",
                        help="int8 activations: module groups to keep float (comma-separated names), or "
                        "'auto' (the most sensitive groups until the parity thresholds are met)")
    export.add_argument("-v", "--verbose", action="store_true")
    export.set_defaults(func=_cmd_export)

    qat = commands.add_parser(
        "qat",
        help="quantization-aware fine-tuning with the target's quantizer (runs under torchrun too)",
        description="QAT of the deploy form with the target's PT2E quantizer in QAT mode; the checkpoint "
        "exports with: hrvit-mobile export --target T --bits 8 --checkpoint OUT/last.pt",
    )
    qat.add_argument("--data", required=True, help="images/ + masks/ folder (or train/ and val/ inside)")
    qat.add_argument("--target", required=True, choices=["executorch", "tflite", "coreml"])
    qat.add_argument("--steps", type=int, required=True)
    qat.add_argument("--model", default="hrvit_b1")
    qat.add_argument("--checkpoint", help="trained float weights to start from")
    qat.add_argument("--img-size", default="512x512", help="HEIGHTxWIDTH, multiples of 32")
    qat.add_argument("--num-classes", type=int, help="default: from the data's classes.txt")
    qat.add_argument("--batch-size", type=int, default=8, help="per process")
    qat.add_argument("--lr", type=float, default=1e-4)
    qat.add_argument("--eval-every", type=int, default=0, help="steps between int8 mIoU evaluations")
    qat.add_argument("--save-every", type=int, default=0, help="steps between checkpoints")
    qat.add_argument("--eval-limit", type=int, help="evaluate on at most this many samples")
    qat.add_argument("--seed", type=int, default=0)
    qat.add_argument("--out", default="qat_out")
    qat.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    qat.add_argument("-v", "--verbose", action="store_true")
    qat.set_defaults(func=_cmd_qat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HRViTMobileError as exc:
        print(f"hrvit-mobile: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hrvit-mobile: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
