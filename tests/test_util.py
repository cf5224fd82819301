import pickle
import sys
import time

import pytest

import pythonflow as pf


def _sleep(seconds, value):
    time.sleep(seconds)
    return value


def test_profiler_records_each_operation_and_lists_slowest():
    profiler = pf.Profiler()
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        slow = pf.func_op(_sleep, 0.05, x, name='slow')
        fast = (slow + 1).set_name('fast')
        branch = pf.conditional(x, fast, 0).set_name('branch')
    assert graph(branch, x=1, callback=profiler) == 2
    assert set(profiler.times) == {slow, fast, branch}
    assert profiler.times[slow] >= 0.05
    assert profiler.times[fast] < profiler.times[slow]
    assert profiler.times[branch] >= profiler.times[slow]  # includes what it evaluated
    assert [op for op, _ in profiler.slowest(2)] == [branch, slow]
    text = str(profiler)
    assert text.startswith('3 operations')
    names = [line.split()[0] for line in text.splitlines()[1:]]
    assert names == ['branch', 'slow', 'fast']
    graph(branch, x=1, callback=profiler)
    assert profiler.counts[slow] == 2


def test_profiler_records_failures_too():
    profiler = pf.Profiler()
    with pf.Graph() as graph:
        failing = pf.func_op(int, 'x')
        guarded = pf.try_(failing, [(ValueError, -1)])
    assert graph(guarded, callback=profiler) == -1
    assert set(profiler.counts) == {failing, guarded}


def test_batch_iterable():
    assert list(pf.batch_iterable(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(pf.batch_iterable([], 3)) == []
    pairs = [(1, 'a'), (2, 'b'), (3, 'c')]
    assert list(pf.batch_iterable(pairs, 2, transpose=True)) == [[(1, 2), ('a', 'b')],
                                                                 [(3,), ('c',)]]
    endless = pf.batch_iterable(iter(int, 1), 4)  # infinite iterator: consumed lazily
    assert next(endless) == [0, 0, 0, 0]
    with pytest.raises(ValueError, match='batch_size'):
        list(pf.batch_iterable(range(3), 0))


def test_lazy_import_defers_the_import():
    name = 'json.tool'
    sys.modules.pop(name, None)
    module = pf.lazy_import(name)
    assert name not in sys.modules
    assert 'not loaded' in repr(module)
    assert callable(module.main)
    assert name in sys.modules
    assert 'main' in dir(module)
    restored = pickle.loads(pickle.dumps(module))
    assert restored.main is module.main
    with pytest.raises(ModuleNotFoundError):
        getattr(pf.lazy_import('surely_not_an_installed_module_xyz'), 'anything')  # noqa: B009
