"""Evaluation plans: made once per fetches and context keys, reused invisibly, dropped on change.

Every test runs three times, once for each way a plan runs: with generic calls (a plan's first
evaluation), specialised step by step, and compiled into one function (small plans, from their
second evaluation on); each keeps Pythonflow's semantics.
"""
import collections
import contextlib
import operator
import pickle
import sys
import threading
import types

import pytest

import pythonflow as pf
from pythonflow import evaluation, plans
from pythonflow import graph as graph_module


@pytest.fixture(autouse=True, params=['generic', 'interpreted', 'compiled'])
def plan_mode(request, monkeypatch):
    monkeypatch.setattr(plans, 'GENERIC_RUNS', sys.maxsize if request.param == 'generic' else 0)
    if request.param == 'interpreted':
        monkeypatch.setattr(plans, 'MAX_COMPILED_STEPS', 0)
    return request.param


@pytest.fixture
def made(monkeypatch):
    """The plans made from now on, in order."""
    made = []

    class Recorded(plans.Plan):
        __slots__ = ()

        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(graph_module, 'Plan', Recorded)
    return made


class Counter:
    """Picklable function counting its calls, returning its argument plus `offset`."""

    def __init__(self, offset=0):
        self.offset = offset
        self.calls = 0

    def __call__(self, value=0):
        self.calls += 1
        return value + self.offset


class Recorder:
    """Callback recording which operations are evaluated, in order."""

    def __init__(self):
        self.names = []

    def __call__(self, operation, context):
        self.names.append(operation.name)
        return contextlib.nullcontext()


def small_graph():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        y = pf.placeholder('y')
        ratio = (x / y).set_name('ratio')
        (ratio + 1).set_name('shifted')
    return graph


# Plans are reused and invisible ------------------------------------------------------------------

def test_plan_is_made_once_and_reused(made, plan_mode):
    graph = small_graph()
    contexts = [{'x': value, 'y': 2} for value in range(5)]
    assert [graph('shifted', context) for context in contexts] == [1, 1.5, 2, 2.5, 3]
    assert len(made) == 1
    compiled = getattr(made[0].run, '__code__', None)
    assert (compiled is not None and compiled.co_filename == '<pythonflow plan>') == (
        plan_mode == 'compiled')
    for value, context in enumerate(contexts):  # filled in place with every value, names replaced
        assert context == {graph['x']: value, graph['y']: 2, graph['ratio']: value / 2,
                           graph['shifted']: value / 2 + 1}


def test_plan_specialises_when_reused_and_gives_the_same_results(made, monkeypatch):
    monkeypatch.setattr(plans, 'GENERIC_RUNS', 1)  # the default: specialise on the second run
    graph = small_graph()
    runs, generic = [], []
    for callback in (Recorder(), None, Recorder(), None):
        context = {'x': 3, 'y': 2}
        generic.append(made[0].run == made[0]._run_generic if made else True)
        runs.append((graph(['shifted', 'ratio'], context, callback=callback), context))
        if callback is not None:
            assert callback.names == ['ratio', 'shifted']
    assert generic == [True, True, False, False] and len(made) == 1
    assert runs[0] == runs[1] == runs[2] == runs[3]
    assert runs[0][0] == (2.5, 1.5)


def test_each_fetch_set_and_key_set_has_its_own_plan(made):
    graph = small_graph()
    ratio = graph['ratio']
    for _ in range(2):
        assert graph('ratio', {'x': 1, 'y': 4}) == 0.25
        assert graph(['shifted', 'ratio'], {'x': 1, 'y': 4}) == (1.25, 0.25)
        assert graph(('shifted', 'ratio'), {'x': 1, 'y': 4}) == (1.25, 0.25)  # as the list
        assert graph(ratio, {'x': 1, 'y': 4}) == 0.25
        assert graph('ratio', {graph['x']: 1, 'y': 4}) == 0.25
        assert graph('ratio', x=3, y=4) == 0.75
    assert len(made) == 5  # the list and the tuple share one; keywords join the context first


def test_value_given_for_an_intermediate_skips_its_producers(made):
    counter = Counter(offset=1)
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        expensive = pf.func_op(counter, x, name='expensive')
        (expensive * 10).set_name('out')
    assert graph('out', {'x': 1}) == 20
    assert graph('out', {'expensive': 5}) == 50  # x is not needed and not given
    assert graph('out', {'x': 1}) == 20
    assert counter.calls == 2 and len(made) == 2


