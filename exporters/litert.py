"""LiteRT / TFLite (.tflite) via litert-torch: fp32, fp16 weights, dynamic-range int8, full int8 static.

The float model is converted once with ``litert_torch.convert``; the quantized variants are made from that
float .tflite with ``ai_edge_quantizer`` (installed with litert-torch), which quantizes the TFLite graph
itself and so sees exactly the ops the runtime will run. For full int8 the graph input and output are
excluded from quantization (one QUANTIZE after the input, one DEQUANTIZE before the output).

Every variant is a MediaPipe Image Segmenter model, and the plain LiteRT Interpreter sees the same
contract: input ``image`` float32 (1, H, W, 3) RGB 0..255 (mean/std are applied inside the graph),
output ``logits`` float32 (1, H/4, W/4, K); TFLite metadata written by mediapipe's image segmenter
writer carries the labels (:mod:`.mediapipe_metadata`). ``validate`` runs the file in
``ai_edge_litert.interpreter.Interpreter``.
"""

from __future__ import annotations

import os
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrvit_mobile.deploy import with_options
from hrvit_mobile.deploy.channels_first import layout_of
from hrvit_mobile.deploy.fold import NearestUpsample
from hrvit_mobile.normalization import Normalization
from hrvit_mobile.quant.recipes import LiteRTInt8, LiteRTPostTraining, Prequantized

from .artifacts import ArtifactResult, read_sidecar
from .build import Built, run_build, step
from .errors import ExportError
from .mediapipe_metadata import with_associated_files, write_segmenter_metadata
from .parity import EXPORTER_SYNTHETIC, ParityResult, ParityThresholds, compare, default_thresholds
from .patches.litert_convert import arange_int32_in_place, layout_callables_traced_once
from .patches.litert_quantizer import calibration_reads_views
from .quantize import recipe_for
from .registry import Backend, Variant, register
from .runtime import ArtifactRunner, load_runner, sidecar_normalization
from .spec import ExportSpec
from .support import conversion_inputs

TARGET = "tflite"
RUNTIME = "ai_edge_litert.interpreter (host CPU)"
SIGNATURE = "serving_default"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class _ImageIO(torch.nn.Module):
    """The graph an app calls: ``image`` (1, H, W, 3) RGB float32 0..255 in, ``logits`` (1, h, w, K) out.

    Mean/std are applied here per channel (MediaPipe's metadata normalization cannot carry per-channel
    values), and the NHWC image becomes the model's NCHW and back; litert-torch's layout pass, which
    runs convolutions in NHWC, cancels these transposes against its own.
    """

    def __init__(self, model: torch.nn.Module, normalization: Normalization) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(normalization.mean, dtype=torch.float32)
        std = torch.tensor(normalization.std, dtype=torch.float32)
        self.register_buffer("scale", (1 / (255 * std)).view(1, 1, 1, 3))
        self.register_buffer("shift", (-mean / std).view(1, 1, 1, 3))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image * self.scale + self.shift).permute(0, 3, 1, 2)
        return {OUTPUT_NAME: self.model(x).permute(0, 2, 3, 1)}


