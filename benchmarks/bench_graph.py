"""Operations evaluated per second by the graph core.

Two shapes of graph with 10,000 operations each: a chain (every operation adds one to the
previous) and a wide graph (10,000 independent operations summed by one more). Run::

    python benchmarks/bench_graph.py [--size 10000] [--repeats 5]
"""
import argparse
import statistics
import time

import pythonflow as pf


def build_chain(size: int) -> tuple:
    """Return a graph whose operation `output` is the end of a chain of `size` additions."""
    with pf.Graph() as graph:
        value = pf.placeholder("x")
        for _ in range(size):
            value = value + 1
    return graph, value


def build_wide(size: int) -> tuple:
    """Return a graph summing `size` independent operations, each adding to one placeholder."""
    with pf.Graph() as graph:
        x = pf.placeholder("x")
        total = pf.sum_([x + index for index in range(size)])
    return graph, total


def measure(graph: pf.Graph, output: pf.Operation, size: int, repeats: int) -> list:
    """Return the operations per second of `repeats` evaluations with fresh contexts."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        graph(output, {"x": 0})
        rates.append(size / (time.perf_counter() - started))
    return rates


def main(argv=None) -> list:
    """Print a table of evaluation rates and return its rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    rows = []
    for label, build in (("chain", build_chain), ("wide", build_wide)):
        graph, output = build(args.size)
        rates = measure(graph, output, args.size, args.repeats)
        rows.append((label, args.size, statistics.median(rates), max(rates), min(rates)))

    print(f"{'graph':<8}{'operations':>12}{'median ops/s':>16}{'best ops/s':>14}"
          f"{'worst ops/s':>14}")
    for label, size, median, best, worst in rows:
        print(f"{label:<8}{size:>12,}{median:>16,.0f}{best:>14,.0f}{worst:>14,.0f}")
    return rows


if __name__ == "__main__":
    main()
