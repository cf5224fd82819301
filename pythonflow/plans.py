"""Execution plans: what an evaluation of given fetches from given context keys has to do.

Evaluating a graph means finding the operations the fetches need that the context does not
give, putting them in order and calling each one with the values of its arguments. None of that
depends on the values, only on the graph, the fetches and which keys the context has, so
:class:`~pythonflow.Graph` makes a :class:`Plan` once for each such combination and reuses it
until the graph changes. A plan holds:

* the renames turning the names used as context keys into operations (the context is still
  updated in place, as in Pythonflow);
* the operations to evaluate, in the order the iterative evaluator would evaluate them, each with
  a small function that calls it with the values of its arguments read from the context;
* the lazy operations (:class:`~pythonflow.conditional`, :class:`~pythonflow.try_`, caches), which
  decide at run time what they need: the plan hands each of them to
  :func:`pythonflow.evaluation.evaluate`, which runs their generators, and skips afterwards the
  operations they have already evaluated.

The functions calling operations are generated from a few lines of source per *shape* of
argument list (which arguments are operations, containers of operations or plain values, and the
keyword names), compiled once per shape and shared by all plans.
"""
from __future__ import annotations

import keyword
import threading
from types import CodeType, FunctionType
from typing import Any, Callable, Optional

from .evaluation import (
    Node,
    annotate_error,
    argument_values,
    cycle_error,
    evaluate,
    resolve,
)

__all__ = ["GENERIC_RUNS", "MAX_COMPILED_STEPS", "Plan", "order_operations"]

# Evaluations a plan runs with generic calls before it specialises (see `Plan`).
GENERIC_RUNS = 1
# Plans of at most this many renames and operations, none of them lazy, run as one generated
# function; longer ones would take longer to compile than the loop saves.
MAX_COMPILED_STEPS = 64
# Wider argument lists than this are rare; they use the generic function rather than a shape of
# their own, which keeps the number of compiled shapes small.
_MAX_SHAPE_ARGUMENTS = 8
_MAX_SHAPES = 512
_shapes: dict = {}
_shapes_lock = threading.Lock()


def order_operations(outputs: list, known: set) -> list:
    """
    Return the operations that evaluating `outputs` needs, each after its inputs.

    Parameters
    ----------
    outputs : list[Operation]
        Operations to evaluate.
    known : set[Operation]
        Operations whose values are given; neither they nor what only they need are returned.

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
    done = set(known)
    order = []
    for output in outputs:
        if output in done:
            continue
        stack = [(output, iter(output._inputs))]
        path = {output}
        while stack:
            operation, inputs = stack[-1]
            for item in inputs:
                if item not in done:
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
    again, it specialises: it makes a caller for each operation, or compiles a small plan into
    one function, so that a plan in use costs little more than calling its functions. Several
    threads can run one plan at the same time, each with its own context; specialising twice
    when two threads reuse a plan together does no harm.

    Parameters
    ----------
    renames : list[(str, Operation)]
        Context keys that are names, with the operations they name, in the context's order.
    outputs : list[Operation]
        The operations fetched.
    single : bool
        Whether evaluating returns the value of the only output rather than a tuple.
    order : list[Operation]
        The operations to evaluate (see :func:`order_operations`).

    Attributes
    ----------
    run : callable
        ``run(context, callback=None)`` renames the keys of `context` and evaluates in it, filling
        it in place, and returns the fetched value(s). `context` must be a dict with exactly the
        keys the plan was made for; `callback` is as in :meth:`pythonflow.Graph.apply`.
    """

    __slots__ = ("renames", "outputs", "single", "order", "callers", "lazy", "uses", "run")

    def __init__(self, renames: list, outputs: list, single: bool, order: list) -> None:
        self.renames = tuple(renames)
        self.outputs = outputs[0] if single else tuple(outputs)
        self.single = single
        self.order = tuple(order)
        # One caller per operation, `caller(operation, context)`; None for lazy operations,
        # whose generators the evaluator runs.
        self.callers = tuple(None if op._lazy else _call_generic for op in order)
        self.lazy = None in self.callers
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
        self.callers = tuple(None if op._lazy else _caller(op) for op in self.order)
        compiled = None
        if not self.lazy and len(self.order) + len(self.renames) <= MAX_COMPILED_STEPS:
            compiled = _compile_plan(self)
        self.run = compiled or self.interpret

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
            self._run_steps(context, callback)
        if self.single:
            return context[self.outputs]
        return tuple([context[output] for output in self.outputs])

    def _run_steps(self, context: dict, callback: Optional[Callable]) -> None:
        # Lazy operations evaluate what they ask for into the context, so once one has run, any
        # later operation may already have its value.
        check = False
        for operation, call in zip(self.order, self.callers):
            if check and operation in context:
                continue
            if call is None:
                evaluate([operation], context, callback)  # names a failing operation itself
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


