"""The NumPy MIL evaluator: Core ML parity on Linux from what the .mlpackage serializes.

nano (64x96) for the fp32/fp16 parity and the corruption cases, TinySegmenter (64x64) for the
compressed variants, whose exports are cheaper.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import require_module

ct = require_module("coremltools")

from hrvit_mobile.exporters import ExportSpec, export  # noqa: E402
from hrvit_mobile.exporters import coreml as coreml_backend  # noqa: E402
from hrvit_mobile.exporters import coreml_eval as ce  # noqa: E402
from hrvit_mobile.exporters.coreml_eval.values import Blobs, load_value  # noqa: E402
from hrvit_mobile.exporters.parity import (  # noqa: E402
    ParityThresholds,
    compare,
    reference_outputs,
    synthetic_images,
    to_tensors,
)
from hrvit_mobile.exporters.testing import TinySegmenter  # noqa: E402
from hrvit_mobile.normalization import Normalization  # noqa: E402

NANO = (64, 96)
TINY = (64, 64)


def _export(model: torch.nn.Module, out: Path, size: tuple[int, int], k: int, bits: int, **kw: object):
    spec = ExportSpec(target="coreml", bits=bits, img_size=size, num_classes=k, out_dir=out, **kw)
    return export(model, spec)


@pytest.fixture(scope="module")
def nano_deployed(deploy_nano) -> torch.nn.Module:
    return deploy_nano(NANO).eval()  # dense and factored DES maps


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return synthetic_images(2, NANO, seed=1000)


@pytest.fixture(scope="module")
def nano_refs(nano_deployed: torch.nn.Module, images: np.ndarray) -> list[np.ndarray]:
    return reference_outputs(nano_deployed, to_tensors(Normalization().apply(images)))


@pytest.fixture(scope="module")
def nano_fp32(nano_deployed: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory):
    return _export(nano_deployed, tmp_path_factory.mktemp("fp32"), NANO, 7, 32, model_name="hrvit_nano")


@pytest.fixture(scope="module")
def nano_fp16(nano_deployed: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory):
    return _export(nano_deployed, tmp_path_factory.mktemp("fp16"), NANO, 7, 16, model_name="hrvit_nano")


@pytest.fixture(scope="module")
def tiny() -> TinySegmenter:
    # 32 channels: the convs and linears pass coremltools' 2048-element compression threshold
    return TinySegmenter(num_classes=5, channels=32)


def _constexpr_reference(path: Path) -> dict[str, np.ndarray]:
    """coremltools' own reading and decompression of every constexpr op (its milproto loader)."""
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    prog = load_milproto(spec, spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)
    return {
        op.outputs[0].name: op.materialized_val_inference()
        for op in prog.functions["main"].operations
        if op.op_type.startswith("constexpr_")
    }


def _copy_artifact(src: Path, dst_dir: Path, name: str) -> Path:
    """A copy of an .mlpackage with its sidecar, under a new name, for corrupting."""
    dst = dst_dir / f"{name}.mlpackage"
    shutil.copytree(src, dst)
    shutil.copy(Path(str(src) + ".json"), Path(str(dst) + ".json"))
    return dst


def _weights_file(pkg: Path) -> Path:
    (path,) = pkg.glob("Data/*/weights/weight.bin")
    return path


# -------------------------------------------------------------------------------------------------
# parity on real conversions


