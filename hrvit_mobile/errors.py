"""The project's user-facing error type: the CLI prints its message as one line and exits 2."""

from __future__ import annotations


class HRViTMobileError(ValueError):
    """Bad input from the user (size, checkpoint, target/bits pair, data folder, missing package).

    The message is one line naming what is wrong and what is allowed.
    """


class MissingDependencyError(HRViTMobileError, ImportError):
    """An optional package a command needs is not installed."""

    def __init__(self, package: str, purpose: str, extra: str | None = None) -> None:
        install = f'pip install "hrvit-mobile[{extra}]"' if extra else f"pip install {package}"
        super().__init__(f"{purpose} needs the optional package {package!r}; install it with: {install}")
        self.package = package
