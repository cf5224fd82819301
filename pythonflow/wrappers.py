"""Operations wrapping Python's builtins (``len_``, ...) and :mod:`operator` (``add``, ...).

``pf.len_(x)`` creates an operation evaluating ``len(x)`` and ``pf.getitem(x, 0)`` one evaluating
``operator.getitem(x, 0)``; arguments may be operations and the keywords of
:class:`~pythonflow.Operation` (`length`, `graph`, `name`, `dependencies`) apply. The set of
wrappers is Spotify Pythonflow's, written out here so that readers, IDEs and Sphinx see every
name and the set does not change with the Python version. Builtins take a trailing underscore
so that ``from pythonflow import *`` shadows none of them; the names of the operator functions
are not builtins and are kept.
"""
from __future__ import annotations

import builtins
import operator
from typing import Any, Callable

from .core import func_op

__all__ = [
    # builtins
    "abs_", "all_", "any_", "ascii_", "bin_", "bool_", "bytearray_", "bytes_", "callable_",
    "chr_", "classmethod_", "compile_", "complex_", "delattr_", "dict_", "dir_", "divmod_",
    "enumerate_", "eval_", "exec_", "filter_", "float_", "format_", "frozenset_", "getattr_",
    "globals_", "hasattr_", "hash_", "help_", "hex_", "id_", "input_", "int_", "isinstance_",
    "issubclass_", "iter_", "len_", "list_", "locals_", "map_", "max_", "memoryview_", "min_",
    "next_", "object_", "oct_", "open_", "ord_", "pow_", "print_", "property_", "range_",
    "repr_", "reversed_", "round_", "set_", "setattr_", "slice_", "sorted_", "staticmethod_",
    "str_", "sum_", "super_", "tuple_", "type_", "vars_", "zip_",
    # operator
    "add", "and_", "attrgetter", "concat", "contains", "countOf", "delitem", "eq", "floordiv",
    "ge", "getitem", "gt", "index", "indexOf", "inv", "invert", "ior", "ipow", "irshift",
    "is_", "is_not", "itemgetter", "le", "length_hint", "lshift", "lt", "matmul",
    "methodcaller", "mod", "mul", "ne", "neg", "not_", "or_", "pos", "rshift", "setitem",
    "sub", "truediv", "truth", "xor",
]


def _wrap(target: Callable, name: str, source: str) -> Callable[..., func_op]:
    def wrapper(*args: Any, **kwargs: Any) -> func_op:
        return func_op(target, *args, **kwargs)

    # The wrapper is a module attribute under `name`, so it pickles by reference and reads in
    # tracebacks and documentation as if it were written out with `def`.
    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__module__ = __name__
    wrapper.__wrapped__ = target
    wrapper.__doc__ = (
        f"Create an operation evaluating ``{source}(*args, **kwargs)``.\n\n"
        "Parameters\n----------\n*args, **kwargs\n"
        "    Arguments, which may be operations, and the keywords of "
        ":class:`~pythonflow.Operation`\n    (`length`, `graph`, `name`, `dependencies`).\n\n"
        f"Returns\n-------\noperation : func_op\n    Operation calling ``{source}``.\n")
    return wrapper


def _builtin(target: Callable) -> Callable[..., func_op]:
    name = target.__name__.strip("_")  # `_help` stands in for `help`
    return _wrap(target, f"{name}_", f"builtins.{name}")


def _operator(target: Callable) -> Callable[..., func_op]:
    return _wrap(target, target.__name__, f"operator.{target.__name__}")


def _help(*args: Any, **kwargs: Any) -> Any:
    # `builtins.help` is added by the `site` module and is missing under `python -S`; it is a
    # thin front for pydoc's, which is always there.
    import pydoc

    return pydoc.help(*args, **kwargs)


