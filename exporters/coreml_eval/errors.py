"""The evaluator's errors: a program it cannot run says which op or value stopped it."""

from __future__ import annotations

from ..errors import ExportError


class MILEvaluationError(ExportError):
    """The program cannot be evaluated: an unsupported op, a malformed value, or a shape mismatch."""


class UnsupportedOpError(MILEvaluationError):
    """An op type (or an op variant) that the evaluator does not implement."""
