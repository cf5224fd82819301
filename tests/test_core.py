import pickle
import sys
import threading

import pytest

import pythonflow as pf


def test_placeholder_sum_by_name_and_kwargs():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        y = pf.placeholder('y')
        z = (x + y).set_name('z')
    assert graph('z', x=1, y=2) == 3
    assert graph(z, {x: 3, 'y': 4}) == 7
    assert graph.apply([z, 'x'], {'x': 5, 'y': 6}) == (11, 5)
    assert graph['z'] is z
    assert graph.operations['x'] is x


def test_long_chain_under_default_recursion_limit():
    assert sys.getrecursionlimit() <= 10000
    with pf.Graph() as graph:
        value = pf.placeholder('x')
        for _ in range(10000):
            value = value + 1
    assert graph(value, x=0) == 10000


def test_pickle_round_trip():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        (x * 3).set_name('y')
    restored = pickle.loads(pickle.dumps(graph))
    assert restored('y', x=2) == 6


def test_default_graph_is_per_thread():
    seen = []
    with pf.Graph():
        thread = threading.Thread(target=lambda: seen.append(_active_or_none()))
        thread.start()
        thread.join(5)
    assert seen == [None]


def _active_or_none():
    try:
        return pf.Graph.get_active_graph()
    except ValueError:
        return None


def test_failure_keeps_type_and_names_operation():
    with pf.Graph() as graph:
        ratio = (pf.placeholder('a') / pf.placeholder('b')).set_name('ratio')
    with pytest.raises(ZeroDivisionError) as info:
        graph(ratio, a=1, b=0)
    assert isinstance(info.value.__cause__, pf.EvaluationError)
    assert "'ratio'" in str(info.value.__cause__)
    assert __file__ in str(info.value.__cause__)
