"""Per-thread scopes of graph construction: default graphs and control dependencies.

``with graph:`` pushes a default graph and ``with pf.control_dependencies([...]):`` pushes
dependencies; operations created inside read the innermost ones. The stacks are per thread, so
graphs built concurrently in several threads do not leak operations into each other.

This module imports nothing from the package: the graph and the operations both use it, and
neither has to reach into the other for it.
"""
from __future__ import annotations

import threading

__all__ = ["dependency_stack", "graph_stack"]


class _Scopes(threading.local):
    # `threading.local` runs `__init__` once in each thread that touches the object, so every
    # thread starts with empty stacks of its own.
    def __init__(self) -> None:
        self.graphs: list = []
        self.dependencies: list = []


_SCOPES = _Scopes()


def graph_stack() -> list:
    """
    Return this thread's stack of entered graphs, innermost last.

    Returns
    -------
    graphs : list[Graph]
        The stack itself, for :class:`~pythonflow.Graph` to push to and pop from.
    """
    return _SCOPES.graphs


def dependency_stack() -> list:
    """
    Return this thread's stack of control-dependency scopes, innermost last.

    Returns
    -------
    scopes : list[(Graph, list[Operation])]
        The stack itself: each entry is a graph and the dependencies it adds to the operations
        created in that graph.
    """
    return _SCOPES.dependencies
