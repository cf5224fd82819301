"""What the pfmq benchmark compares pfmq with: raw pyzmq and ``multiprocessing.Pool``.

The baselines do the work of each workload without pfmq: directly with pyzmq (PUSH/PULL
pipelines and a ROUTER/DEALER proxy, no library around them: the ceiling of what ZeroMQ and
pickle allow from Python) and with ``multiprocessing.Pool``. They are measured with the harness
of :mod:`pythonflow.pfmq.bench.harness`, as the pfmq figures of
:mod:`pythonflow.pfmq.bench.suite` are, and do the work of :mod:`pythonflow.pfmq.bench.work`.

Worker processes come from the ``multiprocessing`` context the caller passes (the benchmark uses
a fork server), so every function they run lives at module level.
"""
import contextlib
import os
import pickle
import shutil
import tempfile
import threading
from typing import Callable, Iterator, List, Sequence, Tuple

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from .harness import STARTUP_TIMEOUT, Processes, Tally, best_rate, percentiles, wait_until
from .work import check_half, divide, divide_request, nap

# -- the raw workers ------------------------------------------------------------------------------

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


# -- raw pyzmq ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _raw_pipeline(mp_context, kind, workers,
                  transport="tcp") -> Iterator[Tuple[zmq.Socket, zmq.Socket]]:
    """PUSH -> ``workers`` processes (PULL, compute, PUSH) -> PULL; yields (push, pull)."""
    context = zmq.Context()
    push, pull = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    monitors, addresses = [], []
    processes = Processes(mp_context)
    directory = tempfile.mkdtemp(prefix="pfmq-raw-") if transport == "ipc" else None
    try:
        for name, sock in (("push", push), ("pull", pull)):
            sock.setsockopt(zmq.LINGER, 0)
            monitors.append(sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED))
            sock.bind(f"ipc://{os.path.join(directory, name)}" if directory else
                      "tcp://127.0.0.1:*")
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
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _pump(push, pull, count, make, handle, window, copy):
    """Send ``count`` messages keeping at most ``window`` unanswered; handle every answer."""
    sent = 0
    for received in range(count):
        while sent < count and sent - received < window:
            push.send(make(sent), copy=copy)
            sent += 1
        handle(pull.recv(copy=copy))


def raw_pipeline_rate(mp_context, kind: str, workers: int, items: Sequence, expected: float,
                      repeats: int, window: int, warmup: int, transport: str = "tcp") -> float:
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
    transport : {'tcp', 'ipc'}
        Loopback TCP, or ``ipc://`` sockets in a temporary directory.
    """
    if kind == "add_one":
        def make(item):
            return item

        def handle(frame):
            return np.frombuffer(frame.buffer, np.float32)
        copy = False
    else:
        make, handle, copy = (lambda item: pickle.dumps(item, protocol=5)), pickle.loads, True
    with _raw_pipeline(mp_context, kind, workers, transport) as (push, pull):
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
