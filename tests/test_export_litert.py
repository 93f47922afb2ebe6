"""LiteRT exports, each loaded back in ``ai_edge_litert``'s Interpreter with no project code in the loop."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_module

from hrvit_mobile.exporters import ExportSpec, ParityThresholds, export
from hrvit_mobile.exporters.artifacts import sha256_file
from hrvit_mobile.exporters.parity import synthetic_images
from hrvit_mobile.exporters.testing import TinySegmenter
from hrvit_mobile.normalization import IMAGENET_MEAN, IMAGENET_STD

require_module("litert_torch")
Interpreter = require_module("ai_edge_litert.interpreter").Interpreter

SIZE = (64, 64)


def _normalized(n: int = 2, seed: int = 7) -> np.ndarray:
    images = synthetic_images(n, SIZE, seed=seed)
    x = (images.astype(np.float32) / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _pixels(n: int = 2, seed: int = 7) -> np.ndarray:
    """What the .tflite takes: RGB (N, H, W, 3) as float32 0..255 (the images behind ``_normalized``)."""
    return synthetic_images(n, SIZE, seed=seed).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> TinySegmenter:
    return TinySegmenter(num_classes=5)


@pytest.mark.parametrize(
    ("bits", "activations", "variant", "max_abs", "min_agree"),
    [
        (32, None, "fp32", 1e-4, 1.0),
        (16, None, "fp16", 0.05, 0.98),
        (8, None, "int8dr", None, 0.9),
        (8, 8, "int8", None, 0.9),
    ],
)
def test_litert_variant(
    model: TinySegmenter,
    tmp_path: Path,
    bits: int,
    activations: int | None,
    variant: str,
    max_abs: float | None,
    min_agree: float,
) -> None:
    # The random tiny model loses more to per-tensor int8 activations (cosine ~0.96) than the real
    # architecture does (hrvit_nano: 0.9993, see the slow test); here the pipeline is under test.
    thresholds = ParityThresholds(min_cosine=0.9, min_argmax_agreement=0.9) if variant == "int8" else None
    spec = ExportSpec(
        target="tflite",
        bits=bits,
        activations=activations,
        img_size=SIZE,
        num_classes=5,
        out_dir=tmp_path,
        model_name="tiny",
        thresholds=thresholds,
    )
    report = export(model, spec)
    path = tmp_path / f"tiny_64x64_tflite_{variant}.tflite"
    assert report.artifact.path == path and report.ok, report.summary()

    # the real interpreter, straight from the file; the app contract: the RGB image as float32 0..255
    # NHWC in (mean/std inside the graph), float32 logits NHWC out
    it = Interpreter(model_path=str(path))
    assert it.get_input_details()[0]["dtype"] == np.float32
    assert it.get_output_details()[0]["dtype"] == np.float32
    runner = it.get_signature_runner("serving_default")
    pixels = _pixels()
    out = np.concatenate([runner(image=pixels[i : i + 1])["logits"] for i in range(2)])
    with torch.no_grad():
        ref = model(torch.from_numpy(_normalized())).numpy().transpose(0, 2, 3, 1)
    assert out.shape == (2, 16, 16, 5)
    if max_abs is not None:
        assert np.abs(out - ref).max() <= max_abs
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= min_agree

    meta = json.loads((tmp_path / (path.name + ".json")).read_text())
    assert meta["variant"] == variant and meta["input"]["name"] == "image"
    assert meta["input"]["shape"] == [1, *SIZE, 3] and meta["input"]["layout"] == "NHWC"
    assert meta["input"]["normalization"]["applied_by"] == "model"
    assert meta["outputs"][0]["shape"] == [1, 16, 16, 5] and meta["outputs"][0]["layout"] == "NHWC"
    assert meta["files"][0]["sha256"] == sha256_file(path) and meta["size_bytes"] == path.stat().st_size
    assert meta["parity"]["ran"] is True and meta["parity"]["passed"] is True
    if variant == "int8":
        dtypes = meta["details"]["activation_dtypes"]
        # int8 inside; float32 only out of a DEQUANTIZE (the output edge, the float islands' inputs) and
        # out of the ops the recipe keeps float because XNNPACK has no int8 kernel for them
        from ai_edge_litert.interpreter import OpResolverType

        from hrvit_mobile.quant.recipes.litert import XNNPACK_FLOAT_OPS

        graph = Interpreter(model_path=str(path),  # the graph as stored, no delegate partitions in it
                            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        types = {d["index"]: np.dtype(d["dtype"]).name for d in graph.get_tensor_details()}
        float_out = {op["op_name"] for op in graph._get_ops_details()
                     if "float32" in {types[i] for i in op["outputs"]}}
        assert float_out <= {"DEQUANTIZE", *XNNPACK_FLOAT_OPS}
        assert dtypes.get("int8", 0) > dtypes.get("float32", 0)
        ops = meta["details"]["op_counts"]
        islands = sum(ops.get(op, 0) for op in XNNPACK_FLOAT_OPS)
        # QUANTIZE at the input and after each float op, DEQUANTIZE at the output and before each
        assert islands > 0 and ops["QUANTIZE"] == 1 + islands and ops["DEQUANTIZE"] >= 1 + islands


def test_int8_is_smaller_than_fp32(model: TinySegmenter, tmp_path: Path) -> None:
    torch.manual_seed(0)
    wide = TinySegmenter(num_classes=5, channels=64)  # enough weights for size to be about weights
    common = dict(target="tflite", img_size=SIZE, num_classes=5, out_dir=tmp_path, run_parity=False)
    fp32 = export(wide, ExportSpec(bits=32, **common)).artifact.size_bytes
    int8 = export(wide, ExportSpec(bits=8, **common)).artifact.size_bytes
    assert int8 < 0.6 * fp32


def test_compaction_shares_quantization_vectors_and_changes_no_output(tmp_path: Path) -> None:
    from ai_edge_litert.tools import flatbuffer_utils

    from hrvit_mobile.exporters.litert import compact_flatbuffer

    torch.manual_seed(0)
    wide = TinySegmenter(num_classes=5, channels=64)
    spec = ExportSpec(target="tflite", bits=8, activations=8, img_size=SIZE, num_classes=5, out_dir=tmp_path,
                      calib_samples=2, run_parity=False)
    path = export(wide, spec).artifact.path
    compacted = path.read_bytes()
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert "stored once" in meta["details"]["compaction"]["shared_vectors"]
    # the same model written the stock way: one copy of every vector per tensor
    stock = bytes(flatbuffer_utils.convert_object_to_bytearray(
        flatbuffer_utils.read_model_from_bytearray(bytearray(compacted))))
    again, saved = compact_flatbuffer(stock)
    assert saved["shared_vectors"] > 0 and len(again) == len(stock) - saved["shared_vectors"]
    # the same size up to flatbuffer alignment (buffers emptied by sharing are laid out anew); the file
    # ends with the labels (a zip the reader ignores)
    with zipfile.ZipFile(path) as zf:
        flatbuffer_size = min(info.header_offset for info in zf.infolist())
    assert abs(len(again) - flatbuffer_size) <= 16
    x = _pixels(1)
    outputs = []
    for data in (stock, again):
        it = Interpreter(model_content=data)
        outputs.append(it.get_signature_runner("serving_default")(image=x)["logits"])
    np.testing.assert_array_equal(outputs[0], outputs[1])


class _PaddedByZeros(torch.nn.Module):
    """A conv whose output is padded twice with equal zero rows (as stripe attention pads)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("zeros_a", torch.zeros(1, 8, 2, 64))
        self.register_buffer("zeros_b", torch.zeros(1, 8, 2, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.cat([y, self.zeros_a], dim=2) * 2.0 + torch.cat([y + 1.0, self.zeros_b], dim=2)


def test_identical_constants_share_one_buffer_but_packed_weights_do_not(tmp_path: Path) -> None:
    """Constants with equal bytes (here: written apart, as ai_edge_quantizer does) end up in one buffer;
    a convolution's weights stay in their own even when another tensor holds the same bytes; the
    interpreter computes the same output."""
    import litert_torch
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    from hrvit_mobile.exporters.litert import builtin_code, compact_flatbuffer

    torch.manual_seed(0)
    x = torch.from_numpy(_normalized(1))
    litert_torch.convert(_PaddedByZeros().eval(), (x,)).export(str(tmp_path / "padded.tflite"))
    data = (tmp_path / "padded.tflite").read_bytes()
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    sg = obj.subgraphs[0]

    def ops_of(builtin: int) -> list:
        codes = [builtin_code(c) for c in obj.operatorCodes]
        return [op for op in sg.operators if codes[op.opcodeIndex] == builtin]

    def twin_of(tensor: int) -> int:
        """A new constant tensor like ``tensor`` holding a copy of its data in a buffer of its own."""
        old, copy = sg.tensors[tensor], fb.BufferT()
        copy.data = np.array(obj.buffers[old.buffer].data, copy=True)
        obj.buffers.append(copy)
        twin = fb.TensorT()
        twin.shape, twin.type, twin.quantization = list(old.shape), old.type, old.quantization
        twin.name, twin.buffer = (old.name or b"") + b"_twin", len(obj.buffers) - 1
        sg.tensors.append(twin)
        return len(sg.tensors) - 1

    cat_ops = ops_of(fb.BuiltinOperator.CONCATENATION)
    assert len(cat_ops) == 2
    cat_ops[1].inputs[1] = twin_of(cat_ops[1].inputs[1])  # the two zero blocks apart, as after quantizing
    zeros = [op.inputs[1] for op in cat_ops]
    assert len({sg.tensors[t].buffer for t in zeros}) == 2
    (conv,) = [list(op.inputs) for op in ops_of(fb.BuiltinOperator.CONV_2D)]
    # a constant with the conv weight's bytes: stays apart from the weight, which a delegate may cache
    weight_twin = twin_of(conv[1])
    apart = bytes(flatbuffer_utils.convert_object_to_bytearray(obj))

    compacted, saved = compact_flatbuffer(apart)
    assert saved["shared_buffers"] == 8 * 2 * 64 * 4  # one float32 zero block
    again = flatbuffer_utils.read_model_from_bytearray(bytearray(compacted)).subgraphs[0]
    assert again.tensors[zeros[0]].buffer == again.tensors[zeros[1]].buffer
    assert again.tensors[conv[1]].buffer != again.tensors[weight_twin].buffer
    outputs = []
    for model in (apart, compacted):
        interpreter = Interpreter(model_content=model)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.numpy())
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    np.testing.assert_array_equal(outputs[0], outputs[1])


@pytest.mark.slow
@pytest.mark.parametrize(("bits", "activations"), [(32, None), (8, 8)])
def test_litert_nano(deploy_nano, tmp_path: Path, bits: int, activations: int | None) -> None:
    """The real architecture. fp32 at the default thresholds (max |d| <= 1e-3, argmax >= 99.9 %); static
    int8 of these untrained weights converts and runs with no limits (tests/test_demo_int8.py holds the
    trained demo model to the default thresholds)."""
    deployed = deploy_nano((64, 96))  # dense and factored DES maps
    report = export(
        deployed,
        ExportSpec(
            target="tflite",
            bits=bits,
            activations=activations,
            img_size=(64, 96),
            num_classes=7,
            out_dir=tmp_path,
            model_name="hrvit_nano",
            thresholds=None if bits == 32 else ParityThresholds(),
        ),
    )
    assert report.ok and report.parity.ran, report.summary()
    # the fusion upsamplers are LiteRT's nearest resize, not a per-channel split of a grouped TRANSPOSE_CONV
    details = report.artifact.details
    assert details["nearest_upsamplers_as_resize"] > 0
    assert "TRANSPOSE_CONV" not in details["op_counts"]
    assert details["op_counts"]["RESIZE_NEAREST_NEIGHBOR"] == details["nearest_upsamplers_as_resize"]


def test_calibration_on_views_changes_no_statistic(tmp_path: Path) -> None:
    """The static int8 file is byte-identical whether calibration copies tensors or reads views."""
    import litert_torch
    from ai_edge_quantizer.utils import tfl_interpreter_utils

    from hrvit_mobile.exporters.litert import INPUT_NAME, _ImageIO, calibration_reads_views
    from hrvit_mobile.normalization import Normalization
    from hrvit_mobile.quant.recipes import LiteRTPostTraining

    torch.manual_seed(0)
    wide = TinySegmenter(num_classes=5, channels=32).eval()
    calib = [torch.from_numpy(x[None]) for x in _pixels(3)]
    float_model = litert_torch.convert(_ImageIO(wide, Normalization()).eval(),
                                       sample_kwargs={INPUT_NAME: calib[0]})
    float_model.export(str(tmp_path / "float.tflite"))
    data = (tmp_path / "float.tflite").read_bytes()
    recipe = LiteRTPostTraining(variant="int8", calibration="preserve_all_tensors")  # the mode reading them
    copied, _ = recipe.apply(data, calib)
    with calibration_reads_views():
        viewed, _ = recipe.apply(data, calib)
        # what the calibrator reads inside the block: views of the preserved buffers, same values
        interpreter = tfl_interpreter_utils.create_tfl_interpreter(data, preserve_all_tensors=True)
        interpreter.get_signature_runner("serving_default")(image=calib[1].numpy())
        views = tfl_interpreter_utils.get_tensor_name_to_content_map(interpreter)
        intermediate = [a for a in views.values() if a.ndim == 4]
        assert len(intermediate) > 3 and not any(a.flags.owndata for a in intermediate)
        for name, detail in ((d["name"], d) for d in interpreter.get_tensor_details() if d["name"] in views):
            np.testing.assert_array_equal(views[name], interpreter.get_tensor(detail["index"]))
        del views, intermediate
    assert len(viewed) < 0.6 * len(data)  # quantized indeed
    assert viewed == copied


def test_shared_node_provenance_changes_no_byte(
    nano_model: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_build lets torch.fx share node provenance (exporters.fx_codegen.shared_node_provenance);
    litert-torch's conversion writes the same .tflite as with torch's deep copies, and a nested
    entry leaves the one patch in place."""
    from contextlib import nullcontext

    from torch.fx import traceback as fx_traceback

    import hrvit_mobile
    from hrvit_mobile.exporters import fx_codegen

    deployed = hrvit_mobile.deploy(nano_model, img_size=(64, 96))

    def tflite(out: str) -> bytes:
        spec = ExportSpec(target="tflite", bits=32, img_size=(64, 96), num_classes=7,
                          out_dir=tmp_path / out, model_name="hrvit_nano", run_parity=False)
        return export(deployed, spec).artifact.path.read_bytes()

    shared = tflite("shared")
    with monkeypatch.context() as patch:
        patch.setattr(fx_codegen, "shared_node_provenance", nullcontext)  # run_build imports it per call
        copied = tflite("copied")
    assert shared == copied

    init = fx_traceback.NodeSource.__init__
    with fx_codegen.shared_node_provenance():
        patched = fx_traceback.NodeSource.__init__
        assert patched is not init
        with fx_codegen.shared_node_provenance():
            assert fx_traceback.NodeSource.__init__ is patched
        assert fx_traceback.NodeSource.__init__ is patched
    assert fx_traceback.NodeSource.__init__ is init


def test_compaction_writes_out_of_line_buffers_as_vectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ai_edge_quantizer's fp16 output stores buffers past the flatbuffer (offset/size), which the
    reader returns as bytearrays; compaction writes each as one vector (not byte by byte), with the
    same bytes as before."""
    from ai_edge_litert.tools import flatbuffer_utils

    from hrvit_mobile.exporters import litert as litert_exporter

    raw: list[bytes] = []
    compact = litert_exporter.compact_flatbuffer

    def capture(data: bytes) -> tuple[bytes, dict[str, int]]:
        raw.append(data)
        return compact(data)

    monkeypatch.setattr(litert_exporter, "compact_flatbuffer", capture)
    spec = ExportSpec(target="tflite", bits=16, img_size=SIZE, num_classes=5, out_dir=tmp_path,
                      run_parity=False)
    # 192 channels: over 256 KB of fp16 weights, past which the quantizer writes them out of line
    written = export(TinySegmenter(num_classes=5, channels=192), spec).artifact.path.read_bytes()
    quantized = raw[0]  # the quantizer's output (compacted again after the metadata writer)
    before = flatbuffer_utils.read_model_from_bytearray(bytearray(quantized))
    assert any(isinstance(b.data, bytearray) for b in before.buffers)  # the premise
    # compaction writes those bytes as vectors: byte-at-a-time prepends stay far below the data size
    import flatbuffers

    prepends = [0]
    prepend = flatbuffers.Builder.PrependUint8

    def counted(builder: object, x: int) -> None:
        prepends[0] += 1
        prepend(builder, x)

    with monkeypatch.context() as patch:
        patch.setattr(flatbuffers.Builder, "PrependUint8", counted)
        again, _ = compact(quantized)
    out_of_line = sum(len(b.data) for b in before.buffers if isinstance(b.data, bytearray))
    assert prepends[0] < out_of_line // 100

    def contents(model: object) -> list[bytes]:
        return sorted(bytes(b.data) for b in model.buffers if b.data is not None and len(b.data))

    assert contents(flatbuffer_utils.read_model_from_bytearray(bytearray(again))) == contents(before)
    # the file holds the same buffers, plus its metadata's
    after = flatbuffer_utils.read_model_from_bytearray(bytearray(written))
    assert set(contents(before)) < set(contents(after))


NANO_SIZE = (64, 96)


def _nano_tflite(deployed: torch.nn.Module, out_dir: Path) -> tuple[bytes, dict]:
    spec = ExportSpec(target="tflite", bits=32, img_size=NANO_SIZE, num_classes=7,
                      out_dir=out_dir, model_name="hrvit_nano", run_parity=False)
    artifact = export(deployed, spec).artifact
    return artifact.path.read_bytes(), artifact.details


@pytest.fixture(scope="module")
def nano_tflite(deploy_nano, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict]:
    """The nano deploy form's fp32 .tflite as the exporter writes it (every conversion shortcut on)."""
    return _nano_tflite(deploy_nano(NANO_SIZE), tmp_path_factory.mktemp("nano_tflite"))


def test_int32_aranges_in_place_change_no_byte(
    deploy_nano, nano_tflite: tuple[bytes, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nano deploy form's interpolations bring int64 aranges; asking them for int32 in place
    (instead of litert-torch's lambda, which forces a retrace) writes the same .tflite."""
    from contextlib import contextmanager

    from hrvit_mobile.exporters import litert as litert_exporter

    in_place, details = nano_tflite
    assert details["aranges_int32_in_place"] > 0

    @contextmanager
    def litert_own_rewrite():
        yield {"arange": 0}

    with monkeypatch.context() as patch:
        patch.setattr(litert_exporter, "arange_int32_in_place", litert_own_rewrite)
        retraced, details = _nano_tflite(deploy_nano(NANO_SIZE), tmp_path)
    assert details["aranges_int32_in_place"] == 0
    assert in_place == retraced


def test_layout_callables_traced_once_change_no_byte(
    deploy_nano, nano_tflite: tuple[bytes, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leaving the layout pass's callables (transposes, NHWC convolutions, resizes with their
    composites built inside the closure) to the lowering retrace writes the same .tflite as
    litert-torch's own canonicalizing retrace."""
    from collections import Counter
    from contextlib import contextmanager

    from hrvit_mobile.exporters import litert as litert_exporter

    once, details = nano_tflite
    assert details["layout_callables_traced_once"]["callables"] > 0
    assert details["layout_callables_traced_once"]["composites"] > 0  # the nearest resizes

    @contextmanager
    def litert_own_retrace():
        yield Counter()

    with monkeypatch.context() as patch:
        patch.setattr(litert_exporter, "layout_callables_traced_once", litert_own_retrace)
        retraced, details = _nano_tflite(deploy_nano(NANO_SIZE), tmp_path)
    assert details["layout_callables_traced_once"] == {}
    assert once == retraced


def test_profiler_calibration_gathers_the_statistics_of_the_preserve_all_mode(tmp_path: Path) -> None:
    """The default (profiler) calibration records min/max for the same tensors as ai_edge_quantizer's
    preserve-all-tensors mode, equal up to float rounding (XNNPACK vs builtin kernels), and the
    quantized file says which mode ran."""
    import litert_torch
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    from hrvit_mobile.exporters.litert import INPUT_NAME, _ImageIO
    from hrvit_mobile.normalization import Normalization
    from hrvit_mobile.quant.recipes import LiteRTPostTraining, QuantRecipeError

    torch.manual_seed(0)
    # a softmax inside: the op whose output range a calibration rule could pin
    net = torch.nn.Sequential(
        TinySegmenter(num_classes=5, channels=32), torch.nn.Softmax(dim=1), torch.nn.Conv2d(5, 5, 1)
    ).eval()
    calib = [torch.from_numpy(x[None]) for x in _pixels(3)]
    float_model = litert_torch.convert(_ImageIO(net, Normalization()).eval(),
                                       sample_kwargs={INPUT_NAME: calib[0]})
    float_model.export(str(tmp_path / "float.tflite"))
    data = (tmp_path / "float.tflite").read_bytes()
    from ai_edge_litert.interpreter import Interpreter

    assert "SOFTMAX" in {op["op_name"] for op in Interpreter(model_content=data)._get_ops_details()}

    def statistics(mode: str) -> dict:
        q = quantizer.Quantizer(bytearray(data))
        q.load_quantization_recipe(recipe.static_wi8_ai8())
        q.update_quantization_recipe(
            regex=".*", operation_name=qtyping.TFLOperationName.INPUT, algorithm_key=AlgorithmName.NO_QUANTIZE
        )
        return LiteRTPostTraining(variant="int8", calibration=mode).calibrate(q, data, calib)

    profiled, preserved = statistics("profiler"), statistics("preserve_all_tensors")
    assert set(profiled) == set(preserved) and len(profiled) > 10
    for name, qsv in preserved.items():
        assert set(profiled[name]) == set(qsv)
        for key in ("min", "max"):
            assert np.shape(profiled[name][key]) == np.shape(qsv[key]), name  # (1,) * the tensor's rank
            np.testing.assert_allclose(profiled[name][key], qsv[key], rtol=1e-5, atol=1e-6, err_msg=name)
    assert not all(np.ravel(q["max"])[0] == np.ravel(q["min"])[0] for q in preserved.values())
    quantized, info = LiteRTPostTraining(variant="int8").apply(data, calib)
    assert info["calibration_mode"] == "profiler" and len(quantized) < 0.6 * len(data)
    with pytest.raises(QuantRecipeError, match="allowed: profiler, preserve_all_tensors"):
        LiteRTPostTraining(variant="int8", calibration="histogram")