# Builtins, with a trailing underscore.
abs_ = _builtin(builtins.abs)
all_ = _builtin(builtins.all)
any_ = _builtin(builtins.any)
ascii_ = _builtin(builtins.ascii)
bin_ = _builtin(builtins.bin)
bool_ = _builtin(builtins.bool)
bytearray_ = _builtin(builtins.bytearray)
bytes_ = _builtin(builtins.bytes)
callable_ = _builtin(builtins.callable)
chr_ = _builtin(builtins.chr)
classmethod_ = _builtin(builtins.classmethod)
compile_ = _builtin(builtins.compile)
complex_ = _builtin(builtins.complex)
delattr_ = _builtin(builtins.delattr)
dict_ = _builtin(builtins.dict)
dir_ = _builtin(builtins.dir)
divmod_ = _builtin(builtins.divmod)
enumerate_ = _builtin(builtins.enumerate)
eval_ = _builtin(builtins.eval)
exec_ = _builtin(builtins.exec)
filter_ = _builtin(builtins.filter)
float_ = _builtin(builtins.float)
format_ = _builtin(builtins.format)
frozenset_ = _builtin(builtins.frozenset)
getattr_ = _builtin(builtins.getattr)
globals_ = _builtin(builtins.globals)
hasattr_ = _builtin(builtins.hasattr)
hash_ = _builtin(builtins.hash)
help_ = _builtin(_help)
hex_ = _builtin(builtins.hex)
id_ = _builtin(builtins.id)
input_ = _builtin(builtins.input)
int_ = _builtin(builtins.int)
isinstance_ = _builtin(builtins.isinstance)
issubclass_ = _builtin(builtins.issubclass)
iter_ = _builtin(builtins.iter)
len_ = _builtin(builtins.len)
list_ = _builtin(builtins.list)
locals_ = _builtin(builtins.locals)
map_ = _builtin(builtins.map)
max_ = _builtin(builtins.max)
memoryview_ = _builtin(builtins.memoryview)
min_ = _builtin(builtins.min)
next_ = _builtin(builtins.next)
object_ = _builtin(builtins.object)
oct_ = _builtin(builtins.oct)
open_ = _builtin(builtins.open)
ord_ = _builtin(builtins.ord)
pow_ = _builtin(builtins.pow)
print_ = _builtin(builtins.print)
property_ = _builtin(builtins.property)
range_ = _builtin(builtins.range)
repr_ = _builtin(builtins.repr)
reversed_ = _builtin(builtins.reversed)
round_ = _builtin(builtins.round)
set_ = _builtin(builtins.set)
setattr_ = _builtin(builtins.setattr)
slice_ = _builtin(builtins.slice)
sorted_ = _builtin(builtins.sorted)
staticmethod_ = _builtin(builtins.staticmethod)
str_ = _builtin(builtins.str)
sum_ = _builtin(builtins.sum)
super_ = _builtin(builtins.super)
tuple_ = _builtin(builtins.tuple)
type_ = _builtin(builtins.type)
vars_ = _builtin(builtins.vars)
zip_ = _builtin(builtins.zip)

# The operator module, under its own names.
add = _operator(operator.add)
and_ = _operator(operator.and_)
attrgetter = _operator(operator.attrgetter)
concat = _operator(operator.concat)
contains = _operator(operator.contains)
countOf = _operator(operator.countOf)
delitem = _operator(operator.delitem)
eq = _operator(operator.eq)
floordiv = _operator(operator.floordiv)
ge = _operator(operator.ge)
getitem = _operator(operator.getitem)
gt = _operator(operator.gt)
index = _operator(operator.index)
indexOf = _operator(operator.indexOf)
inv = _operator(operator.inv)
invert = _operator(operator.invert)
ior = _operator(operator.ior)
ipow = _operator(operator.ipow)
irshift = _operator(operator.irshift)
is_ = _operator(operator.is_)
is_not = _operator(operator.is_not)
itemgetter = _operator(operator.itemgetter)
le = _operator(operator.le)
length_hint = _operator(operator.length_hint)
lshift = _operator(operator.lshift)
lt = _operator(operator.lt)
matmul = _operator(operator.matmul)
methodcaller = _operator(operator.methodcaller)
mod = _operator(operator.mod)
mul = _operator(operator.mul)
ne = _operator(operator.ne)
neg = _operator(operator.neg)
not_ = _operator(operator.not_)
or_ = _operator(operator.or_)
pos = _operator(operator.pos)
rshift = _operator(operator.rshift)
setitem = _operator(operator.setitem)
sub = _operator(operator.sub)
truediv = _operator(operator.truediv)
truth = _operator(operator.truth)
xor = _operator(operator.xor)
