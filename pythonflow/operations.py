"""The operations of a graph beyond function calls.

Inputs and values (:class:`placeholder`, :class:`constant`, :func:`identity`,
:class:`lazy_constant`), control flow that evaluates only what it needs (:class:`conditional`,
:class:`try_`) and small helpers (:func:`import_`, :func:`assert_`, :func:`str_format`,
:func:`call`). Caching is in :mod:`pythonflow.caching`; :func:`cache` and :func:`cache_file` are
importable from here too, where Spotify's Pythonflow defines them.
"""
from __future__ import annotations

import importlib
import threading
from typing import Any, Callable, Generator, Iterable, Mapping, Optional, Union

from .caching import cache, cache_file
from .core import Operation, _call, func_op
from .errors import InvalidTypeError
from .evaluation import resolve_lazily

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

    def __init__(self, name: Optional[str] = None, **kwargs: Any) -> None:
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

    def __init__(self, value: Any, **kwargs: Any) -> None:
        self.value = value
        super().__init__(**kwargs)

    def _evaluate(self) -> Any:
        return self.value


def _identity(value: Any) -> Any:
    return value


def identity(value: Any, **kwargs: Any) -> Operation:
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

    def __init__(self, predicate: Any, x: Any, y: Any = None, **kwargs: Any) -> None:
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
                 finally_: Optional[Operation] = None, **kwargs: Any) -> None:
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


def import_(module_name: str, **kwargs: Any) -> Operation:
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

    def __init__(self, target: Callable, **kwargs: Any) -> None:
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


def _assert(condition: Any, message: Optional[str] = None, *args: Any, value: Any = None) -> Any:
    if not condition:
        if message is None:
            raise AssertionError
        raise AssertionError(message % args if args else message)
    return value


def assert_(condition: Any, message: Optional[str] = None, *args: Any, value: Any = None,
            **kwargs: Any) -> Operation:
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


def _str_format(format_string: str, *args: Any, **kwargs: Any) -> str:
    return format_string.format(*args, **kwargs)


def str_format(format_string: Any, *args: Any, **kwargs: Any) -> Operation:
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


def call(func: Any, *args: Any, **kwargs: Any) -> Operation:
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
