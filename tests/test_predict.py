"""predict: exported artifacts (ExecuTorch, LiteRT) on real images of any size -> overlay + class map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_artifacts import SIZE, tiny_artifacts_fixture, tiny_model  # noqa: F401
from PIL import Image

from hrvit_mobile.bundle import build_bundle
from hrvit_mobile.cli import main
from hrvit_mobile.exporters import Normalization
from hrvit_mobile.labels import assets_dir
from hrvit_mobile.predict import PredictError, _tile_origins, _upsample_argmax, predict

# the tiny artifacts are a session fixture shared with test_bundle.py: built once, on one worker
pytestmark = pytest.mark.xdist_group("tiny_artifacts")

SAMPLE = assets_dir() / "samples" / "synthetic_227x301.jpg"  # non-square, odd-sized


def _artifact(tiny_artifacts, target: str) -> Path:
    if target not in tiny_artifacts:
        pytest.skip(f"{target} runtime not installed")
    return tiny_artifacts[target]


def _reference_fit(image: np.ndarray) -> np.ndarray:
    """The fit policy computed with the float PyTorch model (not the artifact)."""
    H, W = SIZE
    h, w = image.shape[:2]
    s = min(H / h, W / w)
    nh, nw = round(h * s), round(w * s)
    canvas = np.empty((H, W, 3), np.uint8)
    canvas[:] = np.round(np.asarray(Normalization().mean) * 255).astype(np.uint8)
    canvas[:nh, :nw] = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    with torch.no_grad():
        logits = tiny_model()(torch.from_numpy(Normalization().apply(canvas[None]))).numpy()[0]
    small = _upsample_argmax(logits)[:nh, :nw]
    return np.asarray(Image.fromarray(small).resize((w, h), Image.NEAREST))


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_predict_on_odd_sized_image(tiny_artifacts, tmp_path: Path, target: str) -> None:
    artifact = _artifact(tiny_artifacts, target)
    image = np.asarray(Image.open(SAMPLE).convert("RGB"))
    out = tmp_path / "overlay.png"
    result = predict(artifact, SAMPLE, out=out)
    assert result.class_map.shape == (227, 301) and result.runs == 1
    assert result.labels.dataset == "ade20k"

    # the artifact in its runtime agrees with the float model under the same policy
    agree = (result.class_map == _reference_fit(image)).mean()
    assert agree > 0.99, agree

    # overlay: the image blended with the palette colours; class map: palette PNG of the indices
    over = np.asarray(Image.open(out))
    assert over.shape == (227, 301, 3)
    palette = np.asarray(result.labels.palette, np.float32)[result.class_map]
    np.testing.assert_allclose(over, 0.5 * image + 0.5 * palette, atol=1)
    cm = Image.open(tmp_path / "overlay_classes.png")
    assert cm.mode == "P"
    np.testing.assert_array_equal(np.asarray(cm), result.class_map)
    assert cm.getpalette()[:3] == list(result.labels.palette[0])


def test_modes_and_runtimes_agree(tiny_artifacts, tmp_path: Path) -> None:
    et, tfl = _artifact(tiny_artifacts, "executorch"), _artifact(tiny_artifacts, "tflite")
    rng = np.random.default_rng(0)
    # a 512x512 image: fit, stretch and slide all make the same single run
    square = np.asarray(Image.open(SAMPLE).convert("RGB").resize((512, 512)))
    maps = {m: predict(et, square, mode=m) for m in ("fit", "stretch", "slide")}
    assert all(r.runs == 1 for r in maps.values())
    assert (maps["fit"].class_map == maps["slide"].class_map).all()
    assert (maps["fit"].class_map == maps["stretch"].class_map).all()

    # a larger, odd-sized image is tiled: 2 x 3 overlapping windows, every pixel covered
    big = np.asarray(Image.open(SAMPLE).convert("RGB").resize((907, 601)))
    big = np.clip(big + rng.integers(-8, 8, big.shape), 0, 255).astype(np.uint8)
    a, b = predict(et, big, mode="slide"), predict(tfl, big, mode="slide")
    assert a.runs == b.runs == 6 and a.class_map.shape == (601, 907)
    assert (a.class_map == b.class_map).mean() > 0.99
    assert _tile_origins(908, 512) == [0, 340, 396] and _tile_origins(512, 512) == [0]


def test_predict_from_a_bundle_and_cli(tiny_artifacts, tmp_path: Path, capsys) -> None:
    bundle = build_bundle("android", [_artifact(tiny_artifacts, "tflite")], tmp_path / "bundle").path
    out = tmp_path / "o" / "overlay.png"
    assert main(["predict", "--model", str(bundle), "--image", str(SAMPLE), "--out", str(out),
                 "--mode", "stretch", "--labels", "ade20k"]) == 0
    printed = capsys.readouterr().out
    assert "301x227 image, stretch" in printed and "ai_edge_litert" in printed
    assert out.is_file() and (tmp_path / "o" / "overlay_classes.png").is_file()


def test_bad_input(tiny_artifacts, tmp_path: Path, capsys) -> None:
    artifact = _artifact(tiny_artifacts, "tflite")
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    cases = [
        (["--image", str(tmp_path / "missing.jpg")], "image not found"),
        (["--image", str(not_image)], "is not a readable image"),
        (["--image", str(SAMPLE), "--labels", "cityscapes"], "19 classes but the model has 150"),
        (["--image", str(SAMPLE), "--out", str(tmp_path / "x.jpg")], "must be a .png"),
    ]
    for extra, message in cases:
        argv = ["predict", "--model", str(artifact), "--out", str(tmp_path / "x.png"), *extra]
        if "--out" in extra:
            argv = ["predict", "--model", str(artifact), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.png"]  # nothing written
    with pytest.raises(PredictError, match="uint8 RGB"):
        predict(artifact, np.zeros((10, 10), np.uint8))
