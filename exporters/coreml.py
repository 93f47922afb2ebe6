"""Core ML (.mlpackage, ML program) via coremltools from ``torch.export``.

fp16 compute (default) or fp32; weight-only int8, 6/4-bit k-means palettization, and W8A8 quantized on
the PyTorch side (PT2E with ExecuTorch's ``CoreMLQuantizer``), because Core ML's own activation
calibration predicts and prediction needs macOS. The input is an ``ImageType`` so an app can hand the
model a camera frame; the ImageNet mean/std is folded into the image scale/bias (see
:func:`image_preprocessing`). Labels, author/license/version/description and the Xcode preview
metadata for an image segmenter are written into the package.

``validate`` predicts with the real Core ML runtime on macOS. On other systems Core ML cannot run, so the
serialized ML program is executed by the project's NumPy MIL evaluator (:mod:`.coreml_eval`: exact
constexpr weight decompression, quantize/dequantize, fp16 tensors stored as fp16); the result's
``runtime`` names which of the two produced the figures. Either way it also carries a structural check of
the saved package (it loads, it is an ML program with an image input, its ops, and its weights
compressed as requested).
"""

from __future__ import annotations

import contextlib
import json
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrvit_mobile.deploy import with_options
from hrvit_mobile.deploy.channels_first import layout_of
from hrvit_mobile.files import OutputError
from hrvit_mobile.models.norm import NativeLayerNorm
from hrvit_mobile.normalization import IMAGENET_MEAN, IMAGENET_STD
from hrvit_mobile.quant.recipes import (
    PAL4_SMALL_TENSORS_INT8,
    W8_WEIGHT_THRESHOLD,
    CoreMLW8A8,
    CoreMLWeightOnly,
    register_scalar_zero_points,
)

from .artifacts import ArtifactResult, read_sidecar
from .build import Built, run_build, step
from .coreml_compact import compact_program
from .coreml_eval import RUNTIME as RUNTIME_EVALUATOR  # off macOS the serialized program runs here
from .decompose import decompose
from .errors import ExportError
from .parity import ParityResult, ParityThresholds, compare, default_thresholds
from .patches.coreml_passes import (
    nonreplaceable_vars_as_bits,
    passes_without_program_dumps,
    propagation_after_changes_only,
    validate_once_per_pipeline,
)
from .patches.coreml_weights import small_constants_inline
from .quantize import quantize_pt2e, recipe_for
from .reexport import export_graph_module
from .registry import Backend, Variant, register
from .runtime import ArtifactRunner
from .spec import ExportSpec, logits_description
from .support import conversion_inputs

TARGET = "coreml"
DEBUG_HANDLE_MAP = "executorch_debug_handle_mapping.json"
RUNTIME_MAC = "Core ML (macOS, CPU_ONLY)"
NOT_RUN = "not run: Core ML runtime needs macOS"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
ARGMAX_NAME = "classes"

# Ops that must appear in the saved program per variant: every group needs at least one of its ops
# (iOS 18 programs spell int8 weights constexpr_blockwise_shift_scale instead of constexpr_affine_dequantize).
_INT8_WEIGHTS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
_EXPECTED_COMPRESSION: dict[str, tuple[tuple[str, ...], ...]] = {
    "w8": (_INT8_WEIGHTS,),
    "pal6": (("constexpr_lut_to_dense",),),
    "pal4": (("constexpr_lut_to_dense",),),
    "w8a8": (_INT8_WEIGHTS, ("quantize",), ("dequantize",)),
}


