"""Operations: the nodes of a graph, created by calling functions and Python's operators.

:class:`Operation` is the base class; :class:`func_op` calls a function with the values of its
arguments, :func:`opmethod` turns a function into one that creates such operations, and
:class:`control_dependencies` orders side effects. Nothing is computed when an operation is
created: :class:`~pythonflow.Graph` evaluates operations when it is called.
"""
from __future__ import annotations

import functools
import operator
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, Optional, Union

from .errors import ForeignOperationError
from .evaluation import EvaluationError, Node, find_operations
from .graph import Graph
from .scopes import dependency_stack

__all__ = ["EvaluationError", "Graph", "Operation", "control_dependencies", "func_op", "opmethod"]

# Frames in these files are library internals; errors point at the first frame outside them.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _caller_location() -> Optional[tuple]:
    # Walking frames and keeping three small values is far cheaper than `traceback.extract_stack`,
    # which matters because this runs for every operation that is created.
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    if frame is None:
        return None
    return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name


def _unary(function: Callable[[Any], Any]) -> Callable[[Operation], Operation]:
    def method(self: Operation) -> Operation:
        return func_op(function, self, graph=self.graph)
    return _named(method, function, "", "self")


def _binary(function: Callable[[Any, Any], Any]) -> Callable[[Operation, Any], Operation]:
    def method(self: Operation, other: Any) -> Operation:
        return func_op(function, self, other, graph=self.graph)
    return _named(method, function, "", "self, other")


def _reflected(function: Callable[[Any, Any], Any]) -> Callable[[Operation, Any], Operation]:
    # `1 - x` calls `x.__rsub__(1)`, which must evaluate `1 - x`, not `x - 1`.
    def method(self: Operation, other: Any) -> Operation:
        return func_op(function, other, self, graph=self.graph)
    return _named(method, function, "r", "other, self")


def _named(method: Callable, function: Callable, prefix: str, arguments: str) -> Callable:
    # Gives an operator method the name and docstring it would have if written out with `def`.
    name = f"__{prefix}{function.__name__.strip('_')}__"
    source = "" if function is divmod else "operator."
    method.__name__ = name
    method.__qualname__ = f"Operation.{name}"
    method.__doc__ = f"Return an operation evaluating ``{source}{function.__name__}({arguments})``."
    return method


