"""Exceptions for mistakes a user can fix (bad files, bad values): the CLI prints them as one line.

``UserError`` subclasses ``ValueError`` so library callers that catch ``ValueError`` keep working;
the CLI prints a ``UserError`` without a traceback and exits with code 2, while any other exception
is a bug and keeps its traceback. A leaf module: it imports nothing from the package.
"""
from __future__ import annotations


class UserError(ValueError):
    """An input the user can fix (a file, a path, an option value); the message names it."""


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, refused (not safetensors/JSON) or of another model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the given path (also a ``FileNotFoundError``)."""


class DataError(UserError):
    """A training or label image that cannot be used: unreadable, empty, mismatched, bad label values."""
