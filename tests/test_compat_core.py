"""Graph-core behaviour that code written for Spotify's Pythonflow relies on, and container and
naming faults of the graph core."""
import collections
import os
import pickle
import threading

import pytest

import pythonflow as pf
from pythonflow.errors import ForeignOperationError, InvalidTypeError


def _pair_sum(x, y, offset=0):
    return x + y + offset


# Operator protocols ------------------------------------------------------------------------------

def test_reversed_of_an_operation_is_an_operation():
    with pf.Graph() as graph:
        letters = pf.placeholder('letters')
        backwards = reversed(letters)
    assert isinstance(backwards, pf.Operation)
    assert list(graph(backwards, letters='xyz')) == ['z', 'y', 'x']
    assert list(graph(backwards, letters=(1, 2))) == [2, 1]


def test_every_operation_is_truthy():
    with pf.Graph():
        unknown_length = pf.placeholder('p')
        empty = pf.constant([], length=0)
    # Truthiness says "this is an operation", not anything about its future value.
    assert bool(unknown_length) is True
    assert bool(empty) is True
    assert (unknown_length or None) is unknown_length


def test_lazy_constant_needs_a_callable_when_created():
    with pf.Graph() as graph:
        for target in (None, 42, 'text'):
            with pytest.raises(ValueError, match='callable') as info:
                pf.lazy_constant(target)
            assert isinstance(info.value, TypeError)
    assert graph.operations == {}  # nothing half-made was registered


# Cache keys --------------------------------------------------------------------------------------

def test_cache_default_key_is_the_hash_of_the_argument_values():
    store = {}
    calls = []

    def add(x, y, offset=0):
        calls.append((x, y, offset))
        return x + y + offset

    with pf.Graph() as graph:
        x = pf.placeholder('x')
        cached = pf.cache(pf.func_op(add, x, 'b', offset='c'), store.__getitem__,
                          store.__setitem__)
    assert graph(cached, x='a') == 'abc'
    # Positional values then keyword values, as one tuple.
    assert list(store) == [hash(('a', 'b', 'c'))]
    store[hash(('a', 'b', 'c'))] = 'planted'
    assert graph(cached, x='a') == 'planted'
    assert calls == [('a', 'b', 'c')]


def test_cache_default_key_falls_back_to_a_digest_for_unhashable_values():
    store = {}
    with pf.Graph() as graph:
        items = pf.placeholder('items')
        cached = pf.cache(pf.sum_(items), store.__getitem__, store.__setitem__)
    assert graph(cached, items=[1, 2, 3]) == 6
    assert graph(cached, items=[1, 2, 3]) == 6
    assert graph(cached, items=[4]) == 4
    assert len(store) == 2 and all(isinstance(key, str) for key in store)


def test_cache_file_names_each_file_after_the_key(tmp_path):
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        y = pf.placeholder('y')
        cached = pf.cache_file(pf.func_op(_pair_sum, x, y), str(tmp_path / 'sum-%s.pkl'))
    assert graph(cached, x=2, y=3) == 5
    written = tmp_path / f'sum-{hash((2, 3))}.pkl'
    assert sorted(os.listdir(tmp_path)) == [written.name]
    with open(written, 'rb') as fp:
        assert pickle.load(fp) == 5
    # A file found under another key's name is that key's value: nothing is recomputed.
    os.rename(written, tmp_path / f'sum-{hash((10, 20))}.pkl')
    assert graph(cached, x=10, y=20) == 5


# Bad fetches and contexts ------------------------------------------------------------------------

def test_fetches_that_the_graph_cannot_resolve():
    with pf.Graph():
        elsewhere = pf.placeholder('elsewhere')
    graph = pf.Graph()
    with pytest.raises(RuntimeError, match='does not belong to this graph') as info:
        graph(elsewhere)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ForeignOperationError)
    with pytest.raises(KeyError, match="no operation named 'elsewhere'"):
        graph('elsewhere')
    for fetches in (123, [123], 4.5):
        with pytest.raises(ValueError) as info:
            graph(fetches)
        assert isinstance(info.value, TypeError) and isinstance(info.value, InvalidTypeError)


def test_operations_of_two_graphs_cannot_be_combined():
    with pf.Graph():
        first = pf.placeholder('first')
    with pf.Graph():
        with pytest.raises(RuntimeError, match='different graph'):
            pf.identity([first])


@pytest.mark.parametrize('context', ['not-a-mapping', [('x', 1)], 7])
def test_context_that_is_not_a_mapping(context):
    with pf.Graph() as graph:
        pf.placeholder('x')
    with pytest.raises(ValueError, match='must be a mapping') as info:
        graph([], context)
    assert isinstance(info.value, TypeError)


def test_context_key_that_is_neither_operation_nor_name():
    with pf.Graph() as graph:
        pf.placeholder('x')
    context = {'x': 1, 123: None}
    with pytest.raises(ValueError, match='expected an operation or the name') as info:
        graph([], context)
    assert isinstance(info.value, TypeError)
    assert context == {'x': 1, 123: None}


