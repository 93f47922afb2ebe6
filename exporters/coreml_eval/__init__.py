"""A NumPy evaluator of the Core ML ML program an ``.mlpackage`` holds, so Core ML parity runs on Linux.

Core ML itself only predicts on macOS. This module reads what is *serialized* — the MIL program in the
package's protobuf and the weights in ``Data/com.apple.CoreML/weights/weight.bin`` — and executes it op
by op with NumPy, following the MIL op definitions (coremltools' ``mil/ops/defs``, opsets iOS15..iOS18).
Nothing is re-converted from PyTorch, so a wrong weight or a wrong op in the package shows up as a
parity failure.

Numerics:

* Constant-weight decompression (``constexpr_affine_dequantize``, ``constexpr_blockwise_shift_scale``,
  ``constexpr_lut_to_dense`` in its iOS16 and iOS18 forms, ``constexpr_cast``) is exact as the spec
  defines it: ``scale * (q - zero_point)`` and LUT lookups. For fp16 outputs the product is formed in
  float32 and rounded once to fp16; both factors are fp16/small integers, so that float32 product is exact
  and the single rounding equals an IEEE fp16 multiply.
* fp16 emulation: every tensor the program declares as fp16 is stored as ``np.float16`` — each op's
  result is rounded to the dtype the program declares for that output. Inside an op the arithmetic runs in
  float32 (a conv or matmul accumulates in float32, a softmax is normalized in float32). This is an
  approximation of the device: Core ML's CPU/GPU/Neural Engine kernels accumulate in their own order and,
  on the GPU and the Neural Engine, partly in fp16, so the device differs from this evaluator by a few
  fp16 ulps per op; parity thresholds for fp16 variants are bands, not bit-exactness.
* fp32 programs run in float32 throughout.

Use :func:`evaluate` for one image, or :class:`Program` to load once and run many. The package holds one
module per op family (``ops_math``, ``ops_conv``, ``ops_layout``), the weight decompression
(``weights``), the serialized values (``values``) and the program (``program``).
"""

from __future__ import annotations

from .errors import MILEvaluationError, UnsupportedOpError
from .program import OPS, SUPPORTED_OPS, Program, evaluate, program_ops
from .weights import (
    CONSTEXPR_OPS,
    affine_dequantize,
    blockwise_shift_scale,
    lut_to_dense_ios16,
    lut_to_dense_ios18,
    unpack_bits,
)

RUNTIME = "hrvit-mobile MIL evaluator (NumPy, fp16 emulated)"

__all__ = [
    "CONSTEXPR_OPS",
    "OPS",
    "RUNTIME",
    "SUPPORTED_OPS",
    "MILEvaluationError",
    "Program",
    "UnsupportedOpError",
    "affine_dequantize",
    "blockwise_shift_scale",
    "evaluate",
    "lut_to_dense_ios16",
    "lut_to_dense_ios18",
    "program_ops",
    "unpack_bits",
]
