"""Shared fixtures: the reference data of the official implementation, under its weight recipe."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

import hrvit_mobile
from hrvit_mobile import weights

DATA = Path(__file__).parent / "data"

# Under pytest-xdist (the default run, see pyproject's addopts) each worker gets its share of the cores:
# most of the suite is single-threaded Python (tracing, lowering, conversion), so workers side by side
# finish sooner than one process with every core, and threads beyond the share only oversubscribe.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS_PER_WORKER = max(1, (os.cpu_count() or 1) // _WORKERS)


# CI (``CI=true``, as hosted CI services set it) installs every runtime: one that does not import there is
# a broken install, and a skip would turn it green
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def has_module(name: str) -> bool:
    """Whether ``name`` imports; in CI a module that does not is a failure of the calling test, with the
    import error, instead of a skip."""
    try:
        importlib.import_module(name)
    except ImportError as e:
        if IN_CI:
            pytest.fail(f"{name} does not import ({e}); the CI install provides every runtime", pytrace=False)
        return False
    return True


def require_module(name: str) -> ModuleType:
    """``name`` imported; the calling test (or test module) is skipped when it does not import, except in
    CI, where that fails (see :func:`has_module`)."""
    if not has_module(name):
        pytest.skip(f"{name} does not import", allow_module_level=True)
    return importlib.import_module(name)


def pytest_configure(config: pytest.Config) -> None:
    if _WORKERS > 1:
        torch.set_num_threads(THREADS_PER_WORKER)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # ``--dist loadgroup`` keeps a group on one worker: by default a group is a test file, so its
    # module-scoped fixtures (exports, captured graphs) are built once; files that share a session
    # fixture name one group with ``pytestmark = pytest.mark.xdist_group(...)``
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


def reference_miou(predictions: list[np.ndarray], labels: list[np.ndarray], num_classes: int,
                   ignore: int = 255) -> float:
    """mIoU as the benchmarks define it, written apart from ``hrvit_mobile.metrics`` to check it: per class,
    |prediction == c and label == c| / |prediction == c or label == c| over labelled pixels of all
    images; classes absent from both are left out of the mean."""
    ious = []
    for c in range(num_classes):
        inter = union = 0
        for pred, label in zip(predictions, labels, strict=True):
            valid = label != ignore
            inter += int(np.count_nonzero((pred == c) & (label == c) & valid))
            union += int(np.count_nonzero(((pred == c) | (label == c)) & valid))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def class_map(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(H, W) classes of (1, K, h, w) logits resized bilinearly to ``size`` (how HRViT is scored)."""
    resized = torch.nn.functional.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return resized[0].argmax(0).numpy()


def labelled_images(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(uint8 RGB, labels) of each ``folder/images/*.png`` and its ``masks/`` namesake, read by PIL alone."""
    from PIL import Image

    pairs = []
    for image in sorted((folder / "images").glob("*.png")):
        with Image.open(image) as rgb, Image.open(folder / "masks" / image.name) as mask:
            pairs.append((np.asarray(rgb.convert("RGB")), np.asarray(mask).astype(np.int64)))
    return pairs


def imagenet_normalized(rgb: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) float32 input of a uint8 (H, W, 3) image: ImageNet's mean and std, as models are fed."""
    x = (rgb.astype(np.float32) / 255 - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


@pytest.fixture
def torch_threads():
    """``torch_threads(n)``: torch on ``n`` intra-op threads for the rest of the test, restored afterwards."""
    threads = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(threads)


def recipe_state_dict(manifest: dict[str, list]) -> dict[str, torch.Tensor]:
    """The reference recipe's weights for an official ``{key: [shape, dtype]}`` manifest."""
    return weights.recipe_state_dict({key: tuple(shape) for key, (shape, _dtype) in manifest.items()})


def load_manifest(variant: str) -> dict[str, list]:
    return json.loads((DATA / f"hrvit_{variant}_segformer_ade20k.keys.json").read_text())


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    with np.load(DATA / "hrvit_b1_segformer_golden.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def b1_reference() -> hrvit_mobile.HRViTSegmentor:
    """HRViT-b1 with the reference recipe's weights, eval mode (do not modify in tests)."""
    model = hrvit_mobile.create_model("hrvit_b1").eval()
    model.load_state_dict(recipe_state_dict(load_manifest("b1")))
    return model


@pytest.fixture(scope="session")
def nano_model() -> hrvit_mobile.HRViTSegmentor:
    """The tiny test configuration with non-degenerate weights (the recipe over its own layout)."""
    model = hrvit_mobile.create_model("hrvit_nano", num_classes=7, img_size=(64, 96)).eval()
    return weights.load_recipe_weights(model)


# hrvit_nano's maps (16-96 channels) are all narrower than the deploy default FACTORED_DES_MIN_CHANNELS;
# the export tests deploy it with its 64- and 96-channel DES maps factored, so that both DES forms
# (dense linears, Kronecker factors with transposes) reach every runtime
NANO_FACTORED_DES_FROM = 64


@pytest.fixture(scope="session")
def deploy_nano(nano_model):
    """``deploy_nano(img_size, **kw)``: the nano deploy form with both DES forms in its graph."""

    def build(img_size: tuple[int, int] = (64, 96), **kw) -> torch.nn.Module:
        kw.setdefault("factored_des_from", NANO_FACTORED_DES_FROM)
        return hrvit_mobile.deploy(nano_model, img_size=img_size, **kw)

    return build