def test_callbacks_see_every_operation_on_every_evaluation():
    graph = small_graph()
    for _ in range(3):
        recorder = Recorder()
        assert graph('shifted', {'x': 3, 'y': 2}, callback=recorder) == 2.5
        assert recorder.names == ['ratio', 'shifted']
    profiler = pf.Profiler()
    graph('shifted', {'x': 3, 'y': 2}, callback=profiler)
    graph('shifted', {'x': 3, 'y': 2})  # the plan without a callback after one with
    assert set(profiler.times) == {graph['ratio'], graph['shifted']}


def test_order_is_the_evaluators_depth_first_order():
    recorder = Recorder()
    with pf.Graph() as graph:
        a = pf.constant(1, name='a')
        b = pf.add(a, 1, name='b')
        c = pf.add(b, a, name='c')
        with pf.control_dependencies([c]):
            d = pf.add(b, 2, name='d')
        pf.func_op(sum, [d, c, a], name='total')
    assert graph('total', callback=recorder) == 4 + 3 + 1
    assert recorder.names == ['a', 'b', 'c', 'd', 'total']


def test_other_mappings_and_fetch_forms(made):
    graph = small_graph()
    ordered = collections.OrderedDict(x=6, y=3)
    assert graph('ratio', ordered) == 2 and ordered[graph['ratio']] == 2
    assert graph('ratio', types.MappingProxyType({'x': 6, 'y': 3})) == 2
    assert graph((name for name in ['ratio', 'x']), {'x': 6, 'y': 3}) == (2, 6)
    assert graph([], {'x': 1}) == ()
    assert graph(['ratio', 'ratio'], {'x': 6, 'y': 3}) == (2, 2)
    assert graph('x', {'x': 6}) == 6
    before = len(graph._plans)
    graph((name for name in ['ratio']), {'x': 6, 'y': 3})
    assert len(graph._plans) == before  # a generator is no key to keep a plan under


def test_unusual_arguments_are_passed_as_given():
    def collect(*args, **kwargs):
        return args, kwargs

    with pf.Graph() as graph:
        x = pf.placeholder('x')
        many = pf.func_op(collect, *[x + index for index in range(10)])
        odd = pf.func_op(collect, x, **{'not a name': x, 'c': x, 'callback': 2, 'exc': [x]})
        plain = pf.func_op(collect, x, c=x, function=1, exc={'k': x}, resolve=(x,))
        nested = pf.func_op(collect, [x, (x, {x: x})], slice(x, None), frozenset([3]))
    for _ in range(2):
        assert graph(many, x=0) == (tuple(range(10)), {})
        assert graph(odd, x=1) == ((1,), {'not a name': 1, 'c': 1, 'callback': 2, 'exc': [1]})
        assert graph(plain, x=1) == ((1,), {'c': 1, 'function': 1, 'exc': {'k': 1},
                                            'resolve': (1,)})
        assert graph(nested, x=2) == (([2, (2, {2: 2})], slice(2, None), frozenset([3])), {})


def test_subclasses_evaluate_their_own_way():
    class Doubled(pf.func_op):
        def _evaluate(self, *args, **kwargs):
            return 2 * super()._evaluate(*args, **kwargs)

    class Join(pf.Operation):
        def _evaluate(self, *parts, separator=''):
            return separator.join(parts)

    with pf.Graph() as graph:
        doubled = Doubled(operator.add, pf.placeholder('x'), 1)
        joined = Join('a', pf.constant('b'), separator='-')
    assert [graph([doubled, joined], x=1) for _ in range(2)] == [(4, 'a-b')] * 2


def test_calling_a_graph_subclass_goes_through_its_apply():
    class Logged(pf.Graph):
        def __init__(self):
            super().__init__()
            self.calls = []

        def apply(self, fetches, context=None, *, callback=None, **kwargs):
            self.calls.append(fetches)
            return super().apply(fetches, context, callback=callback, **kwargs)

    with Logged() as graph:
        (pf.placeholder('x') + 1).set_name('y')
    assert graph('y', x=1) == 2 and graph.apply('y', x=2) == 3
    assert graph.calls == ['y', 'y']


