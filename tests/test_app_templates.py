"""The iOS and Android demo templates: every Swift and Kotlin file parses (tree-sitter grammars, syntax
only), the Android per-pixel code compiles with kotlinc and computes what the Python side computes, and
the constant methods the templates read are the ones the ExecuTorch exporter writes.

Nothing here compiles against iOS or Android SDKs (there are none on this host): the Swift files and the
Android-facing Kotlin files are parsed, not compiled; ClassMaps.kt, which imports nothing from Android,
is compiled and run on the JVM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import require_module

from hrvit_mobile.labels import assets_dir
from hrvit_mobile.metrics import upsample_class_map

ANDROID = assets_dir() / "android" / "app" / "src" / "main" / "java" / "org" / "hrvitmobile" / "demo"
IOS = assets_dir() / "ios" / "HRViTDemo"
TEMPLATE_FILES = sorted([*ANDROID.glob("*.kt"), *IOS.glob("*.swift")])


def _parser(suffix: str):
    tree_sitter = require_module("tree_sitter")
    grammar = require_module({".kt": "tree_sitter_kotlin", ".swift": "tree_sitter_swift"}[suffix])
    return tree_sitter.Parser(tree_sitter.Language(grammar.language()))


def _syntax_errors(source: bytes, suffix: str) -> list[str]:
    """(line, column, node type) of every ERROR or MISSING node in the parse tree."""
    out, stack = [], [_parser(suffix).parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            out.append(f"{node.start_point[0] + 1}:{node.start_point[1] + 1} {node.type}")
        stack.extend(node.children)
    return out


def test_every_template_file_parses() -> None:
    assert {p.suffix for p in TEMPLATE_FILES} == {".kt", ".swift"} and len(TEMPLATE_FILES) >= 12
    failures = {p.name: errs for p in TEMPLATE_FILES if (errs := _syntax_errors(p.read_bytes(), p.suffix))}
    assert failures == {}
    # the parsers do refuse broken code: a destructuring with a type after it, an unclosed call
    assert _syntax_errors(b"fun f() { val (a, b): Pair<Int, Int> = 1 to 2 }", ".kt")
    assert _syntax_errors(b"func f() { let x = g(1, \n}", ".swift")


def _methods_read(path: Path, pattern: str) -> set[str]:
    return set(re.findall(pattern, path.read_text()))


def test_templates_read_the_constant_methods_the_exporter_writes() -> None:
    from hrvit_mobile.exporters.executorch import contract_methods
    from hrvit_mobile.exporters.spec import ExportSpec

    written = contract_methods(ExportSpec(target="executorch", img_size=(64, 96), num_classes=8))
    swift = _methods_read(IOS / "ExecuTorchSegmenter.swift", r'module\.execute\("(\w+)"\)')
    kotlin = _methods_read(ANDROID / "ExecuTorchSegmenter.kt", r'values\("(\w+)"\)')
    wanted = {"labels", "input_size", "input_layout", "mean", "std", "pixel_scale", "output_stride"}
    assert swift == kotlin == wanted
    assert wanted <= written.keys()
    assert written["input_layout"] == "NCHW" and written["input_size"] == [64, 96]
    # no template keeps the model constants the .pte now carries
    for path in (IOS / "ModelConfig.swift", ANDROID / "ModelConfig.kt"):
        assert not re.search(r"\b(mean|std|MEAN|STD)\b\s*[:=]", path.read_text()), path.name


@pytest.fixture(scope="module")
def class_maps_jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ClassMaps.kt and the test driver compiled with Debian's kotlinc into one runnable jar."""
    kotlinc = shutil.which("kotlinc")
    if kotlinc is None:
        if os.environ.get("CI"):
            pytest.fail("kotlinc not found: .ci/run installs Debian's kotlin package")
        pytest.skip("kotlinc not installed (apt-get install kotlin)")
    jar = tmp_path_factory.mktemp("kotlin") / "class_maps.jar"
    sources = [ANDROID / "ClassMaps.kt", Path(__file__).parent / "app_templates" / "ClassMapsMain.kt"]
    run = subprocess.run([kotlinc, *map(str, sources), "-include-runtime", "-d", str(jar)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and jar.is_file(), run.stderr
    return jar


def test_android_class_maps_match_python(class_maps_jar: Path, tmp_path: Path) -> None:
    """ClassMaps.kt on the JVM: per-frame argmax (NCHW and NHWC buffers), the self-test's bilinear
    upsampled class map and agreement, the ExecuTorch normalization and the .tflite's NHWC input."""
    rng = np.random.default_rng(0)
    k, h, w, out_h, out_w, in_h, in_w = 12, 9, 14, 36, 56, 8, 12
    # smooth logits (a few blobs per class) so the upsampled argmax has real boundaries, plus noise
    yy, xx = np.mgrid[0:h, 0:w]
    centres = rng.uniform(0, 1, (k, 2)) * (h, w)
    logits = -np.hypot(yy - centres[:, 0, None, None], xx - centres[:, 1, None, None]) / 3
    logits = (logits + rng.normal(0, 0.3, logits.shape)).astype(np.float32)[None]
    (tmp_path / "nchw.f32").write_bytes(logits.astype("<f4").tobytes())
    (tmp_path / "nhwc.f32").write_bytes(logits.transpose(0, 2, 3, 1).astype("<f4").tobytes())
    expected = upsample_class_map(logits, (out_h, out_w))[0]
    flipped = expected.copy()
    flipped.flat[: expected.size // 10] = (flipped.flat[: expected.size // 10] + 1) % k  # 10 % wrong
    (tmp_path / "expected.u8").write_bytes(flipped.astype(np.uint8).tobytes())
    rgb = rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint32)
    argb = (0xFF << 24) | (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    (tmp_path / "pixels.i32").write_bytes(argb.astype("<u4").tobytes())

    args = [str(v) for v in (k, h, w, out_h, out_w, in_h, in_w)]
    run = subprocess.run(["java", "-cp", str(class_maps_jar), "ClassMapsMainKt", str(tmp_path), *args],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr

    argmax = logits[0].argmax(0).astype(np.uint8)
    for name in ("nchw_classes.u8", "nhwc_classes.u8"):
        got = np.frombuffer((tmp_path / name).read_bytes(), np.uint8).reshape(h, w)
        np.testing.assert_array_equal(got, argmax)
    upsampled = np.frombuffer((tmp_path / "upsampled.i32").read_bytes(), "<i4").reshape(out_h, out_w)
    assert np.mean(upsampled == expected) >= 0.999  # float rounding may split an exact tie
    kotlin_agreement = float((tmp_path / "agreement.txt").read_text())
    assert kotlin_agreement == pytest.approx(float(np.mean(upsampled == flipped)))
    assert 0.85 < kotlin_agreement < 0.95

    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    normalized = np.frombuffer((tmp_path / "normalized.f32").read_bytes(), "<f4").reshape(3, in_h, in_w)
    reference = ((rgb / 255.0 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(normalized, reference, atol=1e-5)
    hwc = np.frombuffer((tmp_path / "hwc.f32").read_bytes(), "<f4").reshape(in_h, in_w, 3)
    np.testing.assert_array_equal(hwc, rgb.astype(np.float32))


@pytest.mark.parametrize("dtype", ["uint8", "uint16le"])
def test_android_self_test_agrees_with_the_bundle_self_test(class_maps_jar: Path, tmp_path: Path,
                                                             dtype: str) -> None:
    """The app's self-test on a real bundle: the bundled .pte's logits for the golden image, the bundle's
    expected_classes file (and the same map as little-endian uint16, the format above 256 classes) give
    the app's Kotlin code the agreement the bundle's own Python self-test reports; a wrong model fails."""
    require_module("executorch")
    from PIL import Image

    from hrvit_mobile.bundle import build_bundle, run_self_test
    from hrvit_mobile.exporters import ExportSpec, export, open_artifact
    from hrvit_mobile.exporters.testing import TinySegmenter

    spec = ExportSpec(target="executorch", bits=32, img_size=(64, 96), num_classes=8, out_dir=tmp_path / "ex",
                      model_name="tiny", run_parity=False)
    artifact = export(TinySegmenter(num_classes=8).eval(), spec).artifact.path
    bundle = build_bundle("android", [artifact], tmp_path / "bundle").path
    manifest = json.loads((bundle / "model_info.json").read_text())
    entry = manifest["self_test"]
    expected = bundle / entry["expected_classes"]
    if dtype == "uint16le":
        wide = tmp_path / "expected.u16"
        wide.write_bytes(np.frombuffer(expected.read_bytes(), np.uint8).astype("<u2").tobytes())
        expected = wide
    with Image.open(bundle / entry["image"]) as im:
        golden = np.asarray(im.convert("RGB"))

    def kotlin_agreement(model: Path) -> float:
        logits = open_artifact(model).predict(golden)[0]
        (tmp_path / "logits.f32").write_bytes(np.ascontiguousarray(logits, "<f4").tobytes())
        _, k, h, w = logits.shape
        args = ["self-test", str(tmp_path / "logits.f32"), k, h, w, str(expected), dtype, *entry["shape"]]
        run = subprocess.run(["java", "-cp", str(class_maps_jar), "ClassMapsMainKt", *map(str, args)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        return float(run.stdout)

    python = run_self_test(bundle)["model.pte"]
    assert python["passed"]
    assert kotlin_agreement(bundle / "model.pte") == pytest.approx(python["agreement"], abs=1e-3)
    other = ExportSpec(target="executorch", bits=32, img_size=(64, 96), num_classes=8,
                       out_dir=tmp_path / "other", model_name="other", run_parity=False)
    swapped = export(TinySegmenter(num_classes=8, seed=1).eval(), other).artifact.path
    assert kotlin_agreement(swapped) < entry["min_agreement"]["model.pte"]
