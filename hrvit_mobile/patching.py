"""Attributes of other libraries replaced for the length of a block, behind one switch.

The exporters' shortcuts and the quantization recipes swap a function of ExecuTorch, torch, coremltools,
torchao or litert-torch for a checked equivalent while an export runs, and must put it back however the
block ends. :func:`patched` is that swap, once. :func:`library_patch` is the same swap for another
library's internals, and applies only when

- patches are on: ``HRVIT_MOBILE_PATCHES=0`` (or ``ExportSpec(patches=False)``) turns every one off, and
- the patched library is the version the patches were written against (:data:`WRITTEN_FOR`); on any
  other version the block runs the library's stock code.

Every patch is checked to give the same bytes as the stock code, so the switch changes speed, not
artifacts. Each applied patch is recorded by name; exports list them in the sidecar's
``details.patches``.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType
from typing import Any

ENV = "HRVIT_MOBILE_PATCHES"

# import name -> (distribution, the version every patch of it was written against)
WRITTEN_FOR: dict[str, tuple[str, str]] = {
    "torch": ("torch", "2.13.0"),
    "executorch": ("executorch", "1.5.1"),
    "torchao": ("torchao", "0.18.0"),
    "coremltools": ("coremltools", "9.0"),
    "litert_torch": ("litert-torch", "0.10.0"),
    "ai_edge_quantizer": ("ai-edge-quantizer", "0.10.0"),
    "ai_edge_litert": ("ai-edge-litert", "2.3.0"),
}

_INHERITED = object()  # the attribute was not in the owner's own __dict__
_lock = threading.Lock()
_override: list[bool | None] = [None]
_applied: set[str] = set()


@contextmanager
def patched(owner: Any, **attributes: Any) -> Iterator[None]:
    """Within the block ``owner.<name>`` is the given value for each keyword; afterwards each is what it
    was. The original is taken from the owner's own ``__dict__`` (so a staticmethod comes back as a
    staticmethod), and an attribute the owner only inherited is deleted again, so lookup goes back to
    the base class."""
    own = vars(owner)
    saved = {name: own.get(name, _INHERITED) for name in attributes}
    try:
        for name, value in attributes.items():
            setattr(owner, name, value)
        yield
    finally:
        for name, value in reversed(saved.items()):
            if value is _INHERITED:
                if name in vars(owner):
                    delattr(owner, name)
            else:
                setattr(owner, name, value)


def enabled() -> bool:
    """Whether library patches apply: the current export's choice, else ``HRVIT_MOBILE_PATCHES``."""
    override = _override[0]
    return override if override is not None else os.environ.get(ENV, "1") != "0"


def begin_export(patches: bool | None) -> None:
    """Start an export: its patch choice (None: the environment's) and an empty record of applied ones."""
    with _lock:
        _override[0] = patches
        _applied.clear()


def applied() -> list[str]:
    """The library patches applied since the current export began, by name."""
    with _lock:
        return sorted(_applied)


def _library_of(owner: Any) -> str:
    module = owner.__name__ if isinstance(owner, ModuleType) else getattr(owner, "__module__", None)
    return str(module or type(owner).__module__).split(".")[0]


@cache
def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution).split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return None


def written_for(owner: Any) -> bool:
    """True when ``owner`` belongs to a library at the version its patches were written against."""
    known = WRITTEN_FOR.get(_library_of(owner))
    return known is not None and _installed_version(known[0]) == known[1]


def _name(owner: Any, attribute: str) -> str:
    if isinstance(owner, ModuleType):
        where = owner.__name__
    elif isinstance(owner, type):
        where = f"{owner.__module__}.{owner.__qualname__}"
    else:
        where = f"{type(owner).__module__}.{type(owner).__qualname__} instance"
    return f"{where}.{attribute}"


@contextmanager
def library_patch(owner: Any, **attributes: Any) -> Iterator[bool]:
    """:func:`patched` for another library's internals: applied (and recorded) only when patches are on
    and the library is the version written for; otherwise the block runs stock code. Yields whether
    the patch applied."""
    if _library_of(owner) == "hrvit_mobile":  # our own code: not another library's internals
        with patched(owner, **attributes):
            yield True
        return
    if not (enabled() and written_for(owner)):
        yield False
        return
    with _lock:
        _applied.update(_name(owner, a) for a in attributes)
    with patched(owner, **attributes):
        yield True
