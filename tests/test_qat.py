"""QAT on the tiny HRViT: loss falls, int8 mIoU beats PTQ, exact resume, DDP, export of the result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import class_map, imagenet_normalized, labelled_images, reference_miou, require_module

import hrvit_mobile
from hrvit_mobile.data import open_dataset
from hrvit_mobile.evaluate import evaluate
from hrvit_mobile.quant.qat import (
    QATConfig,
    QATError,
    converted_from_checkpoint,
    is_qat_checkpoint,
    load_qat_checkpoint,
    train_qat,
)
from hrvit_mobile.quant.recipes import XNNPACKInt8
from hrvit_mobile.weights import load_recipe_weights

require_module("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")

SIZE = (32, 32)
COLORS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)


def write_dataset(root: Path, n: int = 6, seed: int = 0) -> Path:
    """Coloured rectangles on a background; the class is the colour, so a few steps can learn it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros(SIZE, np.uint8)
        for c in (1, 2):
            y, x = rng.integers(0, 12, 2)
            mask[y : y + 16 + 4 * c, x : x + 14] = c
        mask[0, :4] = 255  # a few ignored pixels
        image = COLORS[np.minimum(mask, 2)] + rng.integers(0, 40, (*SIZE, 3)).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.png")
    (root / "classes.txt").write_text("background\nred\ngreen\n")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("qat") / "data")


# "full": 8 steps of batch 2, enough to learn the colours (minutes per run on a shared 2-core machine: slow);
# "small": 4 steps of batch 1 scored on 2 images, for resume and export in the default run (its larger
# step moves the float weights off the all-background start that int8 still predicts)
RUNS = {
    "full": dict(steps=8, batch_size=2, lr=2e-3, calib_batches=2),
    "small": dict(steps=4, batch_size=1, lr=1e-2, calib_batches=1, eval_limit=2),
}


def _config(data: Path, out: Path, run: str = "full", **kw) -> QATConfig:
    base = dict(data=str(data), target="executorch", model="hrvit_nano", img_size=SIZE, out=str(out),
                progress=False, **RUNS[run])
    return QATConfig(**{**base, **kw})


@pytest.fixture(scope="module", params=["small", pytest.param("full", marks=pytest.mark.slow)])
def run(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def qat_run(run: str, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp(f"qat_{run}")
    return train_qat(_config(data_dir, out, run)), out


def _prepared_from(checkpoint: Path) -> torch.fx.GraphModule:
    """The QAT graph of ``checkpoint`` with its trained weights and observer state, as the run left it."""
    from hrvit_mobile.quant.qat import _use_checkpoint_layout, build_qat_model, get_qat_recipe

    state = load_qat_checkpoint(checkpoint)
    config = state["config"]
    recipe = get_qat_recipe(config["target"])
    _use_checkpoint_layout(recipe, config)
    model = hrvit_mobile.create_model(config["model"], num_classes=config["num_classes"], img_size=SIZE)
    prepared, _ = build_qat_model(model.eval(), SIZE, recipe)
    prepared.load_state_dict(state["model"])
    prepared.eval()  # the exported graph's own eval (it returns None)
    return prepared


def _miou_on(predict, data_dir: Path, limit: int | None) -> float:
    """mIoU of ``predict`` on the dataset's first ``limit`` images, from the PNGs, computed by the test."""
    pairs = labelled_images(data_dir)[:limit]
    with torch.no_grad():
        maps = [class_map(predict(imagenet_normalized(rgb)), labels.shape) for rgb, labels in pairs]
    return reference_miou(maps, [labels for _, labels in pairs], 3)


def test_the_runs_int8_and_float_miou_are_those_of_its_checkpoint(qat_run, run: str, data_dir: Path) -> None:
    """The int8 mIoU (the converted graph) and the float one (fake-quant off) the run reports, recomputed
    from the saved checkpoint and the dataset's files."""
    from torchao.quantization.pt2e import disable_fake_quant

    result, _ = qat_run
    limit = RUNS[run].get("eval_limit")
    converted, _ = converted_from_checkpoint(result.checkpoint)
    assert result.final_miou == pytest.approx(_miou_on(converted, data_dir, limit), abs=1e-9)
    float_graph = _prepared_from(result.checkpoint)
    float_graph.apply(disable_fake_quant)
    assert result.evals[-1]["float_miou"] == pytest.approx(_miou_on(float_graph, data_dir, limit), abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["full"], indirect=True)
def test_qat_loss_falls_and_int8_miou_beats_ptq(qat_run, data_dir: Path) -> None:
    result, out = qat_run
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2])
    lrs = [h["lr"] for h in result.history]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.2 * 2e-3  # poly decay
    # PTQ of the same starting weights, calibrated on the same images, scored on the same data
    model = load_recipe_weights(hrvit_mobile.create_model("hrvit_nano", num_classes=3, img_size=SIZE))
    deployed = hrvit_mobile.deploy(model.eval(), img_size=SIZE)
    data = open_dataset(data_dir, img_size=SIZE)
    calib = [data[i][0][None] for i in range(len(data))]
    ptq = XNNPACKInt8().quantize(deployed, calib[0], calib, progress=False)
    ptq_miou = evaluate(lambda x: ptq(x), data, 3).miou
    assert result.final_miou is not None and result.final_miou > ptq_miou
    assert result.evals[-1]["model"].startswith("converted int8")
    assert is_qat_checkpoint(out / "last.pt") and (out / "qat_log.json").exists()


