"""Graphs of lazily evaluated operations.

Operations are declared inside ``with Graph() as graph:`` and nothing is computed until the graph
is called with the operations to fetch and a context of known values. Evaluation is iterative (an
explicit stack instead of recursion), so arbitrarily deep chains of operations evaluate under
Python's default recursion limit.
"""
from __future__ import annotations

import functools
import logging
import operator
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional

from .errors import ForeignOperationError
from .evaluation import EvaluationError, Node, find_operations
from .graph import Graph, _thread_stack

LOGGER = logging.getLogger(__name__)

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
    __hash__ = object.__hash__

    def __init__(self, *args, length: Optional[int] = None, graph: Optional[Graph] = None,
                 name: Optional[str] = None, dependencies: Optional[Iterable] = None,
                 **kwargs) -> None:
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
        for graph, extra in _thread_stack("dependencies"):
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

    def _default_name(self) -> str:
        return type(self).__name__

    def _evaluate(self, *args, **kwargs) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement `_evaluate`")

    def evaluate(self, context: Optional[Mapping] = None, callback: Optional[Callable] = None,
                 **kwargs) -> Any:
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

    def __call__(self, *args, **kwargs) -> Operation:
        return func_op(_call, self, *args, graph=self.graph, **kwargs)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"the length of {self!r} is unknown: pass `length=...` when creating "
                            "it to unpack it")
        return self.length

    def __iter__(self):
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

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        target = state.get("target")
        reference = _opmethod_reference(target) if callable(target) else None
        if reference is not None:
            state["target"] = reference
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def _unary(function: Callable) -> Callable:
    def method(self):
        return func_op(function, self, graph=self.graph)
    return method


def _binary(function: Callable, reflected: bool = False) -> Callable:
    if reflected:
        def method(self, other):
            return func_op(function, other, self, graph=self.graph)
    else:
        def method(self, other):
            return func_op(function, self, other, graph=self.graph)
    return method


_BINARY = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "truediv": operator.truediv,
    "floordiv": operator.floordiv, "mod": operator.mod, "pow": operator.pow,
    "matmul": operator.matmul, "and": operator.and_, "or": operator.or_, "xor": operator.xor,
    "lshift": operator.lshift, "rshift": operator.rshift, "divmod": divmod,
}
for _name, _function in _BINARY.items():
    setattr(Operation, f"__{_name}__", _binary(_function))
    setattr(Operation, f"__r{_name}__", _binary(_function, reflected=True))
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    setattr(Operation, f"__{_name}__", _binary(getattr(operator, _name)))
for _name, _function in {"neg": operator.neg, "pos": operator.pos, "abs": operator.abs,
                         "invert": operator.invert}.items():
    setattr(Operation, f"__{_name}__", _unary(_function))
del _name, _function


def _call(function: Callable, *args, **kwargs) -> Any:
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

    def __init__(self, target: Callable, *args, **kwargs) -> None:
        self.target = target
        super().__init__(*args, **kwargs)

    def _default_name(self) -> str:
        return getattr(self.target, "__name__", None) or type(self.target).__name__

    def _evaluate(self, *args, **kwargs) -> Any:
        return self.target(*args, **kwargs)


def opmethod(target: Optional[Callable] = None, **kwargs) -> Callable:
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
    def wrapper(*args, **inner_kwargs):
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

    def __init__(self, dependencies: Iterable, graph: Optional[Graph] = None) -> None:
        self.graph = Graph.get_active_graph(graph)
        self.dependencies = [self.graph.normalize_operation(dep) for dep in dependencies]

    def __enter__(self) -> control_dependencies:
        _thread_stack("dependencies").append((self.graph, self.dependencies))
        return self

    def __exit__(self, *exc_info) -> None:
        _thread_stack("dependencies").pop()
