"""Functions calling operations, generated for the shapes of their arguments.

An operation is called with the values of its arguments: those that are operations are read
from the context, containers of operations are resolved and other values are passed as they
are. Which argument is which (the *shape*) is known when an evaluation plan is made
(:mod:`pythonflow.plans`), so instead of working it out at every call this module compiles, once
per shape, a function that does exactly that call; each operation gets its own copy with its
function and arguments bound. :func:`compile_plan` goes further for small plans and writes the
whole evaluation as one function. Only fixed tokens, generated local names and keyword names that
are Python identifiers go into the generated source; values are bound, never written out.
"""
from __future__ import annotations

import keyword
import threading
from types import CodeType, FunctionType
from typing import Any, Callable, Optional

from .evaluation import Node, annotate_error, argument_values, resolve

__all__ = ["call_generic", "compile_plan", "make_caller"]

# Wider argument lists than this are rare; they use the generic function rather than a shape of
# their own, which keeps the number of compiled shapes small.
_MAX_SHAPE_ARGUMENTS = 8
_MAX_SHAPES = 512
_shapes: dict = {}  # shape -> code of its callers
_shapes_lock = threading.Lock()
_SHAPE_GLOBALS = {"resolve": resolve}


def compile_plan(plan: Any, max_steps: int) -> Optional[Callable]:
    """
    Return one function doing what ``plan.interpret`` does, without a callback.

    Values stay in local variables as well as going into the context, arguments are passed
    directly and no loop runs, which makes a small evaluation cost little more than calling its
    functions.

    Parameters
    ----------
    plan : pythonflow.plans.Plan
        Plan without lazy operations.
    max_steps : int
        Largest number of renames and operations worth compiling.

    Returns
    -------
    run : callable or None
        ``run(context, callback=None)``, handing evaluations with a callback to
        ``plan.interpret``; None if the plan is too long or an operation's keywords cannot be
        written as Python keywords.
    """
    if len(plan.order) + len(plan.renames) > max_steps:
        return None
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


def make_caller(operation: Node) -> Callable[[Node, dict], Any]:
    """
    Return ``caller(operation, context)`` computing the value of `operation` from its inputs.

    Parameters
    ----------
    operation : Operation
        Operation that is not lazy.

    Returns
    -------
    caller : callable
        A function made for the shape of the operation's arguments (see :func:`call_generic`
        for the one used for unusual shapes).
    """
    shape = _shape(operation)
    if shape is None or len(shape[0]) + len(shape[1]) > _MAX_SHAPE_ARGUMENTS:
        return call_generic
    code = _shapes.get(shape) or _compile_shape(shape)
    if code is None:
        return call_generic
    function = operation.target if _calls_target(operation) else operation._evaluate
    # The function and the arguments become the defaults of the caller's trailing parameters:
    # one function object and one tuple per operation, cheaper to make than a closure.
    defaults = (function, *operation.args, *operation.kwargs.values())
    return FunctionType(code, _SHAPE_GLOBALS, "call", defaults)


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


def call_generic(operation: Node, context: dict) -> Any:
    """
    Compute the value of any operation whose inputs have values in `context`.

    Parameters
    ----------
    operation : Operation
        Operation that is not lazy.
    context : dict
        Values keyed by operations.

    Returns
    -------
    value : object
        Value of the operation.
    """
    args, kwargs = argument_values(operation, context)
    return operation._evaluate(*args, **kwargs)