# Errors ----------------------------------------------------------------------------------------

def test_failure_names_the_operation_and_its_line():
    graph = small_graph()
    assert graph('shifted', {'x': 1, 'y': 1}) == 2
    for _ in range(2):
        with pytest.raises(ZeroDivisionError) as info:
            graph('shifted', {'x': 1, 'y': 0})
        cause = info.value.__cause__
        assert isinstance(cause, pf.EvaluationError) and cause.operation_name == 'ratio'
        assert cause.location[0] == __file__
        assert 'ratio = (x / y)' in open(__file__).readlines()[cause.location[1] - 1]
        assert cause.__cause__ is None


def test_missing_placeholder_and_conflicts_are_explained():
    graph = small_graph()
    with pytest.raises(ValueError, match="missing value for placeholder 'y'"):
        graph('ratio', {'x': 1})
    context = {'x': 1, 'y': 2}
    graph('ratio', context)
    with pytest.raises(ValueError, match="given twice.*fresh dictionary"):
        graph('ratio', {**context, 'x': 3})
    assert graph('ratio', context) == 0.5  # an evaluated context can be read again


def test_bad_fetch_leaves_the_context_untouched():
    # Bad keys are tested in test_core; fetches are checked before any key is renamed too.
    graph = small_graph()
    context = {'x': 1, 'y': 2}
    with pytest.raises(KeyError, match="no operation named 'nope'"):
        graph(['ratio', 'nope'], context)
    with pytest.raises(TypeError, match="`fetches` must be"):
        graph(3, context)
    assert context == {'x': 1, 'y': 2} and graph('ratio', context) == 0.5


def test_cycle_is_detected_when_the_plan_is_made():
    with pf.Graph() as graph:
        a = pf.identity(1)
        b = a + 1
    assert graph(b) == 2
    a.args = (b,)
    a._prepare()
    with pytest.raises(RuntimeError, match="depends on itself"):
        graph(b)


def test_long_chain_without_recursion_with_and_without_callback():
    with pf.Graph() as graph:
        value = pf.placeholder('x')
        for _ in range(10000):
            value = value + 1
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        assert graph(value, x=0) == 10000
        assert graph(value, x=1) == 10001
        recorder = Recorder()
        assert graph(value, x=0, callback=recorder) == 10000
    finally:
        sys.setrecursionlimit(limit)
    assert len(recorder.names) == 10000


def test_deeply_nested_lazy_operations_without_recursion():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        value = x
        for _ in range(1000):
            value = pf.conditional(x > 0, value + 1, value - 1)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        assert [graph(value, x=1) for _ in range(3)] == [1001] * 3
        assert graph(value, x=-1) == -1001
    finally:
        sys.setrecursionlimit(limit)


# Changes to the graph ----------------------------------------------------------------------------

def test_operation_added_after_an_evaluation_is_seen(made):
    graph = small_graph()
    assert graph('shifted', x=1, y=1) == 2
    with graph:
        (graph['shifted'] * 3).set_name('tripled')
    assert graph('tripled', x=1, y=1) == 6
    assert graph('shifted', x=1, y=1) == 2
    assert len(made) == 3  # the first plan was dropped with the change


def test_rename_after_an_evaluation_is_seen():
    graph = small_graph()
    assert graph('shifted', {'x': 1, 'y': 1}) == 2
    graph['shifted'].set_name('old')
    with graph:
        (graph['ratio'] - 1).set_name('shifted')
    assert graph('shifted', {'x': 1, 'y': 1}) == 0
    assert graph('old', {'x': 1, 'y': 1}) == 2
    graph['x'].set_name('numerator')
    with pytest.raises(KeyError, match="no operation named 'x'"):
        graph('shifted', {'x': 1, 'y': 1})
    assert graph('shifted', {'numerator': 4, 'y': 2}) == 1


def test_changed_arguments_are_seen_once_prepared():
    graph = small_graph()
    assert graph('ratio', x=1, y=2) == 0.5
    graph['ratio'].args = (graph['y'], graph['x'])
    graph['ratio']._prepare()
    assert graph('ratio', x=1, y=2) == 2


