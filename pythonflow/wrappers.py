"""Operations wrapping Python's builtins (``abs_``, ``len_``, ...) and the :mod:`operator` module.

Every public builtin function and type is available with a trailing underscore, e.g.
``pf.len_(x)`` creates an operation evaluating ``len(x)``; every public function of the
:mod:`operator` module is available under its own name, e.g. ``pf.getitem(x, 0)``. The wrappers
are generated from the running interpreter so that they cover its builtins exactly.
"""
from __future__ import annotations

import builtins
import operator
from typing import Callable

from .core import Operation, func_op

__all__: list = []

# Defined by `site` for the interactive prompt; they are not part of the language.
_SITE_BUILTINS = {"copyright", "credits", "exit", "help", "license", "quit"}
# Provided elsewhere in the package with the same meaning.
_PROVIDED_ELSEWHERE = {"call"}


def _wrap(target: Callable, name: str, source: str) -> Callable:
    def wrapper(*args, **kwargs) -> Operation:
        return func_op(target, *args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__module__ = __name__
    wrapper.__doc__ = (
        f"Create an operation evaluating ``{source}.{target.__name__}(*args, **kwargs)``.\n\n"
        "Parameters\n----------\n*args, **kwargs\n"
        "    Arguments, which may be operations, and the keywords of "
        ":class:`~pythonflow.Operation`\n    (`length`, `graph`, `name`, `dependencies`).\n\n"
        f"Returns\n-------\noperation : func_op\n    Operation calling ``{target.__name__}``.\n")
    wrapper.__wrapped__ = target
    return wrapper


def _builtin_targets() -> dict:
    targets = {}
    for name, value in vars(builtins).items():
        if name.startswith("_") or name in _SITE_BUILTINS or not callable(value):
            continue
        if isinstance(value, type) and issubclass(value, BaseException):
            continue
        targets[name + "_"] = value
    return targets


def _operator_targets() -> dict:
    return {name: getattr(operator, name) for name in operator.__all__
            if name not in _PROVIDED_ELSEWHERE}


for _name, _target in _builtin_targets().items():
    globals()[_name] = _wrap(_target, _name, "builtins")
    __all__.append(_name)
for _name, _target in _operator_targets().items():
    globals()[_name] = _wrap(_target, _name, "operator")
    __all__.append(_name)
del _name, _target
__all__.sort()
