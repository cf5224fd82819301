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
    lines = str(profiler).splitlines()
    assert [line.split(':')[0] for line in lines] == [str(branch), str(slow), str(fast)]
    graph(branch, x=1, callback=profiler)
    assert profiler.counts[slow] == 2


def test_profiler_records_failures_too():
    profiler = pf.Profiler()
    with pf.Graph() as graph:
        failing = pf.func_op(int, 'x')
        guarded = pf.try_(failing, [(ValueError, -1)])
    assert graph(guarded, callback=profiler) == -1
    assert set(profiler.counts) == {failing, guarded}


def test_profiler_text_has_one_line_per_operation_slowest_first():
    profiler = pf.Profiler()
    with pf.Graph() as graph:
        steps = [pf.func_op(_sleep, 0.001 * (index % 3), index) for index in range(12)]
        total = pf.sum_(steps)
    graph(total, callback=profiler)
    lines = str(profiler).splitlines()
    assert len(lines) == 10  # the ten slowest of 13 operations
    ranked = [operation for operation, _ in profiler.slowest(10)]
    assert [line.split(': ')[0] for line in lines] == [str(op) for op in ranked]
    times = [profiler.times[operation] for operation in ranked]
    assert times == sorted(times, reverse=True)
    assert str(pf.Profiler()) == ''


def test_profiler_get_slow_operations():
    profiler = pf.Profiler()
    with pf.Graph() as graph:
        slow = pf.func_op(_sleep, 0.02, 1)
        fast = slow + 1
    graph(fast, callback=profiler)
    everything = profiler.get_slow_operations()
    assert list(everything) == [slow, fast] and everything[slow] >= 0.02
    assert list(profiler.get_slow_operations(1)) == [slow]


def test_batch_iterable():
    assert list(pf.batch_iterable(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(pf.batch_iterable([], 3)) == []
    pairs = [(1, 'a'), (2, 'b'), (3, 'c')]
    assert list(pf.batch_iterable(pairs, 2, transpose=True)) == [((1, 2), ('a', 'b')),
                                                                 ((3,), ('c',))]
    endless = pf.batch_iterable(iter(int, 1), 4)  # infinite iterator: consumed lazily
    assert next(iter(endless)) == [0, 0, 0, 0]


def test_batch_iterable_has_a_length_when_its_source_has_one():
    batches = pf.batch_iterable('abcdefg', 3)
    assert len(batches) == 3
    assert list(batches) == list(batches) == [['a', 'b', 'c'], ['d', 'e', 'f'], ['g']]
    assert len(pf.batch_iterable(range(6), 3)) == 2 and len(pf.batch_iterable([], 3)) == 0
    with pytest.raises(TypeError, match='has no length'):
        len(pf.batch_iterable(iter(range(3)), 2))


@pytest.mark.parametrize('size', [0, -1])
def test_batch_iterable_rejects_sizes_below_one_when_called(size):
    with pytest.raises(ValueError, match='batch_size'):
        pf.batch_iterable(range(3), size)


@pytest.mark.parametrize('size', [2.0, '2', None])
def test_batch_iterable_rejects_sizes_that_are_not_integers(size):
    with pytest.raises(TypeError, match='batch_size') as info:
        pf.batch_iterable(range(3), size)
    assert isinstance(info.value, ValueError)


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