class Operation(Node):
    """
    Base class of operations: nodes of a graph whose value is computed on demand.

    Operations overload Python's operators, item access, attribute access and calls, each
    creating a new operation. Attribute names starting with an underscore are not turned into
    operations so that ``repr``, ``copy``, ``pickle`` and IPython can probe operations safely.

    Subclasses implement ``_evaluate(*args, **kwargs)``, which receives the evaluated arguments.
    Subclasses that set the class attribute ``_lazy = True`` receive the arguments unevaluated
    instead; their ``_evaluate`` must be a generator that yields each operation whose value it
    needs and is sent that value (or has the operation's exception thrown into it).

    Parameters
    ----------
    *args
        Positional arguments; operations, also inside tuples, lists, dicts, sets and slices, are
        replaced by their values.
    length : int, optional
        Number of elements of the value, enabling unpacking ``a, b = operation``.
    graph : Graph, optional
        Graph to add the operation to; defaults to the default graph of this thread.
    name : str, optional
        Unique name of the operation within the graph; generated if not given.
    dependencies : list[Operation or str], optional
        Operations to evaluate before this one, e.g. for their side effects.
    **kwargs
        Keyword arguments, treated like `args`.
    """

    _lazy = False
    # Makes numpy return NotImplemented from its operators so that ours are used instead.
    __array_ufunc__ = None

    def __init__(self, *args: Any, length: Optional[int] = None, graph: Optional[Graph] = None,
                 name: Optional[str] = None,
                 dependencies: Optional[Iterable[Union[Operation, str]]] = None,
                 **kwargs: Any) -> None:
        # `graph` is set first so that pickling an operation pickles its graph, which holds all
        # operations in creation order, before anything else.
        self.graph = graph = Graph.get_active_graph(graph)
        self.args = args
        self.kwargs = kwargs
        self.length = length
        self.dependencies = self._collect_dependencies(dependencies)
        self._location = _caller_location()
        self._index = graph._next_index()
        self._prepare()
        graph._register(self, name)

    def _collect_dependencies(self, dependencies: Optional[Iterable]) -> list:
        collected = [] if dependencies is None else list(dependencies)
        for graph, extra in dependency_stack():
            if graph is self.graph:
                collected.extend(extra)
        return [self.graph.normalize_operation(dependency) for dependency in collected]

    def _prepare(self) -> None:
        # Work out once which arguments hold operations so evaluation touches only those.
        inputs = dict.fromkeys(self.dependencies)
        self._arg_slots = []
        self._kwarg_slots = []
        for slots, items in ((self._arg_slots, enumerate(self.args)),
                             (self._kwarg_slots, self.kwargs.items())):
            for key, value in items:
                found = find_operations(value)
                if found:
                    slots.append(key)
                    inputs.update(dict.fromkeys(found))
        for operation in inputs:
            if operation.graph is not self.graph:
                raise ForeignOperationError(
                    f"{operation!r} belongs to a different graph than the new "
                    f"{type(self).__name__}: operations of two graphs cannot be combined")
        # Lazy operations ask for their arguments while they run.
        self._inputs = tuple(self.dependencies if self._lazy else inputs)
        if "_name" in self.__dict__:  # prepared again after joining the graph: plans are stale
            self.graph._changed()

    def _default_name(self) -> str:
        return type(self).__name__

    def _evaluate(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement `_evaluate`")

    def evaluate(self, context: Optional[Mapping] = None, callback: Optional[Callable] = None,
                 **kwargs: Any) -> Any:
        """
        Evaluate this operation in its graph.

        Parameters
        ----------
        context : Mapping, optional
            Known values, updated in place (see :meth:`Graph.apply`).
        callback : callable, optional
            Callback wrapping the evaluation of each operation.
        **kwargs
            Further known values keyed by operation names.

        Returns
        -------
        value : object
            Value of the operation.
        """
        return self.graph.apply(self, context, callback=callback, **kwargs)

    # Names ---------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """str: Unique name of the operation within its graph."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self.set_name(value)

    def set_name(self, name: str) -> Operation:
        """
        Rename the operation.

        Parameters
        ----------
        name : str
            New name, unique within the graph.

        Returns
        -------
        operation : Operation
            This operation, for chaining.

        Raises
        ------
        ValueError
            If another operation of the graph already has that name.
        """
        self.graph._rename(self, name)
        return self

    def __repr__(self) -> str:
        return f"<pf.{type(self).__name__} '{self.__dict__.get('_name')}'>"

    # Python protocols ----------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Operation:
        # Underscore names are protocol probes (copy, pickle, IPython, numpy), never user
        # attributes; `graph` is missing only while unpickling.
        if name.startswith("_") or "graph" not in self.__dict__:
            raise AttributeError(name)
        return func_op(getattr, self, name, graph=self.graph)

    def __getitem__(self, key: Any) -> Operation:
        return func_op(operator.getitem, self, key, graph=self.graph)

    def __call__(self, *args: Any, **kwargs: Any) -> Operation:
        return func_op(_call, self, *args, graph=self.graph, **kwargs)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"the length of {self!r} is unknown: pass `length=...` when creating "
                            "it to unpack it")
        return self.length

    def __iter__(self) -> Iterator[Operation]:
        for index in range(len(self)):
            yield self[index]

    def __bool__(self) -> bool:
        # An operation is truthy, as in Pythonflow: `if operation:` and `operation or default`
        # test for an operation, not its future value (use `pf.conditional` to branch on that).
        # Without this, Python would fall back to `__len__`, which fails for unknown lengths.
        return True

    def __reversed__(self) -> Operation:
        # Without this, `reversed` would index the operation with `__len__`, which needs a length.
        return func_op(reversed, self, graph=self.graph)

    # Operators: each creates an operation applying the operator to the values ------------------

    __add__ = _binary(operator.add)
    __sub__ = _binary(operator.sub)
    __mul__ = _binary(operator.mul)
    __truediv__ = _binary(operator.truediv)
    __floordiv__ = _binary(operator.floordiv)
    __mod__ = _binary(operator.mod)
    __divmod__ = _binary(divmod)
    __pow__ = _binary(operator.pow)
    __matmul__ = _binary(operator.matmul)
    __lshift__ = _binary(operator.lshift)
    __rshift__ = _binary(operator.rshift)
    __and__ = _binary(operator.and_)
    __xor__ = _binary(operator.xor)
    __or__ = _binary(operator.or_)

    __radd__ = _reflected(operator.add)
    __rsub__ = _reflected(operator.sub)
    __rmul__ = _reflected(operator.mul)
    __rtruediv__ = _reflected(operator.truediv)
    __rfloordiv__ = _reflected(operator.floordiv)
    __rmod__ = _reflected(operator.mod)
    __rdivmod__ = _reflected(divmod)
    __rpow__ = _reflected(operator.pow)
    __rmatmul__ = _reflected(operator.matmul)
    __rlshift__ = _reflected(operator.lshift)
    __rrshift__ = _reflected(operator.rshift)
    __rand__ = _reflected(operator.and_)
    __rxor__ = _reflected(operator.xor)
    __ror__ = _reflected(operator.or_)

    # Comparisons need no reflected forms: Python tries `y > x` itself when `x < y` is not
    # supported. Since `==` builds an operation, operations hash by identity.
    __lt__ = _binary(operator.lt)
    __le__ = _binary(operator.le)
    __eq__ = _binary(operator.eq)
    __ne__ = _binary(operator.ne)
    __gt__ = _binary(operator.gt)
    __ge__ = _binary(operator.ge)
    __hash__ = object.__hash__

    __neg__ = _unary(operator.neg)
    __pos__ = _unary(operator.pos)
    __abs__ = _unary(operator.abs)
    __invert__ = _unary(operator.invert)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        target = state.get("target")
        reference = _opmethod_reference(target) if callable(target) else None
        if reference is not None:
            state["target"] = reference
        return state