def pixels(x: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """Normalized NCHW inputs back to the NHWC 0..255 image the .tflite takes (example and calibration)."""
    mean = torch.tensor(normalization.mean, dtype=torch.float32)
    std = torch.tensor(normalization.std, dtype=torch.float32)
    return ((x.permute(0, 2, 3, 1) * std + mean) * 255).contiguous()


def image_input_description(spec: ExportSpec) -> dict[str, Any]:
    """The sidecar's input: what MediaPipe and a plain Interpreter feed."""
    h, w = spec.img_size
    n = spec.normalization
    return {
        "name": INPUT_NAME, "shape": [1, h, w, 3], "dtype": "float32", "layout": "NHWC", "color": "RGB",
        "normalization": {"mean": list(n.mean), "std": list(n.std), "pixel_range": "RGB 0..255 as float32",
                          "applied_by": "model"},
    }


def logits_nhwc_description(spec: ExportSpec) -> dict[str, Any]:
    h, w = spec.img_size
    return {
        "name": OUTPUT_NAME, "shape": [1, h // 4, w // 4, spec.num_classes], "dtype": "float32",
        "layout": "NHWC",
        "meaning": "class logits at 1/4 input resolution; argmax over the last axis gives the class map",
    }


def release_freed_memory() -> None:
    """Collect garbage and hand the allocator's free heap back to the OS (glibc ``malloc_trim``).

    Conversion leaves much of its transient memory free but still mapped in the process, so a step
    that comes after it (static int8 calibration) peaks on top of it. No-op where there is no glibc.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        trim = None
    if trim is not None:
        trim(0)


def _quantize(
    float_model: bytes, spec: ExportSpec, calib: Sequence[torch.Tensor]
) -> tuple[bytes, dict[str, Any]]:
    """The spec's post-conversion recipe (ai_edge_quantizer) over the float .tflite."""
    recipe = recipe_for(spec)
    if not isinstance(recipe, LiteRTPostTraining):
        raise ExportError(f"LiteRT exports quantize the converted graph; recipe {recipe.name} does not apply")
    calibrating = recipe.needs_calibration
    what = f"quantize ({recipe.variant})" + (f", calibrate on {len(calib)} inputs" if calibrating else "")
    with step(TARGET, what), calibration_reads_views():
        data, info = recipe.apply(float_model, calib if recipe.needs_calibration else ())
    if calibrating:
        info = {**info, "calibration_samples": len(calib),
                "calibration_source": spec.calib_source or EXPORTER_SYNTHETIC}
    return data, info


def shared_vector_builder(initial_size: int = 1024) -> Any:
    """A flatbuffers ``Builder`` that writes each distinct numeric vector once and points every table
    holding the same contents at that one copy (flatbuffers allows any number of references to an
    object; its ``CreateSharedString`` does the same for strings).

    Why: every per-channel int8 tensor carries its own scales and a zero-point vector of int64 zeros
    (1.15 MB of zeros in HRViT-b1's static int8 .tflite). Buffer contents (``uint8`` vectors) are not
    shared: a delegate may key its packed-weight cache on the weight pointer.
    """
    import flatbuffers

    class SharedVectorBuilder(flatbuffers.Builder):
        def __init__(self, size: int) -> None:
            super().__init__(size)
            self._vectors: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x: np.ndarray) -> int:  # flatbuffers' own name
            if x.dtype == np.uint8:
                return super().CreateNumpyVector(x)
            key = (x.dtype.str, x.tobytes())
            if key not in self._vectors:
                self._vectors[key] = super().CreateNumpyVector(x)
            return self._vectors[key]

    return SharedVectorBuilder(initial_size)


def compact_flatbuffer(model: bytes) -> tuple[bytes, dict[str, int]]:
    """The same model, smaller: internal tensor names shortened, identical numeric vectors stored once.

    - litert-torch names every tensor by its full module path (``_ImageIO/...DeployStage_7/.../attn_v;2``),
      up to ~1 kB each: 0.4 MB of a 1.9 MB tiny model, and it does not shrink with quantization, so it
      would spoil the int8 size ratio. Names are cut to the last scope component; the signature
      (``image`` -> ``logits``) refers to tensors by index and graph input/output names are kept.
    - Quantization parameters and shapes are written once per distinct contents
      (:func:`shared_vector_builder`); the interpreter copies them when it builds its tensors.

    - Constant tensors with byte-identical data share one buffer (:func:`share_identical_buffers`).

    Nothing an app or the runtime reads changes (tested: identical interpreter outputs). Returns the
    bytes and the bytes saved by each step.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    for buffer in obj.buffers:
        # buffers the writer stored past the flatbuffer (offset/size; ai_edge_quantizer's fp16 output)
        # come back as bytearrays, which the generated Pack writes one byte per Python call (~50 s
        # for a 17 MB b1 model); as uint8 arrays they are written as one vector, the same bytes
        if isinstance(buffer.data, (bytes, bytearray, memoryview)):
            buffer.data = np.frombuffer(buffer.data, dtype=np.uint8)
    for sg in obj.subgraphs:
        keep = {*sg.inputs, *sg.outputs}
        for i, t in enumerate(sg.tensors):
            if i in keep or not t.name:
                continue
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            t.name = name.rsplit("/", 1)[-1][-64:].encode()
    renamed = len(flatbuffer_utils.convert_object_to_bytearray(obj))
    shared = share_identical_buffers(obj)
    builder = shared_vector_builder()
    builder.Finish(obj.Pack(builder), file_identifier=b"TFL3")
    out = bytes(builder.Output())
    return out, {"tensor_names_shortened": len(model) - renamed, "shared_buffers": shared,
                 "shared_vectors": renamed - len(out) - shared}


def builtin_code(code: Any) -> int:
    """The builtin operator of an ``OperatorCodeT``: schema v3 moved it from ``deprecatedBuiltinCode``
    (an int8, capped at 127) to ``builtinCode``, and writers fill either, so the larger one holds it."""
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def share_identical_buffers(obj: Any) -> int:
    """Point constant tensors whose data are byte-identical at one buffer and empty the others (in
    place on a ``ModelT``); returns the data bytes no longer stored.

    ai_edge_quantizer writes a buffer per quantized constant, so equal constants that litert-torch
    had stored once come apart again: the static int8 b1 holds 301 kB of duplicates (the zero rows
    that pad stripes, the padded-key masks, repeated small vectors). A read-only constant may be
    shared by many tensors, as litert-torch's own float files do. Variable tensors (written by the
    interpreter), buffers named by metadata and the operands of ops whose weights a delegate packs
    and may cache by data pointer (convolutions, fully connected, batch matmul) keep their own: on
    b1 those are 3.5 kB of the duplicates, the rest feed CONCATENATION.
    """
    import hashlib

    from ai_edge_litert import schema_py_generated as fb

    packed = {fb.BuiltinOperator.CONV_2D, fb.BuiltinOperator.DEPTHWISE_CONV_2D,
              fb.BuiltinOperator.FULLY_CONNECTED, fb.BuiltinOperator.TRANSPOSE_CONV,
              fb.BuiltinOperator.BATCH_MATMUL, fb.BuiltinOperator.CONV_3D}
    pinned = {m.buffer for m in (obj.metadata or [])}
    for sg in obj.subgraphs:
        pinned.update(t.buffer for t in sg.tensors if t.isVariable)
        for op in sg.operators:
            if builtin_code(obj.operatorCodes[op.opcodeIndex]) in packed:
                pinned.update(sg.tensors[i].buffer for i in op.inputs if i >= 0)
    first: dict[tuple[int, bytes], int] = {}
    canonical: dict[int, int] = {}
    for i, buf in enumerate(obj.buffers):
        if i in pinned or buf.data is None or len(buf.data) == 0 or buf.offset:
            continue
        data = bytes(buf.data)
        key = (len(data), hashlib.sha256(data).digest())
        canonical[i] = first.setdefault(key, i)
    for sg in obj.subgraphs:
        for t in sg.tensors:
            t.buffer = canonical.get(t.buffer, t.buffer)
    saved = 0
    for i, target in canonical.items():
        if target != i:
            saved += len(obj.buffers[i].data)
            obj.buffers[i].data = None
    return saved


def float_io(model: bytes) -> tuple[bytes, list[str]]:
    """Give an int8-in/int8-out .tflite a float32 input and output: QUANTIZE after the input, DEQUANTIZE
    before the output, with the quantization parameters the graph already has.

    litert-torch's conversion of a PT2E-quantized graph folds the first quantize and the last dequantize
    into the graph's I/O types; the app contract (and the PTQ int8 .tflite) is float32 image in, float32
    logits out. The new float tensors take over the I/O names and the signature entries, so an app
    reading ``image``/``logits`` is unchanged; returns the new bytes and the names it changed.
    """
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    sg = obj.subgraphs[0]
    quantized = (fb.TensorType.INT8, fb.TensorType.UINT8)

    def opcode(builtin: int) -> int:
        for i, code in enumerate(obj.operatorCodes):
            if builtin_code(code) == builtin:
                return i
        code = fb.OperatorCodeT(deprecatedBuiltinCode=builtin, version=2, builtinCode=builtin)
        obj.operatorCodes.append(code)
        return len(obj.operatorCodes) - 1

    def float_twin(index: int) -> int:
        """A float32 tensor shaped like ``index`` that takes over its name (the int8 one gets a suffix)."""
        old = sg.tensors[index]
        twin = fb.TensorT(shape=list(old.shape), type=fb.TensorType.FLOAT32, buffer=0, name=old.name,
                          shapeSignature=old.shapeSignature, hasRank=old.hasRank)
        old.name = (old.name or b"") + b"_int8"
        sg.tensors.append(twin)
        return len(sg.tensors) - 1

    renamed: dict[int, int] = {}
    for pos, index in enumerate(list(sg.inputs)):
        if sg.tensors[index].type in quantized:
            twin = float_twin(index)
            sg.operators.insert(0, fb.OperatorT(opcodeIndex=opcode(fb.BuiltinOperator.QUANTIZE),
                                                inputs=[twin], outputs=[index]))
            sg.inputs[pos] = renamed[index] = twin
    for pos, index in enumerate(list(sg.outputs)):
        if sg.tensors[index].type in quantized:
            twin = float_twin(index)
            sg.operators.append(fb.OperatorT(opcodeIndex=opcode(fb.BuiltinOperator.DEQUANTIZE),
                                             inputs=[index], outputs=[twin]))
            sg.outputs[pos] = renamed[index] = twin
    for sig in obj.signatureDefs or []:
        for entry in [*(sig.inputs or []), *(sig.outputs or [])]:
            entry.tensorIndex = renamed.get(entry.tensorIndex, entry.tensorIndex)
    names = [sg.tensors[i].name.decode() for i in renamed.values()]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj)), names


def _graph_facts(model_path: Path) -> dict[str, Any]:
    """Op histogram and I/O dtypes, read by the runtime's own interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model_path))
    facts: dict[str, Any] = {
        "inputs": [
            {"name": d["name"], "dtype": np.dtype(d["dtype"]).name, "shape": d["shape"].tolist()}
            for d in it.get_input_details()
        ],
        "outputs": [
            {"name": d["name"], "dtype": np.dtype(d["dtype"]).name, "shape": d["shape"].tolist()}
            for d in it.get_output_details()
        ],
        "signatures": it.get_signature_list(),
    }
    try:  # the op list is a private accessor of the interpreter; a missing one only costs the histogram
        ops = it._get_ops_details()
        facts["op_counts"] = dict(Counter(op["op_name"] for op in ops))
        tensors = {t["index"]: t for t in it.get_tensor_details()}
        dtypes: Counter[str] = Counter()
        for op in ops:
            for i in op["outputs"]:
                if i in tensors:
                    dtypes[np.dtype(tensors[i]["dtype"]).name] += 1
        facts["activation_dtypes"] = dict(dtypes)
    except AttributeError:
        pass
    return facts


