"""Iterative evaluation of operations.

The evaluator keeps an explicit stack instead of recursing into the arguments of operations, so
the depth of a graph is limited by memory, not by Python's recursion limit. Lazy operations
(`conditional`, `try_`, `cache`, ...) are generators: they yield the operations they need one at
a time and the evaluator pushes those on its stack, sends the values back and throws errors in.
:class:`~pythonflow.Graph` evaluates through the plans of :mod:`pythonflow.plans`, which hand
lazy operations to :func:`evaluate`.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Generator, MutableMapping, Optional

__all__ = ["EvaluationError", "Node", "annotate_error", "argument_values", "cycle_error",
           "evaluate", "find_operations", "resolve", "resolve_lazily"]


class EvaluationError(RuntimeError):
    """
    Names the operation that failed and where it was created.

    It is never raised by itself: the exception raised by a failing operation propagates with
    its original type and an :class:`EvaluationError` as its ``__cause__``.

    Attributes
    ----------
    operation_name : str
        Name of the operation that failed.
    location : tuple(str, int, str) or None
        File name, line number and function where the operation was created.
    """

    def __init__(self, message: str, operation_name: Optional[str] = None,
                 location: Optional[tuple] = None) -> None:
        super().__init__(message)
        self.operation_name = operation_name
        self.location = location


class Node:
    """
    Base of everything the evaluator can evaluate (see :class:`pythonflow.Operation`).

    Subclasses provide ``_inputs`` (operations to evaluate first), ``_lazy``, ``_evaluate``,
    ``args``/``kwargs`` with ``_arg_slots``/``_kwarg_slots`` (which arguments hold operations),
    ``_location`` and ``name``.
    """

    __slots__ = ()


_CONTAINERS = (tuple, list, dict, set, frozenset, slice)


def find_operations(value: Any) -> list:
    """
    Return the operations in `value`, looking inside tuples, lists, dicts, sets and slices.

    Parameters
    ----------
    value : object
        Value to search.

    Returns
    -------
    operations : list[Operation]
        Operations found, without duplicates, in the order found.
    """
    if isinstance(value, Node):
        return [value]
    if not isinstance(value, _CONTAINERS):
        return []
    found = {}
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, Node):
            found[item] = None
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, slice):
            pending.extend((item.start, item.stop, item.step))
        elif isinstance(item, _CONTAINERS):
            pending.extend(item)
    return list(found)


def resolve(value: Any, values: MutableMapping) -> Any:
    """
    Return `value` with every operation replaced by its entry in `values`.

    Parameters
    ----------
    value : object
        Operation or a (nested) container of them.
    values : Mapping
        Values keyed by operations.

    Returns
    -------
    resolved : object
        A copy of the containers holding values instead of operations.
    """
    if isinstance(value, Node):
        return values[value]
    kind = type(value)
    if kind is list:
        return [resolve(item, values) for item in value]
    if kind is dict:
        return {resolve(key, values): resolve(item, values) for key, item in value.items()}
    if isinstance(value, tuple):
        items = [resolve(item, values) for item in value]
        return kind(*items) if hasattr(kind, "_fields") else kind(items)
    if isinstance(value, (list, dict)):
        return _rebuild_subclass(value, values)
    if kind is slice:
        return slice(resolve(value.start, values), resolve(value.stop, values),
                     resolve(value.step, values))
    if isinstance(value, (set, frozenset)):
        return kind(resolve(item, values) for item in value)
    return value


def _rebuild_subclass(value: Any, values: MutableMapping) -> Any:
    # The constructors of subclasses do not take what `list`/`dict` take: `Counter(pairs)` counts
    # the pairs and `defaultdict(pairs)` wants a factory first. A shallow copy keeps the type and
    # its state (`default_factory`, instance attributes); then only the items are replaced.
    rebuilt = copy.copy(value)
    if isinstance(value, dict):
        items = [(resolve(key, values), resolve(item, values)) for key, item in value.items()]
        rebuilt.clear()
        for key, item in items:
            rebuilt[key] = item
    else:
        rebuilt[:] = [resolve(item, values) for item in value]
    return rebuilt


def resolve_lazily(value: Any) -> Generator:
    """
    Generator for lazy operations: ``resolved = yield from resolve_lazily(value)``.

    Parameters
    ----------
    value : object
        Operation, constant or container of operations.

    Returns
    -------
    resolved : object
        `value` with the operations in it replaced by their values.
    """
    if isinstance(value, Node):
        return (yield value)
    operations = find_operations(value)
    if not operations:
        return value
    values = {}
    for operation in operations:
        values[operation] = yield operation
    return resolve(value, values)


def _describe(operation: Node) -> EvaluationError:
    location = operation._location
    if location is None:
        where = "an unknown location"
    else:
        where = 'File "{}", line {}, in {}'.format(*location)
    message = f"failed to evaluate {operation!r} defined at {where}"
    return EvaluationError(message, operation.name, location)


def annotate_error(exc: BaseException, operation: Node) -> None:
    """
    Make an :class:`EvaluationError` naming `operation` the cause of `exc`.

    The user keeps catching the original exception type; the operation that raised it is named
    by its cause. An existing cause or context is kept one link further down the chain.

    Parameters
    ----------
    exc : BaseException
        Error raised by evaluating `operation`; changed in place.
    operation : Operation
        The operation that failed.
    """
    error = _describe(operation)
    error.__cause__ = exc.__cause__
    error.__context__ = exc.__context__
    error.__suppress_context__ = exc.__suppress_context__
    exc.__cause__ = error
    exc.__suppress_context__ = True


def argument_values(operation: Node, context: MutableMapping) -> tuple:
    """Return ``(args, kwargs)`` of `operation` with their values from `context`."""
    args = operation.args
    if operation._arg_slots:
        args = list(args)
        for index in operation._arg_slots:
            args[index] = resolve(args[index], context)
    kwargs = operation.kwargs
    if operation._kwarg_slots:
        kwargs = dict(kwargs)
        for key in operation._kwarg_slots:
            kwargs[key] = resolve(kwargs[key], context)
    return args, kwargs


class _Suspended:
    """A lazy operation waiting for the value of `awaited`."""

    __slots__ = ("generator", "awaited", "manager", "thrown")

    def __init__(self, generator: Generator, manager: Any) -> None:
        self.generator = generator
        self.awaited = None
        self.manager = manager
        self.thrown = []  # errors thrown in; re-raising one later is not a new failure


class _Passthrough(Exception):
    """A lazy operation let an error of an operation it evaluated propagate."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error


