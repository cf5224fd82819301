import builtins
import operator
import pickle

import pytest

import pythonflow as pf


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


def test_every_builtin_has_a_wrapper():
    for name, value in vars(builtins).items():
        if name.startswith('_') or not callable(value) or name in {
                'copyright', 'credits', 'exit', 'help', 'license', 'quit'}:
            continue
        if isinstance(value, type) and issubclass(value, BaseException):
            continue
        assert callable(getattr(pf, name + '_')), name
        assert getattr(pf, name + '_').__doc__


def test_every_operator_function_has_a_wrapper():
    for name in operator.__all__:
        assert callable(getattr(pf, name)), name
    assert 'abs' not in pf.__all__ and 'abs_' in pf.__all__ and 'getitem' in pf.__all__


def test_builtin_and_operator_wrappers_evaluate():
    with pf.Graph() as graph:
        items = pf.placeholder('items')
        ops = [pf.len_(items), pf.sum_(items), pf.max_(items), pf.min_(items),
               pf.sorted_(items, reverse=True), pf.list_(pf.map_(str, items)),
               pf.tuple_(pf.zip_(items, items)), pf.list_(pf.range_(pf.len_(items))),
               pf.dict_(pf.enumerate_(items)), pf.any_(items), pf.all_(items),
               pf.abs_(-3), pf.str_(1), pf.int_('4'), pf.float_('2.5'),
               pf.getattr_(items, 'count')(1), pf.isinstance_(items, list),
               pf.add(items, [9]), pf.getitem(items, 0), pf.mul(2, 3), pf.abs(-2)]
    values = graph(ops, items=[1, 3, 2])
    assert values == (3, 6, 3, 1, [3, 2, 1], ['1', '3', '2'], ((1, 1), (3, 3), (2, 2)),
                      [0, 1, 2], {0: 1, 1: 3, 2: 2}, True, True, 3, '1', 4, 2.5, 1, True,
                      [1, 3, 2, 9], 1, 6, 2)
    assert ops[0].name.startswith('len_')
