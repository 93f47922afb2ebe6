"""The demo checkpoint shipped in the package: HRViT-b1 trained on the project's synthetic dataset.

It is the embedded default of ``export`` and ``eval`` for hrvit_b1, so a first export reports parity
on a model whose predictions mean something. The JSON beside the weights records how it was made.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from hrvit_mobile.errors import HRViTMobileError

ASSETS = Path(__file__).parent / "assets"
DEMO_MODEL = "hrvit_b1"
DEMO_WEIGHTS = ASSETS / "hrvit_b1_synthetic.safetensors"
DEMO_INFO = ASSETS / "hrvit_b1_synthetic.json"
# Classes of a model built without a checkpoint when no demo exists for it (ADE20K's 150).
DEFAULT_NUM_CLASSES = 150


@dataclass(frozen=True)
class DemoCheckpoint:
    path: Path
    model: str
    classes: tuple[str, ...]
    img_size: tuple[int, int]
    val_miou: float
    info: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def demo_checkpoint() -> DemoCheckpoint:
    """The shipped demo checkpoint's metadata; one clear error if the package was installed without it."""
    if not DEMO_WEIGHTS.is_file() or not DEMO_INFO.is_file():
        raise HRViTMobileError(f"the demo checkpoint is missing from the installed package ({DEMO_WEIGHTS}); "
                               "reinstall hrvit-mobile or pass --checkpoint")
    info = json.loads(DEMO_INFO.read_text())
    return DemoCheckpoint(DEMO_WEIGHTS, info["model"], tuple(info["classes"]), tuple(info["img_size"]),
                          float(info["val_miou"]), info)


def demo_checkpoint_for(model: str) -> DemoCheckpoint | None:
    """The demo checkpoint if ``model`` is the variant it was trained for (and it is installed), else None."""
    if model != DEMO_MODEL:
        return None
    if not DEMO_WEIGHTS.is_file():
        logging.getLogger("hrvit_mobile").warning("the demo checkpoint %s is not installed", DEMO_WEIGHTS)
        return None
    return demo_checkpoint()


def load_demo_model(img_size: tuple[int, int] | None = None):
    """hrvit_b1 with the demo weights (stored fp16, loaded into fp32) and the synthetic classes."""
    import hrvit_mobile

    demo = demo_checkpoint()
    size = img_size or demo.img_size
    model = hrvit_mobile.create_model(demo.model, num_classes=demo.num_classes, img_size=size)
    hrvit_mobile.load_checkpoint(model, demo.path)
    return model


def write_demo_info(info: dict, out: Path | str = DEMO_INFO) -> Path:
    """The record beside the weights (classes, img_size, val mIoU, commands); written atomically."""
    from hrvit_mobile.files import atomic_write

    missing = [k for k in ("model", "classes", "img_size", "val_miou") if k not in info]
    if missing:
        raise HRViTMobileError(f"demo info lacks {', '.join(missing)}")
    out = Path(out)
    atomic_write(out, json.dumps(info, indent=2) + "\n")
    return out


def save_demo_weights(checkpoint: Path | str, out: Path | str = DEMO_WEIGHTS) -> Path:
    """Writes a training checkpoint's weights as fp16 safetensors (BatchNorm counters stay int64)."""
    from safetensors.torch import save_file

    from hrvit_mobile.checkpoint import read_state_dict

    state = read_state_dict(checkpoint)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    save_file(half, str(tmp), metadata={"format": "pt", "source": Path(checkpoint).name})
    tmp.replace(out)
    return out


def demo_dataset_seed() -> int:
    """The seed the demo checkpoint's synthetic dataset was generated with (recorded beside the weights)."""
    return int(demo_checkpoint().info.get("seed", 0))


def demo_samples(split: str, n: int, size: tuple[int, int]):
    """The first ``n`` images of the demo checkpoint's synthetic ``split`` with their class maps,
    generated in memory from the seed its dataset was made with (the generator is deterministic).

    Returns ``(uint8 (N, H, W, 3), int64 (N, H, W))``.
    """
    import numpy as np

    from hrvit_mobile.data.synthetic import generate_sample

    seed = demo_dataset_seed()
    pairs = [generate_sample(seed, split, i, size) for i in range(n)]
    return np.stack([rgb for rgb, _ in pairs]), np.stack([mask for _, mask in pairs]).astype(np.int64)


def demo_verification_set(n: int, size: tuple[int, int]):
    """Held-out images with labels, so reports score the demo model on its own domain, offline.

    Returns ``(images, labels, description)``.
    """
    images, labels = demo_samples("val", n, size)
    return images, labels, (f"{n} held-out synthetic val image(s) with labels (seed {demo_dataset_seed()}, "
                            "the demo checkpoint's val split)")


def demo_calibration_images(n: int, size: tuple[int, int]):
    """uint8 calibration images from the demo checkpoint's train split: what an int8 export of the demo
    model calibrates on when no --calib is given (blobs from another domain would skew the ranges)."""
    return demo_samples("train", n, size)[0]