def test_resume_after_interrupt_matches_an_uninterrupted_run(
    qat_run, run: str, data_dir: Path, tmp_path: Path
) -> None:
    reference, _ = qat_run
    steps = RUNS[run]["steps"]
    stop = steps // 2 + 1

    def interrupt(step: int, loss: float) -> None:
        if step == stop:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_qat(_config(data_dir, tmp_path, run), on_step=interrupt)
    saved = load_qat_checkpoint(tmp_path / "last.pt")
    assert saved["step"] == stop and len(saved["history"]) == stop
    resumed = train_qat(_config(data_dir, tmp_path, run, resume=True))
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in reference.history],
                                                                 rel=1e-5)
    a = load_qat_checkpoint(tmp_path / "last.pt")
    b = load_qat_checkpoint(reference.checkpoint)
    assert a["step"] == b["step"] == steps
    for key, value in b["model"].items():
        torch.testing.assert_close(a["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    assert resumed.final_miou == pytest.approx(reference.final_miou)


def _fake_quant_scales(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if "activation_post_process" in k and k.endswith(".scale")}


def test_frozen_observers_keep_their_ranges_through_a_resume(
    qat_run, run: str, data_dir: Path, tmp_path: Path
) -> None:
    """Frozen half way (the run is interrupted there and resumed): the ranges of that step are final."""
    reference, _ = qat_run  # the same run without freezing
    steps = RUNS[run]["steps"]
    half = steps // 2

    def interrupt(step: int, loss: float) -> None:
        if step == half:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_qat(_config(data_dir, tmp_path, run, freeze_observers_at=half), on_step=interrupt)
    at_freeze = load_qat_checkpoint(tmp_path / "last.pt")["model"]
    train_qat(_config(data_dir, tmp_path, run, freeze_observers_at=half, resume=True))
    final = load_qat_checkpoint(tmp_path / "last.pt")["model"]
    unfrozen = load_qat_checkpoint(reference.checkpoint)["model"]

    scales = _fake_quant_scales(final)
    assert scales and all(int(v) == 0 for k, v in final.items() if k.endswith(".observer_enabled"))
    for key, value in scales.items():
        torch.testing.assert_close(value, at_freeze[key], rtol=0, atol=0, msg=key)
    # the weights kept training, and without the freeze the ranges would have moved on
    assert any(not torch.equal(final[k], at_freeze[k]) for k in final if k.endswith("weight"))
    assert any(not torch.equal(unfrozen[k], at_freeze[k]) for k in scales)
    with pytest.raises(QATError, match=rf"freeze-observers-at must be in 0\.\.{steps}"):
        train_qat(_config(data_dir, tmp_path / "x", run, freeze_observers_at=steps + 1))


def test_resume_with_other_settings_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """Checked before any model is built: a checkpoint of 8 steps cannot be resumed as a 9-step run."""
    from hrvit_mobile.quant.qat import FORMAT, _identity

    cfg = _config(data_dir, tmp_path)
    torch.save({"format": FORMAT, "config": _identity(cfg, 3), "step": 4, "model": {}}, tmp_path / "last.pt")
    assert is_qat_checkpoint(tmp_path / "last.pt")
    with pytest.raises(QATError, match=r"other settings \(steps 8 vs 9\)"):
        train_qat(_config(data_dir, tmp_path, steps=9, resume=True))
    with pytest.raises(QATError, match="no checkpoint"):
        train_qat(_config(data_dir, tmp_path / "nowhere", resume=True))
    assert not is_qat_checkpoint(data_dir / "classes.txt")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.mark.slow
@pytest.mark.ci
def test_ddp_two_processes_with_gloo(data_dir: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "hrvit_mobile.cli", "qat", "--data", str(data_dir), "--target", "executorch", "--steps", "3",
        "--model", "hrvit_nano", "--img-size", "32x32", "--batch-size", "1", "--lr", "1e-3",
        "--eval-limit", "2", "--out", str(tmp_path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_qat_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 3 and len(state["history"]) == 3
    assert done.stdout.count("qat executorch: 3 steps") == 1  # rank 0 alone reports


def test_qat_checkpoint_exports_without_recalibration(qat_run, tmp_path: Path) -> None:
    """``hrvit-mobile export --checkpoint last.pt`` lowers the QAT-converted graph (parity vs that graph)."""
    from hrvit_mobile.cli import main
    from hrvit_mobile.exporters import read_sidecar

    result, _ = qat_run
    assert main(["export", "--target", "executorch", "--bits", "8", "--checkpoint", str(result.checkpoint),
                 "--out", str(tmp_path)]) == 0
    pte = next(tmp_path.glob("*.pte"))
    meta = read_sidecar(pte)
    assert meta["details"]["quantization"]["recipe"] == "prequantized"
    assert meta["details"]["quantization"]["calibration_samples"] == 0
    assert meta["parity"]["passed"] and meta["img_size"] == list(SIZE)
    # trained, saved and lowered in the layout XNNPACK runs best, with broadcast upsamplers
    assert meta["details"]["layout"] == meta["details"]["quantization"]["layout"] == "channels_first"
    assert meta["details"]["quantization"]["upsampler"] == "broadcast"
    graph, _ = converted_from_checkpoint(result.checkpoint)
    targets = {str(n.target) for n in graph.graph_module.graph.nodes if n.op == "call_function"}
    assert not any("conv_transpose" in t for t in targets) and any("mul" in t for t in targets)
    # a QAT checkpoint for one target cannot be exported to another
    assert main(["export", "--target", "tflite", "--bits", "8", "--checkpoint", str(result.checkpoint),
                 "--out", str(tmp_path)]) == 2


@pytest.mark.xdist_group("qat_litert")  # its own run: beside the ExecuTorch ones, on another worker
def test_litert_qat_checkpoint_exports_with_float_io(run: str, data_dir: Path, tmp_path: Path) -> None:
    """A LiteRT QAT run exports to a .tflite that takes a float32 image and returns float32 logits, and the
    LiteRT interpreter agrees with the converted graph it came from (the export's parity)."""
    from ai_edge_litert.interpreter import Interpreter

    from hrvit_mobile.cli import main
    from hrvit_mobile.exporters import read_sidecar

    result = train_qat(_config(data_dir, tmp_path / "run", run, target="tflite", steps=2))
    assert main(["export", "--target", "tflite", "--bits", "8", "--checkpoint", str(result.checkpoint),
                 "--out", str(tmp_path / "out"), "--no-report"]) == 0
    tfl = next((tmp_path / "out").glob("*.tflite"))
    meta = read_sidecar(tfl)
    assert meta["details"]["quantization"]["recipe"] == "prequantized"
    assert meta["parity"]["passed"] and meta["parity"]["argmax_agreement"] >= 0.95
    it = Interpreter(model_path=str(tfl))
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32
    assert "image" in inp["name"]
    ops = {op["op_name"] for op in it._get_ops_details()}
    assert {"QUANTIZE", "DEQUANTIZE"} <= ops and "CONV_2D" in ops
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    convs = [op for op in it._get_ops_details() if op["op_name"] == "CONV_2D"]
    conv_out = [tensors[op["outputs"][0]]["dtype"] for op in convs]
    assert conv_out and all(d == np.int8 for d in conv_out)  # the convs run in int8


def test_float_evaluation_of_qat_weights_turns_fake_quant_off(data_dir: Path) -> None:
    """``evaluate_float`` runs the prepared graph with every fake-quant disabled: the float deploy form."""
    import copy

    from torchao.quantization.pt2e import disable_fake_quant

    from hrvit_mobile.quant.qat import build_qat_model, evaluate_float

    model = load_recipe_weights(hrvit_mobile.create_model("hrvit_nano", num_classes=3, img_size=SIZE)).eval()
    prepared, _ = build_qat_model(model, SIZE, XNNPACKInt8(qat=True))
    x = torch.randn(1, 3, *SIZE)
    prepared.train()
    prepared(x)  # the observers see data, so fake-quant changes the output
    prepared.eval()
    reference = hrvit_mobile.deploy(model, img_size=SIZE)(x)
    off = copy.deepcopy(prepared)
    off.apply(disable_fake_quant)
    assert (prepared(x) - reference).abs().max() > 1e-2
    assert torch.allclose(off(x), reference, atol=1e-4)
    data = open_dataset(data_dir, img_size=SIZE)
    deployed = hrvit_mobile.deploy(model, img_size=SIZE)
    expected = evaluate(lambda t: deployed(t), data, 3).miou
    assert evaluate_float(prepared, data, 3).miou == pytest.approx(expected)


def test_xnnpack_recipe_layout_and_old_checkpoints(nano_model) -> None:
    """The ExecuTorch recipe quantizes (and QAT trains) the channels-first form with broadcast
    upsamplers; a checkpoint that records no layout (no upsampler) predates that choice and is rebuilt
    in the token layout (with the transposed-conv upsamplers) it was trained in."""
    from hrvit_mobile.deploy.channels_first import ChannelsFirstBranch
    from hrvit_mobile.deploy.fold import BroadcastNearest, NearestUpsample
    from hrvit_mobile.deploy.modules import FACTORED_DES_MIN_CHANNELS, DeployBranch
    from hrvit_mobile.quant.qat import _layout_of, _use_checkpoint_layout

    def kinds(recipe: XNNPACKInt8) -> set[type]:
        adapted = recipe.adapt(hrvit_mobile.deploy(nano_model, img_size=(64, 96)))
        wanted = {DeployBranch, ChannelsFirstBranch, NearestUpsample, BroadcastNearest}
        return {type(m) for m in adapted.modules()} & wanted

    recipe = XNNPACKInt8(qat=True)
    assert kinds(recipe) == {ChannelsFirstBranch, BroadcastNearest}
    assert _layout_of(recipe) == {"layout": "channels_first", "upsampler": "broadcast", "des": "factored"}
    _use_checkpoint_layout(recipe, {"target": "executorch"})  # a config written before layouts
    assert recipe.layout == "tokens" and kinds(recipe) == {DeployBranch, NearestUpsample}
    assert recipe.des == "dense" and recipe.factored_des_from() is None
    _use_checkpoint_layout(recipe, {"layout": "channels_first"})  # ... before upsampler forms
    assert kinds(recipe) == {ChannelsFirstBranch, NearestUpsample}
    _use_checkpoint_layout(recipe, {"layout": "channels_first", "upsampler": "broadcast"})  # ... DES forms
    assert kinds(recipe) == {ChannelsFirstBranch, BroadcastNearest} and recipe.des == "dense"
    _use_checkpoint_layout(recipe, {"layout": "channels_first", "upsampler": "broadcast", "des": "factored"})
    assert recipe.factored_des_from() == FACTORED_DES_MIN_CHANNELS


def test_damaged_qat_checkpoint_gives_one_line(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"garbage\n")
    expected = r"cannot read QAT checkpoint .*last\.pt: not a readable weights-only"
    with pytest.raises(QATError, match=expected) as info:
        load_qat_checkpoint(path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
