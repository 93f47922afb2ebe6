"""Wrong-but-loadable artifacts: a copy of an exported file with one weight tensor's bytes rewritten."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def with_tensor_replaced(artifact: Path, old: np.ndarray, new: np.ndarray, out_dir: Path) -> Path:
    """A copy of ``artifact`` (and its sidecar) in ``out_dir`` whose one float32 run equal to ``old`` holds
    ``new`` instead. The runtimes keep constant data as it came from PyTorch (a 1x1 conv's weights and a
    bias in the same byte order), so the file still loads and runs, and computes something else."""
    old_bytes = np.ascontiguousarray(old, np.float32).tobytes()
    new_bytes = np.ascontiguousarray(new, np.float32).tobytes()
    assert len(old_bytes) == len(new_bytes)
    data = artifact.read_bytes()
    assert data.count(old_bytes) == 1, "the tensor must appear exactly once in the file"
    at = data.find(old_bytes)
    bad = out_dir / f"wrong_{artifact.name}"
    bad.write_bytes(data[:at] + new_bytes + data[at + len(old_bytes) :])
    shutil.copy(artifact.with_name(artifact.name + ".json"), bad.with_name(bad.name + ".json"))
    return bad
