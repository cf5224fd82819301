import ast
import builtins
import importlib
import importlib.resources
import inspect
import operator
import os
import pickle
import sys
import threading

import numpy as np
import pytest

import pythonflow as pf


def _line_of(text):
    with open(__file__) as fp:
        for number, line in enumerate(fp, 1):
            if text in line and "_line_of" not in line:
                return number
    raise AssertionError(text)


def test_placeholder_sum_by_name_and_kwargs():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        y = pf.placeholder('y')
        z = (x + y).set_name('z')
    assert graph('z', x=1, y=2) == 3
    assert graph(z, {x: 3, 'y': 4}) == 7
    assert graph.apply([z, 'x'], {'x': 5, 'y': 6}) == (11, 5)
    assert graph(('z',), x=1, y=1) == (2,)
    assert graph['z'] is z
    assert graph.operations == {'x': x, 'y': y, 'z': z}
    assert 'z' in graph and z in graph and 'w' not in graph


def test_context_is_filled_in_place_with_intermediates():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        double = x * 2
        (double + 1).set_name('out')
    context = {'x': 4}
    assert graph('out', context) == 9
    assert context[double] == 8
    assert context[x] == 4
    assert 'x' not in context  # names were replaced by operations


def test_reusing_context_with_conflicting_value_explains():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        (x + 1).set_name('y')
    context = {'x': 1}
    graph('y', context)
    context['x'] = 2
    with pytest.raises(ValueError, match=r"operation 'x' is given twice.*in place"
                                          r".*fresh dictionary.*graph\(fetches, dict\(inputs\)"):
        graph('y', context)
    with pytest.raises(ValueError, match="fresh dictionary"):
        graph('y', context, x=3)
    assert graph('y', {}, x=3) == 4


def test_bad_inputs_give_clear_errors():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
    with pytest.raises(KeyError, match="no operation named 'nope'"):
        graph('nope')
    with pytest.raises(TypeError, match="must be a mapping"):
        graph(x, [1, 2])
    with pytest.raises(KeyError, match="unknown"):
        graph(x, {'unknown': 1})
    with pytest.raises(TypeError, match="`fetches` must be an operation"):
        graph(3)
    with pytest.raises(TypeError, match="expected an operation"):
        graph([3])
    with pytest.raises(ValueError, match="missing value for placeholder 'x'"):
        graph(x)
    with pf.Graph() as other:
        foreign = pf.constant(1)
    with pytest.raises(ValueError, match="does not belong to this graph"):
        graph(foreign)
    assert graph(x, {'x': 1}) == 1 and other(foreign) == 1


def test_bad_context_key_leaves_context_untouched():
    with pf.Graph() as graph:
        pf.placeholder('x')
    context = {'x': 1, 'unknown': 2}
    with pytest.raises(KeyError):
        graph('x', context)
    assert context == {'x': 1, 'unknown': 2}


def test_read_only_mapping_is_copied():
    import types
    with pf.Graph() as graph:
        (pf.placeholder('x') + 1).set_name('y')
    assert graph('y', types.MappingProxyType({'x': 1})) == 2


def test_duplicate_name_is_rejected():
    with pf.Graph() as graph:
        pf.placeholder('x')
        with pytest.raises(ValueError, match="duplicate operation name 'x'"):
            pf.placeholder('x')
        y = pf.constant(1)
        with pytest.raises(ValueError, match="duplicate operation name 'x'"):
            y.set_name('x')
        with pytest.raises(TypeError):
            y.set_name(3)
    assert graph.operations['x'].name == 'x'


def test_automatic_names_are_readable_and_yield_to_explicit_names():
    with pf.Graph() as graph:
        x = pf.placeholder()
        total = x + 1
        product = x * 2
    assert total.name.startswith('add_')
    assert product.name.startswith('mul_')
    taken = total.name
    with graph:
        claimer = pf.constant(5, name=taken)
    assert graph[taken] is claimer
    assert total.name != taken and graph[total.name] is total
    assert len(set(graph.operations)) == 4
    product.name = 'product'
    assert graph['product'] is product and product.name == 'product'


