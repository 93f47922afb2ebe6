"""Reports: every metric on known answers, pictures, files, a missing runtime, bench rows, CLI errors."""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import class_map, has_module, imagenet_normalized, reference_miou, require_module

from hrvit_mobile.cli import main
from hrvit_mobile.exporters import ExportSpec, ParityThresholds, export, synthetic_images
from hrvit_mobile.exporters.testing import TinySegmenter
from hrvit_mobile.report import build_report
from hrvit_mobile.report.masks import DISAGREE_RGB, GAP, mask_strip, palette
from hrvit_mobile.report.metrics import parity

SIZE = (64, 64)
K = 5
NO_LIMITS = ParityThresholds()


def _onehot_logits(class_map: np.ndarray, k: int) -> np.ndarray:
    """(1, k, h, w) logits whose argmax is ``class_map``."""
    return np.eye(k, dtype=np.float32)[class_map].transpose(2, 0, 1)[None] * 4.0 - 1.0


# ------------------------------------------------------------------ metrics on known answers


def test_identical_outputs_are_perfect() -> None:
    rng = np.random.default_rng(0)
    refs = [rng.standard_normal((1, K, 8, 8)).astype(np.float32) for _ in range(2)]
    p = parity([r.copy() for r in refs], refs, (8, 8), NO_LIMITS)
    assert p.sqnr_db == float("inf")
    assert p.max_abs_err == 0 and p.mean_abs_err == 0
    assert p.cosine_min == pytest.approx(1.0) and p.cosine_mean == pytest.approx(1.0)
    assert p.argmax_agreement == 1.0 and p.miou_vs_float == 1.0
    assert p.miou_vs_labels is None and p.passed


def test_known_perturbation_gives_known_sqnr_and_errors() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((1, K, 8, 8))
    noise = rng.standard_normal(ref.shape)
    # scale the noise to 1/100 of the signal energy: SQNR = 10 log10(100) = 20 dB exactly
    noise *= np.sqrt((ref**2).sum() / (noise**2).sum() / 100)
    p = parity([ref + noise], [ref], (8, 8), NO_LIMITS)
    assert p.sqnr_db == pytest.approx(20.0, abs=1e-9)
    assert p.max_abs_err == pytest.approx(np.abs(noise).max())
    assert p.mean_abs_err == pytest.approx(np.abs(noise).mean())
    # one element off by 0.5, nothing else: max 0.5, mean 0.5/N
    bumped = ref.copy()
    bumped[0, 0, 0, 0] += 0.5
    q = parity([bumped], [ref], (8, 8), NO_LIMITS)
    assert q.max_abs_err == pytest.approx(0.5) and q.mean_abs_err == pytest.approx(0.5 / ref.size)
    # negated logits: cosine -1, and the threshold check fails with the reason named
    r = parity([-ref], [ref], (8, 8), ParityThresholds(min_cosine=0.9))
    assert r.cosine_min == pytest.approx(-1.0) and not r.passed and "cosine" in r.reason


def test_agreement_and_miou_on_hand_counted_maps() -> None:
    ref_map = np.array([[0, 0], [1, 1]])
    out_map = np.array([[0, 1], [1, 1]])  # one pixel of four differs
    labels = np.array([[[0, 255], [1, 0]]])  # one ignored pixel
    p = parity([_onehot_logits(out_map, 2)], [_onehot_logits(ref_map, 2)], (2, 2), NO_LIMITS, labels)
    assert p.argmax_agreement == 0.75
    # vs float: class 0 tp 1 / union 2, class 1 tp 2 / union 3
    assert p.miou_vs_float == pytest.approx((1 / 2 + 2 / 3) / 2)
    # vs labels (ignoring one pixel): pred 0,1,1 for labels 0,1,0 -> class 0: 1/2, class 1: 1/2
    assert p.miou_vs_labels == pytest.approx(0.5)
    assert p.pixel_acc_vs_labels == pytest.approx(2 / 3)


# ------------------------------------------------------------------ mask pictures


def test_mask_strip_panels_sizes_and_colours() -> None:
    h, w = 6, 10
    image = np.full((h, w, 3), 200, np.uint8)
    fmap = np.zeros((h, w), np.int64)
    amap = fmap.copy()
    amap[2, 3] = 4
    strip = mask_strip(image, fmap, amap, K)
    assert strip.shape == (h, 4 * w + 3 * GAP, 3) and strip.dtype == np.uint8
    panel = [strip[:, i * (w + GAP) : i * (w + GAP) + w] for i in range(4)]
    assert (panel[0] == image).all()
    assert (panel[1] == palette(K)[0]).all()
    assert (panel[2][2, 3] == palette(K)[4]).all() and (panel[2][0, 0] == palette(K)[0]).all()
    red = (panel[3] == DISAGREE_RGB).all(-1)
    assert red.sum() == 1 and red[2, 3]
    assert (strip[:, w : w + GAP] == 255).all()  # the gap is white
    assert len({tuple(c) for c in palette(20)}) == 20