def test_fp32_matches_pytorch(nano_fp32, images: np.ndarray, nano_refs: list[np.ndarray]) -> None:
    parity = nano_fp32.parity
    assert parity.runtime == ce.RUNTIME == "hrvit-mobile MIL evaluator (NumPy, fp16 emulated)"
    assert parity.ran and parity.passed, parity.reason
    assert parity.structural["ok"]
    program = ce.Program(nano_fp32.artifact.path)
    outs = [program.predict(img)["logits"] for img in images]
    assert all(o.dtype == np.float32 and o.shape == (1, 7, 16, 24) for o in outs)
    assert max(float(np.abs(o - r).max()) for o, r in zip(outs, nano_refs, strict=True)) <= 1e-4
    # the sidecar records which runtime produced the figure
    meta = json.loads(Path(str(nano_fp32.artifact.path) + ".json").read_text())
    assert meta["parity"]["runtime"] == ce.RUNTIME and meta["parity"]["passed"] is True
    # every LayerNorm is Core ML's own op, not the delegable form's means and rsqrt
    details = nano_fp32.artifact.details
    assert details["native_layer_norms"] > 0
    assert details["op_counts"]["layer_norm"] == details["native_layer_norms"]
    assert "rsqrt" not in details["op_counts"]
    # small constants are immediate values in the description, larger ones in the weight file
    from hrvit_mobile.exporters.patches.coreml_weights import INLINE_CONSTANT_MAX_ELEMENTS

    spec = ct.models.MLModel(str(nano_fp32.artifact.path), skip_model_load=True).get_spec()
    sizes = {True: [], False: []}
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                for value in op.attributes.values():
                    if value.type.WhichOneof("type") == "tensorType" and value.type.tensorType.rank:
                        n = int(np.prod([d.constant.size for d in value.type.tensorType.dimensions]))
                        sizes[value.HasField("blobFileValue")].append(n)
    assert sizes[True] and min(sizes[True]) >= INLINE_CONSTANT_MAX_ELEMENTS
    assert max(sizes[False]) >= 10  # coremltools' own cut-off would have put these in the file


def test_fp16_in_band_and_stored_as_fp16(nano_fp16, images: np.ndarray, nano_refs: list[np.ndarray]) -> None:
    parity = nano_fp16.parity
    assert parity.runtime == ce.RUNTIME and parity.ran and parity.passed, parity.reason
    assert parity.cosine >= 0.999
    program = ce.Program(nano_fp16.artifact.path)
    env = program.run(program.image_input(images[0]), keep=True)
    # every tensor the program declares fp16 is held as fp16 (rounded after each op)
    declared = {o.name: o.type.tensorType.dataType for op in program.block.operations for o in op.outputs}
    fp16 = ct.proto.MIL_pb2.DataType.Value("FLOAT16")
    halves = [name for name, dt in declared.items() if dt == fp16]
    assert len(halves) > 500 and all(env[n].dtype == np.float16 for n in halves)
    logits = env["logits"]
    assert logits.dtype == np.float16
    # fp16 is lossy but not far off: the evaluator's fp16 emulation must not be fp32 in disguise
    err = float(np.abs(logits.astype(np.float32) - nano_refs[0]).max())
    assert 1e-5 < err < 0.05


def _main_block(pkg: Path):
    spec = ct.models.MLModel(str(pkg), skip_model_load=True).get_spec()
    (block,) = spec.mlProgram.functions["main"].block_specializations.values()
    return block


def test_compacted_program_computes_the_same(
    nano_deployed: torch.nn.Module, nano_fp16, images: np.ndarray, tmp_path: Path
) -> None:
    """The default export merges duplicate small consts and shortens names; nothing else changes."""
    full = _export(
        nano_deployed, tmp_path, NANO, 7, 16, model_name="hrvit_nano", keep_op_names=True, run_parity=False
    ).artifact.path
    compact = nano_fp16.artifact.path
    stats = nano_fp16.artifact.details["program_compaction"]
    assert stats["consts_merged"] > 0 and stats["description_bytes_after"] < stats["description_bytes_before"]
    assert "program_compaction" not in json.loads(Path(str(full) + ".json").read_text())["details"]

    for img in images:
        a, b = ce.evaluate(full, img), ce.evaluate(compact, img)
        np.testing.assert_array_equal(a["logits"], b["logits"])
    assert _weights_file(full).read_bytes() == _weights_file(compact).read_bytes()

    full_block, compact_block = _main_block(full), _main_block(compact)
    full_types = Counter(op.type for op in full_block.operations)
    compact_types = Counter(op.type for op in compact_block.operations)
    assert full_types - compact_types == Counter(const=stats["consts_merged"])
    assert compact_types - full_types == Counter()
    inline = [
        (op.outputs[0].type.SerializeToString(), op.attributes["val"].SerializeToString())
        for op in compact_block.operations
        if op.type == "const" and not op.attributes["val"].HasField("blobFileValue")
    ]
    assert len(inline) == len(set(inline))  # one const per distinct value
    names = [out.name for op in compact_block.operations for out in op.outputs]
    assert list(compact_block.outputs) == ["logits"]
    assert all(n == "logits" or (n[0] == "v" and int(n[1:], 16) >= 0) for n in names), names[:5]
    assert len(set(names)) == len(names)
    description = "Data/com.apple.CoreML/model.mlmodel"
    assert (compact / description).stat().st_size < 0.7 * (full / description).stat().st_size