def test_operations_need_a_graph():
    with pytest.raises(ValueError, match="no default graph"):
        pf.constant(1)
    graph = pf.Graph()
    assert pf.constant(1, graph=graph).graph is graph


def test_graph_exit_out_of_order_is_an_error():
    first, second = pf.Graph(), pf.Graph()
    first.__enter__()
    second.__enter__()
    with pytest.raises(RuntimeError, match="reverse order"):
        first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    first.__exit__(None, None, None)


OPERATOR_CASES = [
    (operator.add, 7, 3), (operator.sub, 7, 3), (operator.mul, 7, 3), (operator.truediv, 7, 2),
    (operator.floordiv, 7, 2), (operator.mod, 7, 3), (operator.pow, 2, 5), (operator.and_, 6, 3),
    (operator.or_, 6, 3), (operator.xor, 6, 3), (operator.lshift, 1, 4), (operator.rshift, 32, 2),
    (operator.lt, 1, 2), (operator.le, 2, 2), (operator.eq, 2, 2), (operator.ne, 1, 2),
    (operator.gt, 1, 2), (operator.ge, 3, 2), (divmod, 7, 2),
]


@pytest.mark.parametrize('function, a, b', OPERATOR_CASES)
def test_binary_operators_and_reflections(function, a, b):
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        forward = function(x, b)
        reflected = function(a, x)
    assert graph(forward, x=a) == function(a, b)
    assert graph(reflected, x=b) == function(a, b)


def test_matmul_unary_getitem_getattr_and_call():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        product = x @ x
        rproduct = np.eye(2) @ x
        negative, positive, absolute, inverted = -x, +x, abs(x), ~pf.constant(5)
        item = x[0, 1]
        sliced = pf.constant([1, 2, 3, 4])[1:pf.constant(3)]
        shape = x.shape
        total = x.sum(axis=1)
        joined = pf.constant(','.join)(['a', 'b'])
    matrix = np.array([[1.0, -2.0], [3.0, 4.0]])
    values = graph([product, rproduct, negative, positive, absolute, inverted, item, sliced,
                    shape, total, joined], x=matrix)
    np.testing.assert_array_equal(values[0], matrix @ matrix)
    np.testing.assert_array_equal(values[1], matrix)
    np.testing.assert_array_equal(values[2], -matrix)
    np.testing.assert_array_equal(values[3], matrix)
    np.testing.assert_array_equal(values[4], abs(matrix))
    assert values[5:9] == (-6, -2.0, [2, 3], (2, 2))
    np.testing.assert_array_equal(values[9], [-1.0, 7.0])
    assert values[10] == 'a,b'


def test_numpy_scalars_defer_to_operations():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        scaled = np.float64(2.0) * x
    assert isinstance(scaled, pf.Operation)
    assert graph(scaled, x=3.0) == 6.0


def test_nested_containers_are_resolved():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        nested = pf.identity({'list': [x, 1], 'tuple': (x,), x: 'key', 'set': {x},
                              'slice': slice(x, None)})
    assert graph(nested, x=2) == {'list': [2, 1], 'tuple': (2,), 2: 'key', 'set': {2},
                                  'slice': slice(2, None)}


def test_underscore_attributes_raise_and_create_nothing():
    import copy
    with pf.Graph() as graph:
        x = pf.placeholder('x')
    before = dict(graph.operations)
    with pytest.raises(AttributeError):
        getattr(x, '_repr_html_')  # noqa: B009
    with pytest.raises(AttributeError):
        getattr(x, '__array_interface__')  # noqa: B009
    assert not hasattr(x, '_ipython_display_')
    assert repr(x) == "<pf.placeholder 'x'>"
    assert copy.copy(x).name == 'x'
    assert graph.operations == before


