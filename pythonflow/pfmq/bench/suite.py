"""The pfmq performance suite: pfmq against ``multiprocessing.Pool`` and raw pyzmq.

Workloads
---------
W1  tiny requests (``x / y``) on 2 worker processes: results per second.
W2  8 MiB float32 arrays, the worker returns ``array + 1``: MB/s counting both directions; also
    on a ``LocalCluster`` (``ipc://``) with shared memory and without, against raw pyzmq over
    ``ipc://``.
W3  requests that sleep 10 ms on 1, 2, 4 and 8 workers: throughput / ideal throughput.
W4  sequential ``broker.apply`` calls: round-trip latency, p50 and p99.

Each workload runs pfmq, ``multiprocessing.Pool`` and the same work written directly with pyzmq
(no library around it: the ceiling of what ZeroMQ and pickle allow from Python) in one run, so
the ratios compare like with like on one machine; :mod:`pythonflow.pfmq.bench.baselines` holds
the last two, :mod:`pythonflow.pfmq.bench.work` the work and
:mod:`pythonflow.pfmq.bench.harness` the measurements all three share. Worker processes come
from a ``forkserver`` context: starting one is cheap, and none inherits the benchmark's sockets
or threads.

Run ``pfmq bench`` or ``python benchmarks/bench_pfmq.py``; ``--quick`` is a smoke run. (Not
``python -m``: the fork server would import this module a second time as ``__main__``.)
"""
import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from typing import Callable, List, Optional, Sequence

import numpy as np
import zmq

from ..broker import Broker
from ..cluster import LocalCluster
from ..shm import available as shared_memory_available
from ..worker import Worker
from . import pf030
from .baselines import pool_rates, pool_round_trips, raw_pipeline_rate, raw_round_trips
from .harness import Processes, Tally, best_rate, percentiles, wait_until
from .results import Row, compare, format_table, medians
from .work import SLEEP, add_one, check_half, divide, divide_request, nap

LOGGER = logging.getLogger(__name__)
MODULE = "pythonflow.pfmq.bench.suite"  # preloaded by the fork server, whatever __name__ is
WORKLOADS = ("W1", "W2", "W3", "W4")
SIZES = {  # W1, W2 and W4: requests; W3: requests per worker; throughputs: best of `repeats`
    "full": {"W1": 20_000, "W2": 200, "W3": 50, "W4": 2_000, "repeats": 3},
    "quick": {"W1": 2_000, "W2": 16, "W3": 10, "W4": 200, "repeats": 1},
}
ARRAY_ITEMS = 2 * 1024 * 1024  # float32, so 8 MiB
W3_WORKERS = (1, 2, 4, 8)
WORKERS = 2


# -- pfmq -----------------------------------------------------------------------------------------

_PFMQ_TARGETS = {"function": divide_request, "add_one": add_one, "nap": nap}


def build_graph():
    """Return the W1 graph: placeholders ``x`` and ``y`` and the operation ``z = x / y``."""
    import pythonflow as pf

    with pf.Graph() as graph:
        x = pf.placeholder("x")
        y = pf.placeholder("y")
        (x / y).set_name("z")
    return graph


def graph_available() -> bool:
    """Whether the graph core can be imported and evaluates :func:`build_graph` correctly."""
    try:
        return build_graph()("z", {"x": 1, "y": 2}) == 0.5
    except Exception:  # absent or unfinished: W1 then uses a plain function
        return False


def _pfmq_worker(address, kind):
    if kind == "graph":
        worker = Worker.from_graph(build_graph(), address)
    else:
        worker = Worker(_PFMQ_TARGETS[kind], address)
    worker.run()


@contextlib.contextmanager
def _pfmq_cluster(mp_context, kind, workers):
    """A broker in this process and ``workers`` pfmq worker processes; yields (broker, grow)."""
    broker = Broker("tcp://127.0.0.1:*").run_async()
    processes = Processes(mp_context)

    def grow(count):
        for _ in range(count):
            processes.start(_pfmq_worker, broker.backend_address, kind)
        total = len(processes.processes)
        wait_until(lambda: broker.stats()["workers"] >= total, processes, "pfmq workers")

    try:
        grow(workers)
        yield broker, grow
    finally:
        processes.close()
        broker.cancel(timeout=5)


def _pfmq_run(broker, requests, tally):
    for result in broker.imap(requests):
        tally(result)


