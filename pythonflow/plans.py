"""Execution plans: what an evaluation of given fetches from given context keys has to do.

Evaluating a graph means finding the operations the fetches need that the context does not
give, putting them in order and calling each one with the values of its arguments. None of that
depends on the values, only on the graph, the fetches and which keys the context has, so
:class:`~pythonflow.Graph` makes a :class:`Plan` once for each such combination and reuses it
until the graph changes. A plan holds:

* the renames turning the names used as context keys into operations (the context is still
  updated in place, as in Pythonflow);
* the operations to evaluate, in the order the iterative evaluator would evaluate them, each with
  a function calling it with the values of its arguments (see :mod:`pythonflow.callers`);
* for each lazy operation (:class:`~pythonflow.conditional`, :class:`~pythonflow.try_`, caches),
  which decides at run time what it needs, the operations each of its possible requests needs
  beyond what the plan has evaluated before it. The plan runs the lazy operation's generator,
  evaluates what it asks for from those lists, skipping what is already known, and throws
  errors in. Operations after a lazy one are skipped if it has evaluated them already.

A plan reads the functions and arguments of its operations when it specialises. Operations do
not change once created; code that changes one anyway (its ``args``, say) must prepare it again
with ``operation._prepare()``, which, like adding or renaming an operation, drops the graph's
plans.
"""
from __future__ import annotations

from typing import Any, Callable, Container, Iterable, Optional

from .callers import call_generic, compile_plan, make_caller
from .evaluation import Node, annotate_error, cycle_error, evaluate, find_operations

__all__ = ["GENERIC_RUNS", "MAX_COMPILED_STEPS", "MAX_REQUEST_STEPS", "Plan", "order_operations",
           "run_steps"]

# Evaluations a plan runs with generic calls before it specialises (see `Plan`).
GENERIC_RUNS = 1
# Plans of at most this many renames and operations, none of them lazy, run as one generated
# function; longer ones would take longer to compile than the loop saves.
MAX_COMPILED_STEPS = 64
# Lazy operations whose requests share much of the graph would repeat it in each of their lists:
# past this many steps in all, the remaining ones are left to the evaluator.
MAX_REQUEST_STEPS = 100_000


def order_operations(outputs: Iterable, known: Container, available: Container = ()) -> list:
    """
    Return the operations that evaluating `outputs` needs, each after its inputs.

    Parameters
    ----------
    outputs : list[Operation]
        Operations to evaluate.
    known : Container[Operation]
        Operations whose values are given; neither they nor what only they need are returned.
    available : Container[Operation], optional
        Further operations that will have values, treated like `known`.

    Returns
    -------
    order : list[Operation]
        The operations in the order :func:`pythonflow.evaluation.evaluate` evaluates them:
        depth first, the inputs of each operation in their order, without repetitions.

    Raises
    ------
    RuntimeError
        If an operation depends on itself.
    """
    # Depth first on an explicit stack of (operation, iterator over its inputs), so that long
    # chains do not recurse; `path` holds the operations on the stack, to find cycles.
    done = set()
    order = []
    for output in outputs:
        if output in done or output in known or output in available:
            continue
        stack = [(output, iter(output._inputs))]
        path = {output}
        while stack:
            operation, inputs = stack[-1]
            for item in inputs:
                if item not in done and item not in known and item not in available:
                    if item in path:
                        raise cycle_error(item)
                    path.add(item)
                    stack.append((item, iter(item._inputs)))
                    break
            else:  # every input has its value: this operation is next
                stack.pop()
                path.discard(operation)
                done.add(operation)
                order.append(operation)
    return order