def test_length_unpacking_len_and_truthiness():
    with pf.Graph() as graph:
        pair = pf.func_op(divmod, 17, 5, length=2)
        quotient, remainder = pair
        unknown = pf.constant((1, 2))
    assert len(pair) == 2 and pair.length == 2
    assert graph([quotient, remainder]) == (3, 2)
    with pytest.raises(TypeError, match="length of .* is unknown"):
        a, b = unknown
    assert bool(unknown) is True  # an operation is truthy whatever its value will be


def test_attributes_of_operations():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        op = pf.func_op(max, x, 3, key=abs, name='m')
    assert op.args == (x, 3)
    assert op.kwargs == {'key': abs}
    assert op.graph is graph
    assert op.dependencies == []
    assert op.target is max
    assert op.evaluate({'x': -7}) == -7


def test_long_chain_under_default_recursion_limit():
    assert sys.getrecursionlimit() <= 10000
    with pf.Graph() as graph:
        value = pf.placeholder('x')
        for _ in range(10000):
            value = value + 1
    assert graph(value, x=0) == 10000
    restored = pickle.loads(pickle.dumps(graph))
    assert restored(value.name, x=5) == 10005


def test_wide_graph():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        total = pf.sum_([x + index for index in range(10000)])
    assert graph(total, x=1) == 10000 + sum(range(10000))


def test_shared_dependency_is_evaluated_once():
    calls = []
    with pf.Graph() as graph:
        shared = pf.func_op(lambda value: calls.append(value) or value, pf.placeholder('x'))
        total = pf.func_op(operator.add, shared + 1, shared * 2)
    assert graph(total, x=3) == 10
    assert calls == [3]


def test_pickle_round_trip_and_new_operations():
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        y = (x * 3).set_name('y')
    restored = pickle.loads(pickle.dumps(graph))
    assert restored('y', x=2) == 6
    assert restored['y'] is not y and restored['y'].graph is restored
    with restored:
        z = (restored['y'] + 1).set_name('z')
        unnamed = z - 1
    assert restored(['z', unnamed], x=2) == (7, 6)
    assert unnamed.name not in ('x', 'y', 'z')
    op = pickle.loads(pickle.dumps(y))
    assert op.graph('y', x=1) == 3


@pf.opmethod
def _decorated_square(value):
    return value * value


def test_opmethod_operations_pickle():
    with pf.Graph() as graph:
        _decorated_square(pf.placeholder('x')).set_name('y')
    assert pickle.loads(pickle.dumps(graph))('y', x=4) == 16


def test_opmethod_with_and_without_arguments():
    @pf.opmethod(length=2)
    def split(value):
        return value[0], value[1:]

    @pf.opmethod
    def shout(text):
        return text.upper()

    with pf.Graph() as graph:
        head, tail = split('hello')
        loud = shout(tail)
    assert graph([head, loud]) == ('h', 'ELLO')
    assert shout.__name__ == 'shout'


def test_default_graph_is_per_thread():
    seen = []

    def probe():
        try:
            seen.append(pf.Graph.get_active_graph())
        except ValueError:
            seen.append(None)
        with pf.Graph() as own:
            seen.append(pf.constant(1).graph is own)

    with pf.Graph() as graph:
        thread = threading.Thread(target=probe)
        thread.start()
        thread.join(5)
        assert pf.Graph.get_active_graph() is graph
    assert seen == [None, True]
    assert len(graph.operations) == 0


def test_failure_keeps_type_and_names_operation_and_line():
    with pf.Graph() as graph:
        ratio = (pf.placeholder('a') / pf.placeholder('b')).set_name('ratio')  # RATIO-LINE
    with pytest.raises(ZeroDivisionError) as info:
        graph(ratio, a=1, b=0)
    cause = info.value.__cause__
    assert isinstance(cause, pf.EvaluationError)
    assert "'ratio'" in str(cause)
    assert f'File "{__file__}", line {_line_of("RATIO-LINE")}' in str(cause)
    assert cause.operation_name == 'ratio'
    assert cause.location[:2] == (__file__, _line_of("RATIO-LINE"))


