"""User-facing errors: the CLI prints them as one paragraph and exits with code 2 (no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad key, missing file, wrong value).

    The message must name the key, file or value at fault and say how to fix it.
    """

    exit_code = 2


class NotAvailableError(UserError):
    """An optional component (TensorRT, a GPU, an extra package) is not installed on this machine."""
