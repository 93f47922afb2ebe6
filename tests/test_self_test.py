"""The self-test data every bundle carries: a golden image and the float model's class map, which the
bundled models reproduce in their runtimes, and which a swapped model (manifest rehashed) does not."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import require_module
from PIL import Image

from hrvit_mobile.bundle import MANIFEST, build_bundle, run_self_test, verify_bundle
from hrvit_mobile.exporters import ExportSpec, export
from hrvit_mobile.exporters.artifacts import sha256_file
from hrvit_mobile.exporters.testing import TinySegmenter
from hrvit_mobile.selftest import expected_classes, golden_image

require_module("executorch")
require_module("ai_edge_litert")

SIZE = (96, 128)
CLASSES = ["sky", "road", "car", "tree", "person"]


def _model(seed: int) -> TinySegmenter:
    return TinySegmenter(num_classes=len(CLASSES), seed=seed).eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    out = tmp_path_factory.mktemp("self-test")
    paths = {}
    for target, seed in (("executorch", 0), ("tflite", 0), ("tflite", 1)):
        spec = ExportSpec(target=target, bits=32, img_size=SIZE, num_classes=len(CLASSES),
                          out_dir=out / f"{target}{seed}", model_name="tiny", class_names=CLASSES)
        paths[target, seed] = export(_model(seed), spec).artifact.path
    return paths


def test_android_bundle_reproduces_the_float_class_map(exports, tmp_path: Path) -> None:
    import torch

    from hrvit_mobile.metrics import upsample_class_map

    built = build_bundle("android", [exports["executorch", 0], exports["tflite", 0]], tmp_path / "b",
                         reference=_model(0))
    manifest = verify_bundle(built.path)
    entry = manifest["self_test"]
    # the expected map is the float model's, recomputed here from the shipped golden image
    image = np.asarray(Image.open(built.path / entry["image"]).convert("RGB"))
    assert np.array_equal(image, golden_image(SIZE))
    mean = torch.tensor(manifest["input"]["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(manifest["input"]["normalization"]["std"]).view(1, 3, 1, 1)
    x = (torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255 - mean) / std
    with torch.no_grad():
        logits = _model(0)(x).numpy()
    assert entry["logits_sha256"] == hashlib.sha256(logits.astype("<f4").tobytes()).hexdigest()
    assert np.array_equal(expected_classes(built.path, entry), upsample_class_map(logits, SIZE)[0])
    assert len(np.unique(expected_classes(built.path, entry))) > 1  # a map that can disagree
    assert entry["min_agreement"] == {"model.pte": 0.98, "model.tflite": 0.98}
    assert {f["path"] for f in manifest["files"]} >= {entry["image"], entry["expected_classes"]}

    results = run_self_test(built.path)
    print("self-test agreement:", {k: round(v["agreement"], 6) for k, v in results.items()})
    assert set(results) == {"model.pte", "model.tflite"}
    assert all(r["passed"] and r["agreement"] >= 0.98 for r in results.values())

    # without the PyTorch model the float artifact is the reference, and says so
    alone = build_bundle("android", [exports["tflite", 0]], tmp_path / "c")
    assert "artifact" in alone.manifest["self_test"]["reference"]
    assert run_self_test(alone.path)["model.tflite"]["passed"]


def test_a_swapped_model_fails_even_with_a_regenerated_manifest(exports, tmp_path: Path) -> None:
    built = build_bundle("android", [exports["tflite", 0]], tmp_path / "b", reference=_model(0))
    swapped = tmp_path / "swapped"
    shutil.copytree(built.path, swapped)
    shutil.copyfile(exports["tflite", 1], swapped / "model.tflite")
    manifest = json.loads((swapped / MANIFEST).read_text())
    for f in manifest["files"]:
        f["sha256"], f["size_bytes"] = sha256_file(swapped / f["path"]), (swapped / f["path"]).stat().st_size
    (swapped / MANIFEST).write_text(json.dumps(manifest))
    verify_bundle(swapped)  # the hashes no longer catch it
    result = run_self_test(swapped)["model.tflite"]
    print("self-test agreement with another model swapped in:", round(result["agreement"], 6))
    assert not result["passed"] and result["agreement"] < 0.98
