"""Class names and colour palettes shipped in ``demo_app_assets/labels`` (ADE20K-150, Cityscapes-19,
the synthetic demo shapes), and the rule that picks one for a model."""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

from hrvit_mobile.errors import HRViTMobileError

DATASETS: tuple[str, ...] = ("ade20k", "cityscapes", "synthetic")
_BY_COUNT = {150: "ade20k", 19: "cityscapes", 8: "synthetic"}


class LabelsError(HRViTMobileError):
    """A label set is missing, malformed, or does not fit the model."""


@dataclass(frozen=True)
class LabelSet:
    dataset: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    def __len__(self) -> int:
        return len(self.classes)

    def as_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "classes": list(self.classes),
            "palette": [list(c) for c in self.palette],
        }


def assets_dir() -> Path:
    """``demo_app_assets/`` beside the package (the source tree or the installed copy)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "demo_app_assets", here.parent / "demo_app_assets"):
        if (candidate / "labels").is_dir():
            return candidate
    raise LabelsError(f"demo_app_assets/labels not found next to {here}; reinstall hrvit-mobile from source")


def generated_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours for a class set without a standard palette: golden-ratio hue steps."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95 - 0.25 * (i % 2))
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(out)


def load_labels(name_or_path: str | Path) -> LabelSet:
    """A shipped set by name (``ade20k``, ``cityscapes``, ``synthetic``) or a JSON file with ``classes``
    (and optionally ``palette``, RGB triples; generated when absent)."""
    text = str(name_or_path)
    path = assets_dir() / "labels" / f"{text}.json" if text in DATASETS else Path(text)
    if not path.is_file():
        raise LabelsError(f"labels {text!r} not found: use one of {', '.join(DATASETS)} or a JSON file path")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        classes = tuple(str(c) for c in data["classes"])
        palette = data.get("palette") or generated_palette(len(classes))
        palette = tuple((int(r), int(g), int(b)) for r, g, b in palette)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise LabelsError(
            f"{path}: expected JSON {{\"classes\": [names], \"palette\": [[r, g, b], ...]}} ({e})"
        ) from None
    if len(palette) != len(classes) or any(not 0 <= v <= 255 for c in palette for v in c):
        raise LabelsError(f"{path}: palette needs {len(classes)} RGB triples of 0..255, got {len(palette)}")
    if not classes:
        raise LabelsError(f"{path}: no classes")
    return LabelSet(str(data.get("dataset") or path.stem), classes, palette)


def labels_for(
    num_classes: int, labels: str | Path | None = None, names: list[str] | None = None
) -> LabelSet:
    """The label set for a model with ``num_classes`` outputs.

    ``labels`` (a shipped name or a JSON path) wins; else the model's own ``names`` when they are not
    the placeholder ``class_<i>``; else the shipped set with that many classes; else placeholders.
    """
    if labels is not None:
        chosen = load_labels(labels)
    elif names and len(names) == num_classes and names != [f"class_{i}" for i in range(num_classes)]:
        shipped = load_labels(_BY_COUNT[num_classes]) if num_classes in _BY_COUNT else None
        if shipped is not None and list(shipped.classes) == list(names):
            chosen = shipped  # e.g. the demo checkpoint's synthetic classes: keep their palette
        else:
            chosen = LabelSet("custom", tuple(names), generated_palette(num_classes))
    elif num_classes in _BY_COUNT:
        chosen = load_labels(_BY_COUNT[num_classes])
    else:
        chosen = LabelSet(
            "generic", tuple(f"class_{i}" for i in range(num_classes)), generated_palette(num_classes)
        )
    if len(chosen) != num_classes:
        raise LabelsError(
            f"labels {chosen.dataset!r} have {len(chosen)} classes but the model has {num_classes}: "
            f"pass labels with {num_classes} names"
        )
    return chosen
