"""What the pfmq benchmark compares pfmq with, and the harness both sides share.

The baselines do the work of each workload without pfmq: directly with pyzmq (PUSH/PULL
pipelines and a ROUTER/DEALER proxy, no library around them: the ceiling of what ZeroMQ and
pickle allow from Python) and with ``multiprocessing.Pool``. The harness starts and ends worker
processes, checks every result and times the runs; :mod:`pythonflow.pfmq.benchmark` uses it for
the pfmq figures too, so that all systems are measured the same way.

Worker processes come from the ``multiprocessing`` context the caller passes (the benchmark uses
a fork server), so every function they run lives at module level here.
"""
import contextlib
import logging
import math
import pickle
import threading
import time
from typing import Callable, Iterator, List, Sequence, Tuple

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

LOGGER = logging.getLogger(__name__)
SLEEP = 0.010  # seconds each W3 request takes
STARTUP_TIMEOUT = 30.0


# -- what the workers compute ---------------------------------------------------------------------

def divide(pair: Tuple[float, float]) -> float:
    """Return ``pair[0] / pair[1]``: the W1 and W4 work of the baselines."""
    return pair[0] / pair[1]


def divide_request(request: dict) -> float:
    """Return ``x / y`` from the context of a ``{'fetches': ..., 'context': {...}}`` request."""
    return request["context"]["x"] / request["context"]["y"]


def add_one(array: np.ndarray) -> np.ndarray:
    """Return ``array + 1``: the W2 work."""
    return array + 1


def nap(item):
    """Sleep :data:`SLEEP` seconds and return ``item``: the W3 work."""
    time.sleep(SLEEP)
    return item


_RAW_FUNCTIONS = {"divide": divide, "nap": nap}


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
        rep.send(pickle.dumps(divide_request(pickle.loads(rep.recv())), protocol=5))


# -- the harness ----------------------------------------------------------------------------------

class Processes:
    """Worker processes of one ``multiprocessing`` context; :meth:`close` ends each by its PID.

    Parameters
    ----------
    mp_context : multiprocessing context
        Where the processes come from.
    """

    def __init__(self, mp_context):
        self.mp_context = mp_context
        self.processes = []

    def start(self, target: Callable, *args) -> None:
        """Start a daemon process running ``target(*args)``."""
        process = self.mp_context.Process(target=target, args=args, daemon=True)
        process.start()
        self.processes.append(process)

    def check(self) -> None:
        """Raise :class:`RuntimeError` if any of the processes has exited."""
        for process in self.processes:
            if process.exitcode is not None:
                raise RuntimeError(f"worker process {process.pid} exited ({process.exitcode})")

    def close(self) -> None:
        """Terminate the processes, and kill those that do not end within five seconds."""
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        self.processes.clear()


