import ast
import operator
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import pythonflow as pf
from pythonflow import wrappers


class Counter:
    """Picklable callable counting its calls."""

    def __init__(self, value=None):
        self.calls = 0
        self.value = value

    def __call__(self, *args):
        self.calls += 1
        return self.value if self.value is not None else args


def test_constant_identity_and_call():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        c = pf.constant([1, 2])
        same = pf.identity(x, name='same')
        called = pf.call(max, x, 10)
        called_op = pf.call(pf.constant(min), x, 10)
    assert graph([c, 'same', called, called_op], x=3) == ([1, 2], 3, 10, 3)
    assert same.name == 'same'


def test_conditional_evaluates_only_the_chosen_branch():
    yes, no = Counter('yes'), Counter('no')
    with pf.Graph() as graph:
        flag = pf.placeholder('flag')
        chosen = pf.conditional(flag, pf.func_op(yes), pf.func_op(no))
        missing_else = pf.conditional(flag, 1)
    assert graph(chosen, flag=True) == 'yes'
    assert (yes.calls, no.calls) == (1, 0)
    assert graph(chosen, flag=False) == 'no'
    assert (yes.calls, no.calls) == (1, 1)
    assert graph(missing_else, flag=0) is None
    assert graph(missing_else, flag=1) == 1


def test_conditional_branch_on_a_comparison_and_pickles():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        pf.conditional(x > 0, x, -x).set_name('magnitude')
    restored = pickle.loads(pickle.dumps(graph))
    assert restored('magnitude', x=-4) == 4
    assert restored('magnitude', x=5) == 5


def test_deep_chain_of_conditionals_does_not_recurse():
    with pf.Graph() as graph:
        value = pf.placeholder('x')
        for _ in range(3000):
            value = pf.conditional(value >= 0, value + 1, value)
    assert graph(value, x=0) == 3000


def test_try_handles_matching_exceptions_lazily():
    handler, final = Counter('fallback'), Counter('finally')
    with pf.Graph() as graph:
        a, b = pf.placeholder('a'), pf.placeholder('b')
        guarded = pf.try_(a / b, [(ZeroDivisionError, pf.func_op(handler))],
                          finally_=pf.func_op(final))
        by_mapping = pf.try_(a / b, {(TypeError, ZeroDivisionError): -1})
        unmatched = pf.try_(a / b, [(KeyError, 0)], finally_=pf.func_op(final))
    assert graph(guarded, a=4, b=2) == 2
    assert (handler.calls, final.calls) == (0, 1)
    assert graph(guarded, a=1, b=0) == 'fallback'
    assert (handler.calls, final.calls) == (1, 2)
    assert graph(by_mapping, a=1, b=0) == -1
    with pytest.raises(ZeroDivisionError) as info:
        graph(unmatched, a=1, b=0)
    assert final.calls == 3
    assert 'truediv' in str(info.value.__cause__)


def test_failing_handler_raises_its_own_error():
    with pf.Graph() as graph:
        broken = pf.try_(pf.func_op(operator.truediv, 1, 0),
                         [(ZeroDivisionError, pf.func_op(int, 'x'))]).set_name('guard')
    with pytest.raises(ValueError) as info:
        graph(broken)
    assert isinstance(info.value.__context__, ZeroDivisionError)  # as in a try statement
    assert "'int_" in str(info.value.__cause__)


def test_try_validates_except_pairs():
    with pf.Graph():
        with pytest.raises(TypeError, match="pairs"):
            pf.try_(pf.constant(1), [ZeroDivisionError])


def test_nested_try_inside_conditional():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        inverse = pf.try_(1 / x, [(ZeroDivisionError, float('inf'))])
        result = pf.conditional(x >= 0, inverse, pf.constant('negative'))
    assert graph(result, x=0) == float('inf')
    assert graph(result, x=4) == 0.25
    assert graph(result, x=-1) == 'negative'