def convert(
    model: torch.nn.Module,
    spec: ExportSpec,
    calib: Iterable[torch.Tensor] | np.ndarray | None = None,
) -> ArtifactResult:
    """Convert ``model`` (deploy form, fp32, eval) to a .tflite in ``spec.out_dir``, with its sidecar."""
    inputs = conversion_inputs(TARGET, spec, calib)
    spec, variant, example, calib_t = inputs.spec, inputs.variant, inputs.example, inputs.calib
    model = model.eval()

    def build(stage: Path) -> Built:
        import litert_torch

        recipe = recipe_for(spec) if variant != "fp32" else None
        prequantized = isinstance(recipe, Prequantized)
        kwargs: dict[str, Any] = {}
        if prequantized:  # a converted PT2E graph (QAT): its quantize/dequantize pairs become int8 tensors
            from litert_torch.quantize.quant_config import QuantConfig

            kwargs["quant_config"] = QuantConfig(pt2e_quantizer=LiteRTInt8().quantizer())
        graph = model
        if not prequantized:  # LiteRT has a nearest resize; the deploy form's upsampler is for XNNPACK
            graph = with_options(model, BACKEND.deploy_options(variant, spec.layout))
        details: dict[str, Any] = {"quantization": None, "layout": layout_of(graph)}
        if not prequantized:
            details["nearest_upsamplers_as_resize"] = sum(
                isinstance(m, NearestUpsample) and m.mode == "resize" for m in graph.modules())
        with (
            step(TARGET, "litert_torch.convert"), torch.no_grad(), arange_int32_in_place() as aranges,
            layout_callables_traced_once() as inlined,
        ):
            edge = litert_torch.convert(
                _ImageIO(graph, spec.normalization).eval(),
                sample_kwargs={INPUT_NAME: pixels(example, spec.normalization)},
                strict_export=spec.strict_export, **kwargs,
            )
        details["aranges_int32_in_place"] = aranges["arange"]
        details["layout_callables_traced_once"] = dict(inlined)
        # serialized in memory: the file writer of litert-torch aborts the whole process on a full disk,
        # where a Python write of the final file raises an OSError the staging turns into one line
        data = edge.model_content()
        del edge  # the converted model and its MLIR state are not needed past this point
        out = stage / f"{spec.name}.tflite"
        if prequantized:
            data, changed = float_io(data)
            details["quantization"] = {**recipe.describe(), "calibration_samples": 0,
                                       "float_io": f"QUANTIZE/DEQUANTIZE added at {changed}"}
        elif variant != "fp32":
            release_freed_memory()  # calibration adds the interpreter's 2.5 GB (b1) on top of this
            calib_pixels = [pixels(x, spec.normalization) for x in calib_t]
            data, details["quantization"] = _quantize(data, spec, calib_pixels)
        compact, saved = compact_flatbuffer(data)  # also brings out-of-line buffers inline for the writer
        with step(TARGET, "MediaPipe metadata"):
            written, details["mediapipe_metadata"] = write_segmenter_metadata(compact, spec.labels)
        # the writer packs the model the stock way (every vector once per table) and appends the labels
        # as a zip: compacted again, with the labels appended behind it again
        compact = with_associated_files(compact_flatbuffer(written)[0], written)
        details["compaction"] = {
            "tensor_names": "shortened to the last scope component "
            f"(-{saved['tensor_names_shortened']} bytes)",
            "shared_vectors": "identical quantization parameters and shapes stored once "
            f"(-{saved['shared_vectors']} bytes)",
            "shared_buffers": "constants with identical data stored once "
            f"(-{saved['shared_buffers']} bytes of data)",
        }
        out.write_bytes(compact)
        details.update(_graph_facts(out))
        return Built(
            main=out, input=image_input_description(spec), outputs=[logits_nhwc_description(spec)],
            details=details,
        )

    return run_build(spec, variant, ".tflite", build)