def cycle_error(operation: Node) -> RuntimeError:
    """Return the :class:`RuntimeError` saying that `operation` depends on itself."""
    return RuntimeError(f"{operation!r} depends on itself")


def evaluate(operations: list, context: MutableMapping,
             callback: Optional[Callable] = None) -> None:
    """
    Evaluate `operations` and everything they need, storing every value in `context`.

    Parameters
    ----------
    operations : list[Operation]
        Operations to evaluate.
    context : MutableMapping
        Known values keyed by operations; updated in place.
    callback : callable, optional
        ``callback(operation, context)`` returning a context manager wrapping each evaluation.
    """
    # The top of `stack` is the operation to work on. It is popped once its value is in
    # `context`; until then its missing inputs, or what a lazy operation asks for, go on top.
    stack = list(reversed(operations))
    expanded = set()  # operations whose inputs have been pushed; seeing one again means a cycle
    suspended = {}  # lazy operations currently running, keyed by operation
    while stack:
        operation = stack[-1]
        if operation in context:
            stack.pop()
            continue
        inputs = operation._inputs
        if inputs:
            missing = [item for item in inputs if item not in context]
            if missing:  # evaluate them first, then come back to this operation
                if operation in expanded:
                    raise cycle_error(operation)
                expanded.add(operation)
                missing.reverse()  # the first input is evaluated first
                stack.extend(missing)
                continue
        error = _step(operation, context, callback, suspended, stack)
        if error is not None:
            # Raising here, outside the `except` block that caught the error, keeps the error's
            # context as the operation set it.
            stack.pop()
            expanded.discard(operation)
            suspended.pop(operation, None)
            if not _unwind(error, context, suspended, stack, expanded):
                raise error


