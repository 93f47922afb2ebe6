"""Regenerate the sample images (deterministic): python demo_app_assets/samples/make_samples.py

Images from the project's synthetic generator (the domain of the demo checkpoint), held out from both its
train and its 100 val images (val indices 1000+), at sizes an app or `hrvit-mobile predict` must handle:
landscape, portrait, odd-sized. Each image is a JPEG, as a camera frame would be, with its ground-truth
class map beside it (`*_mask.png`, single-channel class indices) so a prediction can be scored.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from hrvit_mobile.data.synthetic import generate_sample

HERE = Path(__file__).parent
SEED = 0  # the demo checkpoint's dataset seed
# name -> (height, width, val index)
SAMPLES = {"synthetic_480x640": (480, 640, 1000), "synthetic_640x360": (640, 360, 1001),
           "synthetic_227x301": (227, 301, 1002)}


def main() -> None:
    for name, (h, w, index) in SAMPLES.items():
        rgb, mask = generate_sample(SEED, "val", index, (h, w))
        Image.fromarray(rgb).save(HERE / f"{name}.jpg", quality=90, optimize=True)
        Image.fromarray(mask).save(HERE / f"{name}_mask.png", optimize=True)
        print(name, (HERE / f"{name}.jpg").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
