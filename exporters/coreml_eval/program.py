"""The ``main`` function of an .mlpackage's ML program, loaded once and evaluated op by op."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .dtypes import NP_DTYPES, declared_shape, dtype_name
from .errors import MILEvaluationError, UnsupportedOpError
from .ops_conv import CONV_OPS
from .ops_layout import LAYOUT_OPS
from .ops_math import MATH_OPS
from .values import Blobs, load_value
from .weights import CONSTEXPR_OPS

# runtime ops by op type, one table per op family
OPS: dict[str, Callable[[dict[str, Any]], Any]] = {**MATH_OPS, **CONV_OPS, **LAYOUT_OPS}

SUPPORTED_OPS: frozenset[str] = frozenset({"const", *OPS, *CONSTEXPR_OPS})


class Program:
    """The ``main`` function of an .mlpackage's ML program, loaded once (weights decompressed) and
    evaluated on demand.

    Raises :class:`UnsupportedOpError` at load time, naming every op type it cannot run, so a program
    fails fast rather than half-way through an image.
    """

    def __init__(self, mlpackage: Path | str, spec: Any | None = None) -> None:
        import coremltools as ct

        self.path = Path(mlpackage)
        if spec is None:
            spec = ct.models.MLModel(str(self.path), skip_model_load=True).get_spec()
        if spec.WhichOneof("Type") != "mlProgram":
            raise MILEvaluationError(f"{self.path} is not an ML program (it is a {spec.WhichOneof('Type')})")
        self.spec = spec
        fn = spec.mlProgram.functions.get("main")
        if fn is None:
            raise MILEvaluationError(f"{self.path} has no 'main' function")
        block = fn.block_specializations.get(fn.opset) or next(iter(fn.block_specializations.values()))
        self.opset = fn.opset
        self.block = block
        self.inputs = {i.name: i.type for i in fn.inputs}
        self.outputs = list(block.outputs)
        self.image_inputs = {
            i.name: i.type.imageType
            for i in spec.description.input
            if i.type.WhichOneof("Type") == "imageType"
        }
        unsupported = sorted(
            {op.type for op in block.operations if op.type not in SUPPORTED_OPS}
            | {op.type for op in block.operations if op.blocks}
        )
        if unsupported:
            raise UnsupportedOpError(
                f"{self.path.name}: the MIL evaluator does not implement op(s) {', '.join(unsupported)}"
            )
        self._blobs = Blobs(self._weights_dir())
        self.constants: dict[str, Any] = {}
        self._steps: list[Any] = []
        for op in block.operations:
            if op.type == "const":
                self.constants[op.outputs[0].name] = load_value(op.attributes["val"], self._blobs)
            elif op.type in CONSTEXPR_OPS:
                # iOS16 constexpr ops carry their parameters as attributes, iOS18 ones as const inputs
                args = {k: load_value(v, self._blobs) for k, v in op.attributes.items() if k != "name"}
                args.update(self._bind(op, self.constants))
                out = self._finish(op, CONSTEXPR_OPS[op.type](args))
                self.constants[op.outputs[0].name] = out[0]
            else:
                self._steps.append(op)

    def _weights_dir(self) -> Path:
        candidates = sorted(self.path.glob("Data/*/weights"))
        return candidates[0] if candidates else self.path / "Data" / "com.apple.CoreML" / "weights"

    def _bind(self, op: Any, env: dict[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for key, binding in op.inputs.items():
            vals = []
            for arg in binding.arguments:
                if arg.WhichOneof("binding") == "value":  # iOS18 constexpr ops inline their parameters
                    vals.append(load_value(arg.value, self._blobs))
                    continue
                if arg.name not in env:
                    raise MILEvaluationError(f"op {op.type} reads {arg.name!r} before it is computed")
                vals.append(env[arg.name])
            # variadic inputs (concat's values) are lists; the rest are single values
            args[key] = vals if key == "values" or len(vals) > 1 else vals[0]
        return args

    @staticmethod
    def _finish(op: Any, result: Any) -> list[np.ndarray]:
        """Round each result to the dtype the program declares for it, and check its shape."""
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        if len(results) != len(op.outputs):
            raise MILEvaluationError(
                f"op {op.type} gave {len(results)} outputs, the program declares {len(op.outputs)}"
            )
        out = []
        for value, decl in zip(results, op.outputs, strict=True):
            dtype = (
                NP_DTYPES.get(dtype_name(decl.type.tensorType))
                if decl.type.WhichOneof("type") == "tensorType"
                else None
            )
            arr = np.asarray(value)
            if dtype is not None:
                arr = arr.astype(dtype, copy=False)
            shape = declared_shape(decl.type) if decl.type.WhichOneof("type") == "tensorType" else None
            if shape is not None and arr.shape != shape:
                raise MILEvaluationError(
                    f"op {op.type} -> {decl.name}: computed shape {arr.shape}, the program declares {shape}"
                )
            out.append(arr)
        return out

    def run(self, inputs: dict[str, np.ndarray], keep: bool = False) -> dict[str, np.ndarray]:
        """Evaluate with graph inputs by name (after any image preprocessing the program itself holds).

        Returns the function's outputs; with ``keep`` every intermediate tensor too (for debugging).
        """
        env: dict[str, Any] = dict(self.constants)
        for name, value_type in self.inputs.items():
            if name not in inputs:
                raise MILEvaluationError(f"missing input {name!r}")
            dtype = NP_DTYPES[dtype_name(value_type.tensorType)]
            env[name] = np.asarray(inputs[name]).astype(dtype)
        for op in self._steps:
            args = self._bind(op, env)
            try:
                result = OPS[op.type](args)
            except (MILEvaluationError, KeyError) as e:
                raise MILEvaluationError(f"op {op.type} ({op.outputs[0].name}): {e}") from e
            for decl, arr in zip(op.outputs, self._finish(op, result), strict=True):
                env[decl.name] = arr
        if keep:
            return env
        return {name: env[name] for name in self.outputs}

    def image_input(self, image: np.ndarray, name: str | None = None) -> dict[str, np.ndarray]:
        """A uint8 (H, W, 3) RGB image as the program's image input: (1, 3, H, W) pixel values 0..255.

        Core ML hands an ``ImageType`` input to the program as float pixels in the declared color
        layout; the scale/bias an ML program applies are ops inside it (``image__scaled__``,
        ``image__biased__``), so nothing else is done here.
        """
        if name is None:
            if len(self.image_inputs) != 1:
                raise MILEvaluationError(
                    f"expected one image input, the program has {sorted(self.image_inputs)}"
                )
            name = next(iter(self.image_inputs))
        it = self.image_inputs[name]
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise MILEvaluationError(f"expected a uint8 (H, W, 3) RGB image, got {img.dtype} {img.shape}")
        if (img.shape[0], img.shape[1]) != (it.height, it.width):
            raise MILEvaluationError(
                f"image is {img.shape[1]}x{img.shape[0]}, the model takes {it.width}x{it.height} (WxH)"
            )
        from coremltools.proto import FeatureTypes_pb2

        space = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(it.colorSpace)
        if space == "BGR":
            img = img[:, :, ::-1]
        elif space != "RGB":
            raise MILEvaluationError(f"image color space {space} is not supported")
        return {name: np.ascontiguousarray(img.transpose(2, 0, 1)[None]).astype(np.float32)}

    def predict(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """One uint8 (H, W, 3) RGB image through the program, like ``MLModel.predict`` on macOS."""
        return self.run(self.image_input(image))


def evaluate(mlpackage_path: Path | str, image: np.ndarray) -> dict[str, np.ndarray]:
    """Run the .mlpackage's ML program on a uint8 (H, W, 3) RGB image; outputs by name, in the dtypes
    the program declares (fp16 logits for fp16 programs)."""
    return Program(mlpackage_path).predict(image)


def program_ops(mlpackage_path: Path | str) -> dict[str, int]:
    """Op types and counts of the program's main function (compare with :data:`SUPPORTED_OPS`)."""
    import coremltools as ct

    spec = ct.models.MLModel(str(mlpackage_path), skip_model_load=True).get_spec()
    fn = spec.mlProgram.functions["main"]
    counts: dict[str, int] = {}
    for block in fn.block_specializations.values():
        for op in block.operations:
            counts[op.type] = counts.get(op.type, 0) + 1
    return counts
