"""Operations beyond function calls: placeholders, branches, error handling and caching."""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import pickle
import tempfile
import threading
from typing import Any, Callable, Generator, Iterable, Mapping, Optional, Union

from .core import Operation, _call, func_op
from .errors import InvalidTypeError
from .evaluation import resolve_lazily

LOGGER = logging.getLogger(__name__)

__all__ = ["assert_", "cache", "cache_file", "call", "conditional", "constant", "identity",
           "import_", "lazy_constant", "placeholder", "str_format", "try_"]


class placeholder(Operation):  # noqa: N801 - lower case to match Pythonflow's public API
    """
    Operation whose value must be given in the context.

    Parameters
    ----------
    name : str, optional
        Name of the placeholder, used to pass its value by name.
    **kwargs
        Keywords of :class:`~pythonflow.Operation`.

    Raises
    ------
    ValueError
        At evaluation if no value was given; the message names the placeholder.
    """

    def __init__(self, name: Optional[str] = None, **kwargs) -> None:
        super().__init__(name=name, **kwargs)

    def _evaluate(self) -> Any:
        raise ValueError(f"missing value for placeholder '{self.name}': pass it in the context, "
                         f"e.g. `graph(fetches, {{'{self.name}': value}})`")


class constant(Operation):  # noqa: N801 - lower case to match Pythonflow's public API
    """
    Operation whose value is fixed.

    Parameters
    ----------
    value : object
        The value, returned as is (operations in it are not evaluated; see :func:`identity`).
    **kwargs
        Keywords of :class:`~pythonflow.Operation`.
    """

    def __init__(self, value: Any, **kwargs) -> None:
        self.value = value
        super().__init__(**kwargs)

    def _evaluate(self) -> Any:
        return self.value


def _identity(value: Any) -> Any:
    return value


def identity(value: Any, **kwargs) -> Operation:
    """
    Create an operation returning the value of `value`.

    Parameters
    ----------
    value : object
        Operation, constant or container of operations.
    **kwargs
        Keywords of :class:`~pythonflow.Operation`, e.g. `name` to give a value a second name.

    Returns
    -------
    operation : func_op
        Operation evaluating to `value`.
    """
    return func_op(_identity, value, **kwargs)


class conditional(Operation):  # noqa: N801 - lower case to match Pythonflow's public API
    """
    Operation evaluating only one of two branches depending on a predicate.

    Parameters
    ----------
    predicate : Operation or object
        Condition deciding the branch.
    x : Operation or object
        Value if `predicate` is true.
    y : Operation or object, optional
        Value if `predicate` is false.
    **kwargs
        Keywords of :class:`~pythonflow.Operation`.
    """

    _lazy = True

    def __init__(self, predicate: Any, x: Any, y: Any = None, **kwargs) -> None:
        super().__init__(predicate, x, y, **kwargs)

    def _evaluate(self, predicate: Any, x: Any, y: Any) -> Generator:
        predicate = yield from resolve_lazily(predicate)
        return (yield from resolve_lazily(x if predicate else y))


class try_(Operation):  # noqa: N801 - lower case to match Pythonflow's public API
    """
    Operation handling the exceptions of another, like a ``try`` statement.

    Parameters
    ----------
    operation : Operation
        Operation to evaluate.
    except_ : list[(type or tuple[type], object)] or Mapping, optional
        Pairs of exception types and the value (or operation, evaluated only when needed) to
        return if `operation` raises an exception of that type; the first match wins.
    finally_ : Operation, optional
        Operation evaluated after `operation` whether it succeeded or not.
    **kwargs
        Keywords of :class:`~pythonflow.Operation`.
    """

    _lazy = True

    def __init__(self, operation: Operation, except_: Union[Iterable, Mapping, None] = None,
                 finally_: Optional[Operation] = None, **kwargs) -> None:
        except_ = list(except_.items() if isinstance(except_, Mapping) else except_ or ())
        for pair in except_:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise TypeError("`except_` must hold (exception type, value) pairs")
        super().__init__(operation, except_, finally_, **kwargs)

    def _evaluate(self, operation: Operation, except_: list, finally_: Any) -> Generator:
        try:
            try:
                value = yield from resolve_lazily(operation)
            except Exception as exc:
                handlers = [handler for types, handler in except_ if isinstance(exc, types)]
                if not handlers:
                    raise
                value = yield from resolve_lazily(handlers[0])
        except Exception:
            yield from resolve_lazily(finally_)
            raise
        yield from resolve_lazily(finally_)
        return value


def _default_key(*values) -> Any:
    # Pythonflow's key: the hash of the argument values, positional then keyword, as one tuple.
    # Unhashable values (lists, arrays) get a digest of their pickle instead of failing.
    try:
        return hash(values)
    except TypeError:
        return hashlib.sha256(pickle.dumps(values, protocol=4)).hexdigest()


class _Cache(Operation):
    _lazy = True

    def __init__(self, operation: Operation, get: Callable, put: Callable, key: Any,
                 **kwargs) -> None:
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


def cache(operation: Operation, get: Callable, put: Callable, key: Any = None,
          **kwargs) -> Operation:
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


