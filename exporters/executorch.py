"""ExecuTorch (.pte) with the XNNPACK delegate: fp32, fp16 and static int8 (PT2E, per-channel weights).

``convert`` lowers with ``to_edge_transform_and_lower`` and counts the compute nodes XNNPACK did not
take (they run on ExecuTorch's portable kernels, which are far slower); ``validate`` runs the file in
``executorch.runtime.Runtime`` — the real runtime, with no project code between the file and the output.
"""

from __future__ import annotations

import copy
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrvit_mobile.deploy.channels_first import in_export_layout
from hrvit_mobile.deploy.fold import NearestUpsample, use_broadcast_nearest
from hrvit_mobile.quant.recipes import Prequantized, XNNPACKInt8

from .artifacts import ArtifactResult, read_sidecar
from .build import Built, run_build, step
from .parity import ParityResult, ParityThresholds, compare, default_thresholds
from .patches.executorch_lowering import lowering_shortcuts
from .patches.executorch_partition import xnnpack_partitioner
from .patches.executorch_program import delegate_outputs_from_metadata
from .quantize import quantize_pt2e, recipe_for
from .reexport import export_graph_module
from .registry import Backend, Variant, register
from .runtime import ArtifactRunner, load_runner, sidecar_normalization
from .spec import ExportSpec, input_description, log, logits_description
from .support import conversion_inputs

TARGET = "executorch"
RUNTIME = "executorch.runtime (XNNPACK, host CPU)"


class _Float16Graph(torch.nn.Module):
    """Runs the model in half precision behind float32 input/output, the app's contract."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half().eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image.to(torch.float16)).to(torch.float32)


def xnnpack_int8_quantizer() -> Any:
    """The PT2E quantizer of the int8 recipe (kept for callers that build their own flow)."""
    return XNNPACKInt8().quantizer()


def non_delegated_ops(edge_program: Any) -> Counter[str]:
    """Operators left outside every delegate, by name (structural nodes such as getitem excluded)."""
    out: Counter[str] = Counter()
    for node in edge_program.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            continue
        # EdgeOpOverload prints as "<EdgeOpOverload: aten.gelu.default>: schema = ..."
        out[str(node.target).split(": schema")[0].removeprefix("<EdgeOpOverload: ").rstrip(">")] += 1
    return out


def contract_methods(spec: ExportSpec) -> dict[str, Any]:
    """What an app needs to feed the .pte and read its output, as constant methods of the program
    itself (``Runtime.load_program(path).load_method("labels").execute([])``), so that the bare
    ExecuTorch runtime reads the contract without the sidecar: labels, input size, layout and
    normalization, output stride."""
    h, w = spec.img_size
    return {
        "labels": list(spec.labels),
        "num_classes": spec.num_classes,
        "input_size": [h, w],
        "input_layout": "NCHW",
        "mean": [float(v) for v in spec.normalization.mean],
        "std": [float(v) for v in spec.normalization.std],
        "pixel_scale": 1 / 255,  # (pixel * pixel_scale - mean) / std
        "output_stride": 4,
    }


def read_contract(path: Path) -> dict[str, Any]:
    """The constant methods of a .pte as the bare runtime returns them (lists; one-element ones unwrapped)."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(path)
    out = {}
    for name in sorted(program.method_names - {"forward"}):
        value = list(program.load_method(name).execute([]))
        out[name] = value if name in _LIST_METHODS else value[0]
    return out


_LIST_METHODS = ("labels", "input_size", "mean", "std")


