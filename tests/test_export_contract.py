"""The shared export contract: the supported table, one-line errors, atomic files, parity metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import require_module

from hrvit_mobile.data.calibration import CalibrationError, load_calibration_images
from hrvit_mobile.exporters import (
    ExportSpec,
    MissingDependencyError,
    UnsupportedExportError,
    export,
    resolve,
    supported,
)
from hrvit_mobile.exporters import coreml as coreml_exporter
from hrvit_mobile.exporters.artifacts import sha256_file, sidecar_path
from hrvit_mobile.exporters.build import Built, PeakMemory, cyclic_collection_deferred, run_build
from hrvit_mobile.exporters.parity import (
    EXPORTER_SYNTHETIC,
    ParityThresholds,
    compare,
    default_thresholds,
    synthetic_images,
)
from hrvit_mobile.exporters.testing import TinySegmenter
from hrvit_mobile.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalization


def test_registry_offers_every_target_precision_pair() -> None:
    want = {
        ("executorch", 32, "float"),
        ("executorch", 16, "float"),
        ("executorch", 8, "int8"),
        ("coreml", 32, "float"),
        ("coreml", 16, "float"),
        ("coreml", 8, "float"),
        ("coreml", 8, "int8"),
        ("coreml", 6, "float"),
        ("coreml", 4, "float"),
        ("tflite", 32, "float"),
        ("tflite", 16, "float"),
        ("tflite", 8, "float"),
        ("tflite", 8, "int8"),
    }
    assert set(supported()) == want


@pytest.mark.parametrize(
    ("target", "bits", "activations", "variant"),
    [
        ("executorch", 8, None, "int8"),  # XNNPACK 8-bit means static W8A8
        ("coreml", 8, None, "w8"),  # weight-only by default
        ("coreml", 8, 8, "w8a8"),
        ("tflite", 8, None, "int8dr"),
        ("tflite", 8, "int8", "int8"),
        ("litert", 32, None, "fp32"),  # alias
    ],
)
def test_resolve_defaults(target: str, bits: int, activations: object, variant: str) -> None:
    spec, v = resolve(ExportSpec(target=target, bits=bits, activations=activations, img_size=(64, 64)))
    assert v == variant
    assert spec.name == f"model_64x64_{spec.target}_{variant}"


@pytest.mark.parametrize(
    ("target", "bits", "activations", "fragment"),
    [
        (
            "tflite",
            4,
            None,
            "--target tflite --bits 4 is not supported; supported: tflite: 32, 16, 8, 8 --activations 8",
        ),
        ("executorch", 6, None, "supported: executorch: 32, 16, 8"),
        ("coreml", 16, "int8", "--target coreml --bits 16 --activations 8 is not supported"),
        ("onnx", 32, None, "unknown target 'onnx'; supported targets: executorch, coreml, tflite"),
    ],
)
def test_unsupported_pair_is_one_clear_line(
    tmp_path: Path, target: str, bits: int, activations: object, fragment: str
) -> None:
    spec = ExportSpec(target=target, bits=bits, activations=activations, img_size=(64, 64), out_dir=tmp_path)
    with pytest.raises(UnsupportedExportError) as err:
        export(TinySegmenter(), spec)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg
    assert isinstance(err.value, ValueError)
    assert list(tmp_path.iterdir()) == []  # rejected before any work


def test_bad_activations_and_size() -> None:
    with pytest.raises(UnsupportedExportError, match="activations must be 'float' or 8"):
        ExportSpec(target="coreml", bits=8, activations="int4")
    with pytest.raises(ValueError, match="multiples of 32"):
        ExportSpec(target="coreml", img_size=(100, 64))


def test_missing_package_names_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "coremltools" else real(name, *a)
    )
    with pytest.raises(MissingDependencyError) as err:
        export(TinySegmenter(), ExportSpec(target="coreml", img_size=(64, 64), out_dir=tmp_path))
    msg = str(err.value)
    assert "pip install 'coremltools==9.0'" in msg and "hrvit-mobile[coreml]" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    spec, variant = resolve(ExportSpec(target="tflite", img_size=(64, 64), out_dir=tmp_path))

    def build(stage: Path) -> Built:
        (stage / "half_written.tflite").write_bytes(b"\0" * 100)
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError, match="converter crashed"):
        run_build(spec, variant, ".tflite", build)
    assert list(tmp_path.iterdir()) == []  # no artifact, no sidecar, no staging dir


def test_build_runs_with_cyclic_collection_deferred(tmp_path: Path) -> None:
    """The collector is off while ``build`` runs, cyclic garbage made there is collected when it returns
    (or raises), and a caller's disabled collector stays disabled."""
    import gc
    import weakref

    spec, variant = resolve(ExportSpec(target="tflite", img_size=(64, 64), out_dir=tmp_path))
    seen: dict[str, Any] = {}

    class Node:
        pass

    def build(stage: Path) -> Built:
        seen["enabled"] = gc.isenabled()
        cycle = Node()
        cycle.self = cycle  # garbage only the cyclic collector frees
        seen["ref"] = weakref.ref(cycle)
        del cycle
        seen["alive in build"] = seen["ref"]() is not None
        raise RuntimeError("stop here")

    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="stop here"):
        run_build(spec, variant, ".tflite", build)
    assert seen["enabled"] is False and seen["alive in build"] and seen["ref"]() is None
    assert gc.isenabled()
    gc.disable()
    try:
        with cyclic_collection_deferred():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_graph_modules_that_die_in_the_build_never_get_their_code(tmp_path: Path, monkeypatch) -> None:
    """The deferred collection runs before the deferred code generation ends: a graph module left as
    cyclic garbage is freed, not compiled, and one the build keeps is compiled."""
    import torch

    spec, variant = resolve(ExportSpec(target="tflite", img_size=(64, 64), out_dir=tmp_path))
    compiled: list[str] = []
    stock = torch.fx.GraphModule.recompile

    def counting_recompile(self: torch.fx.GraphModule) -> Any:
        compiled.append(self.meta.get("name", "?"))
        return stock(self)

    monkeypatch.setattr(torch.fx.GraphModule, "recompile", counting_recompile)
    kept: dict[str, torch.fx.GraphModule] = {}

    def build(stage: Path) -> Built:
        for name in ("dead", "kept"):
            gm = torch.fx.symbolic_trace(torch.nn.ReLU())  # deferred: marked stale, no code yet
            gm.meta["name"] = name
            gm.cycle = [gm]  # a reference cycle: only the collector frees it
            kept[name] = gm
        del kept["dead"], gm
        (stage / "x.tflite").write_bytes(b"tflite")
        return Built(main=stage / "x.tflite")

    run_build(spec, variant, ".tflite", build)
    assert compiled == []  # the kept one stays lazy past the build
    assert "relu" in kept["kept"].code
    assert compiled == ["kept"]


