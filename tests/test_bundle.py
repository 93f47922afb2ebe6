"""Demo-app bundles: contents, byte-for-byte determinism, refusal of bad bundles, app templates."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from _tiny_artifacts import NUM_CLASSES, SIZE, export_tiny, tiny_artifacts_fixture  # noqa: F401
from conftest import require_module

from hrvit_mobile.bundle import MANIFEST, BundleError, build_bundle, verify_bundle
from hrvit_mobile.cli import main
from hrvit_mobile.exporters import open_artifact, synthetic_images
from hrvit_mobile.exporters.artifacts import sha256_file
from hrvit_mobile.labels import LabelsError, assets_dir, load_labels

# the tiny artifacts are a session fixture shared with test_predict.py: built once, on one worker
pytestmark = pytest.mark.xdist_group("tiny_artifacts")

APP_TARGETS = {"android": ("executorch", "tflite"), "ios": ("coreml", "executorch")}


def _artifacts(tiny_artifacts, app: str) -> list[Path]:
    missing = [t for t in APP_TARGETS[app] if t not in tiny_artifacts]
    if missing:
        pytest.skip(f"runtime packages missing for {missing}")
    return [tiny_artifacts[t] for t in APP_TARGETS[app]]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rehash(bundle: Path, rel: str) -> None:
    """Update one file's hash in the manifest, as a careless (or malicious) editor would."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    for f in manifest["files"]:
        if f["path"] == rel:
            f["sha256"], f["size_bytes"] = sha256_file(bundle / rel), (bundle / rel).stat().st_size
    (bundle / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("app", ["android", "ios"])
def test_bundle_contents_and_same_bytes(tiny_artifacts, tmp_path: Path, app: str) -> None:
    artifacts = _artifacts(tiny_artifacts, app)
    a = build_bundle(app, artifacts, tmp_path / "a")
    b = build_bundle(app, list(reversed(artifacts)), tmp_path / "b")  # argument order does not matter
    ta, tb = _tree(a.path), _tree(b.path)
    assert ta.keys() == tb.keys()
    assert [k for k in ta if ta[k] != tb[k]] == []

    manifest = verify_bundle(a.path)
    names = {"README.md", "labels.json", "labels.txt", "palette.txt", MANIFEST}
    for t in APP_TARGETS[app]:
        model = {"executorch": "model.pte", "tflite": "model.tflite", "coreml": "model.mlpackage"}[t]
        names |= {model + ".json"}
        assert any(k == model or k.startswith(model + "/") for k in ta)
    assert names <= ta.keys()
    # every file but the manifest is listed with its real hash; modes are fixed
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert listed.keys() == ta.keys() - {MANIFEST}
    for rel, digest in listed.items():
        assert sha256_file(a.path / rel) == digest
        assert (a.path / rel).stat().st_mode & 0o777 == 0o644
    assert manifest["app"] == app and manifest["num_classes"] == NUM_CLASSES
    assert manifest["input"]["shape"] == [1, 3, *SIZE] and manifest["output"]["shape"] == [1, 150, 128, 128]
    assert manifest["labels"]["dataset"] == "ade20k"
    assert manifest["classes"][:3] == ["wall", "building", "sky"]
    assert (a.path / "labels.txt").read_text().splitlines() == manifest["classes"]
    assert len((a.path / "palette.txt").read_text().splitlines()) == NUM_CLASSES
    assert all(m["parity"]["passed"] for m in manifest["models"])
    for key in ("export_seconds", "peak_rss_bytes"):  # run-dependent figures stay out of bundles
        assert key not in json.loads((a.path / (manifest["models"][0]["file"] + ".json")).read_text())
    assert "model_info.json" in a.listing()


def test_bundled_models_run_like_the_originals(tiny_artifacts, tmp_path: Path) -> None:
    artifacts = _artifacts(tiny_artifacts, "ios")
    bundle = build_bundle("ios", artifacts, tmp_path / "ios").path
    image = synthetic_images(1, SIZE, seed=5)
    for original in artifacts:
        target = open_artifact(original).meta["target"]
        copy = bundle / {"coreml": "model.mlpackage", "executorch": "model.pte"}[target]
        runner = open_artifact(copy)
        assert runner.labels[0] == "wall"
        np.testing.assert_array_equal(runner.predict(image)[0], open_artifact(original).predict(image)[0])
    # coremltools' random item identifiers were replaced by ones derived from the item paths
    manifest = json.loads((bundle / "model.mlpackage" / "Manifest.json").read_text())
    assert manifest["rootModelIdentifier"] in manifest["itemInfoEntries"]


def test_same_bytes_across_exports(tiny_artifacts, tmp_path: Path) -> None:
    """Exporting again (parity timings differ) and bundling gives the same bytes as the first export."""
    first = _artifacts(tiny_artifacts, "android")[1]
    again = export_tiny("tflite", tmp_path / "export")
    assert build_bundle("android", [first], tmp_path / "a").path.is_dir()
    assert build_bundle("android", [again], tmp_path / "b").path.is_dir()
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_refuses_bad_inputs(tiny_artifacts, tmp_path: Path) -> None:
    android = _artifacts(tiny_artifacts, "android")
    tflite = tiny_artifacts["tflite"]
    with pytest.raises(BundleError, match="ios app cannot load tflite"):
        build_bundle("ios", [tflite], tmp_path / "x")
    with pytest.raises(LabelsError, match="19 classes but the model has 150"):
        build_bundle("android", android, tmp_path / "x", labels="cityscapes")
    with pytest.raises(BundleError, match="one per runtime"):
        build_bundle("android", [tflite, tflite], tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind

    # an artifact changed after export, or one that failed parity
    copy = tmp_path / "art" / tflite.name
    copy.parent.mkdir()
    shutil.copy(tflite, copy)
    shutil.copy(tflite.with_name(tflite.name + ".json"), copy.with_name(copy.name + ".json"))
    side = json.loads(copy.with_name(copy.name + ".json").read_text())
    side["parity"]["passed"], side["parity"]["reason"] = False, "cosine 0.5 < 0.99999"
    copy.with_name(copy.name + ".json").write_text(json.dumps(side))
    with pytest.raises(BundleError, match="failed parity"):
        build_bundle("android", [copy], tmp_path / "x")
    assert build_bundle("android", [copy], tmp_path / "x", allow_failed_parity=True).path.is_dir()
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="changed since export"):
        build_bundle("android", [copy], tmp_path / "y")


def test_verify_refuses_bad_bundles(tiny_artifacts, tmp_path: Path) -> None:
    good = build_bundle("android", _artifacts(tiny_artifacts, "android"), tmp_path / "good").path

    def broken(name: str) -> Path:
        path = tmp_path / name
        shutil.copytree(good, path, symlinks=True)
        return path

    b = broken("flipped")
    data = bytearray((b / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.tflite: sha256 does not match"):
        verify_bundle(b)

    b = broken("labels")  # one class short, hash updated so only the count can catch it
    names = (good / "labels.txt").read_text().splitlines()[:-1]
    (b / "labels.txt").write_text("".join(f"{n}\n" for n in names))
    _rehash(b, "labels.txt")
    with pytest.raises(BundleError, match=r"labels\.txt: 149 classes, but the model has 150"):
        verify_bundle(b)

    for rel in ("../outside.txt", "/etc/passwd"):
        b = broken(f"path{len(rel)}")
        manifest = json.loads((b / MANIFEST).read_text())
        manifest["files"].append({"path": rel, "sha256": "0" * 64, "size_bytes": 1})
        (b / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match="relative and stay inside"):
            verify_bundle(b)

    b = broken("symlink")  # a listed file replaced by a link out of the bundle, with a matching hash
    outside = tmp_path / "outside.txt"
    shutil.copy(good / "labels.txt", outside)
    (b / "labels.txt").unlink()
    os.symlink(outside, b / "labels.txt")
    with pytest.raises(BundleError, match="points outside the bundle"):
        verify_bundle(b)

    b = broken("extra")
    (b / "payload.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"payload\.bin is in the bundle but not in"):
        verify_bundle(b)

    b = broken("missing")
    (b / "palette.txt").unlink()
    with pytest.raises(BundleError, match=r"palette\.txt is listed .* but missing"):
        verify_bundle(b)


def test_cli(tiny_artifacts, tmp_path: Path, capsys) -> None:
    artifacts = [str(p) for p in _artifacts(tiny_artifacts, "android")]
    out = tmp_path / "bundle"
    assert main(["bundle", "--app", "android", "--artifact", *artifacts, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model.tflite" in printed and "model_info.json" in printed
    assert main(["bundle", "--verify", str(out)]) == 0
    assert "valid android bundle" in capsys.readouterr().out

    (out / "labels.txt").write_text("tampered\n")
    assert main(["bundle", "--verify", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hrvit-mobile: error: labels.txt: sha256 does not match") and "\n" not in err

    # a target the app cannot load is refused before any export
    argv = ["bundle", "--app", "android", "--target", "coreml", "--model", "hrvit_nano",
            "--img-size", "64x64",
            "--out", str(tmp_path / "no"), "--export-dir", str(tmp_path / "ex")]
    assert main(argv) == 2
    assert "android app cannot load it" in capsys.readouterr().err
    assert not (tmp_path / "no").exists() and not (tmp_path / "ex").exists()


def test_shipped_label_sets() -> None:
    for name, count in (("ade20k", 150), ("cityscapes", 19), ("synthetic", 8)):
        labels = load_labels(name)
        assert len(labels.classes) == len(labels.palette) == count
        # every class has its own colour, except mmseg's ADE20K palette, which repeats (140, 140, 140)
        assert len(set(labels.palette)) == count - (name == "ade20k")
    assert load_labels("synthetic").classes == (
        "background", "disc", "square", "triangle", "ring", "cross", "star", "stripes"
    )
    assert load_labels("cityscapes").palette[0] == (128, 64, 128)  # road
    samples = sorted((assets_dir() / "samples").glob("*.jpg"))
    assert len(samples) >= 3 and sum(p.stat().st_size for p in samples) < 200_000
    from PIL import Image

    for image in samples:  # each with its class map: same size, synthetic class indices
        with Image.open(image) as im, Image.open(image.with_name(image.stem + "_mask.png")) as mask:
            assert mask.size == im.size and mask.mode == "L"
            assert int(np.asarray(mask).max()) < len(load_labels("synthetic").classes)


# --------------------------------------------------------------------------------------------------
# app templates vs the manifest a bundle writes

_CONST = re.compile(r"(?:static let|const val|val)\s+(\w+)\s*(?::\s*[\w\[\]<>]+)?\s*=\s*(.+)$")


def _value(text: str):
    text = text.split("//")[0].strip()
    if text.startswith('"'):
        return json.loads(text)
    m = re.fullmatch(r"(?:longArrayOf|intArrayOf|floatArrayOf)?\(?\[?([^\]\)]*)\]?\)?", text)
    items = [v.strip().rstrip("fFL") for v in m.group(1).split(",")] if m else []
    values = [float(v) if "." in v else int(v) for v in items if v]
    return values if ("[" in text or "ArrayOf" in text) else values[0]


def template_constants(path: Path) -> dict[str, object]:
    """Constants of a ModelConfig.swift / ModelConfig.kt, keyed by lower-case name without '_'."""
    out = {}
    for line in path.read_text().splitlines():
        m = _CONST.search(line.strip())
        if m:
            out[m.group(1).replace("_", "").lower()] = _value(m.group(2))
    return out


TEMPLATES = {
    "ios": "ios/HRViTDemo/ModelConfig.swift",
    "android": "android/app/src/main/java/org/hrvitmobile/demo/ModelConfig.kt",
}


@pytest.mark.parametrize("app", ["ios", "android"])
def test_templates_agree_with_manifest(tiny_artifacts, tmp_path: Path, app: str) -> None:
    bundle = build_bundle(app, _artifacts(tiny_artifacts, app), tmp_path / app).path
    manifest = json.loads((bundle / MANIFEST).read_text())
    c = template_constants(assets_dir() / TEMPLATES[app])
    models = {m["runtime"]: m for m in manifest["models"]}
    expected = {
        "modelinfofile": MANIFEST,
        "labelsfile": manifest["labels"]["txt"],
        "palettefile": manifest["labels"]["palette"],
        "inputname": manifest["input"]["name"],
        "outputname": manifest["output"]["name"],
        "numclasses": manifest["num_classes"],
        "executorchmodelfile": models["executorch"]["file"],
        "executorchmethod": models["executorch"]["method"],
    }
    # the ExecuTorch path reads size and mean/std from the .pte (tests/test_app_templates.py); the
    # constants below are the Core ML (iOS) and LiteRT (Android) contract
    assert not {"mean", "std"} & c.keys()
    if app == "ios":
        expected |= {"coremlmodelfile": models["coreml"]["file"],
                     "coremlcompiledname": models["coreml"]["compiled_name"],
                     "inputshape": manifest["input"]["shape"], "outputshape": manifest["output"]["shape"]}
        assert models["coreml"]["input"]["name"] == c["inputname"]
        assert models["coreml"]["outputs"][0]["name"] == c["outputname"]
    else:
        expected |= {"tflitemodelfile": models["tflite"]["file"],
                     "tflitesignature": models["tflite"]["signature"],
                     "tfliteinputshape": models["tflite"]["input"]["shape"],
                     "tfliteoutputshape": models["tflite"]["outputs"][0]["shape"]}
        sidecar = json.loads((bundle / "model.tflite.json").read_text())
        sig = sidecar["details"]["signatures"][c["tflitesignature"]]
        assert sig == {"inputs": [c["inputname"]], "outputs": [c["outputname"]]}
    assert {k: c.get(k) for k in expected} == expected
    for name in (c["labelsfile"], c["palettefile"], c["modelinfofile"]):
        assert (bundle / name).is_file()


def test_sample_photos_are_the_parity_fallback() -> None:
    """Without --calib, a user model's parity runs on the shipped photos (never their class-map PNGs),
    center-cropped to the input as calibration images are."""
    from hrvit_mobile.selftest import sample_photos

    photos = sorted((assets_dir() / "samples").glob("*.jpg"))
    images = sample_photos((48, 80), 8)
    assert images.shape == (len(photos), 48, 80, 3) and images.dtype == np.uint8
    assert sample_photos((48, 80), 1).shape[0] == 1
    from PIL import Image

    from hrvit_mobile.images import fit_center

    with Image.open(photos[0]) as im:
        first = np.asarray(fit_center(im.convert("RGB"), (48, 80), Image.BILINEAR))
    np.testing.assert_array_equal(images[0], first)


@pytest.mark.parametrize("target", ["executorch", "tflite", "coreml"])
def test_refuses_labels_other_than_the_models_own(tmp_path: Path, capsys, target: str) -> None:
    """The .pte's labels method, the .tflite's MediaPipe labels file and the .mlpackage's metadata name the
    classes; a bundle whose labels differ is refused in one line (exit 2) and nothing is written.
    Placeholder names (class_<i>) name nothing, so any label set of the right size goes (the tiny
    artifacts above)."""
    require_module({"executorch": "executorch", "tflite": "ai_edge_litert", "coreml": "coremltools"}[target])
    from hrvit_mobile.exporters import ExportSpec, export
    from hrvit_mobile.exporters.testing import TinySegmenter

    synthetic = load_labels("synthetic")
    spec = ExportSpec(target=target, bits=32, img_size=(64, 64), num_classes=8, out_dir=tmp_path / "ex",
                      model_name="named", class_names=list(synthetic.classes), run_parity=False)
    artifact = export(TinySegmenter(num_classes=8).eval(), spec).artifact.path
    app = "ios" if target == "coreml" else "android"
    assert build_bundle(app, [artifact], tmp_path / "ok").manifest["classes"] == list(synthetic.classes)

    renamed = dict(synthetic.as_json())
    renamed["classes"] = [*synthetic.classes[:3], "lozenge", *synthetic.classes[4:]]
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    argv = ["bundle", "--app", app, "--artifact", str(artifact), "--labels", str(tmp_path / "renamed.json"),
            "--out", str(tmp_path / "bad")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the runtime's own log lines, if any
    assert err.startswith(f"hrvit-mobile: error: {artifact.name} carries other labels")
    assert "class 3: 'triangle' in the model, 'lozenge' in the bundle" in err
    assert not (tmp_path / "bad").exists()


def test_bundle_target_runs_parity_on_the_exports_images(tmp_path: Path) -> None:
    """`bundle --target` exports as `export` does: for a user model without --calib, parity on the shipped
    sample photos, named in the sidecar the bundle carries."""
    require_module("executorch")
    argv = ["bundle", "--app", "android", "--target", "executorch", "--model", "hrvit_nano", "--img-size",
            "64x64", "--out", str(tmp_path / "bundle"), "--export-dir", str(tmp_path / "ex")]
    assert main(argv) == 0
    sidecar = json.loads((tmp_path / "bundle" / "model.pte.json").read_text())
    assert sidecar["parity_images"] == "2 shipped sample images (demo_app_assets/samples/*.jpg)"
    assert sidecar["parity"]["passed"]