def test_failure_location_skips_library_frames():
    with pf.Graph() as graph:
        value = pf.int_('not a number')  # INT-LINE
    with pytest.raises(ValueError) as info:
        graph(value)
    assert f'line {_line_of("INT-LINE")}' in str(info.value.__cause__)


def test_existing_cause_is_kept_in_the_chain():
    def fail():
        try:
            raise KeyError('inner')
        except KeyError as exc:
            raise RuntimeError('outer') from exc

    with pf.Graph() as graph:
        op = pf.func_op(fail)
    with pytest.raises(RuntimeError) as info:
        graph(op)
    assert isinstance(info.value.__cause__, pf.EvaluationError)
    assert isinstance(info.value.__cause__.__cause__, KeyError)


def test_exceptions_with_cause_pickle():
    with pf.Graph() as graph:
        op = pf.func_op(operator.truediv, 1, 0)
    with pytest.raises(ZeroDivisionError) as info:
        graph(op)
    restored = pickle.loads(pickle.dumps(info.value.__cause__))
    assert restored.operation_name == op.name


def test_callback_wraps_each_evaluation():
    events = []

    class Recorder:
        def __init__(self, operation, context):
            self.operation = operation

        def __enter__(self):
            events.append(('enter', self.operation.name))

        def __exit__(self, *exc_info):
            events.append(('exit', self.operation.name))

    with pf.Graph() as graph:
        x = pf.placeholder('x')
        (x + 1).set_name('y')
    assert graph('y', {'x': 1}, callback=Recorder) == 2
    assert events == [('enter', 'y'), ('exit', 'y')]


def test_cycle_is_detected():
    with pf.Graph() as graph:
        a = pf.identity(1)
        b = a + 1
    a.args = (b,)
    a._prepare()
    with pytest.raises(RuntimeError, match="depends on itself"):
        graph(b)


def test_subclassing_operation():
    class Join(pf.Operation):
        def _evaluate(self, *parts, separator=''):
            return separator.join(parts)

    with pf.Graph() as graph:
        joined = Join('a', pf.constant('b'), separator='-')
    assert graph(joined) == 'a-b'
    assert joined.name.startswith('Join_')
    with graph, pytest.raises(NotImplementedError):
        graph(pf.Operation())


def test_threads_evaluate_one_graph_concurrently():
    with pf.Graph() as graph:
        value = pf.placeholder('x')
        for _ in range(200):
            value = value + 1
    results = {}

    def run(start):
        results[start] = [graph(value, x=start) for _ in range(20)]

    threads = [threading.Thread(target=run, args=(start,)) for start in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {start: [start + 200] * 20 for start in range(8)}


# The shape of the code: what readers, IDEs and Sphinx see ---------------------------------------

PACKAGE_DIR = os.path.dirname(os.path.abspath(pf.__file__))
CORE_MODULES = ['caching', 'callers', 'core', 'errors', 'evaluation', 'graph', 'operations',
                'plans', 'scopes', 'util', 'wrappers']
OPERATOR_METHODS = {
    '__add__', '__sub__', '__mul__', '__truediv__', '__floordiv__', '__mod__', '__divmod__',
    '__pow__', '__matmul__', '__lshift__', '__rshift__', '__and__', '__xor__', '__or__',
    '__radd__', '__rsub__', '__rmul__', '__rtruediv__', '__rfloordiv__', '__rmod__',
    '__rdivmod__', '__rpow__', '__rmatmul__', '__rlshift__', '__rrshift__', '__rand__',
    '__rxor__', '__ror__', '__lt__', '__le__', '__eq__', '__ne__', '__gt__', '__ge__',
    '__neg__', '__pos__', '__abs__', '__invert__',
}


def _parse(module):
    with open(os.path.join(PACKAGE_DIR, f'{module}.py')) as fp:
        return ast.parse(fp.read())


def test_operator_methods_are_defined_in_the_class_body():
    tree = _parse('core')
    (operation,) = [node for node in tree.body
                    if isinstance(node, ast.ClassDef) and node.name == 'Operation']
    defined = set()
    for node in operation.body:
        if isinstance(node, ast.Assign):
            defined.update(target.id for target in node.targets)
        elif isinstance(node, ast.FunctionDef):
            defined.add(node.name)
    assert OPERATOR_METHODS <= defined
    calls = [node.func.id for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    assert 'setattr' not in calls
    for name in OPERATOR_METHODS:
        method = vars(pf.Operation)[name]
        assert method.__name__ == name and method.__qualname__ == f'Operation.{name}'
        assert method.__doc__.startswith('Return an operation evaluating ``')
    assert vars(pf.Operation)['__rsub__'].__doc__.endswith('``operator.sub(other, self)``.')
    assert pf.Operation.__hash__ is object.__hash__


def _assigned_names(node):
    if isinstance(node, ast.Assign):
        return {target.id for target in node.targets if isinstance(target, ast.Name)}
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)) and isinstance(node.target, ast.Name):
        return {node.target.id}
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):  # __all__.extend(...)
        function = node.value.func
        if isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name):
            return {function.value.id}
    return set()


