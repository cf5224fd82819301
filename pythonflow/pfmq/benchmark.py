"""The pfmq performance suite: pfmq against ``multiprocessing.Pool`` and raw pyzmq.

Workloads
---------
W1  tiny requests (``x / y``) on 2 worker processes: results per second.
W2  8 MiB float32 arrays, the worker returns ``array + 1``: MB/s counting both directions.
W3  requests that sleep 10 ms on 1, 2, 4 and 8 workers: throughput / ideal throughput.
W4  sequential ``broker.apply`` calls: round-trip latency, p50 and p99.

Each workload runs pfmq, ``multiprocessing.Pool`` and the same work written directly with pyzmq
(no library around it: the ceiling of what ZeroMQ and pickle allow from Python) in one run, so
the ratios compare like with like on one machine. Worker processes come from a ``forkserver``
context: starting one is cheap, and none inherits the benchmark's sockets or threads.

Run ``pfmq bench`` or ``python benchmarks/bench_pfmq.py``; ``--quick`` is a smoke run. (Not
``python -m``: the fork server would import this module a second time as ``__main__``.)
"""
import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import os
import pickle
import platform
import sys
import threading
import time
from typing import Callable, List, Optional, Sequence

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from .broker import Broker
from .worker import Worker

LOGGER = logging.getLogger(__name__)
MODULE = "pythonflow.pfmq.benchmark"  # preloaded by the fork server, whatever __name__ is
WORKLOADS = ("W1", "W2", "W3", "W4")
SIZES = {  # W1, W2 and W4: requests; W3: requests per worker; throughputs: best of `repeats`
    "full": {"W1": 20_000, "W2": 200, "W3": 50, "W4": 2_000, "repeats": 3},
    "quick": {"W1": 2_000, "W2": 16, "W3": 10, "W4": 200, "repeats": 1},
}
SLEEP = 0.010
ARRAY_ITEMS = 2 * 1024 * 1024  # float32, so 8 MiB
W3_WORKERS = (1, 2, 4, 8)
WORKERS = 2
STARTUP_TIMEOUT = 30.0


# -- what the workers compute ---------------------------------------------------------------------

def _divide(pair):
    return pair[0] / pair[1]


def _divide_request(request):
    return request["context"]["x"] / request["context"]["y"]


def _add_one(array):
    return array + 1


def _nap(item):
    time.sleep(SLEEP)
    return item


_PFMQ_TARGETS = {"function": _divide_request, "add_one": _add_one, "nap": _nap}
_RAW_FUNCTIONS = {"divide": _divide, "nap": _nap}


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


def _raw_worker(source, sink, kind):
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.connect(source)
    push = context.socket(zmq.PUSH)
    push.connect(sink)
    if kind == "add_one":  # zero-copy both ways: the array is a view of the received frame
        while True:
            frame = pull.recv(copy=False)
            push.send(np.frombuffer(frame.buffer, np.float32) + 1, copy=False)
    function = _RAW_FUNCTIONS[kind]
    while True:
        push.send(pickle.dumps(function(pickle.loads(pull.recv())), protocol=5))


def _rep_worker(address):
    context = zmq.Context()
    rep = context.socket(zmq.REP)
    rep.connect(address)
    while True:
        rep.send(pickle.dumps(_divide_request(pickle.loads(rep.recv())), protocol=5))


# -- processes and plumbing -----------------------------------------------------------------------

class _Processes:
    """Worker processes; :meth:`close` ends each one by its PID."""

    def __init__(self, mp_context):
        self.mp_context = mp_context
        self.processes = []

    def start(self, target, *args):
        process = self.mp_context.Process(target=target, args=args, daemon=True)
        process.start()
        self.processes.append(process)

    def check(self):
        for process in self.processes:
            if process.exitcode is not None:
                raise RuntimeError(f"worker process {process.pid} exited ({process.exitcode})")

    def close(self):
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        self.processes.clear()


def _wait_until(predicate, processes, what):
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not predicate():
        processes.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {STARTUP_TIMEOUT} s")
        time.sleep(0.01)