def validate(
    artifact: Path,
    images: np.ndarray,
    references: Sequence[np.ndarray],
    thresholds: ParityThresholds | None = None,
    num_threads: int | None = None,
) -> ParityResult:
    """Run ``artifact`` (.tflite) in the LiteRT Interpreter on uint8 RGB ``images`` vs ``references``."""
    artifact = Path(artifact)
    meta = read_sidecar(artifact)
    thresholds = thresholds or default_thresholds(meta["bits"], meta["activations"])
    t0 = time.perf_counter()
    try:
        runner = load_runner(artifact, meta, threads=num_threads)
        outputs = runner.predict(images)
    except (RuntimeError, ValueError) as e:
        # the interpreter rejects the file: report it as a failed parity, keep the artifact for inspection
        return ParityResult(
            runtime=RUNTIME,
            ran=True,
            passed=False,
            thresholds=thresholds,
            reason=f"runtime error: {e}",
            seconds=time.perf_counter() - t0,
        )
    result = compare(outputs, references, thresholds, RUNTIME)
    result.seconds = time.perf_counter() - t0
    it = runner.native
    in_d, out_d = it.get_input_details()[0], it.get_output_details()[0]
    result.structural = {
        "input_dtype": np.dtype(in_d["dtype"]).name,
        "output_dtype": np.dtype(out_d["dtype"]).name,
        "input_shape": in_d["shape"].tolist(),
        "output_shape": out_d["shape"].tolist(),
        "signature": it.get_signature_list().get(SIGNATURE),
    }
    return result


