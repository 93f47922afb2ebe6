"""Core ML exports: the saved .mlpackage inspected with coremltools itself (prediction needs macOS)."""

from __future__ import annotations

import contextlib
import json
import platform
from pathlib import Path

import pytest
import torch
from conftest import require_module

ct = require_module("coremltools")

from hrvit_mobile.exporters import ExportSpec, export  # noqa: E402
from hrvit_mobile.exporters.testing import TinySegmenter, mlpackage_contents  # noqa: E402

SIZE = (64, 64)
ON_MAC = platform.system() == "Darwin"


def _ops(spec: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                counts[op.type] = counts.get(op.type, 0) + 1
    return counts


@pytest.fixture(scope="module")
def model() -> TinySegmenter:
    # 32 channels: the 3x3 convs and linears pass coremltools' 2048-element compression threshold
    return TinySegmenter(num_classes=5, channels=32)


@pytest.mark.parametrize(
    ("bits", "activations", "variant", "must_have"),
    [
        (32, None, "fp32", ()),
        (16, None, "fp16", ()),
        (8, None, "w8", ("constexpr_affine_dequantize",)),
        (8, 8, "w8a8", ("constexpr_affine_dequantize", "quantize", "dequantize")),
        (6, None, "pal6", ("constexpr_lut_to_dense",)),
        # 4-bit: the tensors too small to palettize (256..2047 elements) are int8, not fp16
        (4, None, "pal4", ("constexpr_lut_to_dense", "constexpr_affine_dequantize")),
    ],
)
def test_coreml_variant(
    model: TinySegmenter, tmp_path: Path, bits: int, activations: int | None, variant: str, must_have: tuple
) -> None:
    spec = ExportSpec(
        target="coreml",
        bits=bits,
        activations=activations,
        img_size=SIZE,
        num_classes=5,
        class_names=["sky", "road", "car", "tree", "person"],
        out_dir=tmp_path,
        model_name="tiny",
        author="hrvit-mobile tests",
        license="Apache-2.0",
        version="0.1.0",
        argmax_output=(bits == 16),
    )
    report = export(model, spec)
    path = tmp_path / f"tiny_64x64_coreml_{variant}.mlpackage"
    assert report.artifact.path == path and path.is_dir() and report.ok, report.summary()

    # coremltools reads the package back by itself
    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    s = mlmodel.get_spec()
    assert s.WhichOneof("Type") == "mlProgram"
    assert s.specificationVersion >= 8  # iOS 17
    (inp,) = s.description.input
    assert inp.name == "image" and inp.type.WhichOneof("Type") == "imageType"
    assert (inp.type.imageType.width, inp.type.imageType.height) == (64, 64)
    outputs = [o.name for o in s.description.output]
    assert outputs == (["logits", "classes"] if bits == 16 else ["logits"])
    md = s.description.metadata
    assert md.author == "hrvit-mobile tests" and md.license == "Apache-2.0" and md.versionString == "0.1.0"
    user = dict(md.userDefined)
    assert user["com.apple.coreml.model.preview.type"] == "imageSegmenter"
    preview = json.loads(user["com.apple.coreml.model.preview.params"])
    assert preview["labels"] == ["sky", "road", "car", "tree", "person"] and len(preview["colors"]) == 5
    ops = _ops(s)
    for op in must_have:
        assert ops.get(op, 0) > 0, (op, ops)
    if variant in ("fp32", "fp16"):
        assert not any(k.startswith("constexpr_") for k in ops)
    if variant == "pal6":  # 6-bit keeps the small tensors fp16
        assert "constexpr_affine_dequantize" not in ops
    meta = json.loads((tmp_path / (path.name + ".json")).read_text())
    assert meta["input"]["type"] == "ImageType" and meta["input"]["normalization"]["applied_by"] == "model"
    assert meta["files"] and all(len(f["sha256"]) == 64 for f in meta["files"])
    # only what an app needs: ExecuTorch's delegate debug map is not shipped
    assert not (path / "executorch_debug_handle_mapping.json").exists()
    assert all("executorch_debug_handle" not in f["path"] for f in meta["files"])

    parity = report.parity
    assert parity is not None and parity.structural["ok"], parity.structural
    if ON_MAC:
        assert parity.ran and parity.passed
    else:  # Linux: the project's evaluator of the serialized ML program, and the report says so
        assert parity.ran and parity.passed, parity.reason
        assert parity.runtime == "hrvit-mobile MIL evaluator (NumPy, fp16 emulated)"
        assert meta["parity"]["runtime"] == parity.runtime


def test_compressed_weights_are_smaller(model: TinySegmenter, tmp_path: Path) -> None:
    wide = TinySegmenter(num_classes=5, channels=96)
    common = dict(target="coreml", img_size=SIZE, num_classes=5, out_dir=tmp_path, run_parity=False)
    weights = {}
    for bits in (16, 8, 4):
        pkg = export(wide, ExportSpec(bits=bits, **common)).artifact.path
        weights[bits] = sum(p.stat().st_size for p in pkg.rglob("weight.bin"))
    assert weights[8] < 0.65 * weights[16]
    assert weights[4] < 0.4 * weights[16]


def test_min_ios_18_uses_grouped_palettes(model: TinySegmenter, tmp_path: Path) -> None:
    report = export(
        model,
        ExportSpec(
            target="coreml",
            bits=4,
            min_ios=18,
            img_size=SIZE,
            num_classes=5,
            out_dir=tmp_path,
            run_parity=False,
        ),
    )
    assert "per_grouped_channel" in report.artifact.details["quantization"]["scheme"]
    s = ct.models.MLModel(str(report.artifact.path), skip_model_load=True).get_spec()
    assert s.specificationVersion >= 9  # iOS 18


def test_failed_coreml_export_leaves_nothing(tmp_path: Path) -> None:
    class Bad(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.svd(x[:, :, :8, :8])[0][:, :1]  # no Core ML lowering for svd

    with pytest.raises(Exception):  # noqa: B017 - whatever the converter raises, nothing may be left
        export(Bad(), ExportSpec(target="coreml", img_size=SIZE, num_classes=1, out_dir=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_validating_once_per_pipeline_converts_the_same_program(model: TinySegmenter) -> None:
    from coremltools.converters.mil.mil.block import InvalidBlockStateError
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager
    from coremltools.converters.mil.mil.passes.pass_registry import register_pass

    from hrvit_mobile.exporters.coreml import validate_once_per_pipeline

    example = torch.rand(1, 3, *SIZE)
    ep = torch.export.export(model.eval(), (example,)).run_decompositions({})

    def program(pipeline: object = None) -> object:
        mlmodel = ct.convert(ep, inputs=[ct.TensorType(name="x", shape=example.shape)],
                             convert_to="mlprogram", skip_model_load=True, pass_pipeline=pipeline)
        return mlmodel.get_spec().mlProgram

    coremltools_own = PassPipelineManager.apply_pipeline
    with validate_once_per_pipeline():
        once = program()
    assert PassPipelineManager.apply_pipeline is coremltools_own  # restored on exit
    assert once == program()

    # a pass that leaves the program inconsistent (a var lists one consumer twice) is still caught
    class DoubleCountAConsumer(AbstractGraphPass):
        def apply(self, prog: object) -> None:
            for function in prog.functions.values():
                var = next(v for op in function.operations for v in op.outputs if v.child_ops)
                var.add_child_op(var.child_ops[0])

    register_pass(namespace="hrvit_test", override=True)(DoubleCountAConsumer)
    broken = ct.PassPipeline.DEFAULT
    broken.append_pass("hrvit_test::DoubleCountAConsumer")
    caught = pytest.raises(InvalidBlockStateError, match="should be consumed by op")
    with caught:
        program(broken)  # coremltools' own checks, after every pass
    with validate_once_per_pipeline(), caught:
        program(broken)


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_recipe_in_the_conversion_equals_applying_it(model: TinySegmenter, bits: int) -> None:
    """The exporter compresses inside ``ct.convert`` (``conversion_pipeline``); ``apply`` compresses a
    converted program. Both give the same ops and the same decompressed weights."""
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    from hrvit_mobile.quant.recipes import PAL4_SMALL_TENSORS_INT8, CoreMLWeightOnly

    recipe = (CoreMLWeightOnly(bits=8, mode="linear", weight_threshold=256) if bits == 8 else
              CoreMLWeightOnly(bits=4, mode="kmeans", small_tensors_int8=PAL4_SMALL_TENSORS_INT8))
    example = torch.rand(1, 3, *SIZE)
    ep = torch.export.export(model.eval(), (example,)).run_decompositions({})
    common = dict(inputs=[ct.TensorType(name="x", shape=example.shape)], convert_to="mlprogram",
                  minimum_deployment_target=ct.target.iOS17, skip_model_load=True)
    applied, info = recipe.apply(ct.convert(ep, **common))
    pipeline, in_info = recipe.conversion_pipeline()
    converted = ct.convert(ep, pass_pipeline=pipeline, **common)
    assert info == in_info
    assert _ops(applied.get_spec()) == _ops(converted.get_spec())
    assert _ops(converted.get_spec()).get("constexpr_affine_dequantize", 0) > 0

    def weights(mlmodel: object) -> list[bytes]:
        spec = mlmodel.get_spec()
        prog = load_milproto(spec, spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)
        ops = [op for op in prog.functions["main"].operations if op.op_type.startswith("constexpr_")]
        return sorted(op.outputs[0].op.materialized_val_inference().tobytes() for op in ops)

    assert weights(applied) == weights(converted)


def test_nonreplaceable_vars_as_bits_reads_the_stock_sets() -> None:
    """Inside the block every var reads the same nonreplaceable-var set as coremltools computes, through
    a pass pipeline; after it every var holds a plain set again."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager

    from hrvit_mobile.exporters.coreml import nonreplaceable_vars_as_bits

    def build() -> object:
        @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4))], opset_version=ct.target.iOS17)
        def prog(x):
            weights = [mb.constexpr_affine_dequantize(
                quantized_data=np.full((4, 4), i + 1, dtype=np.int8), zero_point=np.int8(0),
                scale=np.float32(0.5), axis=0) for i in range(2)]
            a = mb.relu(x=mb.linear(x=x, weight=weights[0]))
            b = mb.linear(x=a, weight=weights[1])
            shape = mb.shape(x=b)  # metadata ops stop the propagation
            return mb.add(x=b, y=a), mb.cast(x=shape, dtype="fp32")
        return prog

    def sets(prog: object) -> list[set[int]]:
        """Each output's set as positions of outputs (names differ between builds)."""
        outputs = [o for op in prog.functions["main"].operations for o in op.outputs]
        position = {id(o): i for i, o in enumerate(outputs)}
        return [{position[id(v)] for v in o.nonreplaceable_vars_upstream} for o in outputs]

    stock = build()
    expected = sets(stock)
    assert {2, 0} <= {len(members) for members in expected}
    with nonreplaceable_vars_as_bits():
        prog = build()
        assert sets(prog) == expected
        with prog.functions["main"]:  # leaving a block recomputes every var's set
            pass
        assert sets(prog) == expected
        PassPipelineManager.apply_pipeline(prog, ct.PassPipeline.DEFAULT)
    PassPipelineManager.apply_pipeline(stock, ct.PassPipeline.DEFAULT)
    assert sets(prog) == sets(stock)
    for op in prog.functions["main"].operations:
        assert all(type(o._nonreplaceable_vars_upstream) is set for o in op.outputs)


def test_propagation_runs_again_only_after_a_rewiring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within propagation_after_changes_only, leaving a block that nothing rewired since its last
    propagation skips it; a rewiring (a var's users moved to a constexpr_ output) makes the next exit
    propagate, and the sets are coremltools' own, also after the default pass pipeline."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Block
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager

    from hrvit_mobile.exporters.coreml import propagation_after_changes_only

    runs: list[int] = []
    stock_propagate = Block._propagate_nonreplaceable_vars
    monkeypatch.setattr(Block, "_propagate_nonreplaceable_vars",
                        lambda self: runs.append(1) or stock_propagate(self))

    def build() -> object:
        @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4))], opset_version=ct.target.iOS17)
        def prog(x):
            weight = mb.constexpr_affine_dequantize(
                quantized_data=np.full((4, 4), 3, dtype=np.int8), zero_point=np.int8(0),
                scale=np.float32(0.5), axis=0)
            plain = mb.const(val=np.full((4, 4), 1.5, dtype=np.float32))
            a = mb.relu(x=mb.linear(x=x, weight=plain))
            return mb.add(x=mb.linear(x=a, weight=weight), y=a)
        return prog

    def sets(prog: object) -> list[set[int]]:
        outputs = [o for op in prog.functions["main"].operations for o in op.outputs]
        position = {id(o): i for i, o in enumerate(outputs)}
        return [{position[id(v)] for v in o.nonreplaceable_vars_upstream} for o in outputs]

    def rewire(prog: object) -> None:
        """The first linear's weight becomes the constexpr_ output: its set and those below grow."""
        main = prog.functions["main"]
        ops = list(main.operations)
        first_linear = next(op for op in ops if op.op_type == "linear")
        constexpr = next(op for op in ops if op.op_type.startswith("constexpr_"))
        with main:
            first_linear.set_inputs(weight=constexpr.outputs[0])

    stock = build()
    rewire(stock)
    with propagation_after_changes_only():
        prog = build()  # the builder's exits propagate
        built = len(runs)
        assert built >= 1
        with prog.functions["main"]:  # nothing changed since
            pass
        with prog.functions["main"]:
            pass
        assert len(runs) == built
        before = sets(prog)
        rewire(prog)
        assert len(runs) == built + 1 and sets(prog) == sets(stock) != before
        PassPipelineManager.apply_pipeline(prog, ct.PassPipeline.DEFAULT)
    PassPipelineManager.apply_pipeline(stock, ct.PassPipeline.DEFAULT)
    assert sets(prog) == sets(stock)


def test_passes_render_no_program_unless_debug_logging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Within passes_without_program_dumps the conversion gives the same program without rendering
    the whole program as text for the debug lines of reduce_transposes and fuse_layernorm_or_instancenorm;
    with coremltools' logger at DEBUG the passes render it as before."""
    import logging

    from coremltools import _logger
    from coremltools.converters.mil.mil import Function

    from hrvit_mobile.exporters.coreml import passes_without_program_dumps

    class Transposes(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(x.permute(0, 2, 3, 1)) * 2
            return y.permute(0, 3, 1, 2) + x

    example = torch.rand(1, 4, 8, 8)
    ep = torch.export.export(Transposes().eval(), (example,)).run_decompositions({})

    def program() -> list[tuple[str, list[str]]]:
        """The program's ops (types and input names): names of vars coremltools' passes create carry
        process-wide counters, so whole messages differ between conversions after other tests ran."""
        mlmodel = ct.convert(ep, inputs=[ct.TensorType(name="x", shape=example.shape)],
                             convert_to="mlprogram", skip_model_load=True)
        blocks = mlmodel.get_spec().mlProgram.functions["main"].block_specializations.values()
        return [(op.type, sorted(op.inputs)) for block in blocks for op in block.operations]

    rendered: list[int] = []
    stock_str = Function.__str__
    monkeypatch.setattr(Function, "__str__", lambda self: rendered.append(1) or stock_str(self))
    stock = program()
    assert rendered  # the two passes render the program for their debug lines
    rendered.clear()
    with passes_without_program_dumps():
        assert program() == stock
    assert not rendered
    level = _logger.level
    _logger.setLevel(logging.DEBUG)  # setLevel: the logger caches isEnabledFor answers
    try:
        with passes_without_program_dumps():
            program()
    finally:
        _logger.setLevel(level)
    assert rendered


def test_w8a8_program_is_the_same_with_nonreplaceable_bits(tmp_path: Path) -> None:
    """The W8A8 conversion gives the same ML program and weights with the bitmask sets and the skipped
    propagations as without."""

    from hrvit_mobile.exporters import coreml as coreml_exporter

    model = TinySegmenter(num_classes=5, channels=32).eval()
    calib = [torch.rand(1, 3, *SIZE) for _ in range(2)]

    def package(out: str) -> tuple[bytes, bytes]:
        spec = ExportSpec(target="coreml", bits=8, activations=8, img_size=SIZE, num_classes=5,
                          out_dir=tmp_path / out, run_parity=False)
        return mlpackage_contents(export(model, spec, calib=calib).artifact.path)

    with_bits = package("bits")
    with pytest.MonkeyPatch.context() as patch:  # and the propagation after every pass's exit
        patch.setattr(coreml_exporter, "nonreplaceable_vars_as_bits", contextlib.nullcontext)
        patch.setattr(coreml_exporter, "propagation_after_changes_only", contextlib.nullcontext)
        stock = package("stock")
    assert len(with_bits[1]) > 1000 and with_bits == stock


def test_functionalization_without_a_retrace_gives_the_same_package(tmp_path: Path) -> None:
    """Core ML's ``run_decompositions({})`` as a node rewrite (a graph of the ops it rewrites): the same
    ML program and weights as with the retrace, and the sidecar says which ran."""

    from hrvit_mobile.exporters import coreml as coreml_exporter
    from hrvit_mobile.exporters.testing import RewrittenOps

    model = RewrittenOps().eval()

    def package(out: str) -> tuple[bytes, bytes, bool]:
        spec = ExportSpec(target="coreml", bits=32, img_size=(32, 32), num_classes=8,
                          out_dir=tmp_path / out, run_parity=False)
        art = export(model, spec).artifact  # a model this small may keep every constant inline
        return *mlpackage_contents(art.path), art.details["decomposed_without_retrace"]

    rewritten = package("rewritten")
    original = coreml_exporter.decompose
    coreml_exporter.decompose = lambda ep, table: (ep.run_decompositions(table), False)
    try:
        retraced = package("retraced")
    finally:
        coreml_exporter.decompose = original
    assert rewritten[2] is True and retraced[2] is False
    assert rewritten[:2] == retraced[:2]
