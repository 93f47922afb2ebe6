"""ExecuTorch exports, each loaded back in ``executorch.runtime`` with no project code in the loop."""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import require_module

from hrvit_mobile.exporters import ExportSpec, ParityThresholds, export, resolve
from hrvit_mobile.exporters.artifacts import sha256_file
from hrvit_mobile.exporters.testing import TinySegmenter
from hrvit_mobile.normalization import IMAGENET_MEAN, IMAGENET_STD

Runtime = require_module("executorch.runtime").Runtime

SIZE = (64, 64)


def _images(n: int = 2, seed: int = 7) -> np.ndarray:
    from hrvit_mobile.exporters.parity import synthetic_images

    return synthetic_images(n, SIZE, seed=seed)


def _normalize(images: np.ndarray) -> torch.Tensor:
    x = (images.astype(np.float32) / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _run_pte(path: Path, x: torch.Tensor) -> np.ndarray:
    method = Runtime.get().load_program(path).load_method("forward")
    return np.concatenate([method.execute([x[i : i + 1]])[0].numpy() for i in range(x.shape[0])])


@pytest.fixture(scope="module")
def model() -> TinySegmenter:
    return TinySegmenter(num_classes=5)


@pytest.mark.parametrize(
    ("bits", "variant", "max_abs", "min_agree"),
    [(32, "fp32", 1e-4, 1.0), (16, "fp16", 0.1, 0.98), (8, "int8", None, 0.9)],
)
def test_executorch_variant(
    model: TinySegmenter, tmp_path: Path, bits: int, variant: str, max_abs: float | None, min_agree: float
) -> None:
    spec = ExportSpec(
        target="executorch",
        bits=bits,
        img_size=SIZE,
        num_classes=5,
        out_dir=tmp_path,
        model_name="tiny",
        bundled_program=True,
        etrecord=True,
    )
    report = export(model, spec)
    pte = tmp_path / f"tiny_64x64_executorch_{variant}.pte"
    assert report.artifact.path == pte and report.ok, report.summary()
    assert report.parity is not None and report.parity.ran and report.parity.samples == 2

    # the real runtime, straight from the file: float32 NCHW normalized image in, logits out
    images = _images()
    x = _normalize(images)
    out = _run_pte(pte, x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == (2, 5, 16, 16) and out.dtype == np.float32
    if max_abs is not None:
        assert np.abs(out - ref).max() <= max_abs
    assert (out.argmax(1) == ref.argmax(1)).mean() >= min_agree
    if variant == "int8":  # a model without HRViT's branches is quantized in its own layout
        quantization = report.artifact.details["quantization"]
        assert quantization["layout"] == report.artifact.details["layout"] == "as given"
        # the histogram observers' activations were binned, by the C kernel where it builds here
        from hrvit_mobile.quant import native

        binned = quantization["histogram_binning"]
        assert sum(binned.values()) > 0
        assert binned.get("native C kernel", 0) > 0 if native.available() else "native C kernel" not in binned
        one_pass = "native C kernel, range checked in the same pass"  # activations inside the range so far
        assert binned.get(one_pass, 0) > 0 if native.available_if_inside() else one_pass not in binned

    meta = json.loads((tmp_path / (pte.name + ".json")).read_text())
    assert meta["variant"] == variant and meta["bits"] == bits
    assert meta["input"]["shape"] == [1, 3, 64, 64] and meta["input"]["layout"] == "NCHW"
    assert meta["input"]["normalization"]["mean"] == list(IMAGENET_MEAN)
    assert meta["classes"] == [f"class_{i}" for i in range(5)]
    files = {f["path"]: f for f in meta["files"]}
    for name in (pte.name, pte.stem + ".bpte", pte.stem + ".etrecord"):
        assert files[name]["sha256"] == sha256_file(tmp_path / name)
    assert meta["parity"]["passed"] is True and meta["parity"]["runtime"].startswith("executorch.runtime")
    assert meta["tool_versions"]["executorch"] and meta["peak_rss_bytes"] > 0 and meta["export_seconds"] > 0
    details = meta["details"]
    assert details["delegate_calls"] >= 1
    assert details["non_delegated_compute_nodes"] == sum(details["non_delegated_ops"].values())
    assert report.parity.structural["bundled_program_verified"] is True
    assert not list(tmp_path.glob(".*staging*"))


def test_bundled_program_runs_in_runtime(model: TinySegmenter, tmp_path: Path) -> None:
    """The .bpte carries its own test case; the runtime checks it without any project code."""
    from executorch.extension.pybindings import portable_lib

    export(
        model,
        ExportSpec(
            target="executorch",
            img_size=SIZE,
            num_classes=5,
            out_dir=tmp_path,
            bundled_program=True,
            run_parity=False,
        ),
    )
    (bpte,) = tmp_path.glob("*.bpte")
    bundle = portable_lib._load_bundled_program_from_buffer(bpte.read_bytes())
    bundle.verify_result_with_bundled_expected_output("forward", 0, 1e-3, 1e-4)


def test_the_pte_carries_its_contract_for_the_bare_runtime(model: TinySegmenter, tmp_path: Path) -> None:
    """Labels, input size, layout and normalization are constant methods of the program: the bare
    ExecuTorch runtime reads them, they equal the sidecar, and a sidecar that disagrees fails validation."""
    from executorch.runtime import Runtime

    from hrvit_mobile.exporters.executorch import read_contract
    from hrvit_mobile.exporters.executorch import validate as validate_pte

    names = ["sky", "tree", "road", "car", "person"]
    report = export(model, ExportSpec(target="executorch", img_size=SIZE, num_classes=5, class_names=names,
                                      out_dir=tmp_path))
    path = report.artifact.path
    program = Runtime.get().load_program(path)
    assert list(program.load_method("labels").execute([])) == names
    contract = read_contract(path)
    assert contract == {"labels": names, "num_classes": 5, "input_size": list(SIZE), "input_layout": "NCHW",
                        "mean": pytest.approx(list(IMAGENET_MEAN)), "std": pytest.approx(list(IMAGENET_STD)),
                        "pixel_scale": pytest.approx(1 / 255), "output_stride": 4}
    assert report.parity.structural["contract_methods_match_sidecar"] is True
    sidecar = path.with_name(path.name + ".json")
    meta = json.loads(sidecar.read_text())
    meta["classes"] = list(reversed(names))
    sidecar.write_text(json.dumps(meta))
    refs = [np.zeros((1, 5, SIZE[0] // 4, SIZE[1] // 4), np.float32)]
    result = validate_pte(path, _images(1), refs)
    assert not result.passed and "constant methods differ from the sidecar: labels" in result.reason


class _DataDependent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # torch.export cannot capture this
            return x[:, :1, ::4, ::4]
        return -x[:, :1, ::4, ::4]


def test_failed_export_leaves_no_partial_files(tmp_path: Path) -> None:
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.export raises, nothing may be left
        export(
            _DataDependent(), ExportSpec(target="executorch", img_size=SIZE, num_classes=1, out_dir=tmp_path)
        )
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_is_reported_and_artifact_kept(model: TinySegmenter, tmp_path: Path) -> None:
    """An fp16 program held to the fp32 limits: export reports the miss by name and keeps the file."""
    from hrvit_mobile.exporters.parity import DEFAULT_THRESHOLDS

    report = export(
        model,
        ExportSpec(target="executorch", bits=16, img_size=SIZE, num_classes=5, out_dir=tmp_path,
                   thresholds=DEFAULT_THRESHOLDS[(32, "float")]),
    )
    assert not report.ok and "max_abs_err" in report.parity.reason
    assert report.parity.max_abs_err > 1e-3 and report.parity.cosine > 0.999  # fp16 rounding, not garbage
    meta = json.loads(report.artifact.sidecar.read_text())
    assert meta["parity"]["passed"] is False and report.artifact.path.exists()


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("bits", [32, 8])
def test_executorch_nano(deploy_nano, tmp_path: Path, bits: int) -> None:
    """The real architecture (dense and factored DES maps) lowers to XNNPACK with nothing left to
    portable kernels."""
    from hrvit_mobile.deploy.fold import NearestUpsample

    deployed = deploy_nano((64, 96))
    report = export(
        deployed,
        ExportSpec(
            target="executorch", bits=bits, img_size=(64, 96), num_classes=7, out_dir=tmp_path,
            model_name="hrvit_nano", calib_samples=2,
            # untrained weights say nothing about int8 accuracy: here int8 runs in the runtime with no
            # limits; tests/test_demo_int8.py holds the trained demo model to the default thresholds
            thresholds=ParityThresholds() if bits == 8 else None,
        ),
    )
    assert report.ok and report.parity.ran, report.summary()
    if bits == 32:  # the default fp32 thresholds
        assert report.parity.max_abs_err <= 1e-3 and report.parity.argmax_agreement >= 0.999
    details = report.artifact.details
    assert details["non_delegated_compute_nodes"] == 0
    assert details["delegate_calls"] == 1
    # lowered in the channels-first layout with broadcast upsamplers, on a copy: the caller's deploy
    # form keeps its own layout and modules
    assert details["layout"] == "channels_first"
    upsamplers = [m for m in deployed.modules() if isinstance(m, NearestUpsample)]
    assert details["nearest_upsamplers_as_broadcast_mul"] == len(upsamplers) > 0
    assert all(type(m) is NearestUpsample for m in upsamplers)
    assert any(type(m).__name__ == "DeployBranch" for m in deployed.modules())


def test_runtime_rejecting_the_file_is_a_parity_failure(model: TinySegmenter, tmp_path: Path) -> None:
    from hrvit_mobile.exporters import executorch as et_exporter

    report = export(model, ExportSpec(target="executorch", img_size=SIZE, num_classes=5, out_dir=tmp_path))
    pte = report.artifact.path
    pte.write_bytes(pte.read_bytes()[: pte.stat().st_size // 2])  # truncated on its way to the device
    res = et_exporter.validate(pte, _images(1), [np.zeros((1, 5, 16, 16), np.float32)])
    assert res.ran and res.passed is False and res.reason.startswith("runtime error:")


def _lower(model: torch.nn.Module, size: tuple[int, int], skip: bool) -> tuple[bytes, list[str]]:
    """The .pte of ``model``: with the exporter's lowering shortcuts (skipped passes, the checked
    partitioner, shared provenance, bit-set dependency closures, deferred fx code generation) when
    ``skip``, else with ExecuTorch's stock lowering."""
    from contextlib import ExitStack

    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from hrvit_mobile.exporters.executorch import (
        delegate_outputs_from_metadata,
        lowering_shortcuts,
        xnnpack_partitioner,
    )
    from hrvit_mobile.exporters.fx_codegen import deferred_graph_codegen

    with ExitStack() as shortcuts:
        skipped = None
        if skip:
            shortcuts.enter_context(deferred_graph_codegen())
            skipped = shortcuts.enter_context(lowering_shortcuts())
        ep = torch.export.export(model.eval(), (torch.randn(1, 3, *size),))
        partitioner = xnnpack_partitioner() if skip else XnnpackPartitioner()
        edge = to_edge_transform_and_lower(ep, partitioner=[partitioner])
        if skip:  # and every delegate output answered from metadata checked against the program's run
            answered = shortcuts.enter_context(delegate_outputs_from_metadata(verify=True))
        buffer = edge.to_executorch().buffer
        if skip:
            skipped.update(answered)
    return buffer, sorted(skipped or [])


def test_skipping_inapplicable_xnnpack_passes_changes_no_byte(model: TinySegmenter) -> None:
    """Passes are skipped only where they would rewrite nothing: the .pte is byte-identical."""
    with_skips, skipped = _lower(model, (64, 64), skip=True)
    without, _ = _lower(model, (64, 64), skip=False)
    assert with_skips == without
    assert {"PReLUReshapePass", "Conv1dUnsqueezePass", "run_decompositions({})"} <= set(skipped)
    assert "FuseActivationPass's retrace" in skipped  # its ReLUs are fused without a retrace
    assert skipped.count("edge dtype check of an unchanged graph") == 1  # a Counter's keys: it happened
    assert "delegate calls answered from recorded outputs" in skipped


def test_memoized_dataclass_encoding_writes_the_stock_json(model: TinySegmenter) -> None:
    """The XNNPACK graphs of a lowering encode to the same JSON (Union fields tagged with their types)
    with the memoized encoder as with ExecuTorch's, and the stock encoder is back afterwards."""
    from executorch.backends.xnnpack.serialization import xnnpack_graph_serialize as serialize

    from hrvit_mobile.exporters.patches.executorch_program import memoized_dataclass_encoding
    from hrvit_mobile.patching import patched

    graphs: list[Any] = []
    original = serialize.convert_to_flatbuffer

    def capture(graph: Any) -> bytes:
        graphs.append(graph)
        return original(graph)

    with patched(serialize, convert_to_flatbuffer=capture):
        _lower(model, (64, 64), skip=True)
    stock_encoder = serialize._DataclassEncoder
    stock = [json.dumps(g, cls=stock_encoder) for g in graphs]
    with memoized_dataclass_encoding():
        assert serialize._DataclassEncoder is not stock_encoder
        memoized = [json.dumps(g, cls=serialize._DataclassEncoder) for g in graphs]
    assert serialize._DataclassEncoder is stock_encoder
    assert graphs and memoized == stock
    assert '_type": "XNN' in stock[0]  # the Union tags are part of what is compared


class _MemoryFormatOps(torch.nn.Module):
    """Ops MemoryFormatOpsPass rewrites to their dim-order forms (dtype casts, a clone with a memory
    format, contiguous), around a conv XNNPACK takes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x)).to(torch.float16).to(torch.float32)
        z = y.clone(memory_format=torch.channels_last) + 1.0
        return z.contiguous() * 2.0


def test_edge_ops_in_one_retrace_give_the_stock_edge_program() -> None:
    """OpReplacePass and MemoryFormatOpsPass composed per operator give the edge program and .pte of
    the two passes run one after the other, dim-order ops included; one retrace is counted saved."""
    from executorch.exir import to_edge_transform_and_lower

    from hrvit_mobile.exporters.executorch import xnnpack_partitioner
    from hrvit_mobile.exporters.patches.executorch_lowering import edge_ops_in_one_retrace

    model = _MemoryFormatOps().eval()
    example = (torch.randn(1, 3, 8, 8),)
    results = []
    for fused in (False, True):
        ep = torch.export.export(model, example)
        with edge_ops_in_one_retrace() if fused else contextlib.nullcontext() as saved:
            edge = to_edge_transform_and_lower(ep, partitioner=[xnnpack_partitioner()])
        program = edge.exported_program()
        targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
        results.append((program.graph_module.code, targets, edge.to_executorch().buffer, saved))
    (code0, targets0, pte0, _), (code1, targets1, pte1, saved) = results
    assert any("dim_order" in t for t in targets0)  # the rewrite happened, and is compared
    assert code1 == code0 and targets1 == targets0 and pte1 == pte0
    assert saved["MemoryFormatOpsPass's own retrace"] == 1


def test_edge_dtype_check_runs_once_per_distinct_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within edge_dtype_checked_once a graph is checked once, a copy of it is not checked again, a
    graph with one recorded dtype changed is, and a check that fails raises every time."""
    import copy

    from executorch.exir import to_edge
    from executorch.exir.verification import verifier

    from hrvit_mobile.exporters.patches.executorch_lowering import edge_dtype_checked_once

    runs: list[int] = []
    stock = verifier._check_tensor_args_matching_op_allowed_dtype

    def counted(gm: torch.fx.GraphModule) -> None:
        runs.append(len(gm.graph.nodes))
        stock(gm)

    monkeypatch.setattr(verifier, "_check_tensor_args_matching_op_allowed_dtype", counted)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    gm = to_edge(torch.export.export(model, (torch.randn(1, 3, 8, 8),))).exported_program().graph_module
    runs.clear()  # to_edge checked it already, outside the block
    with edge_dtype_checked_once() as skipped:
        verifier._check_tensor_args_matching_op_allowed_dtype(gm)
        verifier._check_tensor_args_matching_op_allowed_dtype(copy.deepcopy(gm))
        assert len(runs) == 1 and skipped["edge dtype check of an unchanged graph"] == 1
        relu = next(n for n in gm.graph.nodes if "relu" in str(n.target))
        relu.meta["val"] = relu.meta["val"].to(torch.float16)  # relu's output no longer its input's dtype
        for _ in range(2):
            with pytest.raises(verifier.SpecViolationError, match="mismatched dtypes"):
                verifier._check_tensor_args_matching_op_allowed_dtype(gm)
        assert len(runs) == 3 and skipped["edge dtype check of an unchanged graph"] == 1
    assert verifier._check_tensor_args_matching_op_allowed_dtype is counted  # restored


def test_edge_dtype_check_on_recorded_values_finds_what_the_fake_run_finds(model: TinySegmenter) -> None:
    """The validator reading arguments' dtypes from recorded values reports what the stock fake-tensor
    run reports: nothing on real edge graphs (fp32, int8), the tampered op with the same dtypes."""
    from contextlib import nullcontext

    from executorch.exir import to_edge
    from executorch.exir.verification import verifier
    from executorch.exir.verification.arg_validator import EdgeOpArgValidator
    from torch._dispatch.python import enable_python_dispatcher
    from torch._export.utils import _detect_fake_mode_from_gm

    from hrvit_mobile.exporters.patches.executorch_lowering import _recorded_value_arg_validator
    from hrvit_mobile.quant.recipes import XNNPACKInt8

    def violations(validator_class: type, gm: torch.fx.GraphModule) -> dict[Any, Any]:
        validator = validator_class(gm)
        with enable_python_dispatcher(), _detect_fake_mode_from_gm(gm) or nullcontext():
            validator.run(*verifier._get_inputs(gm))
        return {op: (dtypes, node.name) for op, (dtypes, node) in validator.violating_ops.items()}

    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        quantized = XNNPACKInt8().quantize(model, x, [x])
    graphs = [to_edge(torch.export.export(m, (x,))).exported_program().graph_module
              for m in (model, quantized)]
    for gm in graphs:
        assert violations(EdgeOpArgValidator, gm) == violations(_recorded_value_arg_validator(), gm) == {}
    gm = graphs[0]
    relu = next(n for n in gm.graph.nodes if "relu" in str(n.target))
    relu.meta["val"] = relu.meta["val"].to(torch.float16)
    # both name the relu; reading recorded values, its consumer (given a float16 input) is named too
    found, stock = violations(_recorded_value_arg_validator(), gm), violations(EdgeOpArgValidator, gm)
    assert [name for _, name in stock.values()] == [relu.name]
    assert stock[relu.target] == found[relu.target] and len(found) == 2


class _RuntimeWeightLinear(torch.nn.Module):
    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, weight)


class _UpsampleHardswish(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear")
        return torch.nn.functional.hardswish(up)


def test_checked_partitioner_drops_the_check_only_when_nothing_fails_it() -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    from hrvit_mobile.exporters.executorch import xnnpack_partitioner

    supported = torch.export.export(_UpsampleHardswish(), (torch.randn(1, 3, 8, 8),)).run_decompositions({})
    ops, check = xnnpack_partitioner().ops_to_not_decompose(supported)
    assert check is None
    assert {"aten.upsample_bilinear2d.vec", "aten.hardswish.default"} <= {str(op) for op in ops}
    # XNNPACK takes no linear whose weight is a graph input: the check rejects it, so it stays
    rejected = torch.export.export(_RuntimeWeightLinear(), (torch.randn(2, 4), torch.randn(3, 4)))
    rejected = rejected.run_decompositions({})
    ops, check = xnnpack_partitioner().ops_to_not_decompose(rejected)
    stock_ops, _ = XnnpackPartitioner().ops_to_not_decompose(rejected)
    assert check is not None and ops == stock_ops


def test_single_decomposition_retraces_once_and_falls_back_when_answers_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The functionalization retrace is folded into the decomposition (one decomposition, with a
    table, here a node rewrite without any retrace) when the partitioner gives the same answer before
    and after it; when the answers differ the stock functionalization runs. Either way the .pte is the
    stock lowering's."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torch.export import ExportedProgram

    from hrvit_mobile.exporters.executorch import xnnpack_partitioner
    from hrvit_mobile.exporters.patches.executorch_lowering import single_decomposition

    class DriftingAnswer(type(xnnpack_partitioner())):  # its first answer keeps one op fewer
        calls = 0

        def ops_to_not_decompose(self, ep: Any) -> tuple[list[Any], Any]:
            ops, check = super().ops_to_not_decompose(ep)
            DriftingAnswer.calls += 1
            return (ops if DriftingAnswer.calls > 1 else ops[:-1]), check

    def program() -> Any:
        return torch.export.export(_UpsampleHardswish().eval(), (torch.randn(1, 3, 8, 8),))

    stock = to_edge_transform_and_lower(program(), partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    real = ExportedProgram.run_decompositions
    retraces: list[str] = []

    def counted(self: Any, decomp_table: Any = None, **kwargs: Any) -> Any:
        retraces.append("{}" if type(decomp_table) is dict and not decomp_table else "table")
        return real(self, decomp_table, **kwargs)

    monkeypatch.setattr(ExportedProgram, "run_decompositions", counted)
    for partitioner, folded in ((xnnpack_partitioner(), True), (DriftingAnswer(), False)):
        retraces.clear()
        skipped: Counter[str] = Counter()
        with single_decomposition(skipped):
            lowered = to_edge_transform_and_lower(program(), partitioner=[partitioner])
        assert lowered.to_executorch().buffer == stock
        if folded:  # and the decomposition itself rewrote nodes instead of retracing
            assert skipped == {"run_decompositions({})": 1, "run_decompositions retrace (nodes rewritten)": 1}
            assert retraces == []
        else:  # the rewritten program was dropped for the stock functionalization
            assert not skipped and retraces == ["{}"]


def test_pass_predicates_see_the_ops() -> None:
    from hrvit_mobile.exporters.patches.executorch_lowering import _PASS_APPLIES

    with_bn = torch.export.export(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval(),
        (torch.randn(1, 3, 8, 8),),
    )
    without = torch.export.export(torch.nn.Conv2d(3, 4, 3).eval(), (torch.randn(1, 3, 8, 8),))
    conv1d = torch.export.export(torch.nn.Conv1d(3, 4, 3).eval(), (torch.randn(1, 3, 8),))
    assert _PASS_APPLIES["FuseBatchNormPass"](with_bn) and not _PASS_APPLIES["FuseBatchNormPass"](without)
    assert _PASS_APPLIES["Conv1dUnsqueezePass"](conv1d) and not _PASS_APPLIES["Conv1dUnsqueezePass"](without)


def test_edge_pass_predicates_see_the_ops() -> None:
    """The predicates of passes that run on edge-dialect graphs (XNNPACK preprocessing) see edge ops."""
    from executorch.backends.xnnpack._passes.fuse_activation_pass import FuseActivationPass
    from executorch.exir import to_edge

    from hrvit_mobile.exporters.patches.executorch_lowering import _PASS_APPLIES

    def edge(*layers: torch.nn.Module) -> Any:
        ep = torch.export.export(torch.nn.Sequential(*layers).eval(), (torch.randn(1, 3, 8, 8),))
        return to_edge(ep).exported_program()

    conv = torch.nn.Conv2d(3, 4, 3)
    relu, hardtanh = edge(conv, torch.nn.ReLU()), edge(conv, torch.nn.Hardtanh())
    gelu = edge(conv, torch.nn.GELU())
    fuse = _PASS_APPLIES["FuseActivationPass"]
    assert fuse(relu) and fuse(hardtanh) and not fuse(gelu)
    assert {op.name() for op in FuseActivationPass.FUSEABLE_ACTIVATIONS} == {
        "aten::relu", "aten::hardtanh"
    }  # the activations the predicate looks for are the pass's own
    assert not _PASS_APPLIES["RemoveRedundantCopyPass"](gelu)
    assert not _PASS_APPLIES["PropagateCustomMetaPass"](gelu)


def test_redundant_copy_predicate_runs_the_pass_checks_on_a_copy() -> None:
    """A _to_copy pair of opposite memory formats is what RemoveRedundantCopyPass removes: the predicate
    says so and leaves the graph it was asked about as it was; a single copy is not removed."""
    from types import SimpleNamespace

    from executorch.backends.xnnpack._passes.channels_last_tagged_reshape_pass import (
        ChannelsLastTaggedReshapePass as Tagged,
    )
    from executorch.exir.dialects._ops import ops as exir_ops

    from hrvit_mobile.exporters.patches.executorch_lowering import _PASS_APPLIES

    def program(pair: bool) -> Any:
        graph = torch.fx.Graph()
        x = graph.placeholder("x")
        to_copy = exir_ops.edge.aten._to_copy.default
        to_nhwc = graph.call_function(to_copy, (x,), {"memory_format": torch.channels_last})
        Tagged.mark_as_nhwc_node(to_nhwc)
        last = to_nhwc
        if pair:
            kwargs = {"memory_format": torch.contiguous_format}
            last = graph.call_function(to_copy, (to_nhwc,), kwargs)
            Tagged.mark_as_nchw_node(last)
        graph.output(graph.call_function(exir_ops.edge.aten.relu.default, (last,)))
        return SimpleNamespace(graph_module=torch.fx.GraphModule(torch.nn.Module(), graph))

    removes = _PASS_APPLIES["RemoveRedundantCopyPass"]
    pair, single = program(True), program(False)
    assert removes(pair) and len(pair.graph_module.graph.nodes) == 5
    assert not removes(single) and len(single.graph_module.graph.nodes) == 4


class _ArangeAdd(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.arange(8).to(torch.float32)  # arange and the cast take constants only


def test_const_prop_and_linear_predicates_agree_with_the_passes() -> None:
    """ConstPropPass and ConvertToLinearPass are skipped by predicates that must say True exactly where
    the pass itself rewrites the graph: checked against the passes on edge programs with and without
    what they rewrite (a constant-only arange; a linear that to_edge decomposes into addmm)."""
    from executorch.backends.xnnpack._passes.convert_to_linear import ConvertToLinearPass
    from executorch.exir import to_edge
    from executorch.exir.passes.const_prop_pass import ConstPropPass

    from hrvit_mobile.exporters.patches.executorch_lowering import _PASS_APPLIES

    def edge(module: torch.nn.Module, shape: tuple[int, ...]) -> Any:
        return to_edge(torch.export.export(module.eval(), (torch.randn(*shape),))).exported_program()

    def structure(gm: torch.fx.GraphModule) -> list[tuple[str, str]]:
        return [(n.op, str(n.target)) for n in gm.graph.nodes]

    def rewrites(ep: Any, pass_: Any) -> bool:  # on a copy: the verifier of _transform rejects aten.linear
        return structure(pass_(copy.deepcopy(ep.graph_module)).graph_module) != structure(ep.graph_module)

    conv = edge(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), (1, 3, 8, 8))
    arange = edge(_ArangeAdd(), (2, 8))
    linear = edge(torch.nn.Linear(8, 4), (2, 8))
    for ep, expected in ((arange, True), (conv, False), (linear, False)):
        assert _PASS_APPLIES["ConstPropPass"](ep) is expected
        assert rewrites(ep, ConstPropPass()) is expected
    for ep, expected in ((linear, True), (conv, False), (arange, False)):
        before = structure(ep.graph_module)
        assert _PASS_APPLIES["ConvertToLinearPass"](ep) is expected
        assert structure(ep.graph_module) == before  # the predicate ran the fallback transform on a copy
        assert rewrites(ep, ConvertToLinearPass()) is expected


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tokens", "channels_first"])
def test_skipping_passes_on_nano_deploy_form_changes_no_byte(
    nano_model: torch.nn.Module, layout: str
) -> None:
    import hrvit_mobile
    from hrvit_mobile.deploy.channels_first import in_export_layout

    deployed, _ = in_export_layout(hrvit_mobile.deploy(nano_model, img_size=(64, 96)), layout)
    with_skips, skipped = _lower(deployed, (64, 96), skip=True)
    assert with_skips == _lower(deployed, (64, 96), skip=False)[0]
    assert "FuseBatchNormPass" in skipped  # the deploy form has every BN folded already
    assert "ConvertToUpsampleBilinear2d" in skipped  # its patterns are the preserved upsample itself


@pytest.mark.slow
def test_deferred_codegen_changes_no_byte_of_an_int8_export(
    nano_model: torch.nn.Module, tmp_path: Path
) -> None:
    """Quantization (prepare, calibrate, convert) and lowering run with deferred fx code generation:
    the int8 .pte is byte-identical to one exported with eager code generation."""
    from contextlib import nullcontext

    import hrvit_mobile
    from hrvit_mobile.exporters import executorch as et_exporter
    from hrvit_mobile.exporters import fx_codegen

    deployed = hrvit_mobile.deploy(nano_model, img_size=(64, 96))
    calib = [torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def pte(out: str) -> bytes:
        spec = ExportSpec(target="executorch", bits=8, img_size=(64, 96), num_classes=7,
                          out_dir=tmp_path / out, model_name="hrvit_nano", run_parity=False)
        return et_exporter.convert(deployed, resolve(spec)[0], calib).path.read_bytes()

    deferred = pte("deferred")
    original = fx_codegen.deferred_graph_codegen
    fx_codegen.deferred_graph_codegen = nullcontext  # run_build imports it at call time
    try:
        eager = pte("eager")
    finally:
        fx_codegen.deferred_graph_codegen = original
    assert deferred == eager


def test_bitset_dependency_viewer_holds_the_same_nodes() -> None:
    """Every node's downstream and upstream sets equal those of fx's and ExecuTorch's own viewers."""
    import torch.fx.passes.infra.partitioner as fx_partitioner
    from executorch.exir.backend.canonical_partitioners import group_partitioner

    from hrvit_mobile.exporters.patches.executorch_partition import (
        BitSetDependencyViewer,
        bitset_dependency_viewers,
    )

    class Diamond(torch.nn.Module):  # branches, a join and a dead-end user: closures that differ per node
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = torch.relu(x), torch.sigmoid(x)
            _unused = a * 3
            return torch.cat([a + b, b * 2], dim=1).mean(dim=0, keepdim=True)

    gm = torch.export.export(Diamond(), (torch.randn(2, 3),)).graph_module
    bits = BitSetDependencyViewer(gm)
    fx_viewer = fx_partitioner._DependencyViewer(gm)
    et_viewer = group_partitioner._DependencyViewer(gm)
    nodes = list(gm.graph.nodes)
    for node in nodes:
        down, up = bits.downstreams_of(node), bits.upstreams_of(node)
        assert set(down) == fx_viewer.downstreams_of(node) == et_viewer.downstreams_of(node)
        assert set(up) == et_viewer.upstreams_of(node)
        assert len(down) == len(set(down)) and all(n in down for n in set(down))
        assert not any(n in down for n in nodes if n not in et_viewer.downstreams_of(node))
    assert sum(len(bits.downstreams_of(n)) for n in nodes) > len(nodes)  # not all empty
    stranger = torch.fx.Graph().placeholder("x")
    assert len(bits.downstreams_of(stranger)) == 0 and stranger not in bits.downstreams_of(nodes[0])
    with bitset_dependency_viewers():
        assert fx_partitioner._DependencyViewer is BitSetDependencyViewer
        assert group_partitioner._DependencyViewer is BitSetDependencyViewer
    assert fx_partitioner._DependencyViewer is fx_viewer.__class__


def test_bitset_merge_check_answers_as_the_stock_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """For every pair of partitions (single nodes and adjacent pairs of a branching graph) the bit-mask
    merge check of ``bitset_dependency_viewers`` says what ExecuTorch's own check says."""
    from executorch.exir.backend.canonical_partitioners.group_partitioner import GroupBasedPartitioner
    from torch.fx.passes.infra.partitioner import Partition
    from torch.fx.passes.operator_support import OperatorSupportBase

    from hrvit_mobile.exporters.patches.executorch_partition import bitset_dependency_viewers

    class Ladder(torch.nn.Module):  # paths that skip nodes: merging across one makes a cycle
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.relu(x)
            b = torch.sigmoid(a)
            c = torch.tanh(b)
            d = a + c
            e = torch.exp(b) * d
            return e + torch.cos(a)

    class Everything(OperatorSupportBase):
        def is_node_supported(self, submodules: Any, node: torch.fx.Node) -> bool:
            return node.op == "call_function"

    gm = torch.export.export(Ladder(), (torch.randn(2, 3),)).graph_module
    compute = [n for n in gm.graph.nodes if n.op == "call_function"]
    groups = [[n] for n in compute] + [[a, b] for a, b in itertools.pairwise(compute)]
    by_id = {i: Partition(id=i, nodes=group) for i, group in enumerate(groups)}

    def answers() -> list[bool]:
        partitioner = GroupBasedPartitioner(gm, Everything())
        return [partitioner._can_merge_partitions(p1, p2, by_id) for p1 in by_id for p2 in by_id if p1 != p2]

    stock = answers()
    with bitset_dependency_viewers():
        fast = answers()
    assert fast == stock
    assert True in stock and False in stock  # both answers exercised
    # the closures alone decide once the final graph walk accepts everything
    import torch.fx.passes.utils.fuser_utils as fuser_utils

    monkeypatch.setattr(fuser_utils, "validate_partition", lambda nodes: True)
    stock_closures = answers()
    with bitset_dependency_viewers():
        assert answers() == stock_closures
    assert False in stock_closures


def test_known_bilinear_pattern_ops_are_the_pattern_graphs() -> None:
    """The listed op names for the installed ExecuTorch are what its pattern graphs hold."""
    from executorch import version
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d

    from hrvit_mobile.exporters.patches.executorch_lowering import (
        BILINEAR_PATTERN_OPS,
        bilinear_pattern_ops,
        op_name,
    )

    built = tuple(
        frozenset(op_name(n.target) for n in pattern.graph.nodes if n.op == "call_function")
        for pattern in bilinear_2d.get_graphs_dict()
    )
    assert version.__version__.split("+")[0] in BILINEAR_PATTERN_OPS  # the pinned release is listed
    assert bilinear_pattern_ops() == built


class _GeluBetweenConvs(torch.nn.Module):
    """In half precision XNNPACK takes the convs but not GELU: one delegate partition per conv."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(4 if i else 3, 4, 3, padding=1) for i in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.nn.functional.gelu(conv(x))
        return x


def test_partition_shortcuts_change_no_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """With several partitions the .pte is byte-identical to the stock lowering's, the graph re-sorted
    after each partition by moving its nodes (no fallback to torch's copying sort)."""
    import torch.fx.passes.tools_common as tools_common

    from hrvit_mobile.exporters.executorch import _Float16Graph
    from hrvit_mobile.exporters.patches import executorch_partition

    calls: Counter[str] = Counter()

    def counted(name: str, real: Any) -> Any:
        return lambda gm: calls.update([name]) or real(gm)

    monkeypatch.setattr(tools_common, "legalize_graph", counted("copying", tools_common.legalize_graph))
    moving = counted("moving", executorch_partition.legalize_graph_moving_nodes)
    monkeypatch.setattr(executorch_partition, "legalize_graph_moving_nodes", moving)
    model = _Float16Graph(_GeluBetweenConvs())
    shortcut = _lower(model, (16, 16), skip=True)[0]
    assert calls == {"moving": 4}  # one re-sort per partition
    assert shortcut == _lower(model, (16, 16), skip=False)[0]


def test_partition_debug_messages_rendered_only_with_debug_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the partition step ``str`` of the graph module is a placeholder while debug logging is off
    (its code is never generated for a dropped message) and the real code with debug logging on;
    outside it, unchanged."""
    import logging

    from executorch.exir.backend import backend_api

    from hrvit_mobile.exporters.executorch import _Float16Graph
    from hrvit_mobile.exporters.patches.executorch_partition import unrendered_partition_logs

    # what the partition step would see when it formats its debug message
    monkeypatch.setattr(backend_api, "_create_partitions_in_graph_module", lambda gm, *args: str(gm))
    gm = torch.export.export(_Float16Graph(_GeluBetweenConvs()), (torch.randn(1, 3, 16, 16),)).graph_module
    root = logging.getLogger()
    level = root.level
    try:
        with unrendered_partition_logs():
            root.setLevel(logging.WARNING)  # setLevel, which clears the loggers' isEnabledFor caches
            quiet = backend_api._create_partitions_in_graph_module(gm, None, None, False)
            root.setLevel(logging.DEBUG)
            loud = backend_api._create_partitions_in_graph_module(gm, None, None, False)
    finally:
        root.setLevel(level)
    assert "code not rendered" in quiet and "def forward" not in quiet
    assert "def forward" in loud
    assert "def forward" in str(gm)  # the module's own class is left as it was


def test_partition_bits_follow_a_growing_partition() -> None:
    """A partition's cached bits are rebuilt once a merge has added nodes to it."""
    from hrvit_mobile.exporters.patches.executorch_partition import BitSetDependencyViewer

    net = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Sigmoid())
    gm = torch.export.export(net, (torch.randn(2),)).graph_module
    viewer = BitSetDependencyViewer(gm)
    relu, sigmoid = (n for n in gm.graph.nodes if n.op == "call_function")
    nodes: dict[torch.fx.Node, None] = {relu: None}
    assert viewer.partition_bits(nodes) == (viewer.mask_of([relu]), viewer.mask_of([sigmoid]))
    nodes[sigmoid] = None
    output = next(iter(sigmoid.users))
    grown = (viewer.mask_of([relu, sigmoid]), viewer.mask_of([sigmoid, output]))
    assert viewer.partition_bits(nodes) == grown
    # a merge files the ORs of both partitions' bits: what they would be rebuilt as
    into: dict[torch.fx.Node, None] = {relu: None}
    other: dict[torch.fx.Node, None] = {sigmoid: None}
    file_merged = viewer.merge_partition_bits(into, other)
    into.update(other)
    file_merged()
    assert viewer.partition_bits(into) == grown
    viewer._partition_bits.clear()
    assert viewer.partition_bits(into) == grown


def test_bitset_partitioning_proposes_the_stock_partitions() -> None:
    """The whole proposal (hundreds of checks and merges, with cached and merged partition bits) gives
    the partitions of ExecuTorch's own code, on a graph with skips and unsupported ops."""
    from executorch.exir.backend.canonical_partitioners.group_partitioner import GroupBasedPartitioner
    from torch.fx.passes.operator_support import OperatorSupportBase

    from hrvit_mobile.exporters.patches.executorch_partition import bitset_dependency_viewers

    class Zigzag(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = [x]
            for i in range(24):
                y = torch.relu(x) if i % 3 else torch.sigmoid(x)
                x = y + skips[-2] if len(skips) > 1 and i % 4 == 0 else y * 2
                if i % 7 == 3:
                    x = torch.cos(x)  # unsupported: a cut between partitions
                skips.append(x)
            return x + skips[5]

    class NoCos(OperatorSupportBase):
        def is_node_supported(self, submodules: Any, node: torch.fx.Node) -> bool:
            return node.op == "call_function" and "cos" not in str(node.target)

    class Detour(torch.nn.Module):  # b -> cos -> e: b's partition may absorb d but not e
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.relu(x)
            b = torch.sigmoid(a)
            c = torch.cos(b)
            d = a * 2
            return d + c

    for net in (Zigzag(), Detour()):
        gm = torch.export.export(net, (torch.randn(2, 3),)).graph_module

        def proposal() -> list[list[str]]:
            partitions = GroupBasedPartitioner(gm, NoCos()).propose_partitions()  # noqa: B023
            return sorted(sorted(n.name for n in p.nodes) for p in partitions)

        stock = proposal()
        with bitset_dependency_viewers():
            assert proposal() == stock
        assert len(stock) > 1


def test_edge_pass_predicates() -> None:
    """Each ATen-to-edge pass predicate says yes on a graph holding what its pass rewrites, no without."""
    from hrvit_mobile.exporters.patches.executorch_lowering import _EDGE_PASS_APPLIES

    def graph(fn: Any, *inputs: torch.Tensor, **kw: Any) -> torch.fx.GraphModule:
        class Net(torch.nn.Module):
            def forward(self, *args: torch.Tensor) -> torch.Tensor:
                return fn(*args)

        return torch.export.export(Net(), inputs, **kw).graph_module

    x, y, i = torch.randn(2, 3), torch.randn(2, 3), torch.ones(2, 3, dtype=torch.int32)
    plain = graph(lambda a, b: torch.relu(a) + b, x, y)
    cases = {
        "NormalizeTransposePass": graph(lambda a: a.t(), x),
        "ReplaceBrokenOpsWithFunctionalOpsPass": graph(lambda a: a.view(3, 2) * 1.0, x),
        "ScalarToTensorPass": graph(lambda a: a * 2.0, x),
        "RemoveMixedTypeOperators": graph(lambda a, b: a + b, x, i),
        "SymToTensorPass": graph(lambda a: a * a.shape[0], x,
                                 dynamic_shapes=(({0: torch.export.Dim("n", min=2, max=8)},),)),
    }  # fmt: skip
    for name, gm in cases.items():
        applies = _EDGE_PASS_APPLIES[name]
        assert applies(gm), name
        assert not applies(plain), name