def _step(operation: Node, context: MutableMapping, callback: Optional[Callable],
          suspended: dict, stack: list) -> Optional[Exception]:
    """Run or resume `operation`, whose inputs have values; return the error it raised."""
    try:
        if operation._lazy:
            _resume(operation, context, callback, suspended, stack)
            return None
        args, kwargs = argument_values(operation, context)
        if callback is None:
            value = operation._evaluate(*args, **kwargs)
        else:
            value = None  # stays None if the callback's context manager swallows the error
            with callback(operation, context):
                value = operation._evaluate(*args, **kwargs)
        context[operation] = value
    except _Passthrough as passthrough:
        return passthrough.error
    except Exception as exc:  # handed to the lazy operations below unless one handles it
        annotate_error(exc, operation)
        return exc
    stack.pop()
    return None


def _resume(operation: Node, context: MutableMapping, callback: Optional[Callable],
            suspended: dict, stack: list) -> None:
    """Start a lazy operation or send it the value it asked for."""
    state = suspended.get(operation)
    if state is None:
        state = _start(operation, context, callback)
        argument = None
    elif state.awaited in context:
        argument = context[state.awaited]
    else:  # what it asked for is above it on the stack, so it asked for itself
        raise cycle_error(operation)
    _advance(operation, state, context, stack, suspended, state.generator.send, argument)


def _start(operation: Node, context: MutableMapping, callback: Optional[Callable]) -> _Suspended:
    generator = operation._evaluate(*operation.args, **operation.kwargs)
    manager = None
    if callback is not None:
        manager = callback(operation, context)
        manager.__enter__()
    return _Suspended(generator, manager)


def _finish(state: _Suspended, exc: Optional[BaseException] = None) -> None:
    if state.manager is not None:
        if exc is None:
            state.manager.__exit__(None, None, None)
        else:
            state.manager.__exit__(type(exc), exc, exc.__traceback__)


def _advance(operation: Node, state: _Suspended, context: MutableMapping, stack: list,
             suspended: dict, method: Callable, argument: Any) -> None:
    """Resume a lazy operation; push what it asks for or store its value when it returns."""
    suspended.pop(operation, None)
    try:
        requested = method(argument)
        if not isinstance(requested, Node):
            state.generator.close()
            raise TypeError(f"lazy {operation!r} must yield operations, not "
                            f"{type(requested).__name__}")
    except StopIteration as stop:
        _finish(state)
        context[operation] = stop.value
        stack.pop()
        return
    except Exception as exc:
        _finish(state, exc)
        if any(exc is thrown for thrown in state.thrown):
            raise _Passthrough(exc) from None
        raise
    state.awaited = requested
    suspended[operation] = state
    stack.append(requested)


def _unwind(error: Exception, context: MutableMapping, suspended: dict, stack: list,
            expanded: set) -> bool:
    """Pop the stack down to a lazy operation that handles `error`; False if none does."""
    while stack:
        operation = stack.pop()
        expanded.discard(operation)
        state = suspended.pop(operation, None)
        if state is None:
            continue
        stack.append(operation)
        state.thrown.append(error)
        try:
            _advance(operation, state, context, stack, suspended, state.generator.throw, error)
            return True
        except _Passthrough as passthrough:
            error = passthrough.error
        except Exception as exc:  # the lazy operation raised an error of its own
            annotate_error(exc, operation)
            error = exc
        stack.pop()
    return False