def test_every_module_lists_its_public_names_literally():
    for module in CORE_MODULES + ['__init__']:
        tree = _parse(module)
        assignments = [node for node in tree.body if '__all__' in _assigned_names(node)]
        assert len(assignments) == 1, module
        names = ast.literal_eval(assignments[0].value)  # a plain list of strings
        imported = importlib.import_module('pythonflow' if module == '__init__'
                                           else f'pythonflow.{module}')
        assert names == imported.__all__ and len(set(names)) == len(names), module
        assert all(hasattr(imported, name) for name in names), module
    exposed = set()
    for module in ('core', 'operations', 'caching', 'util', 'wrappers'):
        exposed.update(importlib.import_module(f'pythonflow.{module}').__all__)
    assert set(pf.__all__) == exposed


def test_star_import_gives_the_public_names_and_shadows_no_builtin():
    namespace = {}
    exec('from pythonflow import *', namespace)  # noqa: S102 - the behaviour under test
    del namespace['__builtins__']
    assert set(namespace) == set(pf.__all__)
    assert not set(namespace) & set(dir(builtins))
    assert namespace['len_'] is pf.len_ and namespace['cache_file'] is pf.cache_file
    # Where Spotify's Pythonflow defines them, too.
    from pythonflow.operations import cache, cache_file
    assert (cache, cache_file) == (pf.cache, pf.cache_file)


def _package_imports(module):
    # Names imported from other modules of the package when the module runs (imports only for
    # type checkers, under `if TYPE_CHECKING:`, do not run and are left out).
    imports = {}
    for node in _parse(module).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is None:
                for alias in node.names:
                    imports.setdefault(alias.name, set())
            else:
                imports.setdefault(node.module, set()).update(a.name for a in node.names)
    return imports


def test_core_modules_import_each_other_one_way():
    graph = {module: _package_imports(module) for module in CORE_MODULES}
    assert graph['scopes'] == {} and graph['errors'] == {}
    assert 'core' not in graph['graph']
    for module, imports in graph.items():
        for imported in ('graph', 'scopes'):  # no reaching into their private state
            assert imports.get(imported, set()) <= set(
                importlib.import_module(f'pythonflow.{imported}').__all__), module
    done, visiting = set(), []

    def visit(module):
        assert module not in visiting, f"import cycle: {visiting + [module]}"
        if module not in done:
            visiting.append(module)
            for imported in graph[module]:
                visit(imported)
            visiting.pop()
            done.add(module)

    for module in graph:
        visit(module)