def contract_mismatch(contract: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """The constant methods that disagree with the sidecar beside the .pte (none for a .pte without them)."""
    if not contract:
        return []
    norm = meta["input"]["normalization"]
    expected = {"labels": list(meta.get("classes") or contract.get("labels", [])),
                "num_classes": meta["num_classes"], "input_size": list(meta["img_size"]),
                "mean": list(norm["mean"]), "std": list(norm["std"])}
    return [k for k, v in expected.items() if contract.get(k) != v]


def convert(
    model: torch.nn.Module,
    spec: ExportSpec,
    calib: Iterable[torch.Tensor] | np.ndarray | None = None,
) -> ArtifactResult:
    """Lower ``model`` (deploy form, fp32, eval) to a .pte in ``spec.out_dir``; writes the sidecar too."""
    inputs = conversion_inputs(TARGET, spec, calib)
    spec, variant, example, calib_t = inputs.spec, inputs.variant, inputs.example, inputs.calib
    # the layout XNNPACK runs best (channels-first: no transposes around the depthwise convs; fp16
    # keeps tokens, see the variants registered below)
    given = model
    model, layout = in_export_layout(model.eval(), BACKEND.layout_for(variant, spec.layout))

    quant_info: dict[str, Any] = {}
    prequantized = isinstance(spec.recipe, Prequantized)
    upsamplers = 0
    if any(isinstance(m, NearestUpsample) for m in model.modules()):
        # XNNPACK runs the deploy form's transposed-conv upsampler as one tiny GEMM per channel; a
        # broadcast multiply is exact and several times faster. A graph quantized before export (QAT)
        # has no such modules left and keeps the form it was trained with.
        if model is given:  # the caller's module stays as it is
            model = copy.deepcopy(model)
        upsamplers = use_broadcast_nearest(model)

    def build(stage: Path) -> Built:
        from executorch.exir import to_edge_transform_and_lower

        with torch.no_grad():
            if variant == "fp32":
                with step(TARGET, "torch.export"):
                    ep = torch.export.export(model, (example,), strict=spec.strict_export)
            elif variant == "fp16":
                with step(TARGET, "torch.export (fp16)"):
                    ep = torch.export.export(_Float16Graph(model), (example,), strict=spec.strict_export)
            else:
                q = quantize_pt2e(model, example, recipe_for(spec), calib_t, spec, TARGET, quant_info)
                if not prequantized:
                    # the recipe names the layout it would switch to; a model without HRViT's
                    # branches (SegFormer, a user's net) is quantized as given
                    quant_info["layout"] = layout
                with step(TARGET, "torch.export (quantized)"):
                    ep, quant_info["exported_without_retrace"] = export_graph_module(
                        q, (example,), strict=spec.strict_export
                    )
        lowering = step(TARGET, "lower to XNNPACK")
        with lowering, lowering_shortcuts() as skipped:
            edge = to_edge_transform_and_lower(
                ep, partitioner=[xnnpack_partitioner()], generate_etrecord=spec.etrecord,
                constant_methods=contract_methods(spec),
            )
        outside = non_delegated_ops(edge.exported_program())
        n_delegates = sum(
            1 for n in edge.exported_program().graph.nodes if "executorch_call_delegate" in str(n.target)
        )
        if outside:
            top = ", ".join(f"{k} x{v}" for k, v in outside.most_common(6))
            log.warning(
                "[%s] %d compute nodes left outside XNNPACK (portable kernels): %s",
                TARGET,
                sum(outside.values()),
                top,
            )
        with step(TARGET, "emit ExecuTorch program"), delegate_outputs_from_metadata() as answered:
            et_program = edge.to_executorch()
        skipped.update(answered)
        pte = stage / f"{spec.name}.pte"
        pte.write_bytes(et_program.buffer)
        extras: list[Path] = []
        details: dict[str, Any] = {
            "delegate": "XnnpackBackend",
            "delegate_calls": n_delegates,
            "non_delegated_compute_nodes": sum(outside.values()),
            "non_delegated_ops": dict(outside),
            "quantization": quant_info if variant == "int8" else None,
            "compute_dtype": {"fp32": "float32", "fp16": "float16", "int8": "int8"}[variant],
            "lowering_passes_skipped": sorted(skipped),  # ATen-to-edge and XNNPACK passes
            # a graph quantized before export (QAT) keeps the layout it was trained in, as recorded
            "layout": quant_info.get("layout", layout) if prequantized else layout,
            "nearest_upsamplers_as_broadcast_mul": upsamplers,
        }
        if spec.bundled_program:
            extras.append(_bundle(et_program, example, stage / f"{spec.name}.bpte"))
            details["bundled_program"] = extras[-1].name
        if spec.etrecord:
            etr = stage / f"{spec.name}.etrecord"
            et_program.get_etrecord().save(str(etr))
            extras.append(etr)
            details["etrecord"] = etr.name
        return Built(
            main=pte,
            extras=extras,
            input=input_description(spec, "image (method input 0)"),
            outputs=[logits_description(spec, "logits (method output 0)")],
            details=details,
        )

    return run_build(spec, variant, ".pte", build)


def _bundle(et_program: Any, example: torch.Tensor, path: Path) -> Path:
    """A BundledProgram: the program plus one test input and its expected output, for on-device checks.

    The expected output is what the host ExecuTorch runtime computes for this very program, so a
    device that disagrees points at the device's kernels, not at quantization error.
    """
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.core import BundledProgram
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(et_program.buffer).load_method("forward")
    expected = method.execute([example])[0].clone()
    suite = MethodTestSuite(
        method_name="forward",
        test_cases=[MethodTestCase(inputs=(example,), expected_outputs=(expected,))],
    )
    path.write_bytes(serialize_from_bundled_program_to_flatbuffer(BundledProgram(et_program, [suite])))
    return path


def verify_bundled(path: Path, rtol: float = 1e-3, atol: float = 1e-4) -> bool:
    """Run a .bpte's bundled test case in the runtime and compare with its bundled expected output."""
    from executorch.extension.pybindings import portable_lib

    bundle = portable_lib._load_bundled_program_from_buffer(Path(path).read_bytes())
    try:
        bundle.verify_result_with_bundled_expected_output("forward", 0, rtol, atol)
    except RuntimeError:
        return False
    return True


def validate(
    artifact: Path,
    images: np.ndarray,
    references: Sequence[np.ndarray],
    thresholds: ParityThresholds | None = None,
) -> ParityResult:
    """Run ``artifact`` (.pte) in the ExecuTorch runtime on uint8 RGB ``images``; compare with ``references``.

    Normalization, bits and activations come from the artifact's sidecar, as an app would read them.
    """
    import time

    from executorch.runtime import Runtime

    artifact = Path(artifact)
    meta = read_sidecar(artifact)
    thresholds = thresholds or default_thresholds(meta["bits"], meta["activations"])
    t0 = time.perf_counter()
    try:
        runner = load_runner(artifact, meta)
        outputs = runner.predict(images)
    except RuntimeError as e:
        # The artifact exists but the runtime rejects it (e.g. a delegate fails to init): a parity
        # failure to report, not a crash of the export. The runtime's own log names the failing node.
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
    mm = runner.native.metadata
    result.structural = {
        "backends_registered": sorted(Runtime.get().backend_registry.registered_backend_names),
        "method_inputs": mm.num_inputs(),
        "method_outputs": mm.num_outputs(),
        "non_delegated_compute_nodes": meta["details"].get("non_delegated_compute_nodes"),
        "output_shape": list(outputs[0].shape),
    }
    wrong = contract_mismatch(read_contract(artifact), meta)
    result.structural["contract_methods_match_sidecar"] = not wrong
    if wrong:
        result.passed = False
        result.reason = "; ".join(filter(None, [result.reason, f"constant methods differ from the sidecar: "
                                                 f"{', '.join(wrong)}"]))
    bpte = artifact.with_suffix(".bpte")
    if bpte.exists():
        ok = verify_bundled(bpte)
        result.structural["bundled_program_verified"] = ok
        if not ok:
            result.passed = False
            result.reason = (result.reason + "; " if result.reason else "") + "bundled test case mismatch"
    return result


def open_runner(path: Path, meta: dict[str, Any], threads: int | None = None) -> ArtifactRunner:
    """The .pte in the ExecuTorch runtime, fed the sidecar's normalization as an app would."""
    from executorch.runtime import Runtime

    norm = sidecar_normalization(meta)
    method = Runtime.get().load_program(path).load_method("forward")

    def run_one(image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(norm.apply(image[None])))
        return method.execute([x])[0].numpy().copy()

    return ArtifactRunner(path, meta, RUNTIME, run_one, native=method)


def delegation(meta: dict[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    """What runs in XNNPACK and what the portable CPU kernels are left with, from the sidecar."""
    details = meta.get("details") or {}
    calls, outside = details.get("delegate_calls"), details.get("non_delegated_compute_nodes")
    ops = details.get("non_delegated_ops") or {}
    text = f"{details.get('delegate', 'delegate')}: {calls} call(s), {outside} compute node(s) outside"
    if ops:
        top = sorted(ops.items(), key=lambda kv: -kv[1])[:4]
        text += " (" + ", ".join(f"{k} x{v}" for k, v in top) + ")"
    keys = ("delegate", "delegate_calls", "non_delegated_compute_nodes", "non_delegated_ops")
    return text, {k: details.get(k) for k in keys}


def embedded_labels(path: Path) -> list[str] | None:
    """The class names of the .pte's ``labels`` constant method (None in a .pte without one)."""
    return read_contract(path).get("labels")


def declared_io(path: Path) -> tuple[list[int], list[int]]:
    """(input shape, output shape) of the .pte's ``forward``, as its program declares them."""
    from executorch.runtime import Runtime

    meta = Runtime.get().load_program(path).load_method("forward").metadata
    return list(meta.input_tensor_meta(0).sizes()), list(meta.output_tensor_meta(0).sizes())


BACKEND = register(Backend(
    name=TARGET,
    aliases=("pte",),
    extra="executorch",
    requirements=(("executorch", "executorch==1.5.1"), ("torchao", "torchao")),
    runtime_package="executorch",
    variants=(
        Variant("fp32", 32),
        # fp16 XNNPACK kernels: the graph runs in half, with float32 in/out casts at the boundary. XNNPACK
        # fp16 takes no GELU, so the graph splits into ~50 delegate calls in either layout, and in the
        # channels-first form (every linear a 1x1 conv) the b1 .pte grows to 37.62 MB against 21.47 MB
        # in the token layout (`hrvit-mobile export --target executorch --bits 16 [--layout tokens]`):
        # fp16 keeps tokens.
        Variant("fp16", 16, layout="tokens"),
        # static per-channel W8A8 (PT2E XNNPACKQuantizer); XNNPACK has no weight-only conv path, so
        # 8-bit means W8A8 here
        Variant("int8", 8, "int8", recipe=lambda spec: XNNPACKInt8(), calibrates=True),
    ),
    # XNNPACK runs channels-first in 0.74x the token layout's time (four b1 blocks at 128x128,
    # `python3 benchmarks/layout.py --runtimes executorch tflite`): no transposes around depthwise convs
    layout="channels_first",
    app_file="model.pte",
    apps=("ios", "android"),
    app_entry={"method": "forward"},
    color="#1f77b4",
    convert=convert,
    validate=validate,
    open_runner=open_runner,
    delegation=delegation,
    embedded_labels=embedded_labels,
    declared_io=declared_io,
))
