"""Regenerate the sample images (deterministic): python demo_app_assets/samples/make_samples.py

Scenes of the synthetic demo classes (disc, square, triangle, ring, cross, star, stripes) on a smooth
background, at sizes an app or `hrvit-mobile predict` must handle: landscape, portrait, odd-sized.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent
SAMPLES = {"shapes_640x480.png": (640, 480, 1), "shapes_360x640.png": (360, 640, 2), "shapes_301x227.png": (301, 227, 3)}


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(40, 235) for _ in range(3))


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        a = math.pi / 2 + i * math.pi / 5
        rr = r if i % 2 == 0 else r * 0.45
        pts.append((cx + rr * math.cos(a), cy - rr * math.sin(a)))
    return pts


def scene(w: int, h: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    top, bottom = _colour(rng), _colour(rng)
    im = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(im)
    for y in range(h):  # vertical gradient background
        t = y / max(1, h - 1)
        d.line([(0, y), (w, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
    for kind in ("stripes", "disc", "square", "triangle", "ring", "cross", "star"):
        r = rng.uniform(0.08, 0.16) * min(w, h)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        c = _colour(rng)
        if kind == "disc":
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c)
        elif kind == "square":
            d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=c)
        elif kind == "triangle":
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=c)
        elif kind == "ring":
            d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=c, width=max(2, round(r / 3)))
        elif kind == "cross":
            t = r / 3
            d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=c)
            d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=c)
        elif kind == "star":
            d.polygon(_star(cx, cy, r), fill=c)
        else:
            for i in range(5):
                x0 = cx - r + i * 2 * r / 5
                d.rectangle((x0, cy - r, x0 + r / 5, cy + r), fill=c)
    return im.filter(ImageFilter.SMOOTH)


if __name__ == "__main__":
    for name, (w, h, seed) in SAMPLES.items():
        scene(w, h, seed).save(HERE / name, optimize=True)
        print(name, (HERE / name).stat().st_size, "bytes")