def test_mask_strip_shrinks_large_panels_and_keeps_every_disagreement() -> None:
    h, w = 512, 384  # shrinks by 2 to 256 x 192
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = 100
    fmap = np.zeros((h, w), np.int64)
    amap = fmap.copy()
    amap[301, 77] = 3  # one pixel, not the first of its 2x2 block
    strip = mask_strip(image, fmap, amap, K)
    ph, pw = h // 2, w // 2
    assert strip.shape == (ph, 4 * pw + 3 * GAP, 3)
    panel = [strip[:, i * (pw + GAP) : i * (pw + GAP) + pw] for i in range(4)]
    assert (panel[0][:, : pw // 2] == 100).all() and (panel[0][:, pw // 2 :] == 0).all()
    red = (panel[3] == DISAGREE_RGB).all(-1)
    assert red.sum() == 1 and red[150, 38]
    small = mask_strip(image[:64, :64], fmap[:64, :64], amap[:64, :64], K)
    assert small.shape == (64, 4 * 64 + 3 * GAP, 3)  # small panels keep their size


# ------------------------------------------------------------------ report files end to end


@pytest.fixture(scope="module")
def model() -> TinySegmenter:
    return TinySegmenter(num_classes=K).eval()


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("artifacts")
    paths = []
    pairs = (("tflite", 32, None, "ai_edge_litert"), ("executorch", 32, None, "executorch"),
             ("executorch", 8, 8, "executorch"), ("coreml", 16, None, "coremltools"))
    for target, bits, act, module in pairs:
        if not has_module(module):
            continue
        spec = ExportSpec(target=target, bits=bits, activations=act, img_size=SIZE, num_classes=K,
                          out_dir=out, model_name="tiny", run_parity=False)
        paths.append(export(model, spec).artifact.path)
    if not paths:
        pytest.skip("no runtime installed")
    return paths


def test_report_files_render_and_are_self_contained(model, artifacts, tmp_path: Path) -> None:
    images = synthetic_images(2, SIZE, seed=5)
    labels = np.asarray(torch.from_numpy(images[..., 0].astype(np.int64)) % K)
    labels[:, :4] = 255
    files = build_report(artifacts, model, images, tmp_path / "r", labels, latency_runs=2)
    data = json.loads(files.json.read_text())
    from hrvit_mobile.exporters import read_sidecar
    from hrvit_mobile.exporters.runtime import load_runner

    a_path = {p.name: p for p in artifacts}
    with torch.no_grad():
        float_maps = [class_map(model(imagenet_normalized(rgb)), SIZE) for rgb in images]
    float_miou = reference_miou(float_maps, list(labels), K)
    assert data["float_vs_labels"]["miou"] == pytest.approx(float_miou, abs=1e-9)
    order = ("executorch_fp32", "executorch_int8", "coreml_fp16", "tflite_fp32")  # by target, then bits
    assert [a["name"].split(".")[0].removeprefix("tiny_64x64_") for a in data["artifacts"]] == [
        o for o in order if any(o in p.name for p in artifacts)]
    for a in data["artifacts"]:
        assert a["status"] == "measured" and a["runtime"]
        if a["target"] == "coreml" and platform.system() != "Darwin":
            # the evaluator gives parity, not a phone's latency: the report says so instead of a number
            assert a["latency"] is None and "not measured" in a["latency_note"]
            assert "ops" in a["delegation"]
        else:
            assert a["latency"]["median_ms"] > 0 and a["latency"]["p90_ms"] >= a["latency"]["median_ms"]
        # the artifact's mIoU against the labels and against the float model, recomputed from its outputs
        path = a_path[a["name"]]
        outputs = load_runner(path, read_sidecar(path)).predict(images)
        maps = [class_map(torch.from_numpy(o), SIZE) for o in outputs]
        assert a["parity"]["miou_vs_labels"] == pytest.approx(reference_miou(maps, list(labels), K), abs=1e-9)
        assert a["parity"]["miou_vs_float"] == pytest.approx(reference_miou(maps, float_maps, K), abs=1e-9)
        assert len(a["masks"]) == 2
        assert (files.json.parent / a["masks"][0]).exists()
        if a["variant"] == "fp32":
            assert a["parity"]["cosine_min"] > 0.99999 and a["parity"]["argmax_agreement"] > 0.999
            assert a["compression_vs_fp32"] == pytest.approx(1.0)
        elif a["variant"] == "fp16":  # no Core ML fp32 in the set: compared with 4 bytes per float param
            assert a["compression_basis"] == "float parameters at 4 bytes each"
            assert a["compression_vs_fp32"] == pytest.approx(4 * data["params"] / a["size_bytes"])
            assert a["layers"] is None
        else:  # int8: smaller, lossy, with its per-layer error from the simulation
            # a tiny model's program overhead is most of the file: smaller, but far from 4x
            assert a["compression_vs_fp32"] > 1.1 and a["parity"]["sqnr_db"] < 60
            worst = a["layers"]["worst"]
            assert worst and "simulation" in a["layers"]["source"]
            assert {r["module"] for r in a["layers"]["layers"]} >= {"qkv", "head"}
    md = files.markdown.read_text()
    rows = [ln for ln in md.splitlines() if re.match(r"\| (executorch|coreml|tflite)/", ln)]
    assert len(rows) == len(artifacts)
    page = files.html.read_text()
    # self-contained: every picture inline, nothing fetched from anywhere
    assert "href=" not in page and not re.search(r'src="(?!data:image/png;base64,)', page)
    n_plots = 2 + sum(1 for a in data["artifacts"] if a.get("layers"))
    assert page.count('src="data:image/png;base64,') == 2 * len(artifacts) + n_plots
    assert not list(files.json.parent.glob(".*staging*"))


def test_missing_runtime_is_reported_plainly(model, artifacts, tmp_path: Path, monkeypatch) -> None:
    tflite = [a for a in artifacts if a.suffix == ".tflite"]
    if not tflite:
        pytest.skip("LiteRT not installed")
    real = importlib.util.find_spec
    # this host has LiteRT; make it look like one that does not
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ai_edge_litert"
                        else real(name, *a))
    files = build_report(tflite, model, synthetic_images(1, SIZE), tmp_path / "r", latency_runs=1)
    entry = json.loads(files.json.read_text())["artifacts"][0]
    assert entry["status"] == "not run" and "ai-edge-litert" in entry["reason"]
    assert entry["parity"] is None and entry["latency"] is None
    assert entry["verify_command"].startswith("pip install 'hrvit-mobile[tflite]' && hrvit-mobile report ")
    assert entry["size_bytes"] > 0  # what can be known without the runtime is still there
    md, page = files.markdown.read_text(), files.html.read_text()
    assert "**not run**" in md and "verify on the right host" in md and "hrvit-mobile report" in page


def test_export_writes_its_report(model, tmp_path: Path) -> None:
    require_module("ai_edge_litert")
    from hrvit_mobile.report.cli import report_after_export

    spec = ExportSpec(target="tflite", bits=16, img_size=SIZE, num_classes=K, out_dir=tmp_path,
                      model_name="tiny")
    rep = export(model, spec)
    report_after_export([rep], model, types.SimpleNamespace(out=str(tmp_path)), None)
    folder = tmp_path / "tiny_64x64_tflite_fp16_report"
    data = json.loads((folder / "report.json").read_text())
    # the export's parity and the report's come from the same runtime on the same images
    assert data["artifacts"][0]["parity"]["cosine_min"] == pytest.approx(rep.parity.cosine, abs=1e-9)
    assert data["images_source"] == "the export's 2 synthetic parity images"
    assert (folder / "report.html").exists() and (folder / "report.md").exists()


# ------------------------------------------------------------------ bench and CLI


def test_bench_gives_a_row_per_pair(tmp_path: Path, monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "coremltools"
                        else real(name, *a))
    # a checkpoint that does not exist makes each export fail at once, in its own process: a row, not a crash
    code = main(["bench", "--model", "hrvit_nano", "--img-size", "64x64", "--num-classes", "4",
                 "--only", "tflite/fp32", "coreml/fp16", "--checkpoint", str(tmp_path / "none.pth"),
                 "--out", str(tmp_path / "b")])
    assert code == 0
    printed = capsys.readouterr().out
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    assert [(r["format"], r["status"]) for r in rows] == [("coreml/fp16", "skipped"), ("tflite/fp32", "fail")]
    assert "coremltools" in rows[0]["reason"] and "none.pth" in rows[1]["reason"]
    assert "| tflite/fp32 | fail: exit 2" in printed and "| coreml/fp16 | skipped" in printed
    assert (tmp_path / "b" / "bench.md").read_text().count("\n| ") == 4  # header, rule, two rows


def test_bench_reuse_measures_existing_artifacts_without_exporting(tmp_path: Path, capsys) -> None:
    require_module("ai_edge_litert")
    common = ["--model", "hrvit_nano", "--img-size", "64x64", "--num-classes", "4"]
    out = str(tmp_path / "b" / "artifacts")
    assert main(["export", "--target", "tflite", "--bits", "32", *common, "--out", out, "--no-report"]) == 0
    capsys.readouterr()
    assert main(["bench", *common, "--only", "tflite/fp32", "--reuse", "--latency-runs", "1", "--no-layers",
                 "--out", str(tmp_path / "b")]) == 0
    (row,) = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    assert row["status"] == "ok" and row["extra"] == {"reused": True} and row["process_s"] is None
    assert row["cosine"] > 0.9999 and row["export_s"] > 0  # measured now; export figures from the sidecar
    assert not (tmp_path / "b" / "logs").exists()  # nothing was exported
    assert "reusing hrvit_nano_64x64_tflite_fp32.tflite" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_real_exports(tmp_path: Path, capsys) -> None:
    code = main(["bench", "--model", "hrvit_nano", "--img-size", "64x64", "--num-classes", "4",
                 "--only", "tflite/fp32", "executorch/int8", "--latency-runs", "2", "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["latency_ms"] > 0 and r["cosine"] > 0.9 for r in rows)
    assert (tmp_path / "report" / "report.html").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "nope.pte", "--out", "o"], "artifact not found"),
        (["bench", "--model", "nope", "--out", "o"], "unknown --model"),
        (["bench", "--model", "hrvit_nano", "--only", "tflite/fp64", "--out", "o"], "not a supported format"),
        (["bench", "--model", "hrvit_nano", "--labels", "x", "--out", "o"], "--labels needs --images"),
    ],
)
def test_cli_errors_are_one_line(argv, message, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_verification_set_crops_labels_like_images(tmp_path: Path) -> None:
    from PIL import Image

    from hrvit_mobile.report.data import load_verification_set

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    # 128x64 image: left half black, right half white; label 1 on the left, 2 on the right, 0 in one corner
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, 64:] = 255
    lab = np.ones((64, 128), np.uint8)
    lab[:, 64:] = 2
    lab[0, 32] = 0
    Image.fromarray(img).save(tmp_path / "img" / "a.jpg", quality=100)
    Image.fromarray(lab).save(tmp_path / "lab" / "a.png")
    images, labels = load_verification_set(
        tmp_path / "img", (32, 32), tmp_path / "lab", reduce_zero_label=True
    )
    assert images.shape == (1, 32, 32, 3) and labels.shape == (1, 32, 32)
    # shorter side to 32 (-> 32x64), centre crop of width 32: the left 16 columns are from the black half
    assert images[0, :, :14].max() < 40 and images[0, :, 18:].min() > 215
    assert set(np.unique(labels[0, :, :16])) <= {0, 255} and set(np.unique(labels[0, :, 16:])) == {1}
    with pytest.raises(Exception, match="no label PNG"):
        load_verification_set(tmp_path / "img", (32, 32), tmp_path / "img")


