"""What taking ``task.state_dict()`` at every step costs a stream.

Run ``python benchmarks/bench_resume.py`` (``--quick`` for a smoke run).

A local cluster of worker processes serves tiny requests: a plain function (``operator.neg``: the
worst case, the consumer's own work per result is all there is to slow down), the W1 graph of
the performance suite (``z = x / y``) and a function that computes for 50 microseconds (a fifth
as many of those). Each repeat runs the same ``imap`` twice, once plain and
once taking the state after every result, in alternating order so that a drift of the machine
touches both alike. Printed per stream: the medians of the two throughputs, the median of the
ratio within each pair, the spread of the plain runs, the median of the pairs' ratio of the CPU
time this process (consumer, task and broker threads) spent per result, the time of one
``state_dict()`` call on its own, and that time as a share of the time per result. The CPU ratio
is the steadier figure on a shared machine: other processes' load moves wall-clock throughput by
tens of per cent, but hardly the CPU time the stream itself takes.
"""
import argparse
import math
import operator
import os
import statistics
import sys
import time
import timeit
from typing import Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measure this checkout, here and in the worker processes (spawned interpreters that see
# PYTHONPATH, not this process's sys.path).
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

from pythonflow import pfmq  # noqa: E402


def busy_neg(x: int) -> int:
    """Return ``-x`` after computing for 50 microseconds."""
    until = time.perf_counter() + 50e-6
    while time.perf_counter() < until:
        pass
    return -x


#: What the workers evaluate, the request for number ``i``, the result it gives, and how many
#: times fewer than ``--requests`` its streams have.
TARGETS = {
    "function": (operator.neg, lambda i: i, lambda i: -i, 1),
    "graph": ("pythonflow.pfmq.bench.suite:build_graph",
              lambda i: {"fetches": "z", "context": {"x": i, "y": 2}}, lambda i: i / 2, 1),
    "50us": (busy_neg, lambda i: i, lambda i: -i, 5),
}


def stream(cluster, requests: list, expected: float, ordered: bool,
           take_state: bool) -> Tuple[float, float]:
    """Results per second of one ``imap`` over ``requests`` and this process's CPU seconds per
    result; checks the sum of the results."""
    cpu = time.process_time()
    started = time.perf_counter()
    task = cluster.imap(requests, ordered=ordered)
    total = 0
    if take_state:
        for result in task:
            total += result
            task.state_dict()
    else:
        for result in task:
            total += result
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    if not math.isclose(total, expected):
        raise RuntimeError(f"the results summed to {total}, not {expected}: some were lost or "
                           f"repeated")
    return len(requests) / elapsed, cpu / len(requests)


def state_dict_seconds(cluster, requests: list, ordered: bool) -> float:
    """Seconds one ``state_dict()`` call takes, on a task that has delivered a few results."""
    task = cluster.imap(requests[:100], ordered=ordered)
    for _ in task:
        pass
    repeats = 100_000
    return min(timeit.repeat(task.state_dict, number=repeats, repeat=5)) / repeats


def measure(cluster, requests: list, expected: float, repeats: int, ordered: bool) -> dict:
    """Interleaved runs with and without the state; medians, the paired ratio, the spread."""
    rates, cpus = {False: [], True: []}, {False: [], True: []}
    stream(cluster, requests, expected, ordered, False)  # warm up: imports, batch sizes
    for repeat in range(repeats):
        for take_state in ((False, True) if repeat % 2 == 0 else (True, False)):
            rate, cpu = stream(cluster, requests, expected, ordered, take_state)
            rates[take_state].append(rate)
            cpus[take_state].append(cpu)
    plain = statistics.median(rates[False])
    return {"plain": plain, "with_state": statistics.median(rates[True]),
            "ratio": statistics.median(b / a for a, b in zip(rates[False], rates[True])),
            "spread": (max(rates[False]) - min(rates[False])) / plain,
            "cpu": statistics.median(b / a for a, b in zip(cpus[False], cpus[True])),
            "call": state_dict_seconds(cluster, requests, ordered)}


def main(argv=None) -> int:
    """Run the measurement and print a table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000, help="requests per stream")
    parser.add_argument("--repeats", type=int, default=11, help="runs of each kind")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.repeats, args.workers = 1_000, 1, 1
    print(f"state_dict() at every step: {args.requests} tiny requests per stream, "
          f"{args.workers} worker processes, {args.repeats} interleaved repeats, medians")
    print(f"{'target':<9} {'stream':<10} {'plain/s':>9} {'state/s':>9} {'ratio':>6} "
          f"{'spread':>7} {'cpu':>6} {'call':>7} {'of result':>9}")
    for name, (target, request, result, fewer) in TARGETS.items():
        count = max(100, args.requests // fewer)
        requests = [request(i) for i in range(count)]
        expected = sum(result(i) for i in range(count))
        with pfmq.LocalCluster(target, num_workers=args.workers) as cluster:
            for ordered in (True, False):
                row = measure(cluster, requests, expected, args.repeats, ordered)
                share = row["call"] * row["plain"]  # one call's time over one result's
                print(f"{name:<9} {'ordered' if ordered else 'unordered':<10} "
                      f"{row['plain']:9.0f} {row['with_state']:9.0f} {row['ratio']:6.3f} "
                      f"{row['spread']:7.1%} {row['cpu']:6.3f} {row['call'] * 1e9:5.0f}ns "
                      f"{share:9.2%}")
    print("ratio: throughput with the state over without, median of the pairs (1.000: no "
          "cost); spread: range of the plain runs over their median; cpu: this process's CPU "
          "time per result with the state over without, median of the pairs; of result: one "
          "call over the time per result")
    return 0


if __name__ == "__main__":  # worker processes import this file too, as __mp_main__
    sys.exit(main())
