"""Utilities: profiling evaluations, batching iterables and importing modules lazily."""
from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import numbers
import time
import types
from collections import OrderedDict
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

from .errors import InvalidTypeError

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
    >>> list(profiler.times) == [y]  # `x` was given, so only `y` was evaluated
    True
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

    def get_slow_operations(self, num_operations: Optional[int] = None) -> OrderedDict:
        """
        Return the operations that took longest, as Pythonflow's profiler does.

        Parameters
        ----------
        num_operations : int, optional
            Number of operations to return; all if not given.

        Returns
        -------
        times : collections.OrderedDict[Operation, float]
            Total seconds of each operation, slowest first.
        """
        num = len(self.times) if num_operations is None else num_operations
        return OrderedDict(self.slowest(num))

    def __str__(self) -> str:
        # One line per operation, slowest first, each starting with the operation itself.
        return "\n".join(f"{operation}: {seconds:.6f} s in {self.counts[operation]} call(s)"
                         for operation, seconds in self.slowest())


class batch_iterable:  # noqa: N801 - lower case to match Pythonflow's public API
    """
    Split an iterable into lists of `batch_size` elements; the last one may be shorter.

    The batches are made lazily each time the object is iterated, so an infinite iterator can be
    batched and a sequence can be batched again for each epoch. ``len()`` is the number of
    batches if `iterable` has a length.

    Parameters
    ----------
    iterable : iterable
        Elements to batch.
    batch_size : int
        Number of elements per batch, at least 1.
    transpose : bool
        Yield, instead of a list of elements, a tuple of tuples: the first fields of all
        elements, then the second fields, and so on (e.g. inputs and targets).

    Raises
    ------
    ValueError
        If `batch_size` is less than 1.
    InvalidTypeError
        If `batch_size` is not an integer (a TypeError and a ValueError).

    Examples
    --------
    >>> batches = batch_iterable(range(5), 2)
    >>> len(batches), list(batches)
    (3, [[0, 1], [2, 3], [4]])
    >>> list(batch_iterable([(1, 'a'), (2, 'b')], 2, transpose=True))
    [((1, 2), ('a', 'b'))]
    """

    def __init__(self, iterable: Iterable, batch_size: int, transpose: bool = False) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise InvalidTypeError(f"`batch_size` must be an integer, not "
                                   f"{type(batch_size).__name__}: {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, not {batch_size!r}")
        self.iterable = iterable
        self.batch_size = int(batch_size)
        self.transpose = transpose

    def __len__(self) -> int:
        try:
            size = len(self.iterable)
        except TypeError:
            raise TypeError(f"batch_iterable over a {type(self.iterable).__name__} has no "
                            f"length: its elements are only counted by iterating") from None
        return -(-size // self.batch_size)

    def __iter__(self) -> Iterator[Union[list, tuple]]:
        iterator = iter(self.iterable)
        while True:
            batch = list(itertools.islice(iterator, self.batch_size))
            if not batch:
                return
            yield tuple(zip(*batch)) if self.transpose else batch


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