class Plan:
    """
    Evaluation of fixed fetches from a context with fixed keys, worked out in advance.

    A plan is first run with a generic call of each operation, which costs little to set up. Run
    again, it specialises: it makes a caller for each operation and works out what its lazy
    operations may ask for, or compiles a small plan into one function, so that a plan in use
    costs little more than calling its functions. Several threads can run one plan at the same
    time, each with its own context; specialising twice when two threads reuse a plan together
    does no harm.

    Parameters
    ----------
    renames : list[(str, Operation)]
        Context keys that are names, with the operations they name, in the context's order.
    outputs : list[Operation]
        The operations fetched.
    single : bool
        Whether evaluating returns the value of the only output rather than a tuple.
    known : set[Operation]
        The operations the context gives.

    Attributes
    ----------
    run : callable
        ``run(context, callback=None)`` renames the keys of `context` and evaluates in it, filling
        it in place, and returns the fetched value(s). `context` must be a dict with exactly the
        keys the plan was made for; `callback` is as in :meth:`pythonflow.Graph.apply`.
    """

    __slots__ = ("renames", "outputs", "single", "known", "order", "callers", "lazy", "requests",
                 "uses", "run")

    def __init__(self, renames: list, outputs: list, single: bool, known: set) -> None:
        self.renames = tuple(renames)
        self.outputs = outputs[0] if single else tuple(outputs)
        self.single = single
        self.known = known
        self.order = tuple(order_operations(outputs, known))
        # One caller per operation, `caller(operation, context)`; None for lazy operations.
        self.callers = tuple(None if op._lazy else call_generic for op in self.order)
        self.lazy = None in self.callers
        self.requests = None  # lazy operation -> {what it may ask for: steps}, once specialised
        self.uses = 0
        self.run = self._run_generic

    def _run_generic(self, context: dict, callback: Optional[Callable] = None) -> Any:
        # Only plans that are reused pay for making callers and compiling. The count is not
        # exact when threads share the plan, which only moves the moment of specialising.
        self.uses += 1
        if self.uses > GENERIC_RUNS:
            self._specialise()
            return self.run(context, callback)
        return self.interpret(context, callback)

    def _specialise(self) -> None:
        callers = {op: None if op._lazy else make_caller(op) for op in self.order}
        if self.lazy:
            self.requests = self._requests(callers)
        self.callers = tuple(callers[op] for op in self.order)
        self.run = (None if self.lazy else compile_plan(self, MAX_COMPILED_STEPS)) or self.interpret

    def _requests(self, callers: dict) -> dict:
        """Return, for each lazy operation, the steps each thing it may ask for needs."""
        def steps(order: list) -> tuple:
            for op in order:
                if op not in callers:  # shared by the lists of several lazy operations
                    callers[op] = None if op._lazy else make_caller(op)
            return tuple((op, callers[op]) for op in order)

        requests = {}
        available = set()  # the operations evaluated before the one at hand
        budget = MAX_REQUEST_STEPS
        for op in self.order:
            if op._lazy and budget > 0:
                orders = {item: order_operations([item], self.known, available)
                          for item in find_operations((op.args, op.kwargs))}
                budget -= sum(map(len, orders.values()))
                if budget >= 0:  # else the evaluator works out what this operation asks for
                    requests[op] = {item: steps(order) for item, order in orders.items()}
            available.add(op)
        return requests

    def interpret(self, context: dict, callback: Optional[Callable] = None) -> Any:
        """
        Evaluate the plan step by step; what :attr:`run` does unless the plan is compiled.

        Parameters
        ----------
        context : dict
            Context with exactly the keys the plan was made for; filled in place.
        callback : callable, optional
            ``callback(operation, context)`` returning a context manager wrapping each evaluation.

        Returns
        -------
        values : object or tuple
            The value of the only fetch, or a tuple of the values of the fetches.
        """
        for name, operation in self.renames:
            context[operation] = context.pop(name)
        if callback is None and not self.lazy:
            try:
                for operation, call in zip(self.order, self.callers):
                    context[operation] = call(operation, context)
            except Exception as exc:  # the loop variable names the operation that failed
                annotate_error(exc, operation)
                raise
        else:
            run_steps(zip(self.order, self.callers), context, callback, self.requests)
        if self.single:
            return context[self.outputs]
        return tuple([context[output] for output in self.outputs])


def run_steps(steps: Iterable, context: dict, callback: Optional[Callable],
              requests: Optional[dict] = None, check: bool = False) -> None:
    """
    Evaluate ``(operation, caller)`` steps in order, lazy operations (caller None) among them.

    Parameters
    ----------
    steps : Iterable[(Operation, callable or None)]
        Operations in an order of evaluation, each with its caller.
    context : dict
        Values keyed by operations; filled in place.
    callback : callable or None
        ``callback(operation, context)`` returning a context manager wrapping each evaluation.
    requests : dict, optional
        What each lazy operation may ask for (see :meth:`Plan._specialise`); lazy operations
        without an entry are handed to :func:`pythonflow.evaluation.evaluate`.
    check : bool, optional
        Whether to skip operations that already have values from the start.
    """
    for operation, call in steps:
        if check and operation in context:
            continue
        if call is None:
            known = requests.get(operation) if requests else None
            if known is None:
                evaluate([operation], context, callback)  # names a failing operation itself
            else:
                _run_lazy(operation, known, context, callback)
            # Lazy operations evaluate what they ask for, so a later operation may have a value.
            check = True
            continue
        try:
            if callback is None:
                value = call(operation, context)
            else:
                value = None  # stays None if the callback's context manager swallows an error
                with callback(operation, context):
                    value = call(operation, context)
        except Exception as exc:
            annotate_error(exc, operation)
            raise
        context[operation] = value


def _run_lazy(operation: Node, requests: dict, context: dict,
              callback: Optional[Callable]) -> None:
    """Run the generator of a lazy operation, evaluating what it asks for from `requests`."""
    generator = operation._evaluate(*operation.args, **operation.kwargs)
    manager = None
    if callback is not None:
        manager = callback(operation, context)
        manager.__enter__()
    thrown = []  # errors thrown in; the generator re-raising one is not a failure of its own
    method, argument = generator.send, None
    try:
        while True:
            requested = method(argument)
            if not isinstance(requested, Node):
                generator.close()
                raise TypeError(f"lazy {operation!r} must yield operations, not "
                                f"{type(requested).__name__}")
            method, argument = generator.send, None
            if requested not in context:
                steps = requests.get(requested)
                try:
                    if steps is None:  # not among its arguments: evaluate it from scratch
                        evaluate([requested], context, callback)
                    else:
                        run_steps(steps, context, callback, check=True)
                except Exception as exc:  # names the operation that failed already
                    thrown.append(exc)
                    method, argument = generator.throw, exc
                    continue
            argument = context[requested]
    except StopIteration as stop:
        if manager is not None:
            manager.__exit__(None, None, None)
        context[operation] = stop.value
    except Exception as exc:
        if manager is not None:
            manager.__exit__(type(exc), exc, exc.__traceback__)
        if not any(exc is error for error in thrown):
            annotate_error(exc, operation)
        raise