def _call(function: Callable, *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)


class func_op(Operation):  # noqa: N801 - lower case to match Pythonflow's public API
    """
    Operation calling a function with the values of its arguments.

    Parameters
    ----------
    target : callable
        Function to call; it must be picklable (e.g. not a lambda) for the graph to pickle.
    *args, **kwargs
        Arguments of `target` (operations are replaced by their values) and the keywords of
        :class:`Operation` (`length`, `graph`, `name`, `dependencies`).

    Examples
    --------
    >>> import pythonflow as pf
    >>> with pf.Graph() as graph:
    ...     total = pf.func_op(sum, [1, 2, pf.constant(3)])
    >>> graph(total)
    6
    """

    def __init__(self, target: Callable, *args: Any, **kwargs: Any) -> None:
        self.target = target
        super().__init__(*args, **kwargs)

    def _default_name(self) -> str:
        return getattr(self.target, "__name__", None) or type(self.target).__name__

    def _evaluate(self, *args: Any, **kwargs: Any) -> Any:
        return self.target(*args, **kwargs)

    # Tells evaluation plans (pythonflow.plans) that they may call `target` directly; subclasses
    # overriding `_evaluate` do not inherit the mark.
    _evaluate._pf_calls_target = True


def opmethod(target: Optional[Callable] = None, **kwargs: Any) -> Callable:
    """
    Decorate a function so that calling it creates a :class:`func_op` instead.

    Usable as ``@opmethod`` or with :class:`Operation` keywords, e.g. ``@opmethod(length=2)``.

    Parameters
    ----------
    target : callable, optional
        Function to decorate.
    **kwargs
        Keywords passed to every :class:`func_op` created, e.g. `length`.

    Returns
    -------
    wrapper : callable
        Function creating operations (or a decorator if `target` is not given).
    """
    if target is None:
        return functools.partial(opmethod, **kwargs)

    @functools.wraps(target)
    def wrapper(*args: Any, **inner_kwargs: Any) -> func_op:
        return func_op(target, *args, **{**kwargs, **inner_kwargs})

    wrapper._pf_opmethod = True
    return wrapper


class _Unwrap:
    # Pickles the decorated module attribute by reference and unwraps it when loading, because
    # the undecorated function itself cannot be found by name.
    def __init__(self, wrapper: Callable) -> None:
        self.wrapper = wrapper

    def __reduce__(self):
        return operator.attrgetter("__wrapped__"), (self.wrapper,)


def _opmethod_reference(target: Callable) -> Optional[_Unwrap]:
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    found = module
    for part in getattr(target, "__qualname__", "<locals>").split("."):
        found = getattr(found, part, None)
    if (found is not target and getattr(found, "_pf_opmethod", False)
            and getattr(found, "__wrapped__", None) is target):
        return _Unwrap(found)
    return None


class control_dependencies:  # noqa: N801 - lower case to match Pythonflow's public API
    """
    Context manager adding dependencies to every operation created inside it.

    Parameters
    ----------
    dependencies : list[Operation or str]
        Operations to evaluate before any operation created in the block.
    graph : Graph, optional
        Graph the dependencies apply to; defaults to the default graph of this thread.

    Examples
    --------
    >>> import pythonflow as pf
    >>> with pf.Graph() as graph:
    ...     x = pf.placeholder('x')
    ...     check = pf.assert_(x > 0, 'x must be positive')
    ...     with pf.control_dependencies([check]):
    ...         y = (x * 2).set_name('y')
    >>> graph('y', x=3)
    6
    """

    def __init__(self, dependencies: Iterable[Union[Operation, str]],
                 graph: Optional[Graph] = None) -> None:
        self.graph = Graph.get_active_graph(graph)
        self.dependencies = [self.graph.normalize_operation(dep) for dep in dependencies]

    def __enter__(self) -> control_dependencies:
        dependency_stack().append((self.graph, self.dependencies))
        return self

    def __exit__(self, *exc_info: object) -> None:
        dependency_stack().pop()
