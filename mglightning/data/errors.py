"""The data package's bad-input error, shared by every loader (entry points exit 2 on it)."""

from __future__ import annotations


class DataError(RuntimeError):
    """A data set is missing or damaged; the message names the file and the remedy."""


def one_line(error: Exception) -> str:
    """An exception's message on one line (torchvision's download errors span several)."""
    return " ".join(str(error).split()) or type(error).__name__