def test_cache_with_dict_store():
    store = {}
    compute = Counter()
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        cached = pf.cache(pf.func_op(compute, x), store.__getitem__, store.__setitem__)
        keyed = pf.cache(pf.func_op(compute, x, 'k'), store.__getitem__, store.__setitem__,
                         key=pf.str_format('key-{}', x))
    assert graph(cached, x=1) == (1,)
    assert graph(cached, x=1) == (1,)
    assert compute.calls == 1
    assert graph(cached, x=2) == (2,)
    assert compute.calls == 2
    assert graph(keyed, x=1) == (1, 'k')
    assert 'key-1' in store
    assert graph(keyed, x=1) == (1, 'k') and compute.calls == 3


def test_cache_file(tmp_path):
    compute = Counter()
    template = str(tmp_path / 'value-{}.pkl')
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        cached = pf.cache_file(pf.func_op(compute, x), template, key=x)
        percent = pf.cache_file(pf.func_op(compute, x, 0), str(tmp_path / 'p-%s.pkl'))
    assert graph(cached, x=3) == (3,)
    assert graph(cached, x=3) == (3,)
    assert compute.calls == 1
    with open(tmp_path / 'value-3.pkl', 'rb') as fp:
        assert pickle.load(fp) == (3,)
    assert graph(percent, x=1) == (1, 0) and graph(percent, x=1) == (1, 0)
    assert compute.calls == 2
    assert len(list(tmp_path.glob('p-*.pkl'))) == 1
    assert not list(tmp_path.glob('.pf-cache-*'))
    restored = pickle.loads(pickle.dumps(graph))
    assert restored(cached.name, x=3) == (3,)


class FileCalls:
    """`load` and `dump` for cache_file that open the file names they are given themselves and
    record them; `dump` also checks that nothing is in place under the final name yet."""

    def __init__(self, final):
        self.final = final
        self.loaded, self.dumped = [], []

    def load(self, filename):
        self.loaded.append(filename)
        with open(filename) as fp:
            return int(fp.read())

    def dump(self, value, filename):
        self.dumped.append(filename)
        assert not os.path.exists(self.final)  # readers never see a partial file
        with open(filename, 'w') as fp:
            fp.write(str(value))


def test_cache_file_gives_load_and_dump_file_names(tmp_path):
    final = tmp_path / 'value-7.txt'
    calls = FileCalls(str(final))
    compute = Counter(21)
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        cached = pf.cache_file(pf.func_op(compute, x), str(tmp_path / 'value-%s.txt'),
                               load=calls.load, dump=calls.dump, key=x)
    assert graph(cached, x=7) == 21
    (dumped,) = calls.dumped
    assert isinstance(dumped, str)
    # Written under the file's own name in a private directory, then moved into place.
    assert os.path.basename(dumped) == final.name and dumped != str(final)
    assert os.path.dirname(os.path.dirname(dumped)) == str(tmp_path)
    assert final.read_text() == '21'
    assert graph(cached, x=7) == 21 and compute.calls == 1
    assert calls.loaded == [str(final), str(final)]  # a miss, then a hit
    assert sorted(os.listdir(tmp_path)) == [final.name]


def _save_array(value, filename):
    # numpy.save takes the file first; cache_file's `dump` takes the value first, like pickle.dump.
    np.save(filename, value)


def test_cache_file_with_numpy_save_and_load(tmp_path):
    compute = Counter()
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        array = pf.func_op(np.arange, x)
        counted = pf.func_op(compute, array)[0]
        cached = pf.cache_file(counted, str(tmp_path / 'range-{}.npy'), load=np.load,
                               dump=_save_array, key=x)
    np.testing.assert_array_equal(graph(cached, x=4), np.arange(4))
    np.testing.assert_array_equal(np.load(tmp_path / 'range-4.npy'), np.arange(4))
    np.testing.assert_array_equal(graph(cached, x=4), np.arange(4))
    assert compute.calls == 1
    assert sorted(os.listdir(tmp_path)) == ['range-4.npy']


def test_cache_file_dump_writing_another_name_is_a_clear_error(tmp_path):
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        # numpy.save adds '.npy' to a name without it, so the file would never be found.
        cached = pf.cache_file(pf.func_op(np.ones, x), str(tmp_path / 'ones-%s'),
                               load=np.load, dump=_save_array, key=x)
    with pytest.raises(ValueError, match=r"must write `filename` \('ones-2'\).*'ones-2.npy'"
                                         r".*end the file name template with '.npy'"):
        graph(cached, x=2)
    assert os.listdir(tmp_path) == []


