"""Exceptions for mistakes a user can fix (bad files, bad values): the CLI prints them as one line.

``UserError`` subclasses ``ValueError`` so library callers that catch ``ValueError`` keep working;
the CLI prints a ``UserError`` without a traceback and exits with code 2, while any other exception
is a bug and keeps its traceback. A leaf module: it imports nothing from the package.
"""
from __future__ import annotations


class UserError(ValueError):
    """An input the user can fix (a file, a path, an option value); the message names it."""


class UsageError(UserError):
    """A mistake in the command line the user can fix; printed without a traceback, exit code 2."""


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, refused (not safetensors/JSON) or of another model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the given path (also a ``FileNotFoundError``)."""


class DataError(UserError):
    """A training or label image that cannot be used: unreadable, empty, mismatched, bad label values."""


class PathExistsError(UserError, FileExistsError):
    """An output that already exists and may not be replaced (also a ``FileExistsError``)."""


class PathNotFoundError(UserError, FileNotFoundError):
    """An input path that does not exist (also a ``FileNotFoundError``)."""


class OutputWriteError(OSError, UserError):
    """An output that could not be written (a full disk, no permission); the message says how to go on."""
