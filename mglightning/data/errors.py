"""The data package's bad-input error, shared by every loader (entry points exit 2 on it)."""

from __future__ import annotations


class DataError(RuntimeError):
    """A data set is missing or damaged; the message names the file and the remedy."""