def test_cache_file_failing_dump_leaves_no_file(tmp_path):
    def broken_dump(value, filename):
        with open(filename, 'w') as fp:
            fp.write('partial')
        raise OSError('disk full')

    with pf.Graph() as graph:
        cached = pf.cache_file(pf.constant(1), str(tmp_path / 'one-%s'), dump=broken_dump,
                               key='k')
    with pytest.raises(OSError, match='disk full'):
        graph(cached)
    assert os.listdir(tmp_path) == []


def test_control_dependencies_run_first_and_can_fail():
    order = []

    def note(label):
        order.append(label)
        return label

    with pf.Graph() as graph:
        x = pf.placeholder('x')
        check = pf.assert_(x > 0, 'x must be positive, got %s', x)
        first = pf.func_op(note, 'first')
        with pf.control_dependencies([check, first]):
            result = pf.func_op(note, 'result')
        after = pf.func_op(note, 'after')
    assert result.dependencies == [check, first]
    assert after.dependencies == []
    assert graph(result, x=1) == 'result'
    assert order == ['first', 'result']
    with pytest.raises(AssertionError, match='x must be positive, got -1'):
        graph(result, x=-1)


def test_assert_returns_value_and_default_message():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        checked = pf.assert_(x, value=x * 2)
        plain = pf.assert_(x, 'plain')
    assert graph(checked, x=2) == 4
    with pytest.raises(AssertionError):
        graph(checked, x=0)
    with pytest.raises(AssertionError, match='^plain$'):
        graph(plain, x=0)


def test_str_format():
    with pf.Graph() as graph:
        name = pf.placeholder('who')
        text = pf.str_format('hello {} from {place}', name, place=pf.constant('graph'))
    assert graph(text, who='you') == 'hello you from graph'


def test_import_is_lazy_and_chains():
    with pf.Graph() as graph:
        np = pf.import_('numpy')
        value = np.random.uniform(0, 1)
        missing = pf.import_('surely_not_an_installed_module_xyz')
    assert 0 <= graph(value) < 1
    with pytest.raises(ModuleNotFoundError):
        graph(missing)
    assert pickle.loads(pickle.dumps(graph))(value.name) < 1


def test_lazy_constant_is_called_once_and_lazily():
    target = Counter('big')
    with pf.Graph() as graph:
        resource = pf.lazy_constant(target)
    assert target.calls == 0
    assert graph(resource) == 'big' and graph(resource) == 'big'
    assert target.calls == 1
    restored = pickle.loads(pickle.dumps(graph))
    assert restored(resource.name) == 'big'
    assert restored[resource.name].target.calls == 2  # recomputed after unpickling, once
    assert target.calls == 1


# Pythonflow's wrappers of builtins and of the operator module: the contract is this exact set,
# whatever the running Python offers.
PYTHONFLOW_BUILTINS = {
    'abs', 'all', 'any', 'ascii', 'bin', 'bool', 'bytearray', 'bytes', 'callable', 'chr',
    'classmethod', 'compile', 'complex', 'delattr', 'dict', 'dir', 'divmod', 'enumerate', 'eval',
    'exec', 'filter', 'float', 'format', 'frozenset', 'getattr', 'globals', 'hasattr', 'hash',
    'help', 'hex', 'id', 'input', 'int', 'isinstance', 'issubclass', 'iter', 'len', 'list',
    'locals', 'map', 'max', 'memoryview', 'min', 'next', 'object', 'oct', 'open', 'ord', 'pow',
    'print', 'property', 'range', 'repr', 'reversed', 'round', 'set', 'setattr', 'slice', 'sorted',
    'staticmethod', 'str', 'sum', 'super', 'tuple', 'type', 'vars', 'zip',
}
PYTHONFLOW_OPERATORS = {
    'add', 'and_', 'attrgetter', 'concat', 'contains', 'countOf', 'delitem', 'eq', 'floordiv',
    'ge', 'getitem', 'gt', 'index', 'indexOf', 'inv', 'invert', 'ior', 'ipow', 'irshift', 'is_',
    'is_not', 'itemgetter', 'le', 'length_hint', 'lshift', 'lt', 'matmul', 'methodcaller', 'mod',
    'mul', 'ne', 'neg', 'not_', 'or_', 'pos', 'rshift', 'setitem', 'sub', 'truediv', 'truth',
    'xor',
}
WRAPPERS = {name + '_' for name in PYTHONFLOW_BUILTINS} | PYTHONFLOW_OPERATORS