def test_default_verification_set_is_the_demo_val_split_for_the_demo_model() -> None:
    from argparse import Namespace

    from hrvit_mobile.data.synthetic import generate_sample
    from hrvit_mobile.report.cli import verification_set

    args = Namespace(images=None, labels=None, samples=2, checkpoint=None, model="hrvit_b1")
    images, labels, source = verification_set(args, (64, 96), num_classes=8)
    rgb, mask = generate_sample(0, "val", 1, (64, 96))
    assert images.shape == (2, 64, 96, 3) and labels.shape == (2, 64, 96)
    assert np.array_equal(images[1], rgb) and np.array_equal(labels[1], mask)
    assert "val split" in source
    # another model, another class count or an own checkpoint: no demo labels to score against
    for change in ({"model": "hrvit_nano"}, {"checkpoint": "own.pth"}):
        other = Namespace(**{**vars(args), **change})
        assert verification_set(other, (64, 96), num_classes=8)[1] is None
    assert verification_set(args, (64, 96), num_classes=150)[1] is None
    # there, like the export's parity, the shipped sample photos
    photos, _, source = verification_set(args, (64, 96), num_classes=150)
    assert photos.shape == (2, 64, 96, 3) and source.startswith("2 shipped sample images")


def test_per_layer_simulation_calibrates_like_the_export(model, tmp_path: Path) -> None:
    """The sidecar records the calibration source; the report rebuilds the demo set, refuses to guess a
    folder it was not given, and uses a --calib it is given."""
    require_module("executorch")
    import dataclasses

    from hrvit_mobile.data.calibration import DEMO_CALIBRATION
    from hrvit_mobile.demo import demo_calibration_images
    from hrvit_mobile.exporters import read_sidecar

    images = synthetic_images(1, SIZE, seed=5)
    spec = ExportSpec(target="executorch", bits=8, img_size=SIZE, num_classes=K, out_dir=tmp_path / "a",
                      model_name="tiny", run_parity=False, calib_source=DEMO_CALIBRATION)
    demo = export(model, spec, demo_calibration_images(3, SIZE)).artifact.path
    assert read_sidecar(demo)["details"]["quantization"]["calibration_source"] == DEMO_CALIBRATION
    folder_spec = dataclasses.replace(spec, out_dir=tmp_path / "b", calib_source="3 images of /some/folder")
    folder = export(model, folder_spec, synthetic_images(3, SIZE, seed=9)).artifact.path

    def note(artifact: Path, **kw) -> str:
        files = build_report([artifact], model, images, tmp_path / f"r{len(kw)}{artifact.parent.name}",
                             latency_runs=1, **kw)
        entry = json.loads(files.json.read_text())["artifacts"][0]
        return entry["layers_note"], entry["layers"]

    text, layers = note(demo)
    assert text == f"calibrated like the export: 3 images of the {DEMO_CALIBRATION}" and layers["worst"]
    text, layers = note(folder)
    assert "skipped" in text and "/some/folder" in text and layers is None
    text, layers = note(folder, calib=synthetic_images(3, SIZE, seed=9), calib_source="3 given images")
    assert text == "calibrated on 3 images: 3 given images" and layers["worst"]