def test_plan_made_while_the_graph_changes_is_not_kept(monkeypatch):
    graph = small_graph()
    order = plans.order_operations

    def order_and_change(*args):
        with graph:
            pf.constant(0)  # another thread adding an operation while the plan is made
        return order(*args)

    monkeypatch.setattr(plans, 'order_operations', order_and_change)
    assert graph('ratio', x=1, y=2) == 0.5
    assert graph._plans == {}


def test_number_of_plans_is_bounded(monkeypatch):
    monkeypatch.setattr(graph_module, '_MAX_PLANS', 4)
    graph = small_graph()
    for index in range(10):
        assert graph(['ratio'] * (index + 1), x=1, y=1) == (1.0,) * (index + 1)
        assert sum(len(plans_) for plans_ in graph._plans.values()) <= 4


# Lazy operations ---------------------------------------------------------------------------------

def test_conditional_evaluates_only_the_chosen_branch_each_time():
    taken, skipped = Counter(), Counter()
    with pf.Graph() as graph:
        flag = pf.placeholder('flag')
        chosen = pf.conditional(flag, pf.func_op(taken, 1), pf.func_op(skipped, 2))
        (chosen * 10).set_name('out')
    assert [graph('out', flag=True) for _ in range(3)] == [10] * 3
    assert taken.calls == 3 and skipped.calls == 0
    assert graph('out', flag=False) == 20 and skipped.calls == 1


def test_try_handles_errors_through_plans():
    cleanup = Counter()
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        guarded = pf.try_(1 / x, [(ZeroDivisionError, pf.constant('inf'))],
                          finally_=pf.func_op(cleanup))
        pf.str_format('{}!', guarded, name='out')
    assert [graph('out', x=0) for _ in range(2)] == ['inf!'] * 2
    assert graph('out', x=4) == '0.25!' and cleanup.calls == 3
    with pf.Graph() as failing:
        unhandled = pf.try_(1 / pf.placeholder('x'), [(KeyError, 0)])
    with pytest.raises(ZeroDivisionError) as info:
        failing(unhandled, x=0)
    assert isinstance(info.value.__cause__, pf.EvaluationError)
    assert info.value.__cause__.operation_name != unhandled.name  # the division failed


def test_value_computed_by_a_lazy_operation_is_not_computed_again():
    shared = Counter(offset=5)
    recorder = Recorder()
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        value = pf.func_op(shared, x, name='value')
        chosen = pf.conditional(x > 0, value, 0, name='chosen')
        pf.add(chosen, value, name='out')  # `value` comes after the lazy operation that needs it
    assert graph('out', x=1) == 12 and shared.calls == 1
    assert graph('out', x=1, callback=recorder) == 12 and shared.calls == 2
    assert recorder.names.count('value') == 1 and recorder.names[-1] == 'out'


def test_cache_through_plans():
    store = {}
    compute = Counter(offset=1)
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        cached = pf.cache(pf.func_op(compute, x), store.__getitem__, store.__setitem__, key=x)
    assert [graph(cached, x=2) for _ in range(3)] == [3] * 3
    assert compute.calls == 1


class Events:
    """Callback recording entries and exits, with the exception type an exit saw."""

    def __init__(self):
        self.events = []

    def __call__(self, operation, context):
        events = self.events

        class Manager:
            def __enter__(self):
                events.append(('enter', operation.name))

            def __exit__(self, kind, value, traceback):
                events.append(('exit', operation.name, kind))

        return Manager()


def mixed_graph():
    """A graph of lazy operations in lazy operations, with errors raised and handled."""
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        double = pf.mul(x, 2, name='double')
        inverse = pf.truediv(1, x, name='inverse')
        safe = pf.try_(inverse, [(ZeroDivisionError, pf.constant(-1, name='fallback'))],
                       finally_=pf.identity(double, name='finally'), name='safe')
        inner = pf.conditional(x > 1, pf.add(double, 1, name='big'), safe, name='inner')
        outer = pf.conditional(x > -5, inner, pf.truediv(x, 0, name='never'), name='outer')
        pf.func_op(sum, [outer, double, safe], name='total')
        pf.truediv(outer, x, name='fragile')
    return graph