def open_runner(path: Path, meta: dict[str, Any], threads: int | None = None) -> ArtifactRunner:
    """The .tflite in the LiteRT Interpreter, through its signature, as an app would call it."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
    runner = interpreter.get_signature_runner(SIGNATURE)
    if meta["input"].get("layout") == "NCHW":  # exported before the image contract: normalized NCHW in
        norm = sidecar_normalization(meta)

        def run_one(image: np.ndarray) -> np.ndarray:
            return runner(**{INPUT_NAME: norm.apply(image[None])})[OUTPUT_NAME]
    else:  # the RGB image as it is; logits NHWC, returned NCHW as every runner does

        def run_one(image: np.ndarray) -> np.ndarray:
            logits = runner(**{INPUT_NAME: image[None].astype(np.float32)})[OUTPUT_NAME]
            return np.ascontiguousarray(logits.transpose(0, 3, 1, 2))

    return ArtifactRunner(path, meta, RUNTIME, run_one, native=interpreter)


def op_counts(path: Path) -> dict[str, int] | None:
    """Op name -> count of the .tflite, from the interpreter; None when it cannot list them here."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        ops = Interpreter(model_path=str(path))._get_ops_details()  # its only op listing; private, stable
    except Exception:  # op counts are a nicety: a report must not fail on them
        return None
    counts = Counter(op["op_name"] for op in ops)
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def delegation(meta: dict[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    counts = op_counts(path)
    if counts is None:
        return "n/a (op list not readable here)", {}
    return (
        f"{sum(counts.values())} ops; the host interpreter applies its default XNNPACK delegate",
        {"op_counts": counts},
    )


LABELS_FILE = "labels.txt"  # the name MediaPipe's metadata writer gives the labels file


def embedded_labels(path: Path) -> list[str] | None:
    """The labels file of the .tflite's MediaPipe metadata, zipped behind the flatbuffer (None without)."""
    try:
        with zipfile.ZipFile(path) as packed:
            return packed.read(LABELS_FILE).decode("utf-8").splitlines()
    except (zipfile.BadZipFile, KeyError):
        return None


def declared_io(path: Path) -> tuple[list[int], list[int]]:
    """(input shape, output shape) as the .tflite declares them (NHWC)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    return it.get_input_details()[0]["shape"].tolist(), it.get_output_details()[0]["shape"].tolist()


BACKEND = register(Backend(
    name=TARGET,
    aliases=("litert",),
    extra="tflite",
    requirements=(
        ("litert_torch", "litert-torch==0.10.0"),
        ("ai_edge_litert", "ai-edge-litert"),
        ("ai_edge_quantizer", "ai-edge-quantizer"),
        ("mediapipe", "mediapipe==1.2.2"),  # its metadata writer makes the .tflite a MediaPipe model
    ),
    runtime_package="ai-edge-litert",
    variants=(
        Variant("fp32", 32),
        Variant("fp16", 16, recipe=lambda spec: LiteRTPostTraining(variant="fp16")),  # fp16 weights
        # dynamic-range: int8 weights, activations quantized at run time
        Variant("int8dr", 8, recipe=lambda spec: LiteRTPostTraining(variant="int8dr")),
        # full int8 static, float32 image in / float32 logits out
        Variant("int8", 8, "int8", default=False, recipe=lambda spec: LiteRTPostTraining(variant="int8"),
                calibrates=True),
    ),
    # LiteRT runs the channels-first form in 1.17x the token layout's time (litert-torch moves NCHW
    # graphs to NHWC with transposes of its own; `python3 benchmarks/layout.py --runtimes tflite`)
    layout="tokens",
    upsampler="resize",
    app_file="model.tflite",
    apps=("android", "web"),
    app_entry={"signature": SIGNATURE},
    app_note="The .tflite is a MediaPipe Image Segmenter model: its input `image` is the frame itself "
    "(float32 NHWC, RGB 0..255, mean/std inside the model), its output `logits` is NHWC, and its metadata "
    "carries the labels, so MediaPipe's ImageSegmenter loads it as it is; with the LiteRT Interpreter "
    "feed the resized RGB frame as floats and do not normalize.",
    color="#2ca02c",
    convert=convert,
    validate=validate,
    open_runner=open_runner,
    delegation=delegation,
    embedded_labels=embedded_labels,
    declared_io=declared_io,
))
