"""What taking ``task.state_dict()`` at every step costs a stream: ``python benchmarks/bench_resume.py``.

A local cluster of worker processes negates tiny requests (the worst case: the consumer's own
work per result is all there is to slow down). Each repeat runs the same ``imap`` twice, once
plain and once taking the state after every result, in alternating order so that a drift of the
machine touches both alike; the medians of the two throughputs and their ratio are printed, for
ordered and unordered streams, beside the time of one ``state_dict()`` call on its own.
"""
import argparse
import operator
import os
import statistics
import sys
import time
import timeit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measure this checkout, here and in the worker processes (spawned interpreters that see
# PYTHONPATH, not this process's sys.path).
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

from pythonflow import pfmq  # noqa: E402


def stream(cluster, count: int, ordered: bool, take_state: bool) -> float:
    """Results per second of one ``imap`` of ``count`` tiny requests."""
    started = time.perf_counter()
    task = cluster.imap(range(count), ordered=ordered)
    total = 0
    if take_state:
        for result in task:
            total += result
            task.state_dict()
    else:
        for result in task:
            total += result
    elapsed = time.perf_counter() - started
    if total != -count * (count - 1) // 2:
        raise RuntimeError(f"the results summed to {total}: some were lost or repeated")
    return count / elapsed


def state_dict_seconds(cluster, ordered: bool) -> float:
    """Seconds one ``state_dict()`` call takes, on a task that has delivered a few results."""
    task = cluster.imap(range(100), ordered=ordered)
    for _ in task:
        pass
    repeats = 200_000
    return min(timeit.repeat(task.state_dict, number=repeats, repeat=5)) / repeats


def measure(cluster, count: int, repeats: int, ordered: bool) -> dict:
    """Interleaved runs with and without the state; medians and their ratio."""
    rates = {False: [], True: []}
    stream(cluster, count, ordered, False)  # warm up: workers' imports, batch sizes
    for repeat in range(repeats):
        for take_state in ((False, True) if repeat % 2 == 0 else (True, False)):
            rates[take_state].append(stream(cluster, count, ordered, take_state))
    plain, with_state = statistics.median(rates[False]), statistics.median(rates[True])
    return {"plain": plain, "with_state": with_state, "ratio": with_state / plain,
            "spread": (max(rates[False]) - min(rates[False])) / plain,
            "call": state_dict_seconds(cluster, ordered)}


def main(argv=None) -> int:
    """Run the measurement and print a table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000, help="requests per stream")
    parser.add_argument("--repeats", type=int, default=9, help="runs of each kind")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.repeats, args.workers = 2_000, 2, 1
    print(f"state_dict() at every step: {args.requests} tiny requests per stream, "
          f"{args.workers} worker processes, {args.repeats} interleaved repeats, medians")
    print(f"{'stream':<10} {'plain/s':>10} {'state/s':>10} {'ratio':>7} {'spread':>7} "
          f"{'call':>8} {'of result':>9}")
    with pfmq.LocalCluster(operator.neg, num_workers=args.workers) as cluster:
        for ordered in (True, False):
            row = measure(cluster, args.requests, args.repeats, ordered)
            share = row["call"] * row["plain"]  # one call's time over one result's
            print(f"{'ordered' if ordered else 'unordered':<10} {row['plain']:10.0f} "
                  f"{row['with_state']:10.0f} {row['ratio']:7.3f} {row['spread']:7.1%} "
                  f"{row['call'] * 1e9:6.0f}ns {share:9.2%}")
    print("ratio: throughput with the state over without (1.000: no cost); spread: range of the "
          "plain runs over their median; of result: one call over the time per result")
    return 0


if __name__ == "__main__":  # worker processes import this file too, as __mp_main__
    sys.exit(main())