def image_preprocessing(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[float, list[float], list[float]]:
    """Fold ``(p/255 - mean_c)/std_c`` into Core ML's image preprocessing.

    ``ImageType`` offers one scalar ``scale`` and a per-channel ``bias``; ImageNet's std differs per channel.
    With s = mean(std): scale = 1/(255 s), bias_c = -mean_c/s gives (p/255 - mean_c)/s, and a constant
    per-channel factor s/std_c (0.987..1.009 for ImageNet) inside the graph makes it exact.
    Returns (scale, bias, per-channel factor).
    """
    s = float(np.mean(std))
    return 1.0 / (255.0 * s), [-m / s for m in mean], [s / sd for sd in std]


class _ImageModel(torch.nn.Module):
    """The exported graph: the per-channel std correction, the model, and optionally the class map."""

    def __init__(self, model: torch.nn.Module, channel_factor: Sequence[float], argmax: bool) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("factor", torch.tensor(channel_factor, dtype=torch.float32).view(1, 3, 1, 1))
        self.argmax = argmax

    def forward(self, image: torch.Tensor) -> Any:
        logits = self.model(image * self.factor)
        if self.argmax:
            return logits, logits.argmax(dim=1).to(torch.int32)
        return logits


def _palette(n: int) -> list[str]:
    """Distinct, deterministic colors for the Xcode preview (golden-angle hue walk)."""
    import colorsys

    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
        out.append(f"#{round(r * 255):02X}{round(g * 255):02X}{round(b * 255):02X}")
    return out


def _ios_target(min_ios: int) -> Any:
    import coremltools as ct

    target = getattr(ct.target, f"iOS{min_ios}", None)
    if target is None or min_ios < 15:
        raise ExportError(f"--min-ios {min_ios} is not supported for ML programs; use 15 or newer")
    return target


def _pass_pipeline(spec: ExportSpec, variant: str) -> tuple[Any, dict[str, Any] | None]:
    """``ct.convert``'s pass pipeline for ``variant``: the default one, for W8A8 with scalar zero
    points after it, or for the weight-compressed variants the recipe's
    (``CoreMLWeightOnly.conversion_pipeline``), and what the recipe does."""
    import coremltools as ct

    if variant == "w8a8":
        # the PyTorch frontend writes PT2E's symmetric per-channel weights as constexpr ops with a
        # vector of zero points, all 0; the weight-only recipes' pass makes them the scalar 0
        pipeline = ct.PassPipeline.DEFAULT
        pipeline.append_pass(register_scalar_zero_points())
        pipeline.append_pass("common::dead_code_elimination")  # the replaced ops' const inputs
        return pipeline, None
    if variant not in ("w8", "pal6", "pal4"):
        return ct.PassPipeline.DEFAULT, None
    recipe = recipe_for(spec)
    if not isinstance(recipe, CoreMLWeightOnly):
        raise ExportError(f"Core ML weight compression needs a weight-only recipe, got {recipe.name}")
    return recipe.conversion_pipeline()


def _compacted(mlmodel: Any) -> tuple[Any, dict[str, int]]:
    """The same ML program with its description compacted (see ``exporters.coreml_compact``)."""
    import coremltools as ct

    model_spec = mlmodel.get_spec()
    before = model_spec.ByteSize()
    stats = compact_program(model_spec)
    stats["description_bytes_before"], stats["description_bytes_after"] = before, model_spec.ByteSize()
    compacted = ct.models.MLModel(model_spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)
    return compacted, stats


def _set_metadata(mlmodel: Any, spec: ExportSpec, variant: str, scale: float, bias: list[float]) -> None:
    labels = spec.labels
    mlmodel.author = spec.author or "hrvit-mobile"
    mlmodel.license = spec.license or "see the model's checkpoint license"
    mlmodel.version = spec.version or "1.0"
    mlmodel.short_description = spec.description or (
        f"{spec.model_name} semantic segmentation, {spec.num_classes} classes, "
        f"{spec.img_size[0]}x{spec.img_size[1]} RGB input, {variant}"
    )
    h, w = spec.img_size
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image {w}x{h}; ImageNet mean/std normalization is applied inside the model"
    )
    mlmodel.output_description[OUTPUT_NAME] = (
        f"class logits (1, {spec.num_classes}, {h // 4}, {w // 4}); argmax over axis 1 is the class map"
    )
    if spec.argmax_output:
        mlmodel.output_description[ARGMAX_NAME] = f"class index map (1, {h // 4}, {w // 4}), int32"
    md = mlmodel.user_defined_metadata
    md["com.apple.coreml.model.preview.type"] = "imageSegmenter"
    md["com.apple.coreml.model.preview.params"] = json.dumps(
        {"labels": labels, "colors": _palette(len(labels))}
    )
    md["labels"] = json.dumps(labels)
    md["hrvit_mobile.variant"] = variant
    md["hrvit_mobile.normalization"] = json.dumps(
        {
            "mean": list(spec.normalization.mean),
            "std": list(spec.normalization.std),
            "image_scale": scale,
            "image_bias": bias,
        }
    )


