"""Attributes of other libraries replaced for the length of a block.

The exporters' shortcuts and the quantization recipes swap a function of ExecuTorch, torch, coremltools
or litert-torch for a checked equivalent while an export runs, and must put it back however the block
ends. :func:`patched` is that swap, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_INHERITED = object()  # the attribute was not in the owner's own __dict__


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