def test_per_layer_sqnr_is_the_same_in_one_pass_or_many() -> None:
    """The memory budget only changes how many passes the simulation takes, never its figures."""
    import copy

    from torchao.quantization.pt2e import generate_numeric_debug_handle, prepare_for_propagation_comparison
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from hrvit_mobile.exporters.executorch import xnnpack_int8_quantizer
    from hrvit_mobile.report.layers import _chunks, _streamed_sqnr

    assert _chunks({"a": 5, "b": 5, "c": 20, "d": 1}, budget=10) == [{"a", "b"}, {"c"}, {"d"}]
    torch.manual_seed(0)
    model = TinySegmenter(num_classes=K).eval()
    example = torch.randn(1, 3, *SIZE)
    ep = torch.export.export(model, (example,), strict=False)
    generate_numeric_debug_handle(ep)
    gm = ep.module()
    ref = prepare_for_propagation_comparison(copy.deepcopy(gm))
    prepared = prepare_pt2e(gm, xnnpack_int8_quantizer())
    for _ in range(2):
        prepared(torch.randn(1, 3, *SIZE))
    quant = prepare_for_propagation_comparison(convert_pt2e(prepared))
    inputs = [torch.randn(1, 3, *SIZE) for _ in range(2)]
    whole = _streamed_sqnr(ref, quant, inputs)
    pieces = _streamed_sqnr(ref, quant, inputs, budget=1)  # one node per pass
    assert len(whole) > 10 and whole.keys() == pieces.keys()
    diff = {k: (whole[k], pieces[k]) for k in whole if whole[k] != pieces[k] and np.isfinite(whole[k])}
    assert not diff, diff
    assert any(np.isfinite(v) and v < 60 for v in whole.values())  # int8 is lossy somewhere
    # nothing is left in the loggers: memory does not grow with the number of images
    left = [type(m).__name__ for m in [*ref.children(), *quant.children()] if getattr(m, "stats", None)]
    assert not left, left


def test_per_layer_error_for_every_pt2e_variant(model) -> None:
    """Both PT2E int8 variants the report simulates build their quantizer and give per-layer figures."""
    require_module("coremltools")
    from hrvit_mobile.report.layers import layer_errors, supports

    x = torch.randn(1, 3, *SIZE)
    for target, variant in (("executorch", "int8"), ("coreml", "w8a8")):
        assert supports(target, variant)
        rep = layer_errors(model, target, variant, x, [x], [x])
        assert rep.layers and rep.images == 1 and rep.worst(), (target, variant)
    assert not supports("tflite", "int8")  # quantized after conversion: no PT2E graph to simulate
