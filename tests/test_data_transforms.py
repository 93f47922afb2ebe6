"""Augmentations (alignment, ignore padding, determinism) and the synthetic dataset generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hrvit_mobile.cli import main
from hrvit_mobile.data import SYNTHETIC_CLASSES, FolderSegmentation, generate_sample, open_dataset
from hrvit_mobile.data.transforms import (
    Compose,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    eval_transform,
    train_transform,
)


def _coded_pair(h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel encodes the column and green the row, and a mask that does the same:
    after any geometric transform the mask must still describe the pixel under it."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 3, yy * 3, np.zeros_like(xx)], -1).astype(np.uint8)
    return rgb, (xx % 7).astype(np.int64)


def test_flip_and_crop_keep_image_and_mask_aligned() -> None:
    rgb, mask = _coded_pair()
    pipeline = Compose([RandomCrop((32, 40)), RandomFlip(1.0)], seed=3)
    out_rgb, out_mask = pipeline(rgb, mask)
    assert out_rgb.shape == (32, 40, 3) and out_mask.shape == (32, 40)
    columns = out_rgb[..., 0].astype(np.int64) // 3
    np.testing.assert_array_equal(out_mask, columns % 7)
    assert columns[0, 0] > columns[0, -1]  # flipped: columns run right to left


def test_pad_fills_mask_with_ignore() -> None:
    rgb, mask = _coded_pair(20, 30)
    out_rgb, out_mask = Pad((32, 40))(rgb, mask)
    assert out_rgb.shape == (32, 40, 3)
    assert (out_mask[20:] == 255).all() and (out_mask[:, 30:] == 255).all()
    assert (out_rgb[20:] == 0).all()
    np.testing.assert_array_equal(out_mask[:20, :30], mask)


def test_train_transform_shapes_determinism_and_labels() -> None:
    rgb, mask = generate_sample(0, "train", 0, (128, 128))
    mask = mask.astype(np.int64)
    runs = []
    for _ in range(2):
        pipeline = train_transform((128, 128), (96, 96), ratio_range=(0.5, 2.0), seed=7)
        runs.append([pipeline(rgb, mask) for _ in range(4)])
    for (a_rgb, a_mask), (b_rgb, b_mask) in zip(*runs):
        assert a_rgb.shape == (96, 96, 3) and a_rgb.dtype == np.uint8 and a_mask.shape == (96, 96)
        np.testing.assert_array_equal(a_rgb, b_rgb)
        np.testing.assert_array_equal(a_mask, b_mask)
        assert set(np.unique(a_mask).tolist()) <= set(range(8)) | {255}  # nearest resize: no blended labels
    small_rgb, small_mask = train_transform((128, 128), (96, 96), ratio_range=(0.5, 0.5))(rgb, mask)
    assert small_rgb.shape == (96, 96, 3)  # resized to 64x64, then padded: ignore beyond the image
    assert (small_mask[64:] == 255).all() and (small_mask[:, 64:] == 255).all()
    assert (small_mask[:64, :64] != 255).all()
    other = train_transform((128, 128), (96, 96), seed=8)(rgb, mask)
    assert not np.array_equal(other[0], runs[0][0][0])


def test_photometric_changes_colours_not_labels() -> None:
    rgb, mask = generate_sample(1, "train", 0, (64, 64))
    rng = np.random.default_rng(0)
    changed = [PhotoMetricDistortion()(rgb, mask, rng) for _ in range(6)]
    assert all(m is mask for _, m in changed)
    assert any(np.abs(c.astype(int) - rgb).mean() > 2 for c, _ in changed)


def test_eval_transform_resizes_exactly() -> None:
    """To (height, width): the image as PIL resizes it bilinearly, the labels as nearest-neighbour picks
    them (each output pixel takes the label under its centre), ignored pixels kept."""
    rgb, mask = generate_sample(0, "val", 0, (96, 64))
    mask[:6] = 255
    out_rgb, out_mask = eval_transform((64, 32))(rgb, mask.astype(np.int64))
    assert out_rgb.shape == (64, 32, 3) and out_mask.shape == (64, 32) and out_mask.dtype == np.int64
    np.testing.assert_array_equal(out_rgb, np.asarray(Image.fromarray(rgb).resize((32, 64), Image.BILINEAR)))
    rows = (np.arange(64) + 0.5) * 96 / 64  # output pixel centres in source coordinates
    cols = (np.arange(32) + 0.5) * 64 / 32
    np.testing.assert_array_equal(out_mask, mask[rows.astype(int)][:, cols.astype(int)])
    assert (out_mask[:4] == 255).all()
    same_rgb, same_mask = eval_transform((96, 64))(rgb, mask.astype(np.int64))
    assert same_rgb is rgb and np.array_equal(same_mask, mask)  # already the size: untouched


def test_synthetic_is_deterministic_per_index() -> None:
    a_rgb, a_mask = generate_sample(0, "train", 5, (64, 96))
    b_rgb, b_mask = generate_sample(0, "train", 5, (64, 96))
    assert a_rgb.shape == (64, 96, 3) and a_mask.shape == (64, 96)
    assert a_rgb.tobytes() == b_rgb.tobytes() and a_mask.tobytes() == b_mask.tobytes()
    assert generate_sample(0, "train", 6, (64, 96))[0].tobytes() != a_rgb.tobytes()
    assert generate_sample(0, "val", 5, (64, 96))[0].tobytes() != a_rgb.tobytes()
    assert generate_sample(1, "train", 5, (64, 96))[0].tobytes() != a_rgb.tobytes()


def test_synthetic_covers_every_class() -> None:
    seen = set()
    for i in range(24):
        seen |= set(np.unique(generate_sample(0, "train", i, (128, 128))[1]).tolist())
    assert seen == set(range(len(SYNTHETIC_CLASSES)))
    assert SYNTHETIC_CLASSES == (
        "background", "disc", "square", "triangle", "ring", "cross", "star", "stripes",
    )


def test_synthetic_cli_writes_plain_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synthetic", "--out", str(tmp_path), "--train", "3", "--val", "2",
                 "--img-size", "64x96", "--seed", "4"]) == 0
    assert "wrote 3 train + 2 val" in capsys.readouterr().out
    train = open_dataset(tmp_path, split="train")
    assert isinstance(train, FolderSegmentation) and len(train) == 3
    assert train.classes == list(SYNTHETIC_CLASSES)
    image, mask = open_dataset(tmp_path, split="val")[1]
    assert image.shape == (3, 64, 96)
    # files are exactly the generator's output for (seed, split, index)
    rgb, labels = generate_sample(4, "val", 1, (64, 96))
    np.testing.assert_array_equal(mask.numpy(), labels)
    with Image.open(tmp_path / "val" / "images" / "000001.png") as im:
        np.testing.assert_array_equal(np.asarray(im), rgb)
    assert sorted(p.name for p in (tmp_path / "train" / "images").iterdir()) == [
        "000000.png", "000001.png", "000002.png",
    ]


def test_synthetic_cli_rejects_bad_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synthetic", "--out", str(tmp_path / "x"), "--train", "0", "--val", "0"]) == 2
    assert "not both 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