class _Tally:
    """Counts results and sums them (the first item of an array), to check every run."""

    def __init__(self):
        self.count = 0
        self.total = 0.0

    def __call__(self, value):
        self.count += 1
        self.total += float(value[0] if isinstance(value, np.ndarray) else value)

    def check(self, count, total, what):
        if self.count != count or not math.isclose(self.total, total):
            raise RuntimeError(f"{what}: {self.count} results summing to {self.total}, "
                               f"expected {count} summing to {total}")


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


@contextlib.contextmanager
def _pfmq_cluster(mp_context, kind, workers):
    """A broker in this process and ``workers`` pfmq worker processes; yields (broker, grow)."""
    broker = Broker("tcp://127.0.0.1:*").run_async()
    processes = _Processes(mp_context)

    def grow(count):
        for _ in range(count):
            processes.start(_pfmq_worker, broker.backend_address, kind)
        total = len(processes.processes)
        _wait_until(lambda: broker.stats()["workers"] >= total, processes, "pfmq workers")

    try:
        grow(workers)
        yield broker, grow
    finally:
        processes.close()
        broker.cancel(timeout=5)


def _pfmq_run(broker, requests, tally):
    for result in broker.imap(requests):
        tally(result)


@contextlib.contextmanager
def _raw_pipeline(mp_context, kind, workers):
    """PUSH -> ``workers`` processes (PULL, compute, PUSH) -> PULL; yields (push, pull)."""
    context = zmq.Context()
    push, pull = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    monitors, addresses = [], []
    processes = _Processes(mp_context)
    try:
        for sock in (push, pull):
            sock.setsockopt(zmq.LINGER, 0)
            monitors.append(sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED))
            sock.bind("tcp://127.0.0.1:*")
            addresses.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        for _ in range(workers):
            processes.start(_raw_worker, *addresses, kind)
        # PUSH deals round robin to the peers it has: wait until all of them are attached.
        for monitor in monitors:
            seen = [0]

            def attached(monitor=monitor, seen=seen):
                while monitor.poll(0):
                    seen[0] += recv_monitor_message(monitor)["event"] == \
                        zmq.EVENT_HANDSHAKE_SUCCEEDED
                return seen[0] >= workers

            _wait_until(attached, processes, "raw pyzmq workers")
        yield push, pull
    finally:
        processes.close()
        for sock in (push, pull):
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
        for sock in (*monitors, push, pull):
            sock.close(linger=0)
        context.term()


def _pump(push, pull, count, make, handle, window, copy):
    """Send ``count`` messages keeping at most ``window`` unanswered; handle every answer."""
    sent = 0
    for received in range(count):
        while sent < count and sent - received < window:
            push.send(make(sent), copy=copy)
            sent += 1
        handle(pull.recv(copy=copy))


def _pool_run(pool, function, items, chunksize, tally):
    for result in pool.imap(function, items, chunksize=chunksize):
        tally(result)


# -- results --------------------------------------------------------------------------------------

