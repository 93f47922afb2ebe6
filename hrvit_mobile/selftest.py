"""The self-test every demo-app bundle carries: a golden image and the float model's class map for it.

An app runs the golden image through its bundled model once at first launch and counts the pixels whose
class equals the expected map; it passes at ``min_agreement`` or more. A model file that was swapped or
corrupted (even with the manifest's hashes regenerated around it) no longer reproduces the map and fails.

Files (``self_test/`` in the bundle): ``input.png``, RGB at the model's input size (so no app-side
resize enters the comparison), and ``expected_classes.u8``, the class map at that size, row-major, one
byte per pixel (``.u16``, little-endian, above 256 classes). The manifest entry also holds a digest of
the float logits (sha256 of their float32 bytes, and the mean logit per class).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hrvit_mobile.errors import HRViTMobileError

SELF_TEST_DIR = "self_test"
INPUT_PNG = f"{SELF_TEST_DIR}/input.png"
# the shipped sample the golden image is made from (stretched to the model's input size)
SOURCE_SAMPLE = "synthetic_640x360.jpg"
# fraction of golden pixels that must keep the float model's class: the bars MediaPipe's task API meets on
# the shipped samples (float activations, then int8 activations)
MIN_AGREEMENT_FLOAT, MIN_AGREEMENT_INT8 = 0.98, 0.95

Reference = Callable[[np.ndarray], np.ndarray]
"""uint8 (H, W, 3) RGB -> float logits (1, K, H/4, W/4)."""


class SelfTestError(HRViTMobileError):
    """A bundle's self-test data cannot be made or read."""


def golden_image(img_size: tuple[int, int]) -> np.ndarray:
    """The shipped sample stretched to ``img_size`` (height, width): uint8 (H, W, 3)."""
    from PIL import Image

    from hrvit_mobile.labels import assets_dir

    h, w = img_size
    with Image.open(assets_dir() / "samples" / SOURCE_SAMPLE) as im:
        return np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR))


def sample_photos(img_size: tuple[int, int], limit: int) -> np.ndarray:
    """The first ``limit`` shipped sample photos (``demo_app_assets/samples/*.jpg``, not their ``*_mask.png``
    class maps), shorter side resized then center-cropped to ``img_size`` as calibration images are:
    uint8 (N, H, W, 3); N is 0 when none are installed."""
    from PIL import Image

    from hrvit_mobile.images import fit_center, open_image
    from hrvit_mobile.labels import LabelsError, assets_dir

    h, w = img_size
    try:
        photos = sorted((assets_dir() / "samples").glob("*.jpg"))[:limit]
    except LabelsError:  # an install without demo_app_assets: the caller falls back to synthetic images
        photos = []
    out = np.empty((len(photos), h, w, 3), np.uint8)
    for i, path in enumerate(photos):
        with open_image(path, SelfTestError) as im:
            out[i] = np.asarray(fit_center(im.convert("RGB"), img_size, Image.BILINEAR))
    return out


def torch_reference(model: Any, mean: list[float], std: list[float]) -> Reference:
    """The float PyTorch model as a :data:`Reference` (input normalized as the app contract says)."""
    import torch

    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def run(image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            return model.eval()((x - m) / s).float().numpy()

    return run


def min_agreement(activations: str) -> float:
    """The pass bar for a model variant: int8 activations round more than float ones."""
    return MIN_AGREEMENT_FLOAT if activations == "float" else MIN_AGREEMENT_INT8


def expected_name(num_classes: int) -> str:
    return f"{SELF_TEST_DIR}/expected_classes.{'u8' if num_classes <= 256 else 'u16'}"


def write_self_test(root: Path, img_size: tuple[int, int], reference: Reference, reference_name: str,
                    models: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the golden image and the reference's class map into bundle ``root``; return the manifest
    entry (``models``: the bundle's model entries, for each one's pass bar)."""
    from PIL import Image

    from hrvit_mobile.metrics import upsample_class_map

    h, w = img_size
    image = golden_image(img_size)
    logits = np.ascontiguousarray(reference(image), np.float32)
    if logits.ndim != 4 or logits.shape[0] != 1:
        raise SelfTestError(f"the self-test reference returned logits of shape {logits.shape}, expected "
                            "(1, classes, height/4, width/4)")
    k = logits.shape[1]
    classes = upsample_class_map(logits, (h, w))[0]
    (root / SELF_TEST_DIR).mkdir(mode=0o755)
    Image.fromarray(image).save(root / INPUT_PNG, optimize=False)
    expected = expected_name(k)
    (root / expected).write_bytes(classes.astype("<u2" if k > 256 else np.uint8).tobytes())
    for name in (INPUT_PNG, expected):
        (root / name).chmod(0o644)
    return {
        "image": INPUT_PNG,
        "source_image": f"demo_app_assets/samples/{SOURCE_SAMPLE}, stretched to {w}x{h} (bilinear)",
        "expected_classes": expected,
        "shape": [h, w],
        "dtype": "uint16le" if k > 256 else "uint8",
        "upsampling": "logits resized bilinearly (align_corners=False) to the image, then argmax",
        "reference": reference_name,
        "logits_shape": list(logits.shape),
        "logits_sha256": hashlib.sha256(logits.astype("<f4").tobytes()).hexdigest(),
        "logits_class_means": [round(float(v), 6) for v in logits.mean(axis=(0, 2, 3))],
        "min_agreement": {m["file"]: min_agreement(m["activations"]) for m in models},
    }


def expected_classes(root: Path, entry: dict[str, Any]) -> np.ndarray:
    """The expected class map of a bundle's self-test, (H, W)."""
    dtype = "<u2" if entry["dtype"] == "uint16le" else np.uint8
    data = np.frombuffer((Path(root) / entry["expected_classes"]).read_bytes(), dtype)
    h, w = entry["shape"]
    if data.size != h * w:
        raise SelfTestError(f"{entry['expected_classes']}: {data.size} values, expected {h}x{w}")
    return data.reshape(h, w)


def agreement(class_map: np.ndarray, root: Path, entry: dict[str, Any]) -> float:
    """Fraction of golden pixels where ``class_map`` equals the expected map."""
    expected = expected_classes(root, entry)
    if class_map.shape != expected.shape:
        return 0.0
    return float(np.mean(class_map == expected))


def artifact_reference(artifacts: dict[str, tuple[Path, dict[str, Any]]]) -> tuple[Reference, str]:
    """Without the PyTorch model at hand: the float-activation artifact of ``artifacts`` ({target: (path,
    sidecar)}), else the first, in its Python runtime (each passed parity against the float model)."""
    from hrvit_mobile.exporters import open_artifact
    from hrvit_mobile.exporters.registry import get_backend

    # a runtime that does not run on every host (Core ML: the MIL evaluator off macOS) is the last choice
    ranked = sorted(artifacts.items(), key=lambda kv: (kv[1][1]["activations"] != "float", -kv[1][1]["bits"],
                                                        bool(get_backend(kv[0]).verify_hint), kv[0]))
    target, (path, meta) = ranked[0]
    runner = open_artifact(path)
    return (lambda image: runner.predict(image)[0]), (
        f"the exported {target} {meta['variant']} artifact in its Python runtime (no PyTorch model given)"
    )
