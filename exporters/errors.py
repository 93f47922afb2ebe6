"""The errors an export raises: one line meant for the user, each an :class:`HRViTMobileError`."""

from __future__ import annotations

from hrvit_mobile.errors import HRViTMobileError


class ExportError(HRViTMobileError):
    """An export could not be produced; the message is one line meant for the user."""


class UnsupportedExportError(ExportError):
    """The (target, bits, activations) combination is not supported."""


class MissingDependencyError(ExportError, ImportError):
    """An optional backend package is not installed."""