def test_one_operation_given_twice_is_rejected_even_with_equal_values():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        (x + 1).set_name('y')
    cases = [({x: 1}, {'x': 1}, 'as a keyword'),
             ({'x': 1}, {'x': 1}, 'as a keyword'),
             ({x: 1, 'x': 1}, {}, 'by its name')]
    for context, kwargs, how in cases:
        before = dict(context)
        with pytest.raises(ValueError, match=f"operation 'x' is given twice.*{how}"):
            graph('y', context, **kwargs)
        assert context == before  # a rejected call changes nothing
    assert graph('y', {x: 1}) == 2 and graph('y', x=1) == 2


# Containers --------------------------------------------------------------------------------------

class _Tagged(list):
    """A list subclass with an attribute of its own."""


def test_dict_and_list_subclasses_keep_their_type_and_contents():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        counts = pf.identity(collections.Counter({'a': x, 'b': 1}))
        keyed = pf.identity(collections.Counter({x: 2}))
        grouped = pf.identity(collections.defaultdict(list, {'a': [x]}))
        ordered = pf.identity(collections.OrderedDict([('z', x), ('a', 0)]))
        tagged_list = _Tagged([x, 1])
        tagged_list.tag = 'kept'
        tagged = pf.identity(tagged_list)
        nested = pf.identity([collections.Counter({'n': x})])
    values = graph([counts, keyed, grouped, ordered, tagged, nested], x=3)
    counts, keyed, grouped, ordered, tagged, nested = values
    assert type(counts) is collections.Counter and counts == {'a': 3, 'b': 1}
    assert type(keyed) is collections.Counter and keyed == {3: 2}
    assert type(grouped) is collections.defaultdict and grouped == {'a': [3]}
    assert grouped.default_factory is list and grouped['missing'] == []
    assert type(ordered) is collections.OrderedDict and list(ordered.items()) == [('z', 3),
                                                                                   ('a', 0)]
    assert type(tagged) is _Tagged and tagged == [3, 1] and tagged.tag == 'kept'
    assert tagged is not tagged_list and tagged_list[0] is x  # the graph's value is untouched
    assert nested == [collections.Counter({'n': 3})]


def test_dict_subclasses_given_in_the_context_pass_through_unchanged():
    grouped = collections.defaultdict(set, {'k': {1}})
    with pf.Graph() as graph:
        value = pf.placeholder('value')
        pair = pf.identity((value, 'tag'))
    result, _ = graph(pair, value=grouped)
    assert result is grouped and result.default_factory is set


# Naming ------------------------------------------------------------------------------------------

class _ObservedLock:
    """Lock that reports an attempt to acquire it from a thread other than `owner`."""

    def __init__(self, attempted: threading.Event) -> None:
        self._lock = threading.Lock()
        self._attempted = attempted
        self.owner = None

    def __enter__(self):
        if self.owner is not None and threading.get_ident() != self.owner:
            self._attempted.set()
        self._lock.acquire()
        return self

    def __exit__(self, *exc_info):
        self._lock.release()


class _PausingOperations(dict):
    """Operations dict pausing the first look-up of `name`, after it has read the answer, until
    `resume` is set."""

    def __init__(self, items, name, checked, resume, lock):
        super().__init__(items)
        self._name, self._checked, self._resume, self._lock = name, checked, resume, lock

    def _pause(self, key):
        if key == self._name and not self._checked.is_set():
            self._lock.owner = threading.get_ident()
            self._checked.set()
            assert self._resume.wait(10), 'the other rename neither ran nor waited for the lock'

    def get(self, key, default=None):
        found = super().get(key, default)
        self._pause(key)
        return found

    def __contains__(self, key):
        found = super().__contains__(key)
        self._pause(key)
        return found


def test_concurrent_renames_to_one_name_let_exactly_one_win():
    with pf.Graph() as graph:
        first = pf.constant(1, name='first')
        second = pf.constant(2, name='second')
    checked, progressed = threading.Event(), threading.Event()
    # The first renamer pauses right after looking the name up. The second one then either
    # completes its rename (the check was not under the lock) or blocks on the lock; both wake
    # the first one up, so the test never waits for a timeout.
    graph._lock = _ObservedLock(progressed)
    graph.operations = _PausingOperations(graph.operations, 'taken', checked, progressed,
                                          graph._lock)
    errors = []

    def rename(operation):
        try:
            operation.set_name('taken')
        except ValueError as exc:
            errors.append((operation, exc))
        finally:
            progressed.set()

    threads = [threading.Thread(target=rename, args=(first,))]
    threads[0].start()
    assert checked.wait(10)
    threads.append(threading.Thread(target=rename, args=(second,)))
    threads[1].start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert len(errors) == 1 and 'duplicate operation name' in str(errors[0][1])
    loser = errors[0][0]
    winner = second if loser is first else first
    assert graph.operations['taken'] is winner and winner.name == 'taken'
    assert graph.operations[loser.name] is loser and loser.name != 'taken'
    assert sorted(graph.operations) == sorted(['taken', loser.name])