def test_wrappers_are_exactly_those_of_pythonflow():
    defined = {name for name, value in vars(wrappers).items() if not name.startswith('_')
               and getattr(value, '__module__', None) == wrappers.__name__}
    assert defined == WRAPPERS
    assert set(wrappers.__all__) == WRAPPERS and len(wrappers.__all__) == len(WRAPPERS)
    assert WRAPPERS <= set(pf.__all__)
    for name in ('breakpoint_', 'aiter_', 'anext_', 'abs', 'pow', 'iadd', 'imul', 'call'):
        assert name not in wrappers.__all__ and not hasattr(wrappers, name), name


def test_wrappers_are_written_out_one_definition_each():
    # Each wrapper is a plain module-level assignment that readers, IDEs and Sphinx can see,
    # not something made by a loop over the running interpreter's builtins.
    with open(wrappers.__file__) as fp:
        tree = ast.parse(fp.read())
    assigned = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            (target,) = node.targets
            assigned[target.id] = ast.unparse(node.value)
    assert set(assigned) >= WRAPPERS
    for name in PYTHONFLOW_BUILTINS - {'help'}:
        assert assigned[name + '_'] == f'_builtin(builtins.{name})'
    for name in PYTHONFLOW_OPERATORS:
        assert assigned[name] == f'_operator(operator.{name})'
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.For, ast.While))]


@pytest.mark.parametrize('name', sorted(WRAPPERS))
def test_each_wrapper_is_named_documented_and_pickles(name):
    wrapper = getattr(pf, name)
    assert wrapper.__name__ == wrapper.__qualname__ == name
    assert wrapper.__module__ == 'pythonflow.wrappers'
    source = f"builtins.{name[:-1]}" if name[:-1] in PYTHONFLOW_BUILTINS else f"operator.{name}"
    assert f'``{source}(*args, **kwargs)``' in wrapper.__doc__
    assert pickle.loads(pickle.dumps(wrapper)) is wrapper
    with pf.Graph():
        assert isinstance(wrapper(1), pf.func_op)


def test_builtin_and_operator_wrappers_evaluate():
    with pf.Graph() as graph:
        items = pf.placeholder('items')
        ops = [pf.len_(items), pf.sum_(items), pf.max_(items), pf.min_(items),
               pf.sorted_(items, reverse=True), pf.list_(pf.map_(str, items)),
               pf.tuple_(pf.zip_(items, items)), pf.list_(pf.range_(pf.len_(items))),
               pf.dict_(pf.enumerate_(items)), pf.any_(items), pf.all_(items),
               pf.abs_(-3), pf.str_(1), pf.int_('4'), pf.float_('2.5'),
               pf.getattr_(items, 'count')(1), pf.isinstance_(items, list),
               pf.add(items, [9]), pf.getitem(items, 0), pf.mul(2, 3), pf.pow_(2, 3),
               pf.inv(0), pf.not_(items), pf.countOf(items, 3)]
    values = graph(ops, items=[1, 3, 2])
    assert values == (3, 6, 3, 1, [3, 2, 1], ['1', '3', '2'], ((1, 1), (3, 3), (2, 2)),
                      [0, 1, 2], {0: 1, 1: 3, 2: 2}, True, True, 3, '1', 4, 2.5, 1, True,
                      [1, 3, 2, 9], 1, 6, 8, -1, False, 1)
    assert ops[0].name.startswith('len_')


def test_help_wrapper_prints_help(capsys):
    with pf.Graph() as graph:
        shown = pf.help_(pf.constant(len))
    assert graph(shown) is None
    assert 'len(obj, /)' in capsys.readouterr().out


def test_wrappers_import_without_the_site_module():
    # `python -S` has no `builtins.help`; `help_` must not depend on it to import.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, '-S', '-c', 'import pythonflow as pf; print(pf.help_.__name__)'],
        capture_output=True, text=True, timeout=60, env={**os.environ, 'PYTHONPATH': root})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'help_'
