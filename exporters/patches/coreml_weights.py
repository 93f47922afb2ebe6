"""Small constants held in the ML program instead of the weight file (written for coremltools 9.0,
``patching.WRITTEN_FOR``): a size shortcut, the values are unchanged; see
:mod:`hrvit_mobile.exporters.patches`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from hrvit_mobile.patching import library_patch

# Constants with fewer elements than this are written into the program description, not the weight file
INLINE_CONSTANT_MAX_ELEMENTS = 512


@contextlib.contextmanager
def small_constants_inline(max_elements: int = INLINE_CONSTANT_MAX_ELEMENTS) -> Iterator[None]:
    """Inside, coremltools writes constants of fewer than ``max_elements`` elements into the
    program description as immediate values (its own cut-off is 10).

    A weight-file entry costs a 64-byte header, padding to 64 bytes and a reference that names the
    file (~50 bytes) besides the data: on b1 about 690 biases, norm vectors, small kernels and
    per-channel scales, ~0.1 MB of a weight-only 8-bit package. An immediate value holds the same
    bytes with a few bytes of framing. The values are unchanged.
    """
    from coremltools.converters.mil.backend.mil import load

    original = load.should_use_weight_file

    def should_use_weight_file(val: Any, specification_version: Any = None) -> bool:
        if isinstance(val, (np.ndarray, np.generic)) and val.size < max_elements:
            return False
        if specification_version is None:
            return original(val)
        return original(val, specification_version)

    with library_patch(load, should_use_weight_file=should_use_weight_file):
        yield