class _FileStore:
    """Picklable `get`/`put` pair storing one file per key."""

    def __init__(self, template: str, load: Callable, dump: Callable) -> None:
        self.template = template
        self.load = load
        self.dump = dump

    def filename(self, key: Any) -> str:
        if "{" in self.template:
            return self.template.format(key, key=key)
        return self.template % key

    def get(self, key: Any) -> Any:
        with open(self.filename(key), "rb") as fp:
            return self.load(fp)

    def put(self, key: Any, value: Any) -> None:
        # Write to a temporary file and rename it so that concurrent readers (other workers)
        # never see a partially written file.
        filename = self.filename(key)
        directory = os.path.dirname(os.path.abspath(filename))
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".pf-cache-")
        try:
            with os.fdopen(handle, "wb") as fp:
                self.dump(value, fp)
            os.replace(temporary, filename)
        except BaseException:
            os.unlink(temporary)
            raise


def cache_file(operation: Operation, filename_template: str, load: Optional[Callable] = None,
               dump: Optional[Callable] = None, key: Any = None, **kwargs) -> Operation:
    """
    Cache the value of `operation` in files.

    Parameters
    ----------
    operation : Operation
        Operation whose value is cached.
    filename_template : str
        File name for a key: formatted with ``template.format(key, key=key)`` if it contains
        ``{``, else with ``template % key``.
    load : callable, optional
        ``load(fp)`` reads a value from a binary file; defaults to :func:`pickle.load`.
    dump : callable, optional
        ``dump(value, fp)`` writes a value to a binary file; defaults to :func:`pickle.dump`.
    key : Operation or object, optional
        Key of the value (see :func:`cache`).
    **kwargs
        Keywords of :class:`~pythonflow.Operation`.

    Returns
    -------
    operation : Operation
        Operation evaluating to the cached or computed value.
    """
    store = _FileStore(filename_template, load or pickle.load, dump or pickle.dump)
    return cache(operation, store.get, store.put, key, **kwargs)


def import_(module_name: str, **kwargs) -> Operation:
    """
    Create an operation importing a module when it is evaluated.

    Parameters
    ----------
    module_name : str
        Absolute name of the module, e.g. ``'scipy.ndimage'``.
    **kwargs
        Keywords of :class:`~pythonflow.Operation`.

    Returns
    -------
    module : func_op
        Operation evaluating to the module; its attributes and calls are operations too.

    Examples
    --------
    >>> import pythonflow as pf
    >>> with pf.Graph() as graph:
    ...     math = pf.import_('math')
    ...     root = math.sqrt(16)
    >>> graph(root)
    4.0
    """
    return func_op(importlib.import_module, module_name, **kwargs)


class lazy_constant(Operation):  # noqa: N801 - lower case to match Pythonflow's public API
    """
    Operation calling `target` the first time it is evaluated and returning that value ever after.

    The value is not pickled: an unpickled operation calls `target` again, once.

    Parameters
    ----------
    target : callable
        Function without arguments, e.g. loading a large resource.
    **kwargs
        Keywords of :class:`~pythonflow.Operation`.

    Raises
    ------
    InvalidTypeError
        If `target` is not callable (a TypeError and, as in Pythonflow, a ValueError).
    """

    def __init__(self, target: Callable, **kwargs) -> None:
        # Checked before the operation joins the graph, so a bad target leaves no trace there.
        if not callable(target):
            raise InvalidTypeError(f"`target` of lazy_constant must be callable, not "
                                   f"{type(target).__name__}: {target!r}")
        self.target = target
        super().__init__(**kwargs)

    def _default_name(self) -> str:
        return "lazy_constant"

    def _evaluate(self) -> Any:
        lock = self.__dict__.get("_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_lock", threading.Lock())
        with lock:
            if "_value" not in self.__dict__:
                self._value = self.target()
            return self._value

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_value", None)
        state.pop("_lock", None)
        return state


def _assert(condition: Any, message: Optional[str] = None, *args, value: Any = None) -> Any:
    if not condition:
        if message is None:
            raise AssertionError
        raise AssertionError(message % args if args else message)
    return value


def assert_(condition: Any, message: Optional[str] = None, *args, value: Any = None,
            **kwargs) -> Operation:
    """
    Create an operation raising :class:`AssertionError` if `condition` is false.

    Parameters
    ----------
    condition : Operation or object
        Condition to check.
    message : str, optional
        Message of the error, formatted with ``message % args`` if `args` are given.
    *args
        Arguments of the message.
    value : Operation or object, optional
        Value of the operation if the condition holds.
    **kwargs
        Keywords of :class:`~pythonflow.Operation`.

    Returns
    -------
    operation : func_op
        Operation evaluating to `value`; use it as a dependency to enforce the check.
    """
    return func_op(_assert, condition, message, *args, value=value, **kwargs)


def _str_format(format_string: str, *args, **kwargs) -> str:
    return format_string.format(*args, **kwargs)


def str_format(format_string: Any, *args, **kwargs) -> Operation:
    """
    Create an operation evaluating ``format_string.format(*args, **kwargs)``.

    The keywords `length`, `graph`, `name` and `dependencies` belong to the operation and are
    not available as format fields.

    Parameters
    ----------
    format_string : Operation or str
        Format string.
    *args, **kwargs
        Format arguments.

    Returns
    -------
    operation : func_op
        Operation evaluating to the formatted string.
    """
    return func_op(_str_format, format_string, *args, **kwargs)


def call(func: Any, *args, **kwargs) -> Operation:
    """
    Create an operation calling `func` with `args` and `kwargs`.

    Parameters
    ----------
    func : Operation or callable
        Function to call; may itself be an operation.
    *args, **kwargs
        Arguments of the call.

    Returns
    -------
    operation : func_op
        Operation evaluating to the result of the call.
    """
    return func_op(_call, func, *args, **kwargs)