def test_w8a8_zero_points_are_scalar(
    tiny: TinySegmenter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W8A8's per-channel zero points (all 0: PT2E's symmetric weights) are the scalar 0, as the
    weight-only packages write them: a smaller program and weight file, the same evaluated outputs."""
    kw = {"activations": 8, "calib_samples": 2, "model_name": "tiny", "run_parity": False}
    ours = _export(tiny, tmp_path / "ours", TINY, 5, 8, **kw).artifact.path
    with monkeypatch.context() as m:
        m.setattr(coreml_backend, "_pass_pipeline", lambda spec, variant: (ct.PassPipeline.DEFAULT, None))
        stock = _export(tiny, tmp_path / "stock", TINY, 5, 8, **kw).artifact.path

    def zero_point_ranks(pkg: Path) -> Counter[int]:
        ops = _main_block(pkg).operations
        return Counter(op.attributes["zero_point"].type.tensorType.rank
                       for op in ops if op.type == "constexpr_affine_dequantize")

    assert zero_point_ranks(stock)[1] > 0
    assert zero_point_ranks(ours) == Counter({0: sum(zero_point_ranks(stock).values())})
    assert _weights_file(ours).stat().st_size <= _weights_file(stock).stat().st_size
    img = synthetic_images(1, TINY, seed=3)[0]
    np.testing.assert_array_equal(ce.evaluate(stock, img)["logits"], ce.evaluate(ours, img)["logits"])


def test_evaluate_function_and_argmax_output(tiny: TinySegmenter, tmp_path: Path) -> None:
    report = _export(tiny, tmp_path, TINY, 5, 16, argmax_output=True, model_name="tiny")
    img = synthetic_images(1, TINY, seed=3)[0]
    out = ce.evaluate(report.artifact.path, img)
    assert set(out) == {"logits", "classes"}
    assert out["classes"].dtype == np.int32 and out["classes"].shape == (1, 16, 16)
    np.testing.assert_array_equal(out["classes"], out["logits"].argmax(1))


@pytest.mark.parametrize(("bits", "min_ios"), [(8, 17), (4, 17), (4, 18), (8, 18)])
def test_weight_decompression_is_exact(tiny: TinySegmenter, tmp_path: Path, bits: int, min_ios: int) -> None:
    report = _export(tiny, tmp_path, TINY, 5, bits, min_ios=min_ios, model_name="tiny")
    path = report.artifact.path
    ref = _constexpr_reference(path)
    assert ref, "the compressed program has no constexpr weights"
    program = ce.Program(path)
    for name, want in ref.items():
        got = program.constants[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    if bits == 4:  # palettized: at most 16 distinct values per LUT (one per tensor, or per 16 channels)
        palettized = {op.outputs[0].name for op in program.block.operations
                      if op.type == "constexpr_lut_to_dense"}
        assert palettized and palettized <= set(ref)
        # the tensors too small to palettize are int8 (recipes.PAL4_SMALL_TENSORS_INT8), exact above;
        # the iOS 18 opset writes them as constexpr_blockwise_shift_scale
        int8_ops = {"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"}
        assert any(op.type in int8_ops for op in program.block.operations)
        for name in palettized:
            w = program.constants[name]
            luts = 1 if min_ios < 18 else -(-w.shape[0] // 16)
            # distinct values without np.unique: numpy 2.3's float16 quicksort (x86-simd-sort, AVX-512)
            # returns unsorted output on some CPUs (seen on an AMD EPYC host), so np.unique over-counts
            assert len(set(w.ravel().tolist())) <= 16 * luts, name
    parity = report.parity
    assert parity.runtime == ce.RUNTIME and parity.ran and parity.passed, parity.reason


def test_w8_decompression_rederived(tiny: TinySegmenter, tmp_path: Path) -> None:
    """scale * (q - zero_point) per output channel, from the raw serialized attributes."""
    path = _export(tiny, tmp_path, TINY, 5, 8, model_name="tiny", run_parity=False).artifact.path
    program = ce.Program(path)
    blobs = Blobs(program._weights_dir())
    ops = [op for op in program.block.operations if op.type == "constexpr_affine_dequantize"]
    assert ops
    for op in ops:
        raw = {k: load_value(v, blobs) for k, v in op.attributes.items() if k != "name"}
        q, zp, scale, axis = raw["quantized_data"], raw["zero_point"], raw["scale"], int(raw["axis"])
        assert q.dtype == np.int8 and scale.dtype == np.float16
        assert zp.ndim == 0 and zp == 0  # symmetric: the per-channel zeros stored as one scalar
        assert scale.ndim == 1 and scale.size == q.shape[axis]
        shape = [1] * q.ndim
        shape[axis] = -1
        expect = (
            (q.astype(np.float64) - zp.reshape(shape)) * scale.astype(np.float64).reshape(shape)
        ).astype(np.float16)
        np.testing.assert_array_equal(program.constants[op.outputs[0].name], expect)


def test_w8a8_matches_the_quantized_pytorch_graph(
    tiny: TinySegmenter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured = {}
    quantize = coreml_backend.quantize_pt2e

    def keep(*args: object, **kwargs: object) -> torch.fx.GraphModule:
        captured["gm"] = quantize(*args, **kwargs)
        return captured["gm"]

    monkeypatch.setattr(coreml_backend, "quantize_pt2e", keep)
    spec = ExportSpec(
        target="coreml",
        bits=8,
        activations=8,
        img_size=TINY,
        num_classes=5,
        out_dir=tmp_path,
        calib_samples=4,
    )
    report = export(tiny, spec)
    program = ce.Program(report.artifact.path)
    ops = {op.type for op in program.block.operations}
    assert {"quantize", "dequantize", "constexpr_affine_dequantize"} <= ops
    assert report.parity.runtime == ce.RUNTIME and report.parity.ran and report.parity.passed
    # the PT2E int8 graph the program was converted from, on the same (scaled, biased) image input
    imgs = synthetic_images(2, TINY, seed=1000)
    n = Normalization()
    scale, bias, _ = coreml_backend.image_preprocessing(n.mean, n.std)
    x = np.ascontiguousarray(imgs.transpose(0, 3, 1, 2), np.float32) * np.float32(scale)
    x += np.asarray(bias, np.float32)[None, :, None, None]
    gm = captured["gm"]
    with torch.no_grad():
        qref = [gm(torch.from_numpy(x[i : i + 1])).numpy() for i in range(2)]
    # the shipped program computes in fp16 between its q/dq pairs: close, not identical
    outs = [program.predict(img)["logits"] for img in imgs]
    res = compare(outs, qref, ParityThresholds(min_cosine=0.999, min_argmax_agreement=0.95), "evaluator")
    assert res.passed, res.reason
    # the same int8 graph converted with fp32 compute: the evaluator's quantize/dequantize and int8
    # weight decompression reproduce PT2E's fake-quant arithmetic exactly
    ep = torch.export.export(gm, (torch.from_numpy(x[:1]),), strict=False).run_decompositions({})
    fp32 = ct.convert(
        ep,
        inputs=[ct.TensorType(name="x", shape=x[:1].shape)],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS17,
        compute_precision=ct.precision.FLOAT32,
        skip_model_load=True,
    )
    fp32.save(str(tmp_path / "w8a8_fp32.mlpackage"))
    program32 = ce.Program(tmp_path / "w8a8_fp32.mlpackage")
    assert {"quantize", "dequantize"} <= {op.type for op in program32.block.operations}
    (name,) = program32.inputs
    for i in range(2):
        (out,) = program32.run({name: x[i : i + 1]}).values()
        np.testing.assert_allclose(out, qref[i], atol=1e-5)


# -------------------------------------------------------------------------------------------------
# corrupted programs must fail parity


def _blob_region(weight_bin: Path, offset: int) -> tuple[int, int]:
    """(data offset, size in bytes) of the blob whose metadata starts at ``offset`` (MIL storage v2)."""
    with weight_bin.open("rb") as f:
        f.seek(offset)
        sentinel, _dtype, size, data_offset = struct.unpack("<IIQQ", f.read(24))
    assert sentinel == 0xDEADBEEF
    return data_offset, size


def test_wrong_weights_fail_parity(
    nano_fp32, images: np.ndarray, nano_refs: list[np.ndarray], tmp_path: Path
) -> None:
    bad = _copy_artifact(nano_fp32.artifact.path, tmp_path, "wrong_weights")
    program = ce.Program(bad)
    # a conv weight in the middle of the network; negate it by flipping every fp32 sign bit
    convs = [op for op in program.block.operations if op.type == "conv"]
    weight_name = convs[len(convs) // 2].inputs["weight"].arguments[0].name
    (const,) = [op for op in program.block.operations if op.outputs[0].name == weight_name]
    offset, size = _blob_region(_weights_file(bad), const.attributes["val"].blobFileValue.offset)
    data = bytearray(_weights_file(bad).read_bytes())
    for i in range(offset + 3, offset + size, 4):
        data[i] ^= 0x80
    _weights_file(bad).write_bytes(bytes(data))
    res = coreml_backend.validate(bad, images, nano_refs)
    assert res.runtime == ce.RUNTIME and res.ran and res.passed is False, res
    assert "max_abs_err" in res.reason


def test_swapped_op_fails_parity(
    nano_fp32, images: np.ndarray, nano_refs: list[np.ndarray], tmp_path: Path
) -> None:
    src = nano_fp32.artifact.path
    mlmodel = ct.models.MLModel(str(src), skip_model_load=True)
    spec = mlmodel.get_spec()
    block = spec.mlProgram.functions["main"].block_specializations["CoreML7"]
    consts = {op.outputs[0].name for op in block.operations if op.type == "const"}
    # a residual add (both operands computed) in the middle becomes a subtraction; an add of a
    # constant such as a LayerNorm epsilon would barely move the output
    adds = [
        op
        for op in block.operations
        if op.type == "add" and not {op.inputs[k].arguments[0].name for k in ("x", "y")} & consts
    ]
    adds[len(adds) // 2].type = "sub"
    bad = tmp_path / "swapped_op.mlpackage"
    ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True).save(str(bad))
    shutil.copy(Path(str(src) + ".json"), Path(str(bad) + ".json"))
    res = coreml_backend.validate(bad, images, nano_refs)
    assert res.runtime == ce.RUNTIME and res.ran and res.passed is False, res


def test_unsupported_op_is_named(
    nano_fp32, images: np.ndarray, nano_refs: list[np.ndarray], tmp_path: Path
) -> None:
    src = nano_fp32.artifact.path
    mlmodel = ct.models.MLModel(str(src), skip_model_load=True)
    spec = mlmodel.get_spec()
    block = spec.mlProgram.functions["main"].block_specializations["CoreML7"]
    next(op for op in block.operations if op.type == "gelu").type = "silu_fancy"
    bad = tmp_path / "unknown_op.mlpackage"
    ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True).save(str(bad))
    shutil.copy(Path(str(src) + ".json"), Path(str(bad) + ".json"))
    with pytest.raises(ce.UnsupportedOpError, match="silu_fancy"):
        ce.Program(bad)
    res = coreml_backend.validate(bad, images, nano_refs)
    assert res.ran is False and res.passed is None and "silu_fancy" in res.reason


# -------------------------------------------------------------------------------------------------
# op semantics with known answers


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("scale", [2, 4, 3])
def test_upsample_bilinear_matches_torch(align_corners: bool, scale: int) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 7)).astype(np.float32)
    got = ce.OPS["upsample_bilinear"](
        {"x": x, "scale_factor_height": scale, "scale_factor_width": scale, "align_corners": align_corners}
    )
    want = F.interpolate(
        torch.from_numpy(x), scale_factor=scale, mode="bilinear", align_corners=align_corners
    )
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


@pytest.mark.parametrize(("groups", "stride", "kernel"), [(1, 2, 3), (4, 2, 2), (4, 4, 4)])
def test_conv_and_conv_transpose_match_torch(groups: int, stride: int, kernel: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 8, 6, 5)).astype(np.float32)
    w = rng.standard_normal((8, 8 // groups, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    conv = ce.OPS["conv"](
        {
            "x": x,
            "weight": w,
            "bias": b,
            "strides": [stride] * 2,
            "pad_type": "custom",
            "pad": [1, 1, 1, 1],
            "dilations": [1, 1],
            "groups": groups,
        }
    )
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, 1, 1, groups)
    np.testing.assert_allclose(conv, want.numpy(), atol=1e-4)
    tconv = ce.OPS["conv_transpose"](
        {
            "x": x,
            "weight": w,
            "bias": b,
            "strides": [stride] * 2,
            "pad_type": "valid",
            "dilations": [1, 1],
            "groups": groups,
        }
    )
    want = F.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, 0, 0, groups
    )
    np.testing.assert_allclose(tconv, want.numpy(), atol=1e-4)


def test_quantize_rounds_half_to_even_and_saturates() -> None:
    x = np.array([-300.0, -2.5, -0.5, 0.5, 1.5, 2.5, 300.0], np.float32)
    q = ce.OPS["quantize"](
        {"input": x, "scale": np.float32(1.0), "zero_point": np.uint8(128), "output_dtype": "uint8"}
    )
    np.testing.assert_array_equal(q, [0, 126, 128, 128, 130, 130, 255])
    back = ce.OPS["dequantize"]({"input": q, "scale": np.float32(0.5), "zero_point": np.uint8(128)})
    np.testing.assert_array_equal(back, [-64.0, -1.0, 0.0, 0.0, 1.0, 1.0, 63.5])


def test_lut_ios18_grouped_example_from_the_spec() -> None:
    # MIL iOS18 constexpr_lut_to_dense docstring, case 1: two 2-bit LUTs along axis 0
    indices = np.array([2, 3, 3, 0, 1, 0, 3, 0, 2, 1, 0, 3], np.uint8).reshape(6, 2)
    lut = np.array([1, 5, 9, 13, 2, 10, 18, 26], np.float16).reshape(2, 1, 4, 1)
    want = [[9, 13], [13, 1], [5, 1], [26, 2], [18, 10], [2, 26]]
    np.testing.assert_array_equal(ce.lut_to_dense_ios18(indices, lut, None), np.array(want, np.float16))


def test_unpack_bits_lsb_first() -> None:
    packed = np.array([0b11100100, 0b00011011], np.uint8)  # 2-bit: 0,1,2,3 then 3,2,1,0
    np.testing.assert_array_equal(ce.unpack_bits(packed, 2, 8), [0, 1, 2, 3, 3, 2, 1, 0])
    np.testing.assert_array_equal(ce.unpack_bits(np.array([0xF8], np.uint8), 4, 2, signed=True), [-8, -1])