def _compile_plan(plan: Plan) -> Optional[Callable]:
    """
    Return one function doing what :meth:`Plan.interpret` does for `plan` without a callback.

    Values stay in local variables as well as going into the context, arguments are passed
    directly and no loop runs, which makes a small evaluation cost little more than calling its
    functions. Returns None if an operation's keywords cannot be written as Python keywords.
    """
    namespace = {"annotate": annotate_error, "resolve": resolve, "interpret": plan.interpret}
    local = {}  # operation -> the local variable holding its value

    def bind(value: Any) -> str:  # a global name of the generated function for `value`
        name = f"g{len(namespace)}"
        namespace[name] = value
        return name

    def read(value: Any, kind: str) -> str:
        if kind == "c":
            return bind(value)
        if kind == "r":
            return f"resolve({bind(value)}, c)"
        return local.get(value) or f"c[{bind(value)}]"  # else given in the context as is

    lines = ["def run(c, callback=None):",
             "    if callback is not None:",
             "        return interpret(c, callback)"]
    for name, operation in plan.renames:
        local[operation] = f"v{len(local)}"
        lines.append(f"    {local[operation]} = c[{bind(operation)}] = c.pop({bind(name)})")
    for operation in plan.order:
        arguments = _argument_sources(operation, read)
        if arguments is None:
            return None
        function = operation.target if _calls_target(operation) else operation._evaluate
        variable, key = f"v{len(local)}", bind(operation)
        lines += ["    try:",
                  f"        {variable} = {bind(function)}({', '.join(arguments)})",
                  "    except Exception as exc:",
                  f"        annotate(exc, {key})",
                  "        raise",
                  f"    c[{key}] = {variable}"]
        local[operation] = variable
    if plan.single:
        lines.append(f"    return {read(plan.outputs, 'o')}")
    else:
        lines.append(f"    return ({''.join(read(item, 'o') + ', ' for item in plan.outputs)})")
    exec(compile("\n".join(lines), "<pythonflow plan>", "exec"), namespace)  # noqa: S102
    return namespace["run"]


def _argument_sources(operation: Node, read: Callable[[Any, str], str]) -> Optional[list]:
    """Return the source of the arguments of a call of `operation`, reading each with `read`."""
    shape = _shape(operation)
    if shape is None:
        return None
    kinds, keywords = shape
    sources = [read(value, kind) for value, kind in zip(operation.args, kinds)]
    sources += [f"{key}={read(value, kind)}"
                for (key, kind), value in zip(keywords, operation.kwargs.values())]
    return sources


def _shape(operation: Node) -> Optional[tuple]:
    """
    Return what kind of value each argument of `operation` is, or None if a keyword is no name.

    The kinds are "o" for an operation (read from the context), "r" for a container of them
    (resolved) and "c" for anything else (passed as it is).
    """
    # This runs for every operation of a plan that specialises: only the slots can hold
    # operations, and most operations have no keywords.
    args = operation.args
    kinds = ["c"] * len(args)
    for index in operation._arg_slots:
        kinds[index] = "o" if isinstance(args[index], Node) else "r"
    if not operation.kwargs:
        return tuple(kinds), ()
    keywords = []
    for key, value in operation.kwargs.items():
        if not (isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key)):
            return None
        keywords.append((key, _kind(value) if key in operation._kwarg_slots else "c"))
    return tuple(kinds), tuple(keywords)


def _kind(value: Any) -> str:
    return "o" if isinstance(value, Node) else "r"


def _calls_target(operation: Node) -> bool:
    # `func_op._evaluate` carries this mark: it only calls `target`, so plans call that directly.
    return getattr(type(operation)._evaluate, "_pf_calls_target", False)


def _caller(operation: Node) -> Callable[[Node, dict], Any]:
    """Return ``caller(operation, context)`` computing the value of `operation` from its inputs."""
    shape = _shape(operation)
    if shape is None or len(shape[0]) + len(shape[1]) > _MAX_SHAPE_ARGUMENTS:
        return _call_generic
    code = _shapes.get(shape) or _compile_shape(shape)
    if code is None:
        return _call_generic
    function = operation.target if _calls_target(operation) else operation._evaluate
    # The function and the arguments become the defaults of the caller's trailing parameters:
    # one function object and one tuple per operation, cheaper to make than a closure.
    defaults = (function, *operation.args, *operation.kwargs.values())
    return FunctionType(code, _SHAPE_GLOBALS, "call", defaults)


_SHAPE_GLOBALS = {"resolve": resolve}


def _compile_shape(shape: tuple) -> Optional[CodeType]:
    """Compile the code of callers for one shape of arguments."""
    kinds, keywords = shape
    names = [f"a{index}" for index in range(len(kinds) + len(keywords))]
    reads = {"o": "c[{}]", "r": "resolve({}, c)", "c": "{}"}
    arguments = [reads[kind].format(name) for kind, name in zip(kinds, names)]
    arguments += [f"{key}={reads[kind].format(name)}"
                  for (key, kind), name in zip(keywords, names[len(kinds):])]
    source = (f"def call(op, c, function, {''.join(name + ', ' for name in names)}):\n"
              f"    return function({', '.join(arguments)})\n")
    namespace = dict(_SHAPE_GLOBALS)
    exec(compile(source, "<pythonflow plan>", "exec"), namespace)  # noqa: S102 - fixed tokens only
    with _shapes_lock:
        if len(_shapes) >= _MAX_SHAPES:
            return None
        return _shapes.setdefault(shape, namespace["call"].__code__)


def _call_generic(operation: Node, context: dict) -> Any:
    """Compute the value of any operation whose inputs have values in `context`."""
    args, kwargs = argument_values(operation, context)
    return operation._evaluate(*args, **kwargs)