class Row:
    """One line of the results table: a pfmq figure, a figure to compare it with, a target.

    Parameters
    ----------
    workload, measure : str
        E.g. ``"W1"`` and ``"results/s"``.
    pfmq, other : float
        The figures of pfmq and of ``baseline``.
    baseline : str
        What pfmq is compared with.
    target : str
        The goal, e.g. ``">= 1.0x"``; empty if none.
    met : bool, optional
        Whether pfmq meets ``target``.
    """

    def __init__(self, workload: str, measure: str, pfmq: float, baseline: str, other: float,
                 target: str = "", met: Optional[bool] = None):
        self.workload, self.measure, self.baseline = workload, measure, baseline
        self.pfmq, self.other, self.target, self.met = pfmq, other, target, met

    @property
    def ratio(self) -> float:
        """``pfmq / other``."""
        return self.pfmq / self.other if self.other else math.inf

    def as_dict(self) -> dict:
        """The row as plain data for JSON."""
        return {"workload": self.workload, "measure": self.measure, "pfmq": self.pfmq,
                "baseline": self.baseline, "other": self.other, "ratio": self.ratio,
                "target": self.target, "met": self.met}


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def format_table(rows: Sequence[Row]) -> str:
    """Return the results as a plain-text table."""
    lines = [("workload", "measure", "pfmq", "compared with", "other", "pfmq/other", "target")]
    for row in rows:
        verdict = "" if row.met is None else (" met" if row.met else " MISSED")
        lines.append((row.workload, row.measure, _number(row.pfmq), row.baseline,
                      _number(row.other), f"{row.ratio:.2f}x", row.target + verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
            for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)



# -- workloads ------------------------------------------------------------------------------------

def _compare(workload, measure, pfmq_value, others, target=None):
    """Rows comparing ``pfmq_value`` with each ``(baseline, value)``; the first one gets
    ``target``, a pair of its text and a test of the ratio."""
    rows = [Row(workload, measure, pfmq_value, baseline, value) for baseline, value in others]
    if target is not None:
        rows[0].target, rows[0].met = target[0], bool(target[1](rows[0].ratio))
    return rows


def _best_rate(run, items, expected, what, repeats):
    """Items per second of ``run(items, tally)``, the best of ``repeats`` checked runs.

    The best run is the one least disturbed by whatever else the machine was doing.
    """
    best = 0.0
    for _ in range(repeats):
        tally = _Tally()
        best = max(best, len(items) / _timed(lambda: run(items, tally)))  # noqa: B023
        tally.check(len(items), expected, what)
    return best


def _raw_runner(push, pull, make, handle, window, copy):
    def run(items, tally):
        _pump(push, pull, len(items), lambda i: make(items[i]),
              lambda message: tally(handle(message)), window, copy)
    return run


def _pickled(item):
    return pickle.dumps(item, protocol=5)


def _pfmq_rate(mp_context, kind, workers, items, expected, repeats):
    with _pfmq_cluster(mp_context, kind, workers) as (broker, _):
        _pfmq_run(broker, items[:4 * workers], _Tally())  # warm-up
        return _best_rate(lambda items, tally: _pfmq_run(broker, items, tally), items, expected,
                          f"pfmq ({kind})", repeats)


def _pool_rate(pool, function, items, chunksize, expected, repeats):
    return _best_rate(lambda items, tally: _pool_run(pool, function, items, chunksize, tally),
                      items, expected, "Pool", repeats)


def w1_tiny_requests(mp_context, sizes: dict, use_graph: bool) -> List[Row]:
    """W1: results per second of tiny ``x / y`` requests on 2 workers."""
    count, repeats = sizes["W1"], sizes["repeats"]
    expected = count * (count - 1) / 4
    requests = [{"fetches": "z", "context": {"x": i, "y": 2}} for i in range(count)]
    pairs = [(i, 2) for i in range(count)]
    kinds = ["graph", "function"] if use_graph else ["function"]
    rates = {kind: _pfmq_rate(mp_context, kind, WORKERS, requests, expected, repeats)
             for kind in kinds}
    with _raw_pipeline(mp_context, "divide", WORKERS) as (push, pull):
        raw = _raw_runner(push, pull, _pickled, pickle.loads, window=1000, copy=True)
        raw(pairs[:4 * WORKERS], _Tally())
        raw_rate = _best_rate(raw, pairs, expected, "raw pyzmq", repeats)
    tuned = max(1, count // (8 * WORKERS))
    with mp_context.Pool(WORKERS) as pool:
        _pool_run(pool, _divide, pairs[:4 * WORKERS], 1, _Tally())
        pools = [(f"Pool.imap chunksize={size}",
                  _pool_rate(pool, _divide, pairs, size, expected, repeats)) for size in (1, tuned)]
    rows = _compare("W1", f"results/s ({kinds[0]})", rates[kinds[0]],
                    [("raw pyzmq pipeline", raw_rate), *pools], (">= 1.0x", lambda r: r >= 1.0))
    if use_graph:  # separates the cost of graph evaluation from that of the transport
        rows.append(Row("W1", "results/s (function)", rates["function"], "raw pyzmq pipeline",
                        raw_rate))
    return rows


def w2_large_arrays(mp_context, sizes: dict, use_graph: bool) -> List[Row]:
    """W2: MB/s (both directions) of 8 MiB float32 arrays, each returned plus one."""
    count, repeats = sizes["W2"], sizes["repeats"]
    array = np.zeros(ARRAY_ITEMS, np.float32)
    arrays = [array] * count  # one buffer: the inputs cost no memory
    to_mbps = 2 * array.nbytes / 1e6
    pfmq = _pfmq_rate(mp_context, "add_one", WORKERS, arrays, count, repeats) * to_mbps
    with _raw_pipeline(mp_context, "add_one", WORKERS) as (push, pull):
        # A window of 4 per worker measured best; more only costs memory.
        raw = _raw_runner(push, pull, lambda item: item,
                          lambda frame: np.frombuffer(frame.buffer, np.float32),
                          window=4 * WORKERS, copy=False)
        raw(arrays[:2 * WORKERS], _Tally())
        raw_mbps = _best_rate(raw, arrays, count, "raw pyzmq", repeats) * to_mbps
    with mp_context.Pool(WORKERS) as pool:
        _pool_run(pool, _add_one, arrays[:WORKERS], 1, _Tally())
        pool_mbps = _pool_rate(pool, _add_one, arrays, 1, count, repeats) * to_mbps
    return _compare("W2", "MB/s", pfmq, [("raw pyzmq zero-copy", raw_mbps),
                                        ("Pool.imap chunksize=1", pool_mbps)],
                    (">= 0.8x", lambda r: r >= 0.8))


def w3_scaling(mp_context, sizes: dict, use_graph: bool) -> List[Row]:
    """W3: throughput / ideal throughput of 10 ms requests on 1, 2, 4 and 8 workers."""
    repeats = sizes["repeats"]
    efficiency = {}  # (system, workers) -> throughput / (workers / SLEEP)

    def measure(system, workers, run):
        items = list(range(sizes["W3"] * workers))
        expected = len(items) * (len(items) - 1) / 2
        rate = _best_rate(run, items, expected, f"{system}, {workers} workers", repeats)
        efficiency[system, workers] = rate * SLEEP / workers

    with _pfmq_cluster(mp_context, "nap", 0) as (broker, grow):
        for workers in W3_WORKERS:  # the same broker, with workers added at each step
            grow(workers - len(broker.stats()["per_worker"]))
            _pfmq_run(broker, list(range(2 * workers)), _Tally())
            measure("pfmq", workers, lambda items, tally: _pfmq_run(broker, items, tally))
    for workers in W3_WORKERS:
        with _raw_pipeline(mp_context, "nap", workers) as (push, pull):
            raw = _raw_runner(push, pull, _pickled, pickle.loads, window=2 * workers, copy=True)
            raw(list(range(workers)), _Tally())
            measure("raw", workers, raw)
        with mp_context.Pool(workers) as pool:
            _pool_run(pool, _nap, range(workers), 1, _Tally())
            measure("pool", workers,
                    lambda items, tally: _pool_run(pool, _nap, items, 1, tally))  # noqa: B023
    rows = []
    for workers in W3_WORKERS:
        value = efficiency["pfmq", workers]
        rows += _compare("W3", f"efficiency, workers={workers}", value,
                         [("raw pyzmq pipeline", efficiency["raw", workers]),
                          ("Pool.imap chunksize=1", efficiency["pool", workers])],
                         ("pfmq >= 0.97", lambda ratio, value=value: value >= 0.97))
    return rows


def _percentiles(round_trip, count):
    for _ in range(20):  # warm-up
        round_trip()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        round_trip()
        latencies.append(time.perf_counter() - started)
    return np.percentile(latencies, [50, 99]) * 1e3


def _check_half(value):
    if value != 0.5:
        raise RuntimeError(f"a round trip answered {value!r}, not 0.5")


def _raw_round_trips(mp_context, count, request):
    """p50/p99 of REQ -> ROUTER/DEALER proxy (a thread) -> REP in a worker process."""
    context = zmq.Context()
    front, back, client = (context.socket(kind) for kind in (zmq.ROUTER, zmq.DEALER, zmq.REQ))
    control, steer = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    processes = _Processes(mp_context)
    proxy = threading.Thread(target=zmq.proxy_steerable, args=(front, back, None, control),
                             daemon=True)
    try:
        front.bind("inproc://pfmq-bench-front")
        back.bind("tcp://127.0.0.1:*")
        control.bind("inproc://pfmq-bench-control")
        steer.connect("inproc://pfmq-bench-control")
        proxy.start()
        processes.start(_rep_worker, back.getsockopt_string(zmq.LAST_ENDPOINT))
        client.connect("inproc://pfmq-bench-front")
        payload = pickle.dumps(request, protocol=5)

        def round_trip():
            client.send(payload)
            if not client.poll(STARTUP_TIMEOUT * 1000):
                raise TimeoutError("no answer from the raw REP worker")
            _check_half(pickle.loads(client.recv()))

        return _percentiles(round_trip, count)
    finally:
        if proxy.is_alive():
            steer.send(b"TERMINATE")
            proxy.join(5)
        processes.close()
        for sock in (front, back, client, control, steer):
            sock.close(linger=0)
        context.term()


def w4_latency(mp_context, sizes: dict, use_graph: bool) -> List[Row]:
    """W4: p50 and p99 latency of sequential ``broker.apply`` calls with one worker."""
    count = sizes["W4"]
    request = {"fetches": "z", "context": {"x": 1, "y": 2}}
    with _pfmq_cluster(mp_context, "function", 1) as (broker, _):
        pfmq = _percentiles(lambda: _check_half(broker.apply(request)), count)
    raw = _raw_round_trips(mp_context, count, request)
    with mp_context.Pool(WORKERS) as pool:
        pool_figures = _percentiles(lambda: _check_half(pool.apply(_divide, ((1, 2),))), count)
    rows = []
    for index, name in enumerate(("p50", "p99")):
        target = ("<= 1.2x", lambda r: r <= 1.2) if name == "p50" else None
        rows += _compare("W4", f"{name} latency, ms", pfmq[index],
                         [("raw pyzmq ROUTER/DEALER proxy", raw[index]),
                          ("Pool.apply", pool_figures[index])], target)
    return rows


RUNNERS = {"W1": w1_tiny_requests, "W2": w2_large_arrays, "W3": w3_scaling, "W4": w4_latency}


# -- command line ---------------------------------------------------------------------------------

def _workload_list(text):
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown workloads {unknown}; choose from {WORKLOADS}")
    return [name for name in WORKLOADS if name in names]


def run(workloads: Sequence[str] = WORKLOADS, quick: bool = False,
        progress: Callable[[str], None] = lambda message: None) -> dict:
    """Run ``workloads`` and return the settings and the table rows.

    Parameters
    ----------
    workloads : sequence of str
        Names among ``W1`` to ``W4``.
    quick : bool
        Small sizes, for a smoke test; the figures mean little.
    progress : callable
        Called with a line of text as each workload finishes.

    Returns
    -------
    dict
        ``settings`` (sizes, machine, versions) and ``rows`` (a list of :class:`Row`).
    """
    mp_context = multiprocessing.get_context("forkserver")
    mp_context.set_forkserver_preload([MODULE])
    sizes = SIZES["quick" if quick else "full"]
    use_graph = graph_available()
    settings = {
        "mode": "quick" if quick else "full", "sizes": sizes,
        "w1_target": "pythonflow graph" if use_graph else "plain function (no pf.Graph)",
        "python": platform.python_version(), "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(), "numpy": np.__version__,
        "cpus": multiprocessing.cpu_count(), "platform": platform.platform(),
    }
    rows = []
    for name in workloads:
        started = time.perf_counter()
        rows += RUNNERS[name](mp_context, sizes, use_graph)
        progress(f"{name} done in {time.perf_counter() - started:.1f} s")
    return {"settings": settings, "rows": rows}


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
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if pfmq misses a target")
    parser.add_argument("--key", help="sign every pfmq message with this key, as PFMQ_KEY does "
                        "(to measure what signing costs)")
    args = parser.parse_args(argv)
    if args.key:  # read by the broker, the tasks and the worker processes (which inherit it)
        os.environ["PFMQ_KEY"] = args.key
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def progress(message):
        print(message, file=sys.stderr, flush=True)

    results = run(args.workloads, args.quick, progress)
    settings, rows = results["settings"], results["rows"]
    print(f"pfmq benchmark ({settings['mode']}): {settings['cpus']} CPUs, "
          f"Python {settings['python']}, pyzmq {settings['pyzmq']}, libzmq {settings['libzmq']}")
    print(f"the pfmq workers of W1 evaluate a {settings['w1_target']}")
    print("pfmq messages are signed (HMAC-SHA256)" if os.environ.get("PFMQ_KEY")
          else "pfmq messages are not signed")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump({"settings": settings, "rows": [row.as_dict() for row in rows]}, stream,
                      indent=2)
    missed = [row for row in rows if row.met is False]
    return 1 if args.strict and missed else 0