def wait_until(predicate: Callable[[], bool], processes: Processes, what: str) -> None:
    """Poll ``predicate`` until it holds; raise if ``processes`` die or it takes too long."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not predicate():
        processes.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {STARTUP_TIMEOUT} s")
        time.sleep(0.01)


class Tally:
    """Counts results and sums them (the first item of an array), to check every run."""

    def __init__(self):
        self.count = 0
        self.total = 0.0

    def __call__(self, value) -> None:
        self.count += 1
        self.total += float(value[0] if isinstance(value, np.ndarray) else value)

    def check(self, count: int, total: float, what: str) -> None:
        """Raise :class:`RuntimeError` unless ``count`` results summing to ``total`` came."""
        if self.count != count or not math.isclose(self.total, total):
            raise RuntimeError(f"{what}: {self.count} results summing to {self.total}, "
                               f"expected {count} summing to {total}")


def best_rate(run: Callable[[Sequence, Tally], None], items: Sequence, expected: float,
              what: str, repeats: int) -> float:
    """Items per second of ``run(items, tally)``, the best of ``repeats`` checked runs.

    The best run is the one least disturbed by whatever else the machine was doing.

    Parameters
    ----------
    run : callable
        Processes ``items`` and passes every result to the tally.
    items : sequence
        The inputs of one run.
    expected : float
        What the results of one run add up to.
    what : str
        Names the system in errors.
    repeats : int
        How many runs to time.
    """
    best = 0.0
    for _ in range(repeats):
        tally = Tally()
        started = time.perf_counter()
        run(items, tally)
        best = max(best, len(items) / (time.perf_counter() - started))
        tally.check(len(items), expected, what)
    return best


def percentiles(round_trip: Callable[[], None], count: int) -> np.ndarray:
    """Milliseconds of ``count`` calls of ``round_trip`` (after a warm-up): p50 and p99."""
    for _ in range(20):
        round_trip()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        round_trip()
        latencies.append(time.perf_counter() - started)
    return np.percentile(latencies, [50, 99]) * 1e3


def check_half(value: float) -> None:
    """Raise :class:`RuntimeError` unless a W4 round trip answered 0.5."""
    if value != 0.5:
        raise RuntimeError(f"a round trip answered {value!r}, not 0.5")


# -- raw pyzmq ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _raw_pipeline(mp_context, kind, workers) -> Iterator[Tuple[zmq.Socket, zmq.Socket]]:
    """PUSH -> ``workers`` processes (PULL, compute, PUSH) -> PULL; yields (push, pull)."""
    context = zmq.Context()
    push, pull = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    monitors, addresses = [], []
    processes = Processes(mp_context)
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

            wait_until(attached, processes, "raw pyzmq workers")
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


def raw_pipeline_rate(mp_context, kind: str, workers: int, items: Sequence, expected: float,
                      repeats: int, window: int, warmup: int) -> float:
    """Items per second of a raw pyzmq PUSH/PULL pipeline through ``workers`` processes.

    Parameters
    ----------
    mp_context : multiprocessing context
        Where the worker processes come from.
    kind : str
        ``"divide"`` (pairs) or ``"nap"`` (anything), both pickled; ``"add_one"`` sends float32
        arrays as bare frames, zero-copy both ways.
    workers : int
        How many worker processes.
    items, expected, repeats
        As for :func:`best_rate`.
    window : int
        At most this many messages unanswered.
    warmup : int
        How many of ``items`` to send once before timing.
    """
    if kind == "add_one":
        def make(item):
            return item

        def handle(frame):
            return np.frombuffer(frame.buffer, np.float32)
        copy = False
    else:
        make, handle, copy = (lambda item: pickle.dumps(item, protocol=5)), pickle.loads, True
    with _raw_pipeline(mp_context, kind, workers) as (push, pull):
        def run(items, tally):
            _pump(push, pull, len(items), lambda i: make(items[i]),
                  lambda message: tally(handle(message)), window, copy)

        run(items[:warmup], Tally())
        return best_rate(run, items, expected, "raw pyzmq", repeats)


def raw_round_trips(mp_context, count: int, request: dict) -> np.ndarray:
    """p50/p99 (ms) of REQ -> ROUTER/DEALER proxy (a thread) -> REP in a worker process.

    Parameters
    ----------
    mp_context : multiprocessing context
        Where the REP worker process comes from.
    count : int
        How many round trips to time.
    request : dict
        What each round trip sends; the worker answers :func:`divide_request` of it.
    """
    context = zmq.Context()
    front, back, client = (context.socket(kind) for kind in (zmq.ROUTER, zmq.DEALER, zmq.REQ))
    control, steer = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    processes = Processes(mp_context)
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
            check_half(pickle.loads(client.recv()))

        return percentiles(round_trip, count)
    finally:
        if proxy.is_alive():
            steer.send(b"TERMINATE")
            proxy.join(5)
        processes.close()
        for sock in (front, back, client, control, steer):
            sock.close(linger=0)
        context.term()


# -- multiprocessing.Pool -------------------------------------------------------------------------

def _pool_run(pool, function, items, chunksize, tally):
    for result in pool.imap(function, items, chunksize=chunksize):
        tally(result)


def pool_rates(mp_context, function: Callable, workers: int, items: Sequence, expected: float,
               repeats: int, chunksizes: Sequence[int] = (1,), warmup: int = 0) -> List[float]:
    """Items per second of ``Pool.imap`` for each chunk size, with one pool of ``workers``.

    Parameters
    ----------
    mp_context : multiprocessing context
        Where the pool comes from.
    function : callable
        What the pool computes for each item.
    workers : int
        The size of the pool.
    items, expected, repeats
        As for :func:`best_rate`.
    chunksizes : sequence of int
        The ``chunksize`` of ``imap`` in each measurement.
    warmup : int
        How many of ``items`` to map once (chunk size 1) before timing.
    """
    with mp_context.Pool(workers) as pool:
        _pool_run(pool, function, items[:warmup], 1, Tally())
        return [best_rate(lambda items, tally, size=size: _pool_run(pool, function, items, size,
                                                                    tally),
                          items, expected, "Pool", repeats) for size in chunksizes]


def pool_round_trips(mp_context, workers: int, count: int) -> np.ndarray:
    """p50/p99 (ms) of ``Pool.apply(divide, ((1, 2),))`` with a pool of ``workers``."""
    with mp_context.Pool(workers) as pool:
        return percentiles(lambda: check_half(pool.apply(divide, ((1, 2),))), count)
