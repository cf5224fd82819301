"""The graph: a namespace of named operations that evaluates them on demand.

:class:`Graph` keeps the operations created in it by name, turns fetches and contexts given by
name into operations and hands them to :mod:`pythonflow.evaluation`. It uses operations only
through the evaluator's :class:`~pythonflow.evaluation.Node` base class: :mod:`pythonflow.core`
imports this module, never the other way round (the import of ``Operation`` below is for type
checkers only and does not run).
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from .errors import ForeignOperationError, InvalidTypeError
from .evaluation import Node
from .plans import Plan
from .scopes import graph_stack

if TYPE_CHECKING:  # pragma: no cover - for annotations only, so no import cycle at run time
    from .core import Operation

__all__ = ["Graph"]

# Plans kept per graph; past this many, the cache starts afresh (a program that evaluates ever
# new combinations of fetches and context keys should not grow without bound).
_MAX_PLANS = 256


def _sanitize_name(name: str) -> str:
    cleaned = "".join(char if char.isalnum() or char == "_" else "_" for char in name)
    return cleaned.strip("_") or "operation"


class Graph:
    """
    Dataflow graph of operations.

    Entering the graph with ``with graph:`` makes it the default graph of the current thread, so
    operations created inside the block are added to it. Calling the graph evaluates operations.

    Attributes
    ----------
    operations : dict[str, Operation]
        Operations of the graph keyed by their names.

    Examples
    --------
    >>> import pythonflow as pf
    >>> with pf.Graph() as graph:
    ...     x = pf.placeholder('x')
    ...     y = (x * 2).set_name('y')
    >>> graph('y', x=21)
    42
    """

    def __init__(self) -> None:
        self.operations: dict[str, Operation] = {}
        self._lock = threading.Lock()
        self._count = 0
        self._reset_plans()

    def _reset_plans(self) -> None:
        # Plans keyed by fetches, then by the tuple of context keys. Every change to the graph
        # bumps the version and replaces the cache; a plan made meanwhile is then not stored.
        self._plans: dict = {}
        self._plan_count = 0
        self._version = getattr(self, "_version", 0) + 1

    def _changed(self) -> None:
        """Forget the plans made so far: an operation was added or renamed or its inputs changed."""
        with self._lock:
            self._reset_plans()

    # Graph construction --------------------------------------------------------------------------

    def __enter__(self) -> Graph:
        graph_stack().append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        stack = graph_stack()
        if not stack or stack[-1] is not self:
            raise RuntimeError("graph contexts must be exited in the reverse order of entering")
        stack.pop()

    @staticmethod
    def get_active_graph(graph: Optional[Graph] = None) -> Graph:
        """
        Return `graph` if given, else the default graph of the current thread.

        Parameters
        ----------
        graph : Graph, optional
            Graph to return if not `None`.

        Returns
        -------
        graph : Graph
            The graph operations should be added to.

        Raises
        ------
        ValueError
            If `graph` is `None` and no graph has been entered in this thread.
        """
        if graph is not None:
            return graph
        stack = graph_stack()
        if stack:
            return stack[-1]
        raise ValueError(
            "no default graph in this thread: create operations inside `with pf.Graph() as "
            "graph:` or pass `graph=...`")

    def _next_index(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def _register(self, operation: Operation, name: Optional[str]) -> None:
        if name is None:
            self._assign_automatic_name(operation)
        else:
            self._rename(operation, name)

    def _assign_automatic_name(self, operation: Operation) -> None:
        base = _sanitize_name(operation._default_name())
        with self._lock:
            self._store_name(operation, self._free_name(base, operation._index), automatic=True)

    def _free_name(self, base: str, index: int) -> str:
        # The caller holds the lock.
        name = f"{base}_{index}"
        while name in self.operations:
            self._count += 1
            name = f"{base}_{self._count}"
        return name

    def _store_name(self, operation: Operation, name: str, automatic: bool) -> None:
        # The caller holds the lock.
        old = operation.__dict__.get("_name")
        if old is not None:
            del self.operations[old]
        operation._name = name
        operation._automatic_name = automatic
        self.operations[name] = operation
        self._reset_plans()

    def _rename(self, operation: Operation, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"operation names must be strings, not {type(name).__name__}")
        # Checking and renaming under one lock: otherwise two threads could both find a name
        # free and both take it, leaving one operation named but missing from the graph.
        with self._lock:
            existing = self.operations.get(name)
            if existing is operation:
                return
            if existing is not None:
                if not existing._automatic_name:
                    raise ValueError(f"duplicate operation name '{name}': names must be unique "
                                     "within a graph")
                # Automatic names are not chosen by the user, so the user's explicit name wins.
                base = _sanitize_name(existing._default_name())
                self._store_name(existing, self._free_name(base, existing._index),
                                 automatic=True)
            self._store_name(operation, name, automatic=False)

    # Look-up -------------------------------------------------------------------------------------

    def normalize_operation(self, operation: Union[Operation, str]) -> Operation:
        """
        Return the operation of this graph that `operation` refers to.

        Parameters
        ----------
        operation : Operation or str
            Operation or name of an operation.

        Returns
        -------
        operation : Operation
            The operation.

        Raises
        ------
        KeyError
            If no operation of this graph has the given name.
        ForeignOperationError
            If the operation belongs to a different graph (a ValueError and a RuntimeError).
        InvalidTypeError
            If `operation` is neither an operation nor a string (a TypeError and a ValueError).
        """
        if isinstance(operation, Node):
            if operation.graph is not self:
                raise ForeignOperationError(f"{operation!r} does not belong to this graph")
            return operation
        if isinstance(operation, str):
            try:
                return self.operations[operation]
            except KeyError:
                raise KeyError(f"the graph has no operation named '{operation}'") from None
        raise InvalidTypeError(f"expected an operation or the name of an operation, not "
                               f"{type(operation).__name__}: {operation!r}")

    def __getitem__(self, name: Union[Operation, str]) -> Operation:
        return self.normalize_operation(name)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Node):
            return item.graph is self
        return item in self.operations

    def normalize_context(self, context: Optional[Mapping] = None, **kwargs: Any) -> MutableMapping:
        """
        Return `context` with names replaced by operations and `kwargs` merged into it.

        A mutable mapping is updated in place; any other mapping is copied into a new dictionary.
        Nothing is changed if an error is raised.

        Parameters
        ----------
        context : Mapping, optional
            Values keyed by operations or their names.
        **kwargs
            Further values keyed by operation names.

        Returns
        -------
        context : MutableMapping
            Values keyed by operations.

        Raises
        ------
        InvalidTypeError
            If `context` is not a mapping or has a key that is neither an operation nor a name
            (a TypeError and a ValueError).
        KeyError
            If a name is not the name of an operation of the graph.
        ValueError
            If an operation is given twice: as an operation and by its name, or in the context
            and as a keyword, even with equal values.
        """
        if context is None:
            context = {}
        elif type(context) is not dict and not isinstance(context, MutableMapping):
            if not isinstance(context, Mapping):
                raise InvalidTypeError(f"`context` must be a mapping of operations or names to "
                                       f"values, not {type(context).__name__}")
            context = dict(context)
        # Resolve and check every key before changing anything so that a bad key leaves
        # `context` intact.
        renamed = {}
        for key in context:
            operation = self.normalize_operation(key)
            if operation is not key:
                if operation in context:
                    raise _given_twice(operation, "in the context, as an operation and by its "
                                                  "name")
                renamed[operation] = key
        added = []
        for name, value in kwargs.items():
            operation = self.normalize_operation(name)
            if operation in context or operation in renamed:
                raise _given_twice(operation, "in the context and as a keyword")
            added.append((operation, value))
        for operation, key in renamed.items():
            context[operation] = context.pop(key)
        context.update(added)
        return context

    # Evaluation ----------------------------------------------------------------------------------

    def apply(self, fetches: Union[Operation, str, Iterable[Union[Operation, str]]],
              context: Optional[Mapping] = None, *,
              callback: Optional[Callable] = None, **kwargs: Any) -> Any:
        """
        Evaluate operations.

        Parameters
        ----------
        fetches : Operation, str or sequence of them
            Operation(s) to evaluate.
        context : Mapping, optional
            Known values keyed by operations or names. A mutable mapping is updated in place with
            the value of every operation that is evaluated, so pass a fresh dictionary each time.
        callback : callable, optional
            ``callback(operation, context)`` returning a context manager that wraps the
            evaluation of each operation (see :class:`pythonflow.Profiler`).
        **kwargs
            Further known values keyed by operation names.

        Returns
        -------
        values : object or tuple
            The value of `fetches` if it is a single operation or name, else a tuple of values.

        Notes
        -----
        What an evaluation has to do depends only on the fetches and on which keys the context
        has, so the graph keeps an execution plan for each such combination (see
        :mod:`pythonflow.plans`) and reuses it until an operation is added or renamed. Passing
        contexts with the same keys, in the same order, evaluates at little more than the cost
        of the functions of the graph.
        """
        # The common case costs two dictionary look-ups: a plan made for these fetches and these
        # context keys (see pythonflow.plans) renames the keys in place and evaluates.
        if kwargs or type(context) is not dict:
            context = self.normalize_context(context, **kwargs)
        key = tuple(fetches) if type(fetches) is list else fetches
        try:
            plan = self._plans[key][tuple(context)]
        except (KeyError, TypeError):  # no plan yet, or fetches that cannot key one (a set)
            plan = self._make_plan(fetches, key, context)
        return plan.run(context, callback)

    # Calling the graph is `apply` itself, not a method calling it: that call would be a
    # noticeable part of evaluating a small graph.
    __call__ = apply

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass overriding `apply` is called through its override, as if `__call__`
        # called `self.apply`.
        super().__init_subclass__(**kwargs)
        if "apply" in cls.__dict__ and "__call__" not in cls.__dict__:
            cls.__call__ = cls.__dict__["apply"]

    def _make_plan(self, fetches: Any, key: Any, context: MutableMapping) -> Plan:
        """Make the plan evaluating `fetches` from a context with the keys of `context`."""
        version = self._version
        keys = tuple(context)
        # Checking every key and fetch first leaves the context untouched if one is wrong.
        self.normalize_context(dict.fromkeys(keys))
        known = set()
        renames = []
        for item in keys:
            operation = self.normalize_operation(item)
            known.add(operation)
            if operation is not item:
                renames.append((item, operation))
        single = isinstance(fetches, (str, Node))
        if single:
            outputs = [self.normalize_operation(fetches)]
        elif isinstance(fetches, Iterable):
            outputs = [self.normalize_operation(fetch) for fetch in fetches]
        else:
            raise InvalidTypeError(f"`fetches` must be an operation, a name or a sequence of "
                                   f"them, not {type(fetches).__name__}")
        plan = Plan(renames, outputs, single, known)
        if _can_key_plan(key):
            with self._lock:
                if self._version == version:  # the graph has not changed meanwhile
                    if self._plan_count >= _MAX_PLANS:
                        self._plans = {}
                        self._plan_count = 0
                    self._plans.setdefault(key, {})[keys] = plan
                    self._plan_count += 1
        return plan

    # Pickling ------------------------------------------------------------------------------------

    def __getstate__(self) -> dict:
        # Creation order is a topological order (arguments exist before the operations using
        # them), so pickling operations in that order keeps the pickler's recursion shallow.
        operations = sorted(self.operations.items(), key=lambda item: item[1]._index)
        return {"operations": operations, "count": self._count}

    def __setstate__(self, state: dict) -> None:
        self.operations = dict(state["operations"])
        self._count = state["count"]
        self._lock = threading.Lock()
        self._reset_plans()  # plans are never pickled: they are made again on demand

    def __repr__(self) -> str:
        return f"<pf.Graph with {len(self.operations)} operations>"


def _can_key_plan(key: Any) -> bool:
    # Only names, operations and tuples of them: a generator or an iterator of fetches is
    # consumed by the first evaluation and must not keep a plan alive under its identity.
    if type(key) is tuple:
        return all(type(item) is str or isinstance(item, Node) for item in key)
    return type(key) is str or isinstance(key, Node)


def _given_twice(operation: Operation, how: str) -> ValueError:
    # The usual cause is a context reused after an evaluation filled it (Pythonflow issue #43).
    return ValueError(
        f"operation '{operation.name}' is given twice ({how}). Evaluation fills the context in "
        f"place with every value it computes, so an evaluated context can be read but not given "
        f"new values; pass a fresh dictionary to each evaluation, e.g. "
        f"`graph(fetches, dict(inputs), ...)` with `inputs` kept unevaluated")