def test_public_signatures_have_type_hints_and_docstrings():
    missing = []

    def check(function, label, follow_wrapped=False):
        # Wrappers of builtins are checked themselves, not the builtins they carry; the methods
        # made by decorators such as `contextlib.contextmanager`, as the function decorated.
        signature = inspect.signature(function, follow_wrapped=follow_wrapped)
        for parameter in signature.parameters.values():
            if parameter.name != 'self' and parameter.annotation is inspect.Parameter.empty:
                missing.append(f'{label}: {parameter.name}')
        if signature.return_annotation is inspect.Signature.empty:
            missing.append(f'{label}: return')

    for module_name in CORE_MODULES:
        module = importlib.import_module(f'pythonflow.{module_name}')
        assert module.__doc__.strip(), module_name
        for name in module.__all__:
            value = getattr(module, name)
            if getattr(value, '__module__', None) != module.__name__:
                continue  # documented where it is defined
            assert (value.__doc__ or '').strip(), f'{module_name}.{name}'
            if not inspect.isclass(value):
                check(value, f'{module_name}.{name}')
                continue
            for attribute, member in vars(value).items():
                public = not attribute.startswith('_')
                if isinstance(member, staticmethod):
                    member = member.__func__
                if inspect.isfunction(member) and (public or attribute.startswith('__')):
                    check(member, f'{module_name}.{name}.{attribute}', follow_wrapped=True)
                if public and (inspect.isfunction(member) or isinstance(member, property)):
                    assert (member.__doc__ or '').strip(), f'{module_name}.{name}.{attribute}'
    assert missing == []


def test_package_declares_its_type_hints():
    # PEP 561: the marker tells type checkers to use the hints of the installed package.
    assert importlib.resources.files('pythonflow').joinpath('py.typed').is_file()
    with open(os.path.join(os.path.dirname(PACKAGE_DIR), 'setup.py')) as fp:
        assert '"pythonflow": ["py.typed"]' in fp.read()


def _triple(value):
    return value * 3


def test_every_kind_of_operation_pickles(tmp_path):
    store = {}
    with pf.Graph() as graph:
        x = pf.placeholder('x')
        check = pf.assert_(x > 0, 'x must be positive')
        with pf.control_dependencies([check]):
            parts = [
                pf.constant(2) * x, pf.identity([x, {'k': x}]), pf.conditional(x > 1, x, -x),
                pf.try_(1 / (x - 1), [(ZeroDivisionError, 'none')]),
                pf.cache(pf.func_op(_triple, x), store.__getitem__, store.__setitem__),
                pf.cache_file(pf.func_op(_triple, x), str(tmp_path / 'x-%s.pkl')),
                pf.lazy_constant(dict), _decorated_square(x), pf.len_(pf.str_(x)),
                pf.getitem([x], 0), pf.import_('math').sqrt(x), pf.str_format('{}!', x),
                pf.call(max, x, 0), reversed(pf.list_(pf.range_(x))),
            ]
        whole = pf.func_op(list, parts[:-1] + [pf.list_(parts[-1])], name='parts')
    expected = [2, [1, {'k': 1}], -1, 'none', 3, 3, {}, 1, 1, 1, 1.0, '1!', 1, [0]]
    assert graph('parts', x=1) == expected
    restored = pickle.loads(pickle.dumps(graph))
    assert restored('parts', x=1) == expected
    copies = [restored[part.name] for part in parts]
    assert all(copy.dependencies == [restored[check.name]] for copy in copies)
    assert restored['parts'] is not whole and restored['parts'].graph is restored
    with pytest.raises(AssertionError, match='x must be positive'):
        restored('parts', x=-1)


def test_control_dependencies_are_per_thread():
    entered, created = threading.Event(), threading.Event()
    with pf.Graph() as graph:
        marker = pf.constant('marker')
    made = {}

    def build_elsewhere():
        assert entered.wait(10)
        with graph:
            made['other'] = pf.constant('other')
        created.set()

    thread = threading.Thread(target=build_elsewhere)
    thread.start()
    try:
        with graph, pf.control_dependencies([marker]):
            entered.set()
            assert created.wait(10)
            made['here'] = pf.constant('here')
    finally:
        thread.join(10)
    assert made['here'].dependencies == [marker]
    assert made['other'].dependencies == []
