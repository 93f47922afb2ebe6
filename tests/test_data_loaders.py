"""ADE20K / Cityscapes / plain loaders and layout detection, on small generated folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hrvit_mobile.data import (
    ADE20KSegmentation,
    CityscapesSegmentation,
    DatasetError,
    FolderSegmentation,
    detect_layout,
    open_dataset,
)
from hrvit_mobile.data.classes import ADE20K_CLASSES, CITYSCAPES_CLASSES


def _image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


def _ade20k(root: Path) -> np.ndarray:
    raw = np.zeros((16, 24), np.uint8)
    raw[:, 8:16] = 1  # "wall" in the file, class 0 after reduce_zero_label
    raw[:, 16:] = 150  # the last class, 149 after reduction
    for split in ("training", "validation"):
        for i in range(2):
            _image(root / "images" / split / f"ADE_{split}_{i:08d}.jpg", raw.shape, i)
            _mask(root / "annotations" / split / f"ADE_{split}_{i:08d}.png", raw)
    return raw


def test_ade20k_reduce_zero_label(tmp_path: Path) -> None:
    raw = _ade20k(tmp_path)
    ds = open_dataset(tmp_path, split="val")
    assert isinstance(ds, ADE20KSegmentation) and len(ds) == 2
    assert ds.num_classes == 150 and ds.classes == list(ADE20K_CLASSES)
    image, mask = ds[0]
    assert image.shape == (3, 16, 24) and mask.dtype == torch.int64
    expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
    np.testing.assert_array_equal(mask.numpy(), expected)
    assert set(np.unique(mask.numpy()).tolist()) == {0, 149, 255}
    # train maps to images/training, and the split names ADE20K uses are accepted too
    assert all("training" in str(p) for p, _ in open_dataset(tmp_path, split="train").pairs)
    assert len(open_dataset(tmp_path, split="validation")) == 2


def test_ade20k_errors(tmp_path: Path) -> None:
    _ade20k(tmp_path)
    with pytest.raises(DatasetError, match="split 'test' unknown"):
        open_dataset(tmp_path, split="test")
    with pytest.raises(DatasetError, match="150 classes, not 8"):
        open_dataset(tmp_path, split="val", num_classes=8)
    (tmp_path / "annotations" / "validation" / "ADE_validation_00000001.png").unlink()
    with pytest.raises(DatasetError, match="no annotation"):
        open_dataset(tmp_path, split="val")


def _cityscapes(root: Path) -> np.ndarray:
    labels = np.full((16, 32), 255, np.uint8)
    labels[:8] = 0  # road
    labels[8:, :16] = 18  # bicycle
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for city in cities:
            stem = f"{city}_000000_000019"
            _image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", labels.shape, 1)
            _mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", labels)
            # the other gtFine files must not be picked up as labels
            _mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", labels * 0 + 7)
    return labels


def test_cityscapes_naming(tmp_path: Path) -> None:
    labels = _cityscapes(tmp_path)
    train = open_dataset(tmp_path, split="train", img_size=(8, 16))
    assert isinstance(train, CityscapesSegmentation) and len(train) == 2
    assert train.classes == list(CITYSCAPES_CLASSES) and train.num_classes == 19
    assert [p.parent.name for p, _ in train.pairs] == ["aachen", "bochum"]
    assert all(m.name.endswith("_gtFine_labelTrainIds.png") for _, m in train.pairs)
    _, mask = open_dataset(tmp_path, split="val")[0]
    np.testing.assert_array_equal(mask.numpy(), labels.astype(np.int64))
    image, mask = train[1]
    assert image.shape == (3, 8, 16) and set(mask.unique().tolist()) == {0, 18, 255}


def test_cityscapes_errors(tmp_path: Path) -> None:
    _cityscapes(tmp_path)
    with pytest.raises(DatasetError, match=r"no leftImg8bit/test/ \(splits here: train, val\)"):
        open_dataset(tmp_path, split="test")
    (tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(DatasetError, match="createTrainIdLabelImgs"):
        open_dataset(tmp_path, split="val")


def test_plain_layout_with_splits_and_classes(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            _image(tmp_path / split / "images" / f"{i}.png", (12, 12), i)
            _mask(tmp_path / split / "masks" / f"{i}.png", np.full((12, 12), i % 3))
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    train, val = open_dataset(tmp_path, split="train"), open_dataset(tmp_path, split="val")
    assert isinstance(train, FolderSegmentation) and (len(train), len(val)) == (3, 2)
    assert train.classes == ["a", "b", "c"]
    assert int(val[1][1][0, 0]) == 1


def test_detect_layout(tmp_path: Path) -> None:
    _ade20k(tmp_path / "ade")
    _cityscapes(tmp_path / "city")
    _image(tmp_path / "plain" / "images" / "x.png", (8, 8), 0)
    assert detect_layout(tmp_path / "ade") == "ade20k"
    assert detect_layout(tmp_path / "city") == "cityscapes"
    assert detect_layout(tmp_path / "plain") == "folder"
    assert open_dataset(tmp_path / "plain", num_classes=2).pairs[0][1] is None  # images only: all ignore


def test_calibration_from_dataset_roots_skips_masks(tmp_path: Path) -> None:
    from hrvit_mobile.data.calibration import calibration_images, image_folder

    _ade20k(tmp_path / "ade")
    _cityscapes(tmp_path / "city")
    assert image_folder(tmp_path / "ade") == tmp_path / "ade" / "images" / "training"
    assert image_folder(tmp_path / "city", "val") == tmp_path / "city" / "leftImg8bit" / "val"
    assert image_folder(tmp_path / "city") == tmp_path / "city" / "leftImg8bit" / "train"
    for i in range(3):  # plain layout with splits: 3 images and 3 masks, only the images may be read
        _image(tmp_path / "plain" / "train" / "images" / f"{i}.png", (20, 30), i)
        _mask(tmp_path / "plain" / "train" / "masks" / f"{i}.png", np.zeros((20, 30)))
    batch = calibration_images(tmp_path / "plain", (16, 16), limit=10)
    assert batch.shape == (3, 16, 16, 3) and batch.dtype == np.uint8
    loose = tmp_path / "loose"
    _image(loose / "a" / "x.jpg", (20, 20), 0)
    assert image_folder(loose) == loose and calibration_images(loose, (8, 8)).shape == (1, 8, 8, 3)
