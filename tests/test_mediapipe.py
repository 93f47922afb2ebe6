"""The exported .tflite in MediaPipe's Image Segmenter task API, with no project code loading it.

MediaPipe reads the model's metadata (image input, labels, activation), resizes the image to the model's
input (stretching it) and upsamples the logits to the image; its category mask is compared with
``hrvit-mobile predict --mode stretch`` on the shipped sample images (landscape, portrait, odd-sized).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_module
from PIL import Image

from hrvit_mobile.exporters import ExportSpec, export
from hrvit_mobile.exporters.mediapipe_metadata import minimum_parser_version
from hrvit_mobile.exporters.testing import TinySegmenter
from hrvit_mobile.predict import load_image, predict

require_module("litert_torch")
mp = require_module("mediapipe")
vision = require_module("mediapipe.tasks.python.vision")
BaseOptions = require_module("mediapipe.tasks.python").BaseOptions

SAMPLES = sorted((Path(__file__).parents[1] / "demo_app_assets" / "samples").glob("*.jpg"))
# the demo checkpoint below its 512x512: the graph (and so the export time) is b1's at any size, and at
# 384 the samples are shrunk by at most 1.7x, where MediaPipe's resampling and predict's differ little
DEMO_SIZE = "384x384"
TINY_CLASSES = ["sky", "road", "car", "tree", "person"]


def segmenter(path: Path, confidence: bool = False):
    options = vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=str(path)),
        output_category_mask=True,
        output_confidence_masks=confidence,
    )
    return vision.ImageSegmenter.create_from_options(options)


def segment(seg, image: np.ndarray):
    return seg.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))


def test_minimum_parser_version_follows_mediapipes_rules() -> None:
    """The stand-in for the parser-version helper the mediapipe wheel lacks: the members added after
    1.0.0 raise the version as mediapipe's metadata_version.cc (and its tests) say."""
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    def version(**subgraph: object) -> str:
        sg = fb.SubGraphMetadataT()
        for name, value in subgraph.items():
            setattr(sg, name, value)
        md = fb.ModelMetadataT()
        md.name, md.subgraphMetadata = "m", [sg]
        b = flatbuffers.Builder(0)
        b.Finish(md.Pack(b), b"M001")
        return minimum_parser_version(bytes(b.Output()))

    assert version() == "1.0.0"
    assert version(inputProcessUnits=[fb.ProcessUnitT()]) == "1.1.0"
    assert version(inputTensorGroups=[fb.TensorGroupT()]) == "1.2.0"
    versioned = fb.AssociatedFileT()
    versioned.version = "2"
    assert version(associatedFiles=[versioned]) == "1.4.1"
    assert version(customMetadata=[fb.CustomMetadataT()], inputProcessUnits=[fb.ProcessUnitT()]) == "1.5.0"


def test_the_writer_is_described_alike_on_every_call() -> None:
    """The sidecar says whether the stand-in is in use on the first export of a process and on later ones
    (same export, same sidecar bytes)."""
    from hrvit_mobile.exporters.mediapipe_metadata import segmenter_writer

    (first_module, first), (again_module, again) = segmenter_writer(), segmenter_writer()
    assert first_module is again_module and first == again


@pytest.fixture(scope="module")
def tiny() -> TinySegmenter:
    return TinySegmenter(num_classes=len(TINY_CLASSES))


@pytest.mark.parametrize(("bits", "activations"), [(32, None), (16, None), (8, None), (8, 8)])
def test_every_precision_is_a_mediapipe_segmenter(
    tiny: TinySegmenter, tmp_path: Path, bits: int, activations: int | None
) -> None:
    """fp32, fp16, int8dr and int8: MediaPipe loads the file, reads its labels, and returns a category
    mask and softmax confidence masks at the image's size."""
    spec = ExportSpec(target="tflite", bits=bits, activations=activations, img_size=(64, 64),
                      num_classes=len(TINY_CLASSES), class_names=TINY_CLASSES, out_dir=tmp_path,
                      calib_samples=2, run_parity=False)
    path = export(tiny, spec).artifact.path
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["input"]["shape"] == [1, 64, 64, 3] and meta["input"]["layout"] == "NHWC"
    assert meta["details"]["mediapipe_metadata"]["min_parser_version"] == "1.5.0"
    image = load_image(SAMPLES[0])
    with segmenter(path, confidence=True) as seg:
        assert seg.labels == TINY_CLASSES
        result = segment(seg, image)
    mask = result.category_mask.numpy_view()
    assert mask.shape[:2] == image.shape[:2] and mask.max() < len(TINY_CLASSES)
    confidence = np.stack([m.numpy_view().reshape(image.shape[:2]) for m in result.confidence_masks])
    assert confidence.shape[0] == len(TINY_CLASSES)
    np.testing.assert_allclose(confidence.sum(0), 1.0, atol=1e-3)  # the metadata's SOFTMAX activation


def test_a_model_without_metadata_is_refused(tiny: TinySegmenter, tmp_path: Path) -> None:
    """What the metadata is for: the same graph with it stripped is refused by the task API."""
    from ai_edge_litert.tools import flatbuffer_utils

    spec = ExportSpec(target="tflite", img_size=(64, 64), num_classes=len(TINY_CLASSES), out_dir=tmp_path,
                      run_parity=False)
    path = export(tiny, spec).artifact.path
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    obj.metadata = [m for m in obj.metadata if m.name != b"TFLITE_METADATA"]
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(obj)))
    with pytest.raises(Exception, match=r"(?i)metadata|normalization"):
        segmenter(bare).close()


@pytest.fixture(scope="module")
def demo_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The embedded demo checkpoint, exported with the CLI's defaults: fp32 and static int8."""
    out = tmp_path_factory.mktemp("demo-tflite")
    paths = {}
    for variant, args in (("fp32", []), ("int8", ["--bits", "8", "--activations", "8"])):
        cmd = [sys.executable, "-m", "hrvit_mobile.cli", "export", "--target", "tflite",
               "--img-size", DEMO_SIZE, "--out", str(out), "--no-report", *args]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        (paths[variant],) = out.glob(f"*_tflite_{variant}.tflite")
        sidecar = json.loads(paths[variant].with_name(paths[variant].name + ".json").read_text())
        # parity ran on the demo model's own domain: held-out images of the dataset it was trained on
        assert "held-out synthetic val images of the demo checkpoint" in sidecar["parity_images"]
        assert sidecar["parity"]["passed"], sidecar["parity"]
    return paths


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize(("variant", "min_agreement"), [("fp32", 0.98), ("int8", 0.95)])
def test_mediapipe_category_mask_agrees_with_predict(
    demo_exports: dict[str, Path], tmp_path: Path, variant: str, min_agreement: float
) -> None:
    path = demo_exports[variant]
    classes = json.loads(path.with_name(path.name + ".json").read_text())["classes"]
    shapes = set()
    with segmenter(path) as seg:
        assert seg.labels == classes
        for sample in SAMPLES:
            image = load_image(sample)
            mask = segment(seg, image).category_mask.numpy_view().reshape(image.shape[:2])
            ours = predict(path, sample, mode="stretch").class_map
            agreement = float(np.mean(mask == ours))
            assert agreement >= min_agreement, f"{sample.name}: {agreement:.4f}"
            h, w = image.shape[:2]
            shapes.add("landscape" if w > h else "portrait")
    assert shapes == {"landscape", "portrait"}
    assert any(np.asarray(Image.open(s)).shape[0] % 32 for s in SAMPLES)  # an odd size among them
