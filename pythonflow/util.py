"""Utilities: profiling evaluations, batching iterables and importing modules lazily."""
from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import time
import types
from typing import Any, Iterable, Iterator, Mapping

LOGGER = logging.getLogger(__name__)

__all__ = ["Profiler", "batch_iterable", "lazy_import"]


class Profiler:
    """
    Callback recording how long each operation takes to evaluate.

    Pass it as ``graph(fetches, context, callback=profiler)``; it accumulates over calls. The
    time of a lazy operation (e.g. :class:`~pythonflow.conditional`) includes the operations it
    evaluates.

    Attributes
    ----------
    times : dict[Operation, float]
        Total seconds spent evaluating each operation.
    counts : dict[Operation, int]
        Number of evaluations of each operation.

    Examples
    --------
    >>> import pythonflow as pf
    >>> with pf.Graph() as graph:
    ...     y = (pf.placeholder('x') + 1).set_name('y')
    >>> profiler = pf.Profiler()
    >>> graph('y', x=1, callback=profiler)
    2
    >>> len(profiler.times)
    2
    """

    def __init__(self) -> None:
        self.times: dict = {}
        self.counts: dict = {}

    @contextlib.contextmanager
    def __call__(self, operation: Any, context: Mapping) -> Iterator[None]:
        """Time the evaluation of `operation` (the callback protocol)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.times[operation] = self.times.get(operation, 0.0) + elapsed
            self.counts[operation] = self.counts.get(operation, 0) + 1

    def slowest(self, num: int = 10) -> list:
        """
        Return the operations that took longest.

        Parameters
        ----------
        num : int
            Number of operations to return.

        Returns
        -------
        items : list[(Operation, float)]
            Operations and their total times in seconds, slowest first.
        """
        return sorted(self.times.items(), key=lambda item: item[1], reverse=True)[:num]

    def __str__(self) -> str:
        total = sum(self.times.values())
        lines = [f"{len(self.times)} operations, {total:.6f} s in total; slowest:"]
        for operation, seconds in self.slowest():
            share = seconds / total if total else 0.0
            lines.append(f"  {operation.name:<30} {seconds:12.6f} s {share:7.1%} "
                         f"{self.counts[operation]:6d} calls")
        return "\n".join(lines)


def batch_iterable(iterable: Iterable, batch_size: int, transpose: bool = False) -> Iterator:
    """
    Split an iterable into lists of `batch_size` elements; the last one may be shorter.

    Parameters
    ----------
    iterable : iterable
        Elements to batch, consumed lazily.
    batch_size : int
        Number of elements per batch.
    transpose : bool
        Yield, instead of a list of elements, a list of tuples: the first fields of all elements,
        then the second fields, and so on (e.g. inputs and targets).

    Yields
    ------
    batch : list
        Elements of the batch (transposed if `transpose`).

    Examples
    --------
    >>> list(batch_iterable(range(5), 2))
    [[0, 1], [2, 3], [4]]
    >>> list(batch_iterable([(1, 'a'), (2, 'b')], 2, transpose=True))
    [[(1, 2), ('a', 'b')]]
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, not {batch_size!r}")
    iterator = iter(iterable)
    while True:
        batch = list(itertools.islice(iterator, batch_size))
        if not batch:
            return
        yield list(zip(*batch)) if transpose else batch


class _LazyModule(types.ModuleType):
    """Module proxy importing the real module on first attribute access."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_pf_module"] = None

    def _pf_load(self) -> types.ModuleType:
        module = self.__dict__["_pf_module"]
        if module is None:
            LOGGER.debug("importing %s", self.__name__)
            module = importlib.import_module(self.__name__)
            self.__dict__["_pf_module"] = module
        return module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pf_load(), name)

    def __dir__(self) -> list:
        return dir(self._pf_load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_pf_module"] is not None else "not loaded"
        return f"<lazy module '{self.__name__}' ({state})>"

    def __reduce__(self):
        return lazy_import, (self.__name__,)


def lazy_import(module_name: str) -> types.ModuleType:
    """
    Return a proxy that imports `module_name` when one of its attributes is first used.

    Parameters
    ----------
    module_name : str
        Absolute name of the module.

    Returns
    -------
    module : module
        Proxy forwarding attribute access to the imported module.

    Examples
    --------
    >>> np = lazy_import('numpy')
    >>> np.zeros(2).tolist()
    [0.0, 0.0]
    """
    return _LazyModule(module_name)
