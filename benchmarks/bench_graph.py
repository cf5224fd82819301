"""Speed of graph evaluation, against a plain function call and against Pythonflow 0.3.0.

Three comparisons, each measured in the same run with the contenders interleaved (one sample of
each in turn, repeated) and reported as medians with their ratios:

* a small evaluation, ``graph('z', {'x': 1, 'y': 2})`` for ``z = x / y``, against the plain
  Python function doing the same on the same dictionary (``context['x'] / context['y']``) and
  against Pythonflow 0.3.0 evaluating the same graph;
* a chain of 10,000 operations (each adds one to the previous) and a wide graph (10,000
  independent additions summed by one more), in operations per second, against Pythonflow 0.3.0.
  The first evaluation of a graph, which makes its plan, and the second, which specialises it,
  are reported on lines of their own; the others reuse the plan.

Small evaluations are timed with :mod:`timeit`, which turns the garbage collector off; large ones
with the collector on, after collecting what earlier work left behind.

Pythonflow 0.3.0 is the baseline of Spotify's last release before this project. Install it into
a directory of its own and point the benchmark at it::

    pip install --no-deps --target /tmp/pf030 pythonflow==0.3.0
    python benchmarks/bench_graph.py --pythonflow-030 /tmp/pf030

(or set ``PYTHONFLOW_030``). It is loaded under the module name ``pythonflow030``; its 2019 code
needs the aliases ``collections.Mapping`` and ``collections.Sequence``, which are restored at run
time only. Without it the benchmark says so and reports our figures alone.
"""
import argparse
import collections
import collections.abc
import gc
import importlib.util
import os
import statistics
import sys
import threading
import time
import timeit

import pythonflow as pf

ENVIRONMENT_VARIABLE = "PYTHONFLOW_030"
# Pythonflow 0.3.0 evaluates recursively, about three frames per operation of a chain.
_BASELINE_RECURSION_LIMIT = 100_000
_BASELINE_STACK_SIZE = 512 * 1024 * 1024


