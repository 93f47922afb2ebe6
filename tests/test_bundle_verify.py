"""Bundle verification on its own: every check of ``verify_bundle`` against one small android bundle
(a 64x64 .pte and .tflite), each fault named in one line per field.

The two exports are kept in pytest's cache between runs, keyed by the exporter sources and runtime
versions, so the file runs in seconds (mutation testing runs it once per mutant)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import require_module

import hrvit_mobile
from hrvit_mobile.bundle import MANIFEST, BundleError, build_bundle, verify_bundle
from hrvit_mobile.exporters.artifacts import sha256_file

require_module("executorch.runtime")
require_module("ai_edge_litert.interpreter")
require_module("coremltools")

SIZE, CLASSES = (64, 64), 5


def _cache_key() -> str:
    from importlib.metadata import version

    package = Path(hrvit_mobile.exporters.__file__).parent
    versions = " ".join(version(p) for p in ("torch", "executorch", "ai-edge-litert", "coremltools"))
    digest = hashlib.sha256(versions.encode())
    for source in sorted(package.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def exports(request: pytest.FixtureRequest) -> dict[str, Path]:
    """A 64x64 .pte, .tflite and .mlpackage of the tiny segmenter, from the cache when it has them."""
    import hrvit_mobile.exporters  # noqa: F401  (for the cache key)
    from hrvit_mobile.exporters import ExportSpec, export
    from hrvit_mobile.exporters.testing import TinySegmenter

    cache = Path(request.config.cache.mkdir(f"bundle-verify-{_cache_key()}"))
    artifacts = {}
    for target, suffix in (("executorch", "pte"), ("tflite", "tflite"), ("coreml", "mlpackage")):
        found = sorted((cache / target).glob(f"*.{suffix}"))
        if not found:
            spec = ExportSpec(target=target, bits=32, img_size=SIZE, num_classes=CLASSES,
                              out_dir=cache / target, model_name="tiny", run_parity=False)
            found = [export(TinySegmenter(num_classes=CLASSES).eval(), spec).artifact.path]
        artifacts[target] = found[0]
    return artifacts


@pytest.fixture(scope="session")
def good(exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    pair = [exports["executorch"], exports["tflite"]]
    return build_bundle("android", pair, tmp_path_factory.mktemp("bundle") / "app").path


@pytest.fixture
def bundle(good: Path, tmp_path: Path) -> Path:
    path = tmp_path / "b"
    shutil.copytree(good, path, symlinks=True)
    return path


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


def _write_manifest(bundle: Path, doc: dict) -> None:
    (bundle / MANIFEST).write_text(json.dumps(doc))


def _rehash(bundle: Path, rel: str) -> None:
    doc = _manifest(bundle)
    for f in doc["files"]:
        if f["path"] == rel:
            f["sha256"], f["size_bytes"] = sha256_file(bundle / rel), (bundle / rel).stat().st_size
    _write_manifest(bundle, doc)


def _fault(bundle: Path) -> str:
    with pytest.raises(BundleError) as info:
        verify_bundle(bundle)
    return str(info.value)


def test_the_untouched_bundle_verifies(good: Path) -> None:
    manifest = verify_bundle(good)
    assert manifest["app"] == "android" and manifest["img_size"] == list(SIZE)
    assert [m["runtime"] for m in manifest["models"]] == ["executorch", "tflite"]
    assert manifest == json.loads((good / MANIFEST).read_text())


def test_not_a_bundle(tmp_path: Path) -> None:
    assert _fault(tmp_path) == f"{tmp_path} is not a bundle: {MANIFEST} not found"
    (tmp_path / MANIFEST).write_text("{not json")
    assert _fault(tmp_path).startswith(f"{tmp_path / MANIFEST} is not valid JSON (")
    (tmp_path / MANIFEST).write_bytes(b"\xff\xfe")
    assert "is not valid JSON" in _fault(tmp_path)


def test_schema_and_app(bundle: Path) -> None:
    doc = _manifest(bundle)
    _write_manifest(bundle, {**doc, "schema": "other/1"})
    assert _fault(bundle) == f"{MANIFEST}: schema 'other/1', expected 'hrvit-mobile.bundle/1'"
    _write_manifest(bundle, {**doc, "app": "tv"})
    assert "tv" in _fault(bundle)


def test_each_file_fault_is_named(good: Path, tmp_path: Path) -> None:
    def fresh(name: str) -> Path:
        path = tmp_path / name
        shutil.copytree(good, path, symlinks=True)
        return path

    b = fresh("changed")
    (b / "labels.txt").write_bytes((b / "labels.txt").read_bytes()[:-2] + b"x\n")  # same size
    assert _fault(b) == f"labels.txt: sha256 does not match {MANIFEST}; the file was changed or corrupted"
    b = fresh("longer")
    (b / "palette.txt").write_bytes((b / "palette.txt").read_bytes() + b"\n")
    assert _fault(b).startswith("palette.txt: sha256 does not match")
    b = fresh("missing")
    (b / "palette.txt").unlink()
    assert _fault(b) == f"palette.txt is listed in {MANIFEST} but missing from the bundle"
    b = fresh("folder")
    (b / "palette.txt").unlink()
    (b / "palette.txt").mkdir()
    assert _fault(b) == f"palette.txt is listed in {MANIFEST} but missing from the bundle"
    b = fresh("extra")
    (b / "sub").mkdir()
    (b / "sub" / "x.bin").write_bytes(b"x")
    assert _fault(b) == f"sub/x.bin is in the bundle but not in {MANIFEST}; rebuild the bundle"
    b = fresh("link-in")  # a symlink to a listed file inside the bundle is still not listed
    os.symlink(b / "labels.txt", b / "alias.txt")
    assert _fault(b) == f"alias.txt is in the bundle but not in {MANIFEST}; rebuild the bundle"
    b = fresh("link-out")
    os.symlink(tmp_path, b / "escape")
    assert _fault(b).startswith(f"escape points outside the bundle (to {tmp_path.resolve()})")
    for rel in ("../x", "/etc/passwd", "a/../../x", ""):
        b = fresh(f"path{abs(hash(rel))}")
        doc = _manifest(b)
        doc["files"].append({"path": rel, "sha256": "0" * 64, "size_bytes": 1})
        _write_manifest(b, doc)
        assert _fault(b) == (f"{MANIFEST} lists {rel!r}: paths must be relative and stay inside the bundle")


def test_label_counts(good: Path, tmp_path: Path) -> None:
    for rel in ("labels.txt", "palette.txt"):
        b = tmp_path / rel
        shutil.copytree(good, b)
        lines = (b / rel).read_text().splitlines()
        (b / rel).write_text("".join(f"{x}\n" for x in lines[:-1]))
        _rehash(b, rel)
        assert _fault(b) == f"{rel}: {CLASSES - 1} classes, but the model has {CLASSES}; labels must match " \
            "the model's classes"
    b = tmp_path / "json"
    shutil.copytree(good, b)
    doc = json.loads((b / "labels.json").read_text())
    doc["classes"] = doc["classes"] + ["extra"]
    (b / "labels.json").write_text(json.dumps(doc))
    _rehash(b, "labels.json")
    assert _fault(b).startswith(f"labels.json: {CLASSES + 1} classes, but the model has {CLASSES}")
    b = tmp_path / "manifest-classes"
    shutil.copytree(good, b)
    doc = _manifest(b)
    doc["classes"] = doc["classes"][:2]
    _write_manifest(b, doc)
    assert _fault(b).startswith(f"{MANIFEST} classes: 2 classes, but the model has {CLASSES}")


def test_model_entries(good: Path, tmp_path: Path) -> None:
    def edited(name: str, edit) -> Path:
        b = tmp_path / name
        shutil.copytree(good, b)
        doc = _manifest(b)
        edit(doc)
        _write_manifest(b, doc)
        return b

    b = edited("runtime", lambda d: d["models"][0].update(runtime="coreml"))
    assert _fault(b) == "model.pte: the android app cannot load coreml models"
    b = edited("outside", lambda d: d["models"][0].update(file="../model.pte"))
    assert "paths must be relative and stay inside the bundle" in _fault(b)
    b = edited("absent", lambda d: d["models"][0].update(file="other.pte"))
    assert _fault(b) == f"other.pte is in {MANIFEST} models but not in the bundle"
    b = edited("channels", lambda d: d["models"][1]["outputs"][0].update(shape=[1, 16, 16, 4]))
    assert _fault(b).startswith("model.tflite output channels: 4 classes, but the model has 5")
    b = edited("channels-nchw", lambda d: d["models"][0]["outputs"][0].update(shape=[1, 4, 16, 16]))
    assert _fault(b).startswith("model.pte output channels: 4 classes, but the model has 5")
    b = edited("none", lambda d: d.update(models=[]))
    assert _fault(b) == f"{MANIFEST} lists no models"
    b = edited("malformed", lambda d: d["models"][0].pop("outputs"))
    assert _fault(b).startswith(f"{b / MANIFEST} does not describe a valid bundle (KeyError: ")


def test_fields_against_the_model_files(good: Path, tmp_path: Path) -> None:
    """Each field compared with what the .pte and the .tflite (NHWC) declare, one line per field."""
    def lines(edit) -> list[str]:
        b = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
        shutil.copytree(good, b)
        doc = _manifest(b)
        edit(doc)
        _write_manifest(b, doc)
        return _fault(b).splitlines()

    m = f"{MANIFEST} "
    assert lines(lambda d: d.update(img_size=[64, 32])) == [
        m + "img_size is [64, 32], but model.pte has [64, 64]",
        m + "img_size is [64, 32], but model.tflite has [64, 64]"]
    assert lines(lambda d: d["input"].update(shape=[1, 3, 64, 32])) == [
        m + "input.shape is [1, 3, 64, 32], but model.pte has [1, 3, 64, 64]",
        m + "input.shape is [1, 3, 64, 32], but model.tflite has [1, 3, 64, 64]"]
    assert lines(lambda d: d["output"].update(shape=[1, 5, 8, 16])) == [
        m + "output.shape is [1, 5, 8, 16], but model.pte has [1, 5, 16, 16]",
        m + "output.shape is [1, 5, 8, 16], but model.tflite has [1, 5, 16, 16]"]
    assert lines(lambda d: d.update(model="hrvit_b1")) == [
        m + "model is 'hrvit_b1', but model.pte.json has 'tiny'",
        m + "model is 'hrvit_b1', but model.tflite.json has 'tiny'"]
    tflite = lambda d: d["models"][1]  # noqa: E731
    for key, value, shown in (("variant", "int8", "'int8'"), ("bits", 8, "8"),
                              ("activations", "int8", "'int8'")):
        out = lines(lambda d, k=key, v=value: tflite(d).update({k: v}))
        assert len(out) == 1
        assert out[0].startswith(m + f"models[1].{key} is {shown}, but model.tflite.json has ")
    out = lines(lambda d: tflite(d).update(size_bytes=tflite(d)["size_bytes"] + 1))
    size = (good / "model.tflite").stat().st_size
    assert out == [m + f"models[1].size_bytes is {size + 1}, but model.tflite has {size}"]
    out = lines(lambda d: tflite(d)["input"].update(shape=[1, 3, 64, 64]))
    assert out == [m + "models[1].input is " + out[0].split(" is ", 1)[1].split(", but")[0]
                   + ", but model.tflite.json has " + out[0].split("model.tflite.json has ", 1)[1],
                   m + "models[1].input.shape is [1, 3, 64, 64], but model.tflite has [1, 64, 64, 3]"]
    out = lines(lambda d: tflite(d)["outputs"][0].update(shape=[1, 8, 16, 5]))
    assert out[-1] == (m + "models[1].outputs[0].shape is [1, 8, 16, 5], but model.tflite has "
                       "[1, 16, 16, 5]")
    both = lines(lambda d: (d.update(img_size=[32, 32]), d["models"][0].update(bits=4)))
    assert both == [m + "models[0].bits is 4, but model.pte.json has 32",
                    m + "img_size is [32, 32], but model.pte has [64, 64]",
                    m + "img_size is [32, 32], but model.tflite has [64, 64]"]


def test_shapes_from_each_kind_of_model_file(good: Path, exports: dict[str, Path]) -> None:
    from hrvit_mobile.bundle import _artifact_io, _as_nchw

    assert _artifact_io(exports["coreml"], "coreml") == ([1, 3, 64, 64], [1, 5, 16, 16])
    assert _artifact_io(good / "model.pte", "executorch") == ([1, 3, 64, 64], [1, 5, 16, 16])
    assert _artifact_io(good / "model.tflite", "tflite") == ([1, 64, 64, 3], [1, 16, 16, 5])
    assert _artifact_io(good / "model.pte", "other") is None
    assert _as_nchw([1, 64, 32, 3], [1, 16, 8, 5]) == ([1, 3, 64, 32], [1, 5, 16, 8])
    assert _as_nchw([1, 3, 64, 32], [1, 5, 16, 8]) == ([1, 3, 64, 32], [1, 5, 16, 8])
    assert _as_nchw([1, 3, 64, 3], [1, 5, 16, 1]) == ([1, 3, 64, 3], [1, 5, 16, 1])  # channels first wins
    assert _as_nchw([1, 64, 3], [1, 16, 5]) == ([1, 64, 3], [1, 16, 5])


def test_core_ml_shapes_from_the_spec() -> None:
    require_module("coremltools")
    from coremltools.proto import FeatureTypes_pb2

    from hrvit_mobile.exporters.coreml import _feature_shape as _coreml_shape

    image = FeatureTypes_pb2.FeatureType()
    image.imageType.width, image.imageType.height = 48, 32
    assert _coreml_shape(image) == [1, 3, 32, 48]
    array = FeatureTypes_pb2.FeatureType()
    array.multiArrayType.shape.extend([1, 5, 8, 12])
    assert _coreml_shape(array) == [1, 5, 8, 12]
    assert np.asarray(_coreml_shape(array)).dtype.kind == "i"


def test_a_manifest_without_its_file_list(bundle: Path) -> None:
    b = bundle
    doc = _manifest(b)
    del doc["files"]
    _write_manifest(b, doc)
    assert _fault(b) == f"README.md is in the bundle but not in {MANIFEST}; rebuild the bundle"


def test_model_entry_outputs_against_the_sidecar(bundle: Path) -> None:
    b = bundle
    doc = _manifest(b)
    doc["models"][1]["outputs"][0]["name"] = "scores"
    _write_manifest(b, doc)
    (line,) = _fault(b).splitlines()
    assert line.startswith(f"{MANIFEST} models[1].outputs is [{{") and "'scores'" in line
    assert ", but model.tflite.json has [{" in line


def test_every_model_is_checked_after_one_that_cannot_be_read(bundle: Path) -> None:
    b = bundle
    (b / "model.pte").write_bytes(b"not a program" * 50)
    _rehash(b, "model.pte")
    doc = _manifest(b)
    doc["models"][0]["size_bytes"] = (b / "model.pte").stat().st_size
    doc["img_size"] = [32, 32]
    _write_manifest(b, doc)
    assert _fault(b).splitlines() == [
        f"{MANIFEST} models[0].file: the executorch runtime cannot read model.pte (RuntimeError)",
        f"{MANIFEST} img_size is [32, 32], but model.tflite has [64, 64]"]


def test_a_bundle_relabelled_to_fewer_classes(good: Path, tmp_path: Path) -> None:
    """Labels, palette, classes and the model entries' shapes all say 4 classes: the models have 5."""
    b = tmp_path / "b"
    shutil.copytree(good, b)
    for rel in ("labels.txt", "palette.txt"):
        (b / rel).write_text("".join(f"{x}\n" for x in (b / rel).read_text().splitlines()[:4]))
    labels = json.loads((b / "labels.json").read_text())
    labels["classes"] = labels["classes"][:4]
    (b / "labels.json").write_text(json.dumps(labels))
    for rel in ("labels.txt", "palette.txt", "labels.json"):
        _rehash(b, rel)
    doc = _manifest(b)
    doc["num_classes"], doc["classes"] = 4, doc["classes"][:4]
    doc["models"][0]["outputs"][0]["shape"][1] = 4
    doc["models"][1]["outputs"][0]["shape"][3] = 4
    _write_manifest(b, doc)
    lines = _fault(b).splitlines()
    assert f"{MANIFEST} num_classes is 4, but model.pte has 5" in lines
    assert f"{MANIFEST} num_classes is 4, but model.tflite has 5" in lines


def test_a_manifest_without_models(bundle: Path) -> None:
    b = bundle
    doc = _manifest(b)
    del doc["models"]
    _write_manifest(b, doc)
    assert _fault(b) == f"{MANIFEST} lists no models"