def test_failed_rebuild_keeps_previous_artifact(tmp_path: Path) -> None:
    spec, variant = resolve(ExportSpec(target="coreml", img_size=(64, 64), out_dir=tmp_path))

    def good(stage: Path) -> Built:
        pkg = stage / "x.mlpackage"
        (pkg / "Data").mkdir(parents=True)
        (pkg / "Data" / "weight.bin").write_bytes(b"v1")
        return Built(main=pkg)

    art = run_build(spec, variant, ".mlpackage", good)
    assert art.path.is_dir() and (art.path / "Data" / "weight.bin").read_bytes() == b"v1"
    meta = json.loads(sidecar_path(art.path).read_text())
    assert meta["files"][0]["sha256"] == sha256_file(art.path / "Data" / "weight.bin")

    def bad(stage: Path) -> Built:
        (stage / "x.mlpackage").mkdir()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_build(spec, variant, ".mlpackage", bad)
    assert (art.path / "Data" / "weight.bin").read_bytes() == b"v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([art.path.name, art.path.name + ".json"])

    def v2(stage: Path) -> Built:
        pkg = stage / "x.mlpackage"
        pkg.mkdir()
        (pkg / "model.bin").write_bytes(b"v2")
        return Built(main=pkg)

    run_build(spec, variant, ".mlpackage", v2)  # a directory artifact is replaced as a whole
    assert sorted(p.name for p in art.path.rglob("*")) == ["model.bin"]


def test_compare_metrics() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    same = compare([ref.copy()], [ref], default_thresholds(32, "float"), "numpy")
    assert (
        same.passed
        and same.max_abs_err == 0
        and same.argmax_agreement == 1
        and same.cosine == pytest.approx(1)
    )
    noisy = ref + 0.01
    res = compare([noisy], [ref], default_thresholds(32, "float"), "numpy")
    assert res.passed is False and "max_abs_err" in res.reason
    assert res.max_abs_err == pytest.approx(0.01, rel=1e-3) and res.mean_abs_err == pytest.approx(
        0.01, rel=1e-3
    )
    flipped = -ref
    res = compare([flipped], [ref], ParityThresholds(min_argmax_agreement=0.5), "numpy")
    assert res.passed is False and res.argmax_agreement < 0.5 and res.cosine == pytest.approx(-1)


def test_synthetic_images_are_deterministic_rgb() -> None:
    a = synthetic_images(2, (64, 96), seed=3)
    assert a.shape == (2, 64, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, synthetic_images(2, (64, 96), seed=3))
    x = Normalization().apply(a)
    assert x.shape == (2, 3, 64, 96) and x.dtype == np.float32


