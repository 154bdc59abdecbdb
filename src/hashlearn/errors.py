"""Errors meant for users.

A :class:`HashlearnError` carries a one-line message that names the input and what was
wrong with it. The command-line tool prints that line and exits non-zero; any other
exception is a bug and keeps its traceback.
"""


class HashlearnError(Exception):
    """An error caused by the user's input or environment, reported as one line."""


class InputError(HashlearnError, ValueError):
    """Bad input: wrong shape, dtype, value range, or a file that cannot be read."""


class NotFoundError(HashlearnError, LookupError):
    """A named thing (file, dataset, method, run) does not exist."""
