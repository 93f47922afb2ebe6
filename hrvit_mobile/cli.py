"""``hrvit-mobile`` command line: wires the Python API, holds no logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from hrvit_mobile.deploy.layout import LAYOUTS
from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.exporters.registry import all_variants, apps, target_names
from hrvit_mobile.files import Terminated, output_folder

# int8 calibration images taken from --calib or the demo model's set; the demo model's ExecuTorch int8 mIoU
# on its 100 val images was 0.9066 / 0.9073 / 0.9075 / 0.9067 with 4 / 8 / 16 / 32 of them (README)
DEFAULT_CALIB_SAMPLES = 32
CALIB_SAMPLES_HELP = (
    f"how many calibration images int8 activations are calibrated on (default: {DEFAULT_CALIB_SAMPLES} of "
    "--calib or of the demo model's set; with neither, the exporter calibrates on its own synthetic "
    "images, 8 unless this is given); fewer export faster"
)


def _bits_choices() -> list[int]:
    """Every ``--bits`` some registered variant takes, widest first."""
    return sorted({v.bits for _, v in all_variants()}, reverse=True)


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
    """Training form from --model/--checkpoint, or the embedded default
    (``hrvit_mobile.weights.create_model_with_weights`` decides which)."""
    from hrvit_mobile.weights import create_model_with_weights

    _default_classes(args)  # fixes args.num_classes first
    model, source = create_model_with_weights(args.model, args.num_classes, size, args.checkpoint)
    if args.checkpoint is None and "untrained" not in source:  # untrained weights were warned about
        _log().info("%s runs on %s", args.model, source)
    return model


def _default_classes(args: argparse.Namespace) -> list[str] | None:
    """Fixes ``args.num_classes`` before anything is built: the demo checkpoint's when it will be used
    (and its class names), else 150. Returns the class names when known."""
    from hrvit_mobile.demo import DEFAULT_NUM_CLASSES, demo_checkpoint_for

    demo = None if args.checkpoint else demo_checkpoint_for(args.model)
    if demo is not None and args.num_classes in (None, demo.num_classes):
        args.num_classes = demo.num_classes
        return list(demo.classes)
    if args.num_classes is None:
        args.num_classes = DEFAULT_NUM_CLASSES
    return None


def _calibration(args: argparse.Namespace, size: tuple[int, int], demo_model: bool):
    """(images, source) for int8 calibration; see ``hrvit_mobile.data.calibration.default_calibration``."""
    from hrvit_mobile.data.calibration import default_calibration

    samples = DEFAULT_CALIB_SAMPLES if args.calib_samples is None else args.calib_samples
    return default_calibration(args.calib, samples, size, demo_model)


def _parity_images(args: argparse.Namespace, size: tuple[int, int], demo_model: bool, n: int):
    """(images, source) parity runs on: the demo checkpoint's held-out val images for the demo model,
    else the first images of --calib, else the shipped sample photos, else None (the exporter's synthetic
    blobs, which the sidecar names)."""
    if demo_model:
        from hrvit_mobile.demo import demo_dataset_seed, demo_samples

        return demo_samples("val", n, size)[0], (
            f"{n} held-out synthetic val images of the demo checkpoint (seed {demo_dataset_seed()})")
    if args.calib:
        from hrvit_mobile.data.calibration import calibration_images

        images = calibration_images(args.calib, size, limit=n)
        return images, f"the first {len(images)} images of {args.calib}"
    from hrvit_mobile.selftest import sample_photos

    images = sample_photos(size, n)
    if len(images):
        return images, f"{len(images)} shipped sample images (demo_app_assets/samples/*.jpg)"
    return None, None


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
        resolve,
    )

    _setup_logging(args.verbose)
    size = _size(args.img_size)
    output_folder(args.out)  # a file, or an unwritable place, is refused before anything is built
    class_names = _default_classes(args)
    thresholds = None
    if any(v is not None for v in (args.max_abs_err, args.min_cosine, args.min_argmax)):
        thresholds = ParityThresholds(args.max_abs_err, args.min_cosine, args.min_argmax)
    spec = ExportSpec(
        target=args.target if args.target != "all" else target_names()[0],
        bits=args.bits,
        activations=args.activations,
        img_size=size,
        num_classes=args.num_classes,
        class_names=class_names,
        out_dir=args.out,
        model_name=args.model,
        min_ios=args.min_ios,
        argmax_output=args.argmax_output,
        keep_op_names=args.keep_op_names,
        layout=args.layout,
        bundled_program=args.bundled_program,
        etrecord=args.etrecord,
        thresholds=thresholds,
        run_parity=not args.no_parity,
    )
    if args.keep_float is not None:
        spec.keep_float = args.keep_float
    if args.calib_samples is not None:  # else the exporter's own count of synthetic images
        spec.calib_samples = args.calib_samples
    from hrvit_mobile.quant.qat import is_qat_checkpoint

    if is_qat_checkpoint(args.checkpoint):
        return _export_qat(args, spec)
    if args.target != "all":  # refuse a bad pair or a missing package before building anything
        resolved, _ = resolve(spec)
        check_dependencies(spec.target)
        if spec.keep_float is not None:
            from hrvit_mobile.exporters.quantize import recipe_for

            recipe_for(resolved)  # --keep-float on a post-conversion variant
    # calibration first: a bad --calib or --calib-samples is refused before the model is built
    calib, spec.calib_source = _calibration(args, size, demo_model=class_names is not None)
    images, spec.parity_source = _parity_images(args, size, class_names is not None, spec.parity_samples)
    model = _build_model(args, size)
    deployed = deploy(model, img_size=size)
    reports = (export_all(deployed, spec, calib, images) if args.target == "all"
               else [export(deployed, spec, calib, images)])
    for report in reports:
        print(report.summary())
    if not reports:
        raise HRViTMobileError(f"no target supports --bits {args.bits} with these activations")
    if args.report:
        from hrvit_mobile.report.cli import report_after_export

        report_after_export(reports, deployed, args, calib, images)
    return 0 if all(r.ok for r in reports) else 1


def _cmd_bundle(args: argparse.Namespace) -> int:
    from hrvit_mobile import bundle

    if args.verify:
        manifest = bundle.verify_bundle(args.verify)
        models = ", ".join(f"{m['file']} ({m['runtime']} {m['variant']})" for m in manifest["models"])
        print(f"{args.verify}: valid {manifest['app']} bundle, {len(manifest['files']) + 1} files, "
              f"{manifest['num_classes']} classes ({manifest['labels']['dataset']}), models: {models}")
        return 0
    if not args.app or not args.out:
        raise HRViTMobileError("bundle needs --app {ios,android,web} and --out DIR (or --verify DIR)")
    if bool(args.artifact) == bool(args.target):
        raise HRViTMobileError(
            "give either --artifact PATH... (existing exports) or --target T... (export now)"
        )
    _setup_logging(args.verbose)
    artifacts, reference = args.artifact, None
    if args.target:
        from hrvit_mobile.deploy import deploy
        from hrvit_mobile.exporters import ExportSpec

        targets = bundle.check_targets(args.app, args.target)  # refuse before building anything
        size = _size(args.img_size)
        class_names = _default_classes(args)
        specs = [
            ExportSpec(target=t, bits=args.bits, activations=args.activations, img_size=size,
                       num_classes=args.num_classes, class_names=class_names, out_dir=args.export_dir,
                       model_name=args.model)
            for t in targets
        ]
        calib, source = _calibration(args, size, demo_model=class_names is not None)
        images, parity_source = _parity_images(args, size, class_names is not None, specs[0].parity_samples)
        model = _build_model(args, size)
        for spec in specs:
            spec.calib_source, spec.parity_source = source, parity_source
            if args.calib_samples is not None:
                spec.calib_samples = args.calib_samples
        reference = deploy(model, img_size=size)  # the float model: exported, and the self-test's reference
        artifacts = bundle.export_artifacts(args.app, reference, specs, calib, images)
    result = bundle.build_bundle(args.app, artifacts, args.out, labels=args.labels,
                                 allow_failed_parity=args.allow_failed_parity, reference=reference)
    print(f"{result.path}: {args.app} bundle, {len(result.manifest['models'])} model(s), "
          f"{result.manifest['num_classes']} classes ({result.manifest['labels']['dataset']})")
    print(result.listing())
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from hrvit_mobile.predict import predict

    output_folder(os.path.dirname(args.out) or ".")  # refused before the model runs, not after
    result = predict(args.model, args.image, out=args.out, class_map_out=args.class_map, mode=args.mode,
                     labels=args.labels, threads=args.threads)
    print(result.summary())
    return 0

def _cmd_report(args: argparse.Namespace) -> int:
    from hrvit_mobile.report.cli import run_report

    _setup_logging(args.verbose)
    print(run_report(args, _build_model))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from hrvit_mobile.arm64.verify import run_verify

    _setup_logging(args.verbose)
    return run_verify(args, _build_model)


def _cmd_bench(args: argparse.Namespace) -> int:
    from hrvit_mobile.report.cli import run_bench_command

    _setup_logging(args.verbose)
    size = _size(args.img_size)
    output_folder(args.out)
    _default_classes(args)  # the demo checkpoint's classes when it is the default model
    return run_bench_command(args, size, _build_model)


def _cmd_data(args: argparse.Namespace) -> int:
    from hrvit_mobile.data.synthetic import write_synthetic

    output_folder(args.out)
    out = write_synthetic(args.out, args.train, args.val, _size(args.img_size), args.seed, progress=True)
    print(f"wrote {args.train} train + {args.val} val images to {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from hrvit_mobile.train import TrainConfig, train

    _setup_logging(args.verbose)
    output_folder(args.out)
    config = TrainConfig(
        data=args.data, out=args.out, model=args.model, img_size=_size(args.img_size),
        crop_size=_size(args.crop, "--crop"), ratio_range=(args.ratio_min, args.ratio_max), steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup, eval_every=args.eval_every, eval_samples=args.eval_samples or None,
        seed=args.seed, workers=args.workers, threads=args.threads,
    )
    result = train(config, resume=args.resume)
    best = "n/a" if result.best_miou is None else f"{result.best_miou:.4f}"
    print(f"trained to step {result.step}: loss {result.loss:.4f}, best val mIoU {best}; "
          f"checkpoints in {result.out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from hrvit_mobile.data import open_dataset
    from hrvit_mobile.data.transforms import eval_transform
    from hrvit_mobile.demo import DEMO_MODEL
    from hrvit_mobile.evaluate import evaluate

    _setup_logging(args.verbose)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    size = _size(args.img_size)
    if args.artifact:  # the exported file in its own runtime, at the size it was exported for
        from hrvit_mobile.evaluate import evaluate_artifact
        from hrvit_mobile.exporters import open_artifact

        runner = open_artifact(args.artifact, threads=args.threads)
        size = runner.img_size
    dataset = open_dataset(args.data, split=args.split, img_size=size, num_classes=args.num_classes,
                           transform=eval_transform(size))
    if args.artifact:
        classes = runner.meta.get("num_classes") or len(runner.labels)
        if classes != dataset.num_classes:
            raise HRViTMobileError(f"{args.artifact} predicts {classes} classes, {args.data} has "
                                   f"{dataset.num_classes}")
        result = evaluate_artifact(runner, dataset, dataset.num_classes, transform=eval_transform(size),
                                   progress=True, limit=args.limit)
        return _print_eval(args, dataset, result, runtime=runner.runtime)
    if args.num_classes is None and (args.checkpoint or args.model != DEMO_MODEL):
        args.num_classes = dataset.num_classes
    model = _build_model(args, size)
    if model.num_classes != dataset.num_classes:
        raise HRViTMobileError(f"the model predicts {model.num_classes} classes, {args.data} has "
                               f"{dataset.num_classes}: pass the matching --checkpoint/--num-classes")
    result = evaluate(model, dataset, dataset.num_classes, progress=True, limit=args.limit)
    return _print_eval(args, dataset, result)


def _print_eval(args: argparse.Namespace, dataset, result, runtime: str = "PyTorch (float)") -> int:
    if args.json:  # stdout is the JSON document alone
        print(json.dumps({**result.as_dict(), "classes": dataset.classes, "runtime": runtime}, indent=2))
    else:
        print(f"runtime: {runtime}")
        print(f"mIoU {result.miou:.4f}  pixel accuracy {result.pixel_accuracy:.4f}  "
              f"on {result.samples} images")
        for name, iou in zip(dataset.classes, result.per_class_iou):
            print(f"  {name:20s} {iou:.4f}")
    return 0


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
    output_folder(args.out)
    cfg = QATConfig(
        data=args.data, target=args.target, steps=args.steps, model=args.model, checkpoint=args.checkpoint,
        img_size=_size(args.img_size), num_classes=args.num_classes, batch_size=args.batch_size, lr=args.lr,
        eval_every=args.eval_every, save_every=args.save_every, eval_limit=args.eval_limit, out=args.out,
        resume=args.resume, seed=args.seed, freeze_observers_at=args.freeze_observers_at,
    )
    result = train_qat(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        ckpt = result.checkpoint
        print(f"qat {cfg.target}: {result.step} steps, last loss {result.history[-1]['loss']:.4f}, "
              f"int8 mIoU {result.final_miou:.4f} (same weights in float: "
              f"{result.evals[-1].get('float_miou', float('nan')):.4f}), checkpoint {ckpt} "
              f"(export: hrvit-mobile export --target {cfg.target} --bits 8 --checkpoint {ckpt})")
    return 0


# the largest side the CLI builds a model for: Cityscapes' full 1024x2048 frames fit, while a typo such as
# 51200 is refused before a network of that size is allocated
MAX_IMG_SIDE = 2048


def _size(text: str, option: str = "--img-size") -> tuple[int, int]:
    from hrvit_mobile.sizes import InvalidImageSizeError, parse_img_size, validate_img_size

    height, width = validate_img_size(parse_img_size(text))
    if max(height, width) > MAX_IMG_SIDE:
        raise InvalidImageSizeError(f"{option} {height}x{width} is too large: at most {MAX_IMG_SIDE} on a "
                                    f"side (multiples of 32 from 32 to {MAX_IMG_SIDE})")
    return height, width


def _add_report_args(parser: argparse.ArgumentParser, with_model: bool) -> None:
    if with_model:
        parser.add_argument("--model", help="model variant (default: from the sidecar)")
        parser.add_argument("--checkpoint", help="the checkpoint the artifacts were exported from")
        parser.add_argument("--num-classes", type=int, help="default: from the sidecar")
    parser.add_argument("--images", help="folder of verification images (default: the demo checkpoint's val "
                        "images for the demo model, else 2 synthetic images)")
    parser.add_argument("--labels", help="folder of label PNGs named like the images (enables mIoU vs GT)")
    parser.add_argument("--reduce-zero-label", action="store_true",
                        help="labels: 0 is ignore, classes start at 1 (ADE20K)")
    parser.add_argument("--samples", type=int, default=8,
                        help="at most this many images from --images (or the demo checkpoint's val split)")
    parser.add_argument("--latency-runs", type=int, default=10)
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer error of int8 variants")
    parser.add_argument("--calib", help="int8 calibration images (folder or dataset root) of the exports, "
                        "for the per-layer simulation (default: what the sidecar records)")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("-v", "--verbose", action="store_true")


class _OneLineParser(argparse.ArgumentParser):
    """argparse with its refusals on one line, like every other bad input (its default prints the usage
    block first); ``--help`` still shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
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
    export.add_argument("--target", required=True, choices=[*target_names(), "all"])
    export.add_argument("--bits", type=int, default=32, choices=_bits_choices())
    export.add_argument("--activations", choices=["float", "8"], default=None,
                        help="int8 activations (static, calibrated) or float; default per target")
    export.add_argument("--model", default="hrvit_b1")
    export.add_argument("--checkpoint", help="official/mmseg or own checkpoint (.pth, .safetensors)")
    export.add_argument("--img-size", default="512x512", help="HEIGHTxWIDTH, multiples of 32")
    export.add_argument("--num-classes", type=int, default=None,
                        help="default: the checkpoint's (the demo checkpoint: 8), else 150")
    export.add_argument("--calib", help="int8 calibration images: a folder of images, or a dataset "
                        "root (its train images) (default: synthetic)")
    export.add_argument("--calib-samples", type=int, default=None, help=CALIB_SAMPLES_HELP)
    export.add_argument("--out", default="exports", help="output folder")
    export.add_argument("--min-ios", type=int, default=17, help="Core ML deployment target")
    export.add_argument("--argmax-output", action="store_true", help="Core ML: add a class-map output")
    export.add_argument("--layout", choices=LAYOUTS,
                        help="deploy layout to lower (default: the target's measured choice: "
                             "channels_first for executorch fp32/int8, tokens for executorch fp16, "
                             "coreml and tflite)")
    export.add_argument("--keep-op-names", action="store_true",
                        help="Core ML: keep the PyTorch-derived op names and per-op small consts "
                        "(for profiling; about 0.6 MB larger on b1)")
    export.add_argument("--bundled-program", action="store_true",
                        help="ExecuTorch: embed a test input and expected output in the .pte")
    export.add_argument("--etrecord", action="store_true", help="ExecuTorch: write an ETRecord")
    export.add_argument("--max-abs-err", type=float, help="parity threshold override")
    export.add_argument("--min-cosine", type=float, help="parity threshold override")
    export.add_argument("--min-argmax", type=float, help="parity threshold override (0..1)")
    export.add_argument("--no-parity", action="store_true", help="skip the parity run")
    export.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                        help="write report.json/.md/.html beside the artifacts (default: on)")
    export.add_argument("--keep-float", metavar="auto|NAMES",
                        help="int8 activations: module groups to keep float (comma-separated names), or "
                        "'auto' (the most sensitive groups until the parity thresholds are met)")
    export.add_argument("-v", "--verbose", action="store_true")
    export.set_defaults(func=_cmd_export)

    bundle = commands.add_parser(
        "bundle",
        help="write a folder a demo app takes as it is (model, labels, palette, manifest, README)",
        description="Bundles existing artifacts (--artifact) or exports them now (--target, like export) "
        "into a folder for the iOS, Android or web demo app; --verify checks a bundle.",
    )
    bundle.add_argument("--app", choices=sorted(apps()))
    bundle.add_argument("--out", help="bundle folder to write")
    bundle.add_argument("--artifact", nargs="+", help="exported .mlpackage/.pte/.tflite (with sidecar JSON)")
    bundle.add_argument("--target", nargs="+", choices=target_names(),
                        help="export these now (" + "; ".join(
                            f"{app}: {', '.join(b.name for b in bs)}" for app, bs in apps().items()) + ")")
    bundle.add_argument("--bits", type=int, default=32, choices=_bits_choices())
    bundle.add_argument("--activations", choices=["float", "8"], default=None)
    bundle.add_argument("--model", default="hrvit_b1")
    bundle.add_argument("--checkpoint", help="official/mmseg or own checkpoint (.pth, .safetensors)")
    bundle.add_argument("--img-size", default="512x512", help="HEIGHTxWIDTH, multiples of 32")
    bundle.add_argument("--num-classes", type=int, default=None,
                        help="default: the demo checkpoint's 8 for hrvit_b1, else 150")
    bundle.add_argument("--calib", help="int8 calibration images: a folder of images or a dataset root")
    bundle.add_argument("--calib-samples", type=int, default=None, help=CALIB_SAMPLES_HELP)
    bundle.add_argument("--export-dir", default="exports", help="where --target exports land")
    bundle.add_argument("--labels", help="ade20k, cityscapes, synthetic or a JSON file "
                        "(default: by class count: 150 ade20k, 19 cityscapes, 8 synthetic)")
    bundle.add_argument("--allow-failed-parity", action="store_true")
    bundle.add_argument("--verify", metavar="DIR", help="check a bundle (hashes, labels, paths) and exit")
    bundle.add_argument("-v", "--verbose", action="store_true")
    bundle.set_defaults(func=_cmd_bundle)

    predict = commands.add_parser(
        "predict",
        help="run an exported artifact (or a bundle) on an image; write the overlay and the class map",
        description="Runs the artifact in its own runtime on a JPEG/PNG of up to 8192x8192 pixels. "
        "--mode fit "
        "(default) letterboxes the image into the model input, --mode stretch resizes it as the demo "
        "apps do, --mode slide tiles it at native resolution with overlapping windows.",
    )
    predict.add_argument("--model", required=True, help=".pte/.tflite/.mlpackage with sidecar, or a bundle")
    predict.add_argument("--image", required=True,
                         help="JPEG/PNG/BMP/WebP image of any size up to 8192x8192 (67,108,864) pixels")
    predict.add_argument("--out", required=True, help="overlay PNG to write")
    predict.add_argument("--class-map", help="class-map PNG (palette PNG of class indices); "
                         "default <out>_classes.png")
    predict.add_argument("--mode", choices=["fit", "stretch", "slide"], default="fit")
    predict.add_argument("--labels", help="ade20k, cityscapes, synthetic or a JSON file")
    predict.add_argument("--threads", type=int, default=None)
    predict.set_defaults(func=_cmd_predict)

    report = commands.add_parser(
        "report",
        help="parity, size and latency report (JSON, Markdown, HTML) of existing artifacts",
        description="Measures artifacts in their own runtimes against the float PyTorch model and writes "
        "report.json, report.md and a self-contained report.html. Model, size and classes default to "
        "what the artifacts' sidecars say.",
    )
    report.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".pte, .tflite or .mlpackage")
    _add_report_args(report, with_model=True)
    report.add_argument("--out", required=True, help="output folder")
    report.set_defaults(func=_cmd_report)

    verify = commands.add_parser(
        "verify",
        help="parity of .pte/.tflite artifacts on ARM64 kernels (natively, or under qemu emulation)",
        description="Runs each artifact on the ARM64 kernels phones use (natively on an ARM64 host, else "
        "under qemu user-mode emulation of a named CPU model), compares the output with the float PyTorch "
        "model and with this host's run, applies the export's thresholds and records the figures in the "
        "sidecar (verification.arm64). Exit 1 when an artifact misses a threshold.",
    )
    verify.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".pte or .tflite (with its sidecar)")
    verify.add_argument("--arch", required=True, choices=["arm64"])
    verify.add_argument("--cpu", action="append", metavar="MODEL",
                        help="emulated CPU model, repeatable (default: cortex-a76; cortex-a53: no FEAT_FP16)")
    verify.add_argument("--model", help="default: the sidecar's")
    verify.add_argument("--checkpoint", help="the float weights the artifacts came from (default: embedded)")
    verify.add_argument("--threads", type=int, help="runtime threads (default: all cores)")
    verify.add_argument("--samples", type=int, help="only the first N of the export's parity images")
    verify.add_argument("-v", "--verbose", action="store_true")
    verify.set_defaults(func=_cmd_verify)

    bench = commands.add_parser(
        "bench",
        help="export every target x bits pair and print one table (format, status, size, parity, latency)",
        description="Runs every supported target x bits pair of one model, each export in its own "
        "process, measures the artifacts in their runtimes, prints a table and writes bench.json, "
        "bench.md and report/ into --out.",
    )
    bench.add_argument("--model", default="hrvit_b1")
    bench.add_argument("--img-size", default="512x512", help="HEIGHTxWIDTH, multiples of 32")
    bench.add_argument("--checkpoint", help="official/mmseg or own checkpoint (.pth, .safetensors)")
    bench.add_argument("--num-classes", type=int, default=None,
                       help="default: the demo checkpoint's 8 for hrvit_b1, else 150")
    bench.add_argument("--targets", nargs="+", choices=target_names(), help="default: all")
    bench.add_argument("--only", nargs="+", metavar="TARGET/VARIANT",
                       help="only these formats, e.g. tflite/fp32 executorch/int8")
    bench.add_argument("--out", default="bench", help="output folder")
    bench.add_argument("--json", action="store_true", help="print JSON instead of the table")
    bench.add_argument("--reuse", action="store_true",
                       help="measure artifacts already in OUT/artifacts (with sidecars) instead of "
                       "exporting them again, e.g. after an interrupted run")
    _add_report_args(bench, with_model=False)
    bench.set_defaults(func=_cmd_bench)

    data = commands.add_parser("data", help="generate datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="KIND")
    synthetic = data_commands.add_parser(
        "synthetic", help="the project's deterministic synthetic segmentation dataset (8 classes)"
    )
    synthetic.add_argument("--out", required=True, help="output folder")
    synthetic.add_argument("--train", type=int, default=2000, help="train images")
    synthetic.add_argument("--val", type=int, default=100, help="val images")
    synthetic.add_argument("--img-size", default="512x512", help="HEIGHTxWIDTH, multiples of 32")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(func=_cmd_data)

    train = commands.add_parser("train", help="float training with periodic val mIoU, checkpoints, resume")
    train.add_argument("--data", required=True, help="dataset folder (ADE20K, Cityscapes or images/+masks/)")
    train.add_argument("--model", default="hrvit_b1")
    train.add_argument("--img-size", default="512x512", help="base scale HEIGHTxWIDTH (and val size)")
    train.add_argument("--crop", default="256x256", help="training crop HEIGHTxWIDTH")
    train.add_argument("--ratio-min", type=float, default=0.5, help="random resize: smallest ratio")
    train.add_argument("--ratio-max", type=float, default=2.0, help="random resize: largest ratio")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=6e-4)
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--warmup", type=int, default=50, help="linear warmup steps")
    train.add_argument("--eval-every", type=int, default=100)
    train.add_argument("--eval-samples", type=int, default=16, help="val images per evaluation (0 = all)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    train.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 on a busy machine)")
    train.add_argument("--out", required=True, help="checkpoint folder (last.pt, best.pt)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.add_argument("-v", "--verbose", action="store_true")
    train.set_defaults(func=_cmd_train)

    ev = commands.add_parser("eval", help="mIoU of a checkpoint (default: the demo) on a dataset split")
    ev.add_argument("--data", required=True)
    ev.add_argument("--split", default="val")
    ev.add_argument("--model", default="hrvit_b1")
    ev.add_argument("--checkpoint")
    ev.add_argument("--artifact", help="score an exported .pte/.tflite/.mlpackage in its own runtime instead")
    ev.add_argument("--num-classes", type=int, default=None, help="default: the dataset's")
    ev.add_argument("--img-size", default="512x512", help="HEIGHTxWIDTH, multiples of 32")
    ev.add_argument("--limit", type=int, help="evaluate only the first N images")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ev.add_argument("-v", "--verbose", action="store_true")
    ev.set_defaults(func=_cmd_eval)

    qat = commands.add_parser(
        "qat",
        help="quantization-aware fine-tuning with the target's quantizer (runs under torchrun too)",
        description="QAT of the deploy form with the target's PT2E quantizer in QAT mode; the checkpoint "
        "exports with: hrvit-mobile export --target T --bits 8 --checkpoint OUT/last.pt",
    )
    qat.add_argument("--data", required=True, help="images/ + masks/ folder (or train/ and val/ inside)")
    qat.add_argument("--target", required=True, choices=target_names())
    qat.add_argument("--steps", type=int, required=True)
    qat.add_argument("--model", default="hrvit_b1")
    qat.add_argument("--checkpoint",
                     help="trained float weights to start from (default for hrvit_b1: the demo checkpoint)")
    qat.add_argument("--img-size", default="512x512", help="HEIGHTxWIDTH, multiples of 32")
    qat.add_argument("--num-classes", type=int, help="default: from the data's classes.txt")
    qat.add_argument("--batch-size", type=int, default=8, help="per process")
    qat.add_argument("--lr", type=float, default=1e-4)
    qat.add_argument("--eval-every", type=int, default=0, help="steps between int8 mIoU evaluations")
    qat.add_argument("--save-every", type=int, default=0, help="steps between checkpoints")
    qat.add_argument("--eval-limit", type=int, help="evaluate on at most this many samples")
    qat.add_argument("--seed", type=int, default=0)
    qat.add_argument("--freeze-observers-at", type=int, metavar="STEP",
                     help="fix the fake-quant ranges from this step on (default: they adapt to the end)")
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
        for line in str(exc).splitlines():  # a check that finds several faults names each on its own line
            print(f"hrvit-mobile: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hrvit-mobile: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:  # raised while files were being written, after their staging was removed
        print(f"hrvit-mobile: stopped by {exc.signal_name}", file=sys.stderr)
        return int(exc.code)


if __name__ == "__main__":
    sys.exit(main())