@pytest.mark.parametrize('x', [-9, -1, 0, 1, 3])
@pytest.mark.parametrize('fetch', ['total', 'fragile', 'outer'])
@pytest.mark.parametrize('budget', [plans.MAX_REQUEST_STEPS, 3, 0])
def test_lazy_operations_match_the_reference_evaluator(x, fetch, budget, monkeypatch):
    monkeypatch.setattr(plans, 'MAX_REQUEST_STEPS', budget)  # past it, the evaluator works
    graph = mixed_graph()
    expected_context, expected = {graph['x']: x}, Events()
    try:
        evaluation.evaluate([graph[fetch]], expected_context, expected)
        failure = None
    except Exception as exc:  # compared with the plan's below
        failure = (type(exc), exc.__cause__.operation_name)
    for _ in range(3):  # generic, then specialised
        context, events = {'x': x}, Events()
        try:
            graph(fetch, context, callback=events)
            assert failure is None
        except Exception as exc:
            assert (type(exc), exc.__cause__.operation_name) == failure
        assert list(context.items()) == list(expected_context.items())  # the same order too
        assert events.events == expected.events
        context = {'x': x}
        try:
            graph(fetch, context)
        except Exception as exc:
            assert (type(exc), exc.__cause__.operation_name) == failure
        assert list(context.items()) == list(expected_context.items())


def test_lazy_operations_asking_for_themselves_or_for_other_operations():
    class Asks(pf.Operation):
        _lazy = True

        def _evaluate(self, what):
            value = yield (self if what == 'itself' else self.graph[what])
            return value

    with pf.Graph() as graph:
        pf.constant(5, name='elsewhere')
        itself, elsewhere, nothing = Asks('itself'), Asks('elsewhere'), Asks('nothing')
    for _ in range(3):
        assert graph(elsewhere) == 5  # not an argument, so not planned: evaluated from scratch
        with pytest.raises(RuntimeError, match='depends on itself'):
            graph(itself)
        with pytest.raises(KeyError, match="no operation named 'nothing'") as info:
            graph(nothing)
        assert info.value.__cause__.operation_name == nothing.name


def test_lazy_operation_yielding_a_value_is_an_error():
    class Wrong(pf.Operation):
        _lazy = True

        def _evaluate(self):
            yield 3

    with pf.Graph() as graph:
        wrong = Wrong()
    for _ in range(3):
        with pytest.raises(TypeError, match='must yield operations, not int') as info:
            graph(wrong)
        assert info.value.__cause__.operation_name == wrong.name


# Threads and pickles -----------------------------------------------------------------------------

def test_threads_share_plans_with_their_own_contexts(made):
    graph = small_graph()
    barrier = threading.Barrier(2, timeout=10)
    results, errors = {}, []

    def run(start):
        try:
            barrier.wait()
            contexts = [{'x': start + index, 'y': 1} for index in range(2000)]
            results[start] = [graph('shifted', context) for context in contexts]
            assert all(context[graph['ratio']] == start + index
                       for index, context in enumerate(contexts))
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(start,)) for start in (0, 10000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and not any(thread.is_alive() for thread in threads)
    for start in (0, 10000):
        assert results[start] == [start + index + 1.0 for index in range(2000)]
    assert 1 <= len(made) <= 2  # both threads may make the first plan; later ones reuse it


def test_evaluations_stay_correct_while_another_thread_adds_operations():
    graph = small_graph()
    stop = threading.Event()
    errors = []

    def evaluate():
        try:
            while not stop.is_set():
                assert graph('shifted', x=3, y=1) == 4
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=evaluate)
    thread.start()
    try:
        for index in range(300):
            with graph:
                (graph['shifted'] + index).set_name(f'plus_{index}')
            assert graph(f'plus_{index}', x=3, y=1) == 4 + index
    finally:
        stop.set()
        thread.join(30)
    assert errors == [] and not thread.is_alive()


def test_pickled_graph_leaves_plans_behind_and_evaluates():
    counter = Counter(offset=1)
    with pf.Graph() as graph:
        value = pf.func_op(counter, pf.placeholder('x'), name='value')
        pf.conditional(value > 1, value, -1, name='out')
    assert graph('out', x=1) == 2 and graph._plans
    assert '_plans' not in graph.__getstate__()
    restored = pickle.loads(pickle.dumps(graph))
    assert restored._plans == {}
    assert [restored('out', x=1), restored('out', x=0)] == [2, -1]
    assert restored['value'].target.calls == 2 + 1  # the copy's own counter: 1 before pickling
