"""Lazy dataflow graphs for data preparation.

Build a graph of operations inside ``with pf.Graph() as graph:`` and evaluate it with
``graph(fetches, context)``. The :mod:`pythonflow.pfmq` subpackage distributes evaluations over
processes and machines; it is imported separately (``from pythonflow import pfmq``).
"""
import builtins as _builtins

from . import wrappers as _wrappers
from .core import EvaluationError, Graph, Operation, control_dependencies, func_op, opmethod
from .operations import (
    assert_,
    cache,
    cache_file,
    call,
    conditional,
    constant,
    identity,
    import_,
    lazy_constant,
    placeholder,
    str_format,
    try_,
)
from .util import Profiler, batch_iterable, lazy_import
from .wrappers import *  # noqa: F403 - the generated builtin and operator wrappers

__version__ = "0.5.0"

# Wrappers named like builtins (`abs`, `pow` from the operator module) stay reachable as
# `pf.abs` but are left out of `__all__` so that a star import does not shadow the builtins.
__all__ = [
    "EvaluationError", "Graph", "Operation", "Profiler", "assert_", "batch_iterable", "cache",
    "cache_file", "call", "conditional", "constant", "control_dependencies", "func_op",
    "identity", "import_", "lazy_constant", "lazy_import", "opmethod", "placeholder",
    "str_format", "try_",
] + [name for name in _wrappers.__all__ if not hasattr(_builtins, name)]
