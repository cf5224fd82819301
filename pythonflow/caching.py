"""Caching the values of operations: in any store (:func:`cache`) or in files (:func:`cache_file`).

A cached operation looks its key up first and evaluates the wrapped operation only on a miss, so
an expensive step (decoding, resizing, feature extraction) runs once per distinct input even
across evaluations, processes and, with files, runs of the program.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import tempfile
from typing import Any, Callable, Generator, Optional

from .core import Operation, func_op
from .evaluation import resolve_lazily

LOGGER = logging.getLogger(__name__)

__all__ = ["cache", "cache_file"]


def _default_key(*values: Any) -> Any:
    # Pythonflow's key: the hash of the argument values, positional then keyword, as one tuple.
    # Unhashable values (lists, arrays) get a digest of their pickle instead of failing.
    try:
        return hash(values)
    except TypeError:
        return hashlib.sha256(pickle.dumps(values, protocol=4)).hexdigest()


class _Cache(Operation):
    _lazy = True

    def __init__(self, operation: Operation, get: Callable, put: Callable, key: Any,
                 **kwargs: Any) -> None:
        self.get = get
        self.put = put
        super().__init__(operation, key, **kwargs)

    def _default_name(self) -> str:
        return "cache"

    def _evaluate(self, operation: Operation, key: Any) -> Generator:
        key = yield from resolve_lazily(key)
        try:
            value = self.get(key)
        except (KeyError, FileNotFoundError):
            LOGGER.debug("cache miss for key %r of %r", key, self)
        else:
            return value
        value = yield from resolve_lazily(operation)
        self.put(key, value)
        return value


def cache(operation: Operation, get: Callable[[Any], Any], put: Callable[[Any, Any], Any],
          key: Any = None, **kwargs: Any) -> Operation:
    """
    Cache the value of `operation`: evaluate it only if `get` does not have it.

    Parameters
    ----------
    operation : Operation
        Operation whose value is cached.
    get : callable
        ``get(key)`` returns the cached value or raises :class:`KeyError` or
        :class:`FileNotFoundError` if there is none.
    put : callable
        ``put(key, value)`` stores a value.
    key : Operation or object, optional
        Key of the value. Defaults, as in Pythonflow, to ``hash(values)`` where `values` is the
        tuple of the values of the positional then the keyword arguments of `operation`; if
        they are not hashable, to a SHA-256 digest of their pickle. Give a key if several cached
        operations share one store, or if the store outlives the process: Python randomises the
        hashes of strings and bytes in each process unless ``PYTHONHASHSEED`` is set.
    **kwargs
        Keywords of :class:`~pythonflow.Operation`.

    Returns
    -------
    operation : Operation
        Operation evaluating to the cached or computed value.
    """
    if key is None:
        key = func_op(_default_key, *operation.args, *operation.kwargs.values(),
                      graph=operation.graph)
    return _Cache(operation, get, put, key, graph=operation.graph, **kwargs)


def _pickle_load(filename: str) -> Any:
    with open(filename, "rb") as fp:
        return pickle.load(fp)


def _pickle_dump(value: Any, filename: str) -> None:
    with open(filename, "wb") as fp:
        pickle.dump(value, fp)


class _FileStore:
    """Picklable `get`/`put` pair storing one file per key."""

    def __init__(self, template: str, load: Callable[[str], Any],
                 dump: Callable[[Any, str], Any]) -> None:
        self.template = template
        self.load = load
        self.dump = dump

    def filename(self, key: Any) -> str:
        if "{" in self.template:
            return self.template.format(key, key=key)
        return self.template % key

    def get(self, key: Any) -> Any:
        return self.load(self.filename(key))

    def put(self, key: Any, value: Any) -> None:
        # `dump` writes into a private directory next to the file, under the file's own base
        # name, and the result is moved into place in one step: concurrent readers (other
        # workers) never see a partial file, and a `dump` that derives a name from the one it is
        # given (numpy.save adds '.npy' to a name without it) derives the same name as it would
        # from the final one.
        filename = self.filename(key)
        directory, basename = os.path.split(os.path.abspath(filename))
        staging = tempfile.mkdtemp(dir=directory, prefix=".pf-cache-")
        try:
            self.dump(value, os.path.join(staging, basename))
            written = os.listdir(staging)
            if written != [basename]:
                raise ValueError(
                    f"`dump(value, filename)` of cache_file must write `filename` "
                    f"('{basename}') and nothing else, but it wrote {sorted(written)}; with "
                    f"numpy.save, end the file name template with '.npy'")
            os.replace(os.path.join(staging, basename), filename)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def cache_file(operation: Operation, filename_template: str,
               load: Optional[Callable[[str], Any]] = None,
               dump: Optional[Callable[[Any, str], Any]] = None, key: Any = None,
               **kwargs: Any) -> Operation:
    """
    Cache the value of `operation` in files, one per key.

    Parameters
    ----------
    operation : Operation
        Operation whose value is cached.
    filename_template : str
        File name for a key: formatted with ``template.format(key, key=key)`` if it contains
        ``{``, else with ``template % key``.
    load : callable, optional
        ``load(filename)`` reads the value from the file of that name and raises
        :class:`FileNotFoundError` if there is none, e.g. :func:`numpy.load`; defaults to
        unpickling the file.
    dump : callable, optional
        ``dump(value, filename)`` writes the value to the file of that name (for numpy, a
        function calling ``numpy.save(filename, value)`` with a template ending in ``.npy``);
        defaults to pickling it. The
        name it is given has the file's base name but lies in a temporary directory next to
        the file, which is moved into place once written, so that concurrent readers never
        see a partial file.
    key : Operation or object, optional
        Key of the value (see :func:`cache`).
    **kwargs
        Keywords of :class:`~pythonflow.Operation`.

    Returns
    -------
    operation : Operation
        Operation evaluating to the cached or computed value.

    Raises
    ------
    ValueError
        At evaluation, if `dump` writes anything but the file name it is given.
    """
    store = _FileStore(filename_template, load or _pickle_load, dump or _pickle_dump)
    return cache(operation, store.get, store.put, key, **kwargs)
