"""The project's user-facing error type: the CLI prints its message as one line and exits 2."""

from __future__ import annotations


class HRViTMobileError(ValueError):
    """Bad input from the user (size, checkpoint, target/bits pair, data folder, missing package).

    The message is one line naming what is wrong and what is allowed.
    """
