"""Loading official (mmseg) and project checkpoints into the training form."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.models.segmentor import HRViTSegmentor, create_model, list_models

# Top-level keys under which trainers nest the weights (mmseg/mmcv: state_dict; others: model).
_NESTING_KEYS = ("state_dict", "model", "module")
# Prefixes added by DDP / EMA wrappers that are not part of the official layout.
_WRAPPER_PREFIXES = ("module.", "model.")


class CheckpointError(HRViTMobileError):
    """A checkpoint that cannot be read or does not fit the model."""


def load_failure_reason(exc: Exception) -> str:
    """One line saying why ``torch.load``/safetensors refused a file.

    torch's weights-only refusal opens with advice to load again with ``weights_only=False``, which
    would run whatever the pickle holds; the reason is in its "WeightsUnpickler error" part."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    if text.startswith("Weights only load failed"):
        found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        reason = found.group(1).split(". ")[0].rstrip(".") if found else "not a plain state_dict"
        if reason.startswith("Unsupported global"):
            return (f"it pickles Python objects, not only tensors ({reason}); this tool never unpickles "
                    "code, so save model.state_dict() instead")
        return f"not a readable weights-only pickle ({reason})"
    return text.splitlines()[0]


def check_finite(state: Mapping[str, Tensor], source: str | os.PathLike[str]) -> None:
    """Refuse weights holding NaN or inf (a diverged run): an export of them only fails parity later."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"checkpoint {source} has NaN/inf weights in {len(bad)} of {len(state)} tensors (first: "
            f"{bad[0]}); only finite weights load: use a checkpoint saved before the run diverged"
        )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a checkpoint file (PyTorch pickle with ``weights_only=True``, or safetensors); weights must be
    finite."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for a damaged file
        raise CheckpointError(
            f"cannot read checkpoint {path}: {load_failure_reason(exc)} "
            "(expected a PyTorch state_dict saved with torch.save, or a .safetensors file)"
        ) from None
    while isinstance(obj, Mapping):
        nested = next((k for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = obj[nested]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {path} holds no state_dict (looked at the top level and under "
            f"{', '.join(_NESTING_KEYS)})"
        )
    state = {_strip_wrapper_prefix(k): v for k, v in obj.items()}
    check_finite(state, path)
    return state


def _strip_wrapper_prefix(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix) and not key.startswith(("backbone.", "decode_head.")):
            return key[len(prefix) :]
    return key


def _layout(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def guess_variant(keys: Mapping[str, Tensor]) -> str | None:
    """The registered variant whose layout the given state_dict matches best (by key and shape)."""
    shapes = {k: tuple(v.shape) for k, v in keys.items() if k.startswith("backbone.")}
    best, best_score = None, 0.0
    for name in list_models():
        with torch.device("meta"):
            layout = _layout(create_model(name, num_classes=1).backbone)
        layout = {f"backbone.{k}": s for k, s in layout.items()}
        hits = sum(1 for k, s in layout.items() if shapes.get(k) == s)
        score = hits / max(len(layout), len(shapes), 1)
        if score > best_score:
            best, best_score = name, score
    return best if best_score > 0.5 else None


def _preview(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_checkpoint(
    model: HRViTSegmentor, path: str | os.PathLike[str], strict: bool = True
) -> HRViTSegmentor:
    """Load an official/mmseg or project checkpoint into ``model`` (in place) and return it.

    Accepts a bare state_dict or one nested under ``state_dict``/``model``. With ``strict`` any
    missing, unexpected or mis-shaped key raises :class:`CheckpointError` naming them and the
    variant the checkpoint looks like.
    """
    state = read_state_dict(path)
    expected = _layout(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} vs {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if strict and (missing or unexpected or mis_shaped):
        cls_key = "decode_head.conv_seg.weight"
        if missing == [] and unexpected == [] and len(mis_shaped) in (1, 2) and cls_key in state:
            raise CheckpointError(
                f"checkpoint {path} has {state[cls_key].shape[0]} classes, the model "
                f"{model.num_classes}; create the model with num_classes={state[cls_key].shape[0]}"
            )
        variant = guess_variant(state)
        parts = [f"checkpoint {path} does not fit {model.name}"]
        if variant and variant != model.name:
            parts.append(f"it looks like {variant}")
        if missing:
            parts.append(f"missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_preview(unexpected)}")
        if mis_shaped:
            parts.append(f"shape mismatches: {_preview(mis_shaped, 3)}")
        raise CheckpointError("; ".join(parts))
    usable = {k: v for k, v in state.items() if k in expected and tuple(v.shape) == expected[k]}
    model.load_state_dict(usable, strict=False)
    return model