def test_calibration_folder(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(3):
        Image.fromarray(synthetic_images(1, (80, 120), seed=i)[0]).save(tmp_path / f"{i}.png")
    imgs = load_calibration_images(tmp_path, (64, 64), limit=2)
    assert imgs.shape == (2, 64, 64, 3) and imgs.dtype == np.uint8
    with pytest.raises(CalibrationError, match="no images"):
        load_calibration_images(tmp_path / "nothing-here", (64, 64))


def test_unreadable_calibration_image_is_one_line_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    """A file with an image's name that PIL cannot decode (not an image, or cut short) is named in one
    line, exit 2, before anything is built."""
    from PIL import Image

    from hrvit_mobile.cli import main

    calib = tmp_path / "calib"
    calib.mkdir()
    Image.fromarray(synthetic_images(1, (40, 40), seed=0)[0]).save(calib / "a.png")
    (calib / "b.jpg").write_bytes(b"not a jpeg")
    code = main(["export", "--target", "executorch", "--bits", "8", *NANO_CLI, "--calib", str(calib),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"{calib / 'b.jpg'} is not a readable image" in err, err
    assert not (tmp_path / "out").exists()
    full = (calib / "a.png").read_bytes()
    (calib / "b.jpg").unlink()
    (calib / "c.png").write_bytes(full[: len(full) // 2])  # truncated: fails in decoding, not in open
    with pytest.raises(CalibrationError, match=r"c\.png is not a readable image"):
        load_calibration_images(calib, (32, 32))


def test_coreml_image_preprocessing_is_exact() -> None:
    """ImageType's scalar scale + per-channel bias and the in-graph factor give (p/255 - mean)/std."""
    scale, bias, factor = coreml_exporter.image_preprocessing(IMAGENET_MEAN, IMAGENET_STD)
    p = np.arange(256, dtype=np.float64)[:, None]
    got = (scale * p + np.asarray(bias)) * np.asarray(factor)
    want = (p / 255 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_peak_memory_sees_an_allocation() -> None:
    with PeakMemory() as mem:
        big = torch.ones(64 * 2**20 // 4)  # 64 MB
        del big
    assert mem.peak_bytes is not None and mem.peak_bytes > 64 * 2**20


def test_export_all_skips_targets_without_the_pair(tmp_path: Path) -> None:
    from hrvit_mobile.exporters import export_all

    skipped: list[str] = []
    spec = ExportSpec(
        target="all", bits=6, img_size=(64, 64), num_classes=5, out_dir=tmp_path, run_parity=False
    )
    reports = export_all(TinySegmenter(), spec, on_error=lambda target, err: skipped.append(target))
    assert [r.artifact.target for r in reports] == ["coreml"] and skipped == ["executorch", "tflite"]
    assert reports[0].artifact.path.name == "model_64x64_coreml_pal6.mlpackage"


def test_compare_refuses_nan_outputs() -> None:
    ref = np.zeros((1, 3, 4, 4), np.float32)
    out = ref.copy()
    out[0, 0, 0, 0] = np.nan
    res = compare([out], [ref], ParityThresholds(max_abs_err=1.0, min_cosine=-1.0), "test")
    assert res.passed is False and "non-finite" in res.reason


NANO_CLI = ["--model", "hrvit_nano", "--img-size", "32x32", "--num-classes", "3"]


@pytest.mark.parametrize("count", ["0", "-3"])
def test_calib_samples_below_one_is_one_line_and_leaves_nothing(count: str, tmp_path: Path, capsys) -> None:
    # a slice [:0] took no image and [:-3] all but the last three, without a word
    from hrvit_mobile.cli import main

    code = main(["export", "--target", "executorch", "--bits", "8", *NANO_CLI, "--calib-samples", count,
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert f"calibration images (--calib-samples) must be 1 or more, got {count}" in err
    assert not (tmp_path / "out").exists()
    (tmp_path / "a.png").write_bytes(b"")  # never opened: the count is refused first
    with pytest.raises(CalibrationError, match="must be 1 or more"):
        load_calibration_images(tmp_path, (32, 32), limit=0)


def test_calib_samples_reaches_the_exporters_synthetic_calibration(tmp_path: Path) -> None:
    """Without --calib (and not the demo model) the exporter calibrates on its own synthetic images, as
    many as --calib-samples says."""
    require_module("executorch")
    from hrvit_mobile.cli import main

    assert main(["export", "--target", "executorch", "--bits", "8", *NANO_CLI, "--calib-samples", "3",
                 "--no-parity", "--no-report", "--out", str(tmp_path)]) == 0
    sidecar = json.loads(next(tmp_path.glob("*.pte.json")).read_text())
    quant = sidecar["details"]["quantization"]
    assert quant["calibration_samples"] == 3 and quant["calibration_source"] == EXPORTER_SYNTHETIC
    # parity images: the shipped sample photos, named as such (the blobs are the last resort)
    assert sidecar["parity_images"] == "2 shipped sample images (demo_app_assets/samples/*.jpg)"


def test_parity_runs_on_the_calibration_folder_when_given(tmp_path: Path) -> None:
    """A user model with --calib: parity runs on that folder's first images and the sidecar says so."""
    require_module("executorch")
    from PIL import Image

    from hrvit_mobile.cli import main

    calib = tmp_path / "calib"
    calib.mkdir()
    for i, image in enumerate(synthetic_images(3, (40, 48), seed=5)):
        Image.fromarray(image).save(calib / f"{i}.png")
    assert main(["export", "--target", "executorch", *NANO_CLI, "--calib", str(calib), "--no-report",
                 "--out", str(tmp_path / "out")]) == 0
    sidecar = json.loads(next((tmp_path / "out").glob("*.pte.json")).read_text())
    assert sidecar["parity_images"] == f"the first 2 images of {calib}" and sidecar["parity"]["passed"]