def _local_cluster_rate(shared_memory, workers, items, expected, repeats):
    """Items per second of :func:`add_one` on a ``LocalCluster`` (workers on ``ipc://``)."""
    with LocalCluster(add_one, num_workers=workers, shared_memory=shared_memory) as cluster:
        def run(items, tally):
            for result in cluster.imap(items):
                tally(result)

        run(items[:4 * workers], Tally())  # warm-up
        return best_rate(run, items, expected, f"LocalCluster, shared_memory={shared_memory}",
                         repeats)


def _pfmq_rate(mp_context, kind, workers, items, expected, repeats):
    with _pfmq_cluster(mp_context, kind, workers) as (broker, _):
        _pfmq_run(broker, items[:4 * workers], Tally())  # warm-up
        return best_rate(lambda items, tally: _pfmq_run(broker, items, tally), items, expected,
                         f"pfmq ({kind})", repeats)


# -- workloads ------------------------------------------------------------------------------------

def w1_tiny_requests(mp_context, sizes: dict, options: dict) -> List[Row]:
    """W1: results per second of tiny ``x / y`` requests on 2 workers."""
    count, repeats = sizes["W1"], sizes["repeats"]
    expected = count * (count - 1) / 4
    requests = [{"fetches": "z", "context": {"x": i, "y": 2}} for i in range(count)]
    pairs = [(i, 2) for i in range(count)]
    use_graph = options["use_graph"]
    kinds = ["graph", "function"] if use_graph else ["function"]
    rates = {kind: _pfmq_rate(mp_context, kind, WORKERS, requests, expected, repeats)
             for kind in kinds}
    raw_rate = raw_pipeline_rate(mp_context, "divide", WORKERS, pairs, expected, repeats,
                                 window=1000, warmup=4 * WORKERS)
    chunksizes = (1, max(1, count // (8 * WORKERS)))
    pools = zip((f"Pool.imap chunksize={size}" for size in chunksizes),
                pool_rates(mp_context, divide, WORKERS, pairs, expected, repeats, chunksizes,
                           warmup=4 * WORKERS))
    rows = compare("W1", f"results/s ({kinds[0]})", rates[kinds[0]],
                   [("raw pyzmq pipeline", raw_rate), *pools],
                   (">= 1.0x", lambda row: row.ratio >= 1.0))
    if use_graph:  # separates the cost of graph evaluation from that of the transport
        rows.append(Row("W1", "results/s (function)", rates["function"], "raw pyzmq pipeline",
                        raw_rate))
    return rows


def w2_large_arrays(mp_context, sizes: dict, options: dict) -> List[Row]:
    """W2: MB/s (both directions) of 8 MiB float32 arrays, each returned plus one."""
    count, repeats = sizes["W2"], sizes["repeats"]
    array = np.zeros(ARRAY_ITEMS, np.float32)
    arrays = [array] * count  # one buffer: the inputs cost no memory
    to_mbps = 2 * array.nbytes / 1e6
    pfmq = _pfmq_rate(mp_context, "add_one", WORKERS, arrays, count, repeats) * to_mbps
    # A window of 4 per worker measured best; more only costs memory.
    raw_mbps = raw_pipeline_rate(mp_context, "add_one", WORKERS, arrays, count, repeats,
                                 window=4 * WORKERS, warmup=2 * WORKERS) * to_mbps
    pool_rate, = pool_rates(mp_context, add_one, WORKERS, arrays, count, repeats,
                            warmup=WORKERS)
    rows = compare("W2", "MB/s", pfmq, [("raw pyzmq zero-copy", raw_mbps),
                                        ("Pool.imap chunksize=1", pool_rate * to_mbps)],
                   (">= 0.8x", lambda row: row.ratio >= 0.8))
    return rows + _w2_local_cluster(mp_context, arrays, count, repeats, to_mbps)


def _w2_local_cluster(mp_context, arrays, count, repeats, to_mbps) -> List[Row]:
    """W2 on a ``LocalCluster`` (``ipc://``): shared memory and the sockets, to raw ``ipc://``."""
    raw = raw_pipeline_rate(mp_context, "add_one", WORKERS, arrays, count, repeats,
                            window=4 * WORKERS, warmup=2 * WORKERS, transport="ipc") * to_mbps
    baseline = [("raw pyzmq zero-copy ipc", raw)]
    rows = compare("W2", "MB/s (LocalCluster, sockets)",
                   _local_cluster_rate(False, WORKERS, arrays, count, repeats) * to_mbps,
                   baseline)
    if shared_memory_available():
        rows += compare("W2", "MB/s (pfmq shared memory)",
                        _local_cluster_rate(True, WORKERS, arrays, count, repeats) * to_mbps,
                        baseline, (">= 2.5x", lambda row: row.ratio >= 2.5))
    return rows


def w3_scaling(mp_context, sizes: dict, options: dict) -> List[Row]:
    """W3: throughput / ideal throughput of 10 ms requests on 1, 2, 4 and 8 workers."""
    repeats = sizes["repeats"]
    efficiency = {}  # (system, workers) -> throughput / (workers / SLEEP)

    def items_of(workers):
        items = list(range(sizes["W3"] * workers))
        return items, len(items) * (len(items) - 1) / 2

    with _pfmq_cluster(mp_context, "nap", 0) as (broker, grow):
        for workers in W3_WORKERS:  # the same broker, with workers added at each step
            grow(workers - len(broker.stats()["per_worker"]))
            _pfmq_run(broker, list(range(2 * workers)), Tally())
            rate = best_rate(lambda items, tally: _pfmq_run(broker, items, tally),
                             *items_of(workers), f"pfmq, {workers} workers", repeats)
            efficiency["pfmq", workers] = rate * SLEEP / workers
    for workers in W3_WORKERS:
        rate = raw_pipeline_rate(mp_context, "nap", workers, *items_of(workers), repeats,
                                 window=2 * workers, warmup=workers)
        efficiency["raw", workers] = rate * SLEEP / workers
        rate, = pool_rates(mp_context, nap, workers, *items_of(workers), repeats,
                           warmup=workers)
        efficiency["pool", workers] = rate * SLEEP / workers
    rows = []
    for workers in W3_WORKERS:
        rows += compare("W3", f"efficiency, workers={workers}", efficiency["pfmq", workers],
                        [("raw pyzmq pipeline", efficiency["raw", workers]),
                         ("Pool.imap chunksize=1", efficiency["pool", workers])],
                        ("pfmq >= 0.97", lambda row: row.pfmq >= 0.97))
    return rows


def _pfmq_round_trips(mp_context, count, request):
    with _pfmq_cluster(mp_context, "function", 1) as (broker, _):
        return percentiles(lambda: check_half(broker.apply(request)), count)


def w4_latency(mp_context, sizes: dict, options: dict) -> List[Row]:
    """W4: p50 and p99 latency of sequential ``broker.apply`` calls with one worker; against
    Pythonflow 0.3.0 too when ``options['pythonflow_030']`` names its directory.

    The systems take turns in reverse order every other round (``options['round']``), so that
    a drift of a shared machine during a round does not favour whichever runs first.
    """
    count = sizes["W4"]
    request = {"fetches": "z", "context": {"x": 1, "y": 2}}
    systems = [("pfmq", lambda: _pfmq_round_trips(mp_context, count, request)),
               ("raw pyzmq ROUTER/DEALER proxy",
                lambda: raw_round_trips(mp_context, count, request)),
               ("Pool.apply", lambda: pool_round_trips(mp_context, WORKERS, count))]
    if options.get("pythonflow_030"):
        systems.append((f"Pythonflow {pf030.VERSION} apply",
                        lambda: pf030.round_trips(options["pythonflow_030"], count)))
    baselines = [name for name, _ in systems[1:]]  # the order of the table: raw first
    turns = systems[::-1] if options.get("round", 0) % 2 else systems
    figures = {name: measure() for name, measure in turns}
    rows = []
    for index, name in enumerate(("p50", "p99")):
        target = ("<= 1.5x", lambda row: row.ratio <= 1.5) if name == "p50" else None
        rows += compare("W4", f"{name} latency, ms", figures["pfmq"][index],
                        [(baseline, figures[baseline][index]) for baseline in baselines], target)
    return rows


RUNNERS = {"W1": w1_tiny_requests, "W2": w2_large_arrays, "W3": w3_scaling, "W4": w4_latency}


# -- command line ---------------------------------------------------------------------------------

def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def _workload_list(text):
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown workloads {unknown}; choose from {WORKLOADS}")
    return [name for name in WORKLOADS if name in names]


def run(workloads: Sequence[str] = WORKLOADS, quick: bool = False,
        progress: Callable[[str], None] = lambda message: None, rounds: int = 1,
        pythonflow_030: Optional[str] = None) -> dict:
    """Run ``workloads`` and return the settings and the table rows.

    Parameters
    ----------
    workloads : sequence of str
        Names among ``W1`` to ``W4``.
    quick : bool
        Small sizes, for a smoke test; the figures mean little.
    progress : callable
        Called with a line of text as each workload finishes.
    rounds : int
        How many times the workloads run, one after the other in turn; each figure of the
        table is then the median of its rounds, and targets are judged on the medians.
    pythonflow_030 : str, optional
        The directory holding Pythonflow 0.3.0 (see :mod:`.pf030`): W4 then compares with it.

    Returns
    -------
    dict
        ``settings`` (sizes, machine, versions), ``rows`` (a list of :class:`Row`) and
        ``rounds`` (the rows of each round).
    """
    mp_context = multiprocessing.get_context("forkserver")
    mp_context.set_forkserver_preload([MODULE])
    sizes = SIZES["quick" if quick else "full"]
    use_graph = graph_available()
    options = {"use_graph": use_graph, "pythonflow_030": pythonflow_030}
    settings = {
        "mode": "quick" if quick else "full", "sizes": sizes, "rounds": rounds,
        "w1_target": "pythonflow graph" if use_graph else "plain function (no pf.Graph)",
        "pythonflow_030": pythonflow_030 and pf030.VERSION,
        "python": platform.python_version(), "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(), "numpy": np.__version__,
        "cpus": multiprocessing.cpu_count(), "platform": platform.platform(),
    }
    every_round = []
    for index in range(rounds):
        rows = []
        for name in workloads:
            started = time.perf_counter()
            rows += RUNNERS[name](mp_context, sizes, {**options, "round": index})
            progress(f"{name} done in {time.perf_counter() - started:.1f} s"
                     + (f" (round {index + 1} of {rounds})" if rounds > 1 else ""))
        every_round.append(rows)
    rows = medians(every_round) if rounds > 1 else every_round[0]
    return {"settings": settings, "rows": rows, "rounds": every_round}


def _baseline_030(parser, args) -> Optional[str]:
    """The Pythonflow 0.3.0 directory the options name, or None; a bad one is a usage error."""
    try:
        return pf030.find(args.pythonflow_030, args.install_pythonflow_030)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    except subprocess.SubprocessError as exc:
        parser.error(f"cannot install Pythonflow {pf030.VERSION}: {exc}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the suite from the command line (``pfmq bench``); returns the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments; defaults to ``sys.argv[1:]``. See ``--help``.
    """
    parser = argparse.ArgumentParser(
        prog="pfmq bench", description="Measure pfmq against multiprocessing.Pool and raw pyzmq.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--workloads", type=_workload_list, default=list(WORKLOADS),
                        help="comma-separated subset of W1,W2,W3,W4 (default: all)")
    parser.add_argument("--rounds", type=_positive, default=1,
                        help="run the workloads this many times in turn and print the medians")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if pfmq misses a target")
    parser.add_argument("--key", help="sign every pfmq message with this key, as PFMQ_KEY does "
                        "(to measure what signing costs)")
    parser.add_argument("--pythonflow-030", metavar="DIR",
                        help=f"compare W4 with the Pythonflow {pf030.VERSION} installed in DIR "
                        f"(pip install --no-deps --target DIR pythonflow=={pf030.VERSION}); "
                        f"default: ${pf030.ENVIRONMENT_VARIABLE}")
    parser.add_argument("--install-pythonflow-030", action="store_true",
                        help=f"install Pythonflow {pf030.VERSION} from PyPI into DIR, or into "
                        f"{pf030.default_cache()}, if it is not there")
    args = parser.parse_args(argv)
    baseline = _baseline_030(parser, args) if "W4" in args.workloads else None
    if args.key:  # read by the broker, the tasks and the worker processes (which inherit it)
        os.environ["PFMQ_KEY"] = args.key
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def progress(message):
        print(message, file=sys.stderr, flush=True)

    results = run(args.workloads, args.quick, progress, args.rounds, baseline)
    settings, rows = results["settings"], results["rows"]
    print(f"pfmq benchmark ({settings['mode']}): {settings['cpus']} CPUs, "
          f"Python {settings['python']}, pyzmq {settings['pyzmq']}, libzmq {settings['libzmq']}"
          + (f"; medians of {args.rounds} rounds" if args.rounds > 1 else ""))
    print(f"the pfmq workers of W1 evaluate a {settings['w1_target']}")
    print("pfmq messages are signed (HMAC-SHA256)" if os.environ.get("PFMQ_KEY")
          else "pfmq messages are not signed")
    if "W4" in args.workloads:
        print(f"Pythonflow {pf030.VERSION} baseline of W4: {baseline}" if baseline else
              f"Pythonflow {pf030.VERSION} baseline of W4: absent (give --pythonflow-030 DIR, "
              f"set {pf030.ENVIRONMENT_VARIABLE} or pass --install-pythonflow-030)")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump({"settings": settings, "rows": [row.as_dict() for row in rows],
                       "rounds": [[row.as_dict() for row in every] for every in results["rounds"]]},
                      stream, indent=2)
    missed = [row for row in rows if row.met is False]
    return 1 if args.strict and missed else 0
