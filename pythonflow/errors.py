"""Exception classes that are two built-in exceptions at once.

Spotify's Pythonflow raises :class:`ValueError` or :class:`RuntimeError` in some places where a
different built-in exception describes the fault better. Rather than choose, these classes derive
from both, so that ``except`` clauses written for either package keep catching them.
"""
from __future__ import annotations

__all__ = ["ForeignOperationError", "InvalidTypeError"]


class InvalidTypeError(TypeError, ValueError):
    """
    An argument has the wrong type.

    It is a :class:`TypeError`, which names the fault, and a :class:`ValueError`, which is what
    Pythonflow raised for the same inputs (e.g. ``graph(123)`` or a context that is not a mapping).
    """


class ForeignOperationError(ValueError, RuntimeError):
    """
    An operation was used with a graph it does not belong to.

    It is a :class:`ValueError`, as raised by this package for a bad argument, and a
    :class:`RuntimeError`, which is what Pythonflow raised for ``graph(foreign_operation)``.
    """