@contextlib.contextmanager
def _write_failures_named(spec: ExportSpec) -> Iterator[None]:
    """coremltools' weight writer (used while converting, into a temporary folder, and while saving)
    reports a failed write as a RuntimeError without its errno: one line naming the likely causes."""
    try:
        yield
    except RuntimeError as exc:
        if "FileWriter" not in str(exc):
            raise
        raise OutputError(
            f"cannot write into {spec.out_dir}: coremltools could not write its weight file there or in "
            f"{tempfile.gettempdir()} (a full disk or a file size limit); nothing was written (free space "
            "or choose another output folder)"
        ) from None


def convert(
    model: torch.nn.Module,
    spec: ExportSpec,
    calib: Iterable[torch.Tensor] | np.ndarray | None = None,
) -> ArtifactResult:
    """Convert ``model`` (deploy form, fp32, eval) to an .mlpackage in ``spec.out_dir``, with its sidecar."""
    inputs = conversion_inputs(TARGET, spec, calib)
    spec, variant, example, calib_t = inputs.spec, inputs.variant, inputs.example, inputs.calib
    ios = _ios_target(spec.min_ios)
    # Core ML has a LayerNorm op: one op per norm instead of the delegable form's six and its mean row
    model = with_options(model.eval(), BACKEND.deploy_options(variant, spec.layout))
    layout = layout_of(model)
    native_norms = sum(type(m) is NativeLayerNorm for m in model.modules())
    scale, bias, factor = image_preprocessing(spec.normalization.mean, spec.normalization.std)

    def build(stage: Path) -> Built:
        import coremltools as ct

        graph = _ImageModel(model, factor, spec.argmax_output).eval()
        details: dict[str, Any] = {"quantization": None, "layout": layout, "native_layer_norms": native_norms}
        if variant == "w8a8":
            # the quantizer sees the graph the app will run: std correction included
            quant_info: dict[str, Any] = {}
            graph = quantize_pt2e(graph, example, recipe_for(spec), calib_t, spec, TARGET, quant_info)
            details["quantization"] = quant_info
        with step(TARGET, "torch.export + run_decompositions"), torch.no_grad():
            ep, details["exported_without_retrace"] = export_graph_module(
                graph, (example,), strict=spec.strict_export
            )
            # functionalization only ({}): a node rewrite where that is all it takes, else the retrace
            ep, details["decomposed_without_retrace"] = decompose(ep, {})
        outputs = [ct.TensorType(name=OUTPUT_NAME)]
        if spec.argmax_output:
            outputs.append(ct.TensorType(name=ARGMAX_NAME))
        precision = ct.precision.FLOAT32 if variant == "fp32" else ct.precision.FLOAT16
        pipeline, compression = _pass_pipeline(spec, variant)
        convert_step = "coremltools.convert"
        if compression is not None:
            details["quantization"] = compression
            convert_step += f" (compressing: {compression['scheme']})"
        with step(TARGET, convert_step), _write_failures_named(spec), validate_once_per_pipeline(), \
                small_constants_inline(), nonreplaceable_vars_as_bits(), propagation_after_changes_only(), \
                passes_without_program_dumps():
            mlmodel = ct.convert(
                ep,
                inputs=[
                    ct.ImageType(
                        name=INPUT_NAME,
                        shape=spec.input_shape,
                        scale=scale,
                        bias=bias,
                        color_layout=ct.colorlayout.RGB,
                    )
                ],
                outputs=outputs,
                convert_to="mlprogram",
                minimum_deployment_target=ios,
                compute_precision=precision,
                pass_pipeline=pipeline,
                skip_model_load=True,  # compiling needs macOS; the package is what we ship
            )
        if not spec.keep_op_names:
            with step(TARGET, "compact program (merge small consts, short names)"):
                mlmodel, details["program_compaction"] = _compacted(mlmodel)
        _set_metadata(mlmodel, spec, variant, scale, bias)
        details["compute_precision"] = "float32" if variant == "fp32" else "float16"
        details["minimum_deployment_target"] = f"iOS{spec.min_ios}"
        details["op_counts"] = dict(_op_counts(mlmodel.get_spec()))
        out = stage / f"{spec.name}.mlpackage"
        with step(TARGET, "save .mlpackage"), _write_failures_named(spec):
            mlmodel.save(str(out))
        # coremltools writes ExecuTorch's Core ML-delegate debug map beside a program converted from an
        # ExportedProgram (1.2 MB on b1); a standalone app never reads it, so it is not shipped
        debug_map = out / DEBUG_HANDLE_MAP
        if debug_map.exists():
            details["dropped"] = f"{DEBUG_HANDLE_MAP} ({debug_map.stat().st_size} bytes)"
            debug_map.unlink()
        h, w = spec.img_size
        n = spec.normalization
        input_desc = {
            "name": INPUT_NAME,
            "shape": list(spec.input_shape),
            "type": "ImageType",
            "color": "RGB",
            "layout": f"image {w}x{h}",
            "normalization": {
                "mean": list(n.mean),
                "std": list(n.std),
                "pixel_range": "RGB 0..255",
                "applied_by": "model",
                "image_scale": scale,
                "image_bias": bias,
                "in_graph_channel_factor": factor,
            },
        }
        outs = [logits_description(spec, OUTPUT_NAME)]
        outs[0]["dtype"] = "float32" if variant == "fp32" else "float16 compute, float32 output"
        if spec.argmax_output:
            outs.append(
                {
                    "name": ARGMAX_NAME,
                    "shape": [1, h // 4, w // 4],
                    "dtype": "int32",
                    "meaning": "class index map at 1/4 input resolution",
                }
            )
        return Built(main=out, input=input_desc, outputs=outs, details=details)

    return run_build(spec, variant, ".mlpackage", build)


def _op_counts(model_spec: Any) -> Counter[str]:
    """Every operation in the saved ML program, nested blocks included."""
    counts: Counter[str] = Counter()

    def walk(block: Any) -> None:
        for op in block.operations:
            counts[op.type] += 1
            for b in op.blocks:
                walk(b)

    for fn in model_spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            walk(block)
    return counts


def structural_check(artifact: Path, variant: str) -> dict[str, Any]:
    """What can be proven about an .mlpackage without the Core ML runtime."""
    import coremltools as ct

    mlmodel = ct.models.MLModel(str(artifact), skip_model_load=True)
    s = mlmodel.get_spec()
    counts = _op_counts(s) if s.WhichOneof("Type") == "mlProgram" else Counter()
    inputs = {i.name: i.type.WhichOneof("Type") for i in s.description.input}
    outputs = [o.name for o in s.description.output]
    weights = sorted((artifact / "Data").rglob("weight.bin"))
    expected = _EXPECTED_COMPRESSION.get(variant, ())
    compressed_ops = sum(counts[k] for group in expected for k in group)
    md = dict(s.description.metadata.userDefined)
    checks = {
        "loads": True,
        "is_ml_program": s.WhichOneof("Type") == "mlProgram",
        "image_input": inputs.get(INPUT_NAME) == "imageType",
        "logits_output": OUTPUT_NAME in outputs,
        "compressed_as_requested": all(any(counts[k] for k in group) for group in expected),
        "preview_metadata": md.get("com.apple.coreml.model.preview.type") == "imageSegmenter",
        "labels": "labels" in md,
    }
    return {
        "checks": checks,
        "ok": all(checks.values()),
        "specification_version": s.specificationVersion,
        "inputs": inputs,
        "outputs": outputs,
        "op_counts": dict(counts),
        "compressed_weight_ops": compressed_ops,
        "weights_bytes": sum(p.stat().st_size for p in weights),
    }


def validate(
    artifact: Path,
    images: np.ndarray,
    references: Sequence[np.ndarray],
    thresholds: ParityThresholds | None = None,
) -> ParityResult:
    """Core ML parity: predicts with Core ML on macOS; elsewhere runs the serialized ML program in the
    NumPy MIL evaluator (``runtime`` says which). Both carry a structural check of the package."""
    artifact = Path(artifact)
    meta = read_sidecar(artifact)
    thresholds = thresholds or default_thresholds(meta["bits"], meta["activations"])
    t0 = time.perf_counter()
    structural = structural_check(artifact, meta["variant"])
    if platform.system() != "Darwin":
        res = _validate_with_evaluator(artifact, images, references, thresholds)
    else:
        import coremltools as ct
        from PIL import Image

        mlmodel = ct.models.MLModel(str(artifact), compute_units=ct.ComputeUnit.CPU_ONLY)
        outputs = [
            np.asarray(mlmodel.predict({INPUT_NAME: Image.fromarray(img)})[OUTPUT_NAME]) for img in images
        ]
        res = compare(outputs, references, thresholds, RUNTIME_MAC)
    res.structural = structural
    if not structural["ok"]:
        failed = [k for k, v in structural["checks"].items() if not v]
        res.passed = False
        res.reason = "; ".join(filter(None, [res.reason, f"structural check failed: {', '.join(failed)}"]))
    res.seconds = time.perf_counter() - t0
    return res


def _validate_with_evaluator(
    artifact: Path,
    images: np.ndarray,
    references: Sequence[np.ndarray],
    thresholds: ParityThresholds,
) -> ParityResult:
    """Parity of the serialized program run by :mod:`.coreml_eval` (Linux, Windows)."""
    from .coreml_eval import MILEvaluationError, Program, UnsupportedOpError

    try:
        program = Program(artifact)
        outputs = [program.predict(img)[OUTPUT_NAME] for img in images]
    except UnsupportedOpError as e:
        # a gap in the evaluator, not a fault of the artifact: say so, and where it can be verified
        return ParityResult(
            runtime="none",
            ran=False,
            passed=None,
            thresholds=thresholds,
            reason=f"{NOT_RUN}, and {e}; verify on a Mac: hrvit_mobile.exporters.validate(ARTIFACT, model)",
        )
    except MILEvaluationError as e:
        # unreadable weights, a shape that contradicts the declared one: the package itself is broken
        return ParityResult(
            runtime=RUNTIME_EVALUATOR,
            ran=False,
            passed=False,
            thresholds=thresholds,
            reason=f"the ML program could not be evaluated: {e}",
        )
    bad = [i for i, out in enumerate(outputs) if not np.all(np.isfinite(out))]
    if bad:
        # NaN/inf would slip through max/min-based metrics; a non-finite logit is a failure by itself
        res = compare(outputs, references, thresholds, RUNTIME_EVALUATOR)
        res.passed, res.reason = False, f"non-finite logits (NaN or inf) on sample(s) {bad}"
        return res
    return compare(outputs, references, thresholds, RUNTIME_EVALUATOR)


def open_runner(path: Path, meta: dict[str, Any], threads: int | None = None) -> ArtifactRunner:
    """Core ML itself on macOS; elsewhere the serialized ML program in the MIL evaluator. The image
    input's scale and bias live in the program, as on a phone."""
    if platform.system() == "Darwin":
        import coremltools as ct
        from PIL import Image

        mlmodel = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        return ArtifactRunner(
            path, meta, RUNTIME_MAC,
            lambda image: np.asarray(mlmodel.predict({INPUT_NAME: Image.fromarray(image)})[OUTPUT_NAME]),
        )
    from .coreml_eval import Program

    program = Program(path)
    return ArtifactRunner(path, meta, RUNTIME_EVALUATOR, lambda image: program.predict(image)[OUTPUT_NAME])


def delegation(meta: dict[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    counts = (meta.get("details") or {}).get("op_counts") or {}
    return (
        f"ML program, {sum(counts.values())} ops; "
        "Core ML assigns CPU/GPU/Neural Engine on the device at load time",
        {"op_counts": counts},
    )


def image_input_model(model: torch.nn.Module) -> torch.nn.Module:
    """The graph W8A8 quantizes: ``model`` behind the image input's ImageNet scaling, as the app runs it."""
    _scale, _bias, factor = image_preprocessing(IMAGENET_MEAN, IMAGENET_STD)
    return _ImageModel(model, factor, False).eval()


def _weight_only(bits: int, mode: str, **options: Any) -> Callable[[ExportSpec], CoreMLWeightOnly]:
    return lambda spec: CoreMLWeightOnly(bits=bits, mode=mode, min_ios=spec.min_ios, **options)


def embedded_labels(path: Path) -> list[str] | None:
    """The class names in the package's metadata (``labels``, as written at export; None without)."""
    from coremltools.models.utils import load_spec

    labels = load_spec(str(path)).description.metadata.userDefined.get("labels")
    return json.loads(labels) if labels else None


def declared_io(path: Path) -> tuple[list[int], list[int]]:
    """(input shape, output shape) as the package's model description declares them (an image input as
    NCHW)."""
    from coremltools.models.utils import load_spec

    desc = load_spec(str(path)).description
    return _feature_shape(desc.input[0].type), _feature_shape(desc.output[0].type)


def _feature_shape(feature_type: Any) -> list[int]:
    if feature_type.WhichOneof("Type") == "imageType":
        return [1, 3, int(feature_type.imageType.height), int(feature_type.imageType.width)]
    return [int(d) for d in feature_type.multiArrayType.shape]


BACKEND = register(Backend(
    name=TARGET,
    aliases=("mlpackage",),
    extra="coreml",
    requirements=(("coremltools", "coremltools==9.0"),),
    runtime_package="coremltools",
    variants=(
        Variant("fp32", 32),
        Variant("fp16", 16),
        # weight-only int8 linear, fp16 compute
        Variant("w8", 8, recipe=_weight_only(8, "linear", weight_threshold=W8_WEIGHT_THRESHOLD)),
        # PT2E CoreMLQuantizer on the PyTorch side (calibration needs no Mac); it ships with ExecuTorch
        Variant("w8a8", 8, "int8", default=False, recipe=lambda spec: CoreMLW8A8(), calibrates=True,
                requirements=(("executorch.backends.apple.coreml.quantizer", "executorch==1.5.1"),),
                quantized_module=image_input_model),
        # k-means palettization, fp16 compute
        Variant("pal6", 6, recipe=_weight_only(6, "kmeans")),
        Variant("pal4", 4, recipe=_weight_only(4, "kmeans", small_tensors_int8=PAL4_SMALL_TENSORS_INT8)),
    ),
    # Core ML keeps the token layout: its speed cannot be measured off macOS
    layout="tokens",
    norm="native",
    app_file="model.mlpackage",
    apps=("ios",),
    app_entry={"compiled_name": "model.mlmodelc"},  # what Xcode makes of model.mlpackage in an app
    app_note="The Core ML package takes the camera image directly (an `ImageType` input named `image`, "
    "mean/std folded into the model): give it a CVPixelBuffer through Vision; do not normalize.",
    color="#d62728",
    convert=convert,
    validate=validate,
    open_runner=open_runner,
    delegation=delegation,
    embedded_labels=embedded_labels,
    declared_io=declared_io,
    verify_hint="on a Mac (Core ML runtime)",
))