def load_pythonflow_030(path: str):
    """
    Import Pythonflow 0.3.0 from the directory `path` (holding its package) as ``pythonflow030``.

    Parameters
    ----------
    path : str
        Directory that ``pip install --target`` installed Pythonflow 0.3.0 into.

    Returns
    -------
    module : module
        The package.

    Raises
    ------
    FileNotFoundError
        If `path` holds no ``pythonflow`` package.
    """
    init = os.path.join(path, "pythonflow", "__init__.py")
    if not os.path.isfile(init):
        raise FileNotFoundError(f"no Pythonflow 0.3.0 package in {path!r} (expected {init!r})")
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
        if not hasattr(collections, name):  # removed in Python 3.10; 0.3.0 still uses them
            setattr(collections, name, getattr(collections.abc, name))
    spec = importlib.util.spec_from_file_location(
        "pythonflow030", init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["pythonflow030"] = module  # its relative imports look the package up by name
    spec.loader.exec_module(module)
    return module


def build_small(library) -> tuple:
    """Return a graph of `library` with ``z = x / y`` and the name to fetch."""
    with library.Graph() as graph:
        (library.placeholder("x") / library.placeholder("y")).set_name("z")
    return graph, "z"


def plain(context: dict) -> float:
    """The small graph as a plain function of the same context."""
    return context["x"] / context["y"]


def build_chain(library, size: int) -> tuple:
    """Return a graph of `library` whose output ends a chain of `size` additions."""
    with library.Graph() as graph:
        value = library.placeholder("x")
        for _ in range(size):
            value = value + 1
    return graph, value


def build_wide(library, size: int) -> tuple:
    """Return a graph of `library` summing `size` independent additions to one placeholder."""
    with library.Graph() as graph:
        x = library.placeholder("x")
        total = library.sum_([x + index for index in range(size)])
    return graph, total


def interleaved(contenders: dict, repeats: int) -> dict:
    """Run ``contenders[name]()`` (returning a duration) in turn `repeats` times; the medians."""
    samples = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, sample in contenders.items():
            samples[name].append(sample())
    return {name: statistics.median(values) for name, values in samples.items()}


def calibrate(call, seconds: float) -> int:
    """Return how many calls of `call` take about `seconds`, at least one."""
    number = 1
    while True:
        elapsed = timeit.timeit(call, number=number)
        if elapsed >= seconds or number >= 10 ** 8:
            return number
        # Aim a little past the target, at most ten times further per step.
        number = max(number + 1, int(number * min(10.0, 1.2 * seconds / max(elapsed, 1e-9))))


def small_evaluations(baseline, seconds: float, repeats: int) -> dict:
    """Median microseconds per small evaluation: ours, the plain function, Pythonflow 0.3.0."""
    graph, fetch = build_small(pf)
    calls = {"pythonflow": lambda: graph(fetch, {"x": 1, "y": 2}),
             "plain function": lambda: plain({"x": 1, "y": 2})}
    if baseline is not None:
        old_graph, old_fetch = build_small(baseline)
        calls["pythonflow 0.3.0"] = lambda: old_graph(old_fetch, {"x": 1, "y": 2})
    contenders = {}
    for name, call in calls.items():
        assert call() == 0.5
        # Each sample lasts about as long for every contender, so that pauses of a busy machine
        # hit them alike.
        number = calibrate(call, seconds)
        contenders[name] = (lambda call=call, number=number:
                            timeit.timeit(call, number=number) / number * 1e6)
    return interleaved(contenders, repeats)


def _evaluation_time(graph, output, expected: int) -> float:
    # Garbage left by building graphs (or by the other contender) is collected first, so that
    # no collection it owes lands in this sample; the collector stays on while timing.
    gc.collect()
    started = time.perf_counter()
    value = graph(output, {"x": 0})
    elapsed = time.perf_counter() - started
    assert value == expected, value
    return elapsed


def large_evaluations(baseline, size: int, repeats: int) -> list:
    """Rows ``(graph, contender, operations, median operations per second)``."""
    rows = []
    for label, build, expected in (("chain", build_chain, size),
                                   ("wide", build_wide, size * (size - 1) // 2)):
        medians = _large_evaluations(baseline, build, size, expected, repeats)
        rows += [(label, name, size, size / seconds) for name, seconds in medians.items()]
    return rows


def _large_evaluations(baseline, build, size: int, expected: int, repeats: int) -> dict:
    graph, output = build(pf, size)
    contenders = {"pythonflow": lambda: _evaluation_time(graph, output, expected)}
    if baseline is not None:
        old_graph, old_output = build(baseline, size)
        contenders["pythonflow 0.3.0"] = lambda: _evaluation_time(old_graph, old_output, expected)
    for _ in range(2):  # the first evaluations make and specialise the plan, timed below
        contenders["pythonflow"]()
    medians = interleaved(contenders, repeats)
    medians.update(_first_evaluations(build, size, expected, max(1, repeats // 2)))
    return medians


def _first_evaluations(build, size: int, expected: int, repeats: int) -> dict:
    # Fresh graphs: the first evaluation makes the plan and runs it generically, the second
    # specialises it (see pythonflow.plans).
    times = {"pythonflow, first evaluation": [], "pythonflow, second evaluation": []}
    for _ in range(repeats):
        graph, output = build(pf, size)
        for samples in times.values():
            samples.append(_evaluation_time(graph, output, expected))
    return {name: statistics.median(samples) for name, samples in times.items()}


def _in_deep_thread(function, *args):
    # Pythonflow 0.3.0 recurses once per operation of a chain: run where that fits.
    result, errors = [], []

    def target():
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, _BASELINE_RECURSION_LIMIT))
        try:
            result.append(function(*args))
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)
        finally:
            sys.setrecursionlimit(limit)

    previous = threading.stack_size(_BASELINE_STACK_SIZE)
    try:
        thread = threading.Thread(target=target, name="bench-graph")
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def main(argv=None) -> dict:
    """Run the comparisons, print them and return ``{'small': ..., 'large': ...}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythonflow-030", default=os.environ.get(ENVIRONMENT_VARIABLE),
                        metavar="PATH", help="directory holding Pythonflow 0.3.0 (default: "
                        f"${ENVIRONMENT_VARIABLE})")
    parser.add_argument("--size", type=int, default=10000, help="operations of large graphs")
    parser.add_argument("--repeats", type=int, default=7, help="samples of each contender")
    parser.add_argument("--sample-seconds", type=float, default=0.05,
                        help="duration of each sample of small evaluations")
    args = parser.parse_args(argv)

    baseline = None
    if args.pythonflow_030:
        baseline = load_pythonflow_030(args.pythonflow_030)
        print(f"baseline: Pythonflow {getattr(baseline, '__version__', '0.3.0')} from "
              f"{args.pythonflow_030}")
    else:
        print(f"baseline: Pythonflow 0.3.0 ABSENT (pass --pythonflow-030 PATH or set "
              f"{ENVIRONMENT_VARIABLE}); comparisons with it are skipped")
    small = small_evaluations(baseline, args.sample_seconds, args.repeats)
    large = _in_deep_thread(large_evaluations, baseline, args.size, args.repeats)
    report(small, large)
    return {"small": small, "large": large}


def report(small: dict, large: list) -> None:
    """Print the medians and the ratios."""
    print("\nsmall evaluation graph('z', {'x': 1, 'y': 2}), median of interleaved samples")
    for name, micros in small.items():
        print(f"  {name:<34}{micros:>10.3f} us")
    ours = small["pythonflow"]
    print(f"  ratio pythonflow / plain function   {ours / small['plain function']:>10.2f}x")
    if "pythonflow 0.3.0" in small:
        print(f"  speed-up over Pythonflow 0.3.0      {small['pythonflow 0.3.0'] / ours:>10.2f}x")

    print("\nlarge graphs, median operations per second")
    rates = {}
    for label, name, size, rate in large:
        rates[label, name] = rate
        print(f"  {label:<7}{name:<34}{size:>8,} ops{rate:>14,.0f} ops/s")
    for label in dict.fromkeys(label for label, *_ in large):
        if (label, "pythonflow 0.3.0") in rates:
            old = rates[label, "pythonflow 0.3.0"]
            ours = rates[label, "pythonflow"]
            first = rates[label, "pythonflow, first evaluation"]
            print(f"  {label:<7}speed-up over Pythonflow 0.3.0: {ours / old:.1f}x "
                  f"(first evaluation {first / old:.1f}x)")


if __name__ == "__main__":
    main()
