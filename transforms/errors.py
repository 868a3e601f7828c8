"""Exceptions raised for invalid input data."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """Invalid or missing input data.

    The message names the offending file or folder, states what is wrong with it
    and how to fix it, so command-line tools print it without a traceback.
    """
