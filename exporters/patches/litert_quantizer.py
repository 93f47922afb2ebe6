"""ai_edge_quantizer's calibration reading the interpreter's tensors as views instead of copies
(written for ai-edge-quantizer 0.10.0, ``patching.WRITTEN_FOR``): the same statistics and file at a
fraction of the peak memory; see :mod:`hrvit_mobile.exporters.patches`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from hrvit_mobile.patching import library_patch


@contextmanager
def calibration_reads_views() -> Iterator[None]:
    """ai_edge_quantizer's calibration, reading the interpreter's preserved tensors as views.

    Its calibrator copies every named tensor of the model out of the interpreter (``get_tensor``) for
    each sample and merges that dict into the previous sample's, so from the second sample on the
    process holds the interpreter's preserved tensors plus two full copies of them: b1 at 512x512 has
    2.5 GB of tensors, and the static int8 export peaked at 8.98 GB. Here the dict holds numpy views
    of the preserved buffers (the same values: each sample's statistics are computed before the next
    sample runs), and the previous sample's views are dropped before the next run, as the interpreter
    requires. Only the main subgraph is read this way (``tensor()`` has no subgraph argument).
    tests/test_export_litert.py checks the calibration statistics and the file are unchanged.
    """
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import tfl_interpreter_utils

    calibrator_cls = calibrator._PreserveAllTensorsCalibrator
    original_step = calibrator_cls._calibrate_step
    original_read = tfl_interpreter_utils.get_tensor_name_to_content_map

    def calibrate_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._tensor_content_map.clear()  # no view of the last run may outlive it
        return original_step(self, *args, **kwargs)

    def read_views(interpreter: Any, subgraph_index: int = 0, dequantize: bool = False) -> dict[str, Any]:
        if subgraph_index != 0 or dequantize:
            return original_read(interpreter, subgraph_index, dequantize)
        return {
            d["name"]: interpreter.tensor(d["index"])()
            for d in interpreter.get_tensor_details(subgraph_index)
            if d["name"] and np.all(d["shape"])  # the same tensors the original returns
        }

    with (
        library_patch(calibrator_cls, _calibrate_step=calibrate_step),
        library_patch(tfl_interpreter_utils, get_tensor_name_to_content_map=read_views),
    ):
        yield
