"""A pfmq worker for tests, run in a subprocess (or imported for its targets).

Usage::

    python tests/worker_process.py ADDRESS [--target NAME] [--prefetch K]
        [--heartbeat-interval S] [--serializer pickle|json]

It evaluates requests with the target ``NAME`` of :data:`TARGETS` until it receives SIGTERM or
SIGINT, then leaves the broker cleanly and exits with status 0. ``--signals default`` keeps
Python's own SIGINT handling (Ctrl-C raises ``KeyboardInterrupt``; the script then exits with 130)
and ``--signals exit`` installs a SIGTERM handler calling ``sys.exit(0)``, as many programs do.
"""
import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional

import numpy as np

# Run as a script, the directory holding this file comes first on sys.path; the package under
# test is found through PYTHONPATH, which the tests set.
from pythonflow import pfmq

LOGGER = logging.getLogger(__name__)


def double(request: Any) -> Any:
    """Return ``2 * request``."""
    return 2 * request


def sleep_random(request: int) -> int:
    """Sleep 0-20 ms, drawn from a generator seeded with the request, then double it."""
    time.sleep(random.Random(request).uniform(0, 0.02))
    return 2 * request


def sleep_seconds(request: tuple) -> Any:
    """``request`` is ``(value, seconds)``: sleep that long, then return the value."""
    value, seconds = request
    time.sleep(seconds)
    return value


def mark_and_sleep(request: tuple) -> str:
    """``request`` is ``(path, seconds)``: create the file ``path`` (so that a test knows the
    request is being evaluated), sleep, then return the path."""
    path, seconds = request
    with open(path, "w"):
        pass
    time.sleep(seconds)
    return path


def failing_target(request: Any) -> Any:
    """Raise ``ValueError`` for negative numbers, else return the request doubled."""
    if request < 0:
        raise ValueError(f"negative request {request}")
    return 2 * request


def array_plus_one(request: np.ndarray) -> np.ndarray:
    """Return ``request + 1``."""
    return np.asarray(request) + 1


def unpicklable_result(request: Any) -> Any:
    """Return a lock (which cannot be pickled) for the request ``'lock'``, else the request."""
    if request == "lock":
        return threading.Lock()
    return request


class Abort(BaseException):
    """A ``BaseException`` that is no signal to the process, as some frameworks define."""


def exit_on_request(request: Any) -> Any:
    """``sys.exit()`` for the request ``'exit'``, raise :class:`Abort` for ``'abort'``, else
    return the request doubled."""
    if request == "exit":
        sys.exit("the transformation called sys.exit()")
    if request == "abort":
        raise Abort("a BaseException from the transformation")
    return 2 * request


def sleep_first_time(request: tuple) -> str:
    """``request`` is ``(path, seconds)``: the first evaluation creates ``path`` and sleeps (so
    that a test can interrupt it) and returns ``'first'``; later ones return ``'again'`` at once."""
    path, seconds = request
    if os.path.exists(path):
        return "again"
    with open(path, "w"):
        pass
    time.sleep(seconds)
    return "first"


def random_draws(request: Any) -> tuple:
    """Draw from numpy's and Python's global generators (seeded per request by ``seed=``)."""
    return request, float(np.random.uniform()), random.random()


def echo_pid(request: Any) -> tuple:
    """Return the request with the id of the process that evaluated it."""
    return request, os.getpid()


TARGETS: Dict[str, Callable[[Any], Any]] = {
    "double": double,
    "sleep-random": sleep_random,
    "sleep": sleep_seconds,
    "mark-and-sleep": mark_and_sleep,
    "raise": failing_target,
    "array+1": array_plus_one,
    "unpicklable-result": unpicklable_result,
    "random": random_draws,
    "pid": echo_pid,
    "exit": exit_on_request,
    "sleep-first-time": sleep_first_time,
}


def make_graph() -> Optional[Any]:
    """A graph with placeholder ``x`` and fetches ``double`` (``2 * x``) and ``square``, or
    ``None`` when ``pythonflow.Graph`` is not available."""
    import pythonflow as pf

    if not hasattr(pf, "Graph"):
        return None
    with pf.Graph() as graph:
        x = pf.placeholder("x")
        (2 * x).set_name("double")
        (x * x).set_name("square")
    return graph


def json_dumps(obj: Any) -> bytes:
    """JSON serialisation for the custom ``dumps``/``loads`` tests; tuples become lists."""
    return b"json:" + json.dumps(obj).encode()


def json_loads(data: bytes) -> Any:
    """The inverse of :func:`json_dumps`; refuses data without its marker."""
    if not data.startswith(b"json:"):
        raise ValueError("not produced by json_dumps")
    return json.loads(data[5:])


def make_worker(address: str, target: str = "double", prefetch: int = 1,
                heartbeat_interval: float = 0.2, serializer: str = "pickle",
                **options) -> pfmq.Worker:
    """A worker for the named target (``'graph'`` for the graph of :func:`make_graph`)."""
    options.update(prefetch=prefetch, heartbeat_interval=heartbeat_interval)
    if serializer == "json":
        options.update(dumps=json_dumps, loads=json_loads)
    if target == "graph":
        graph = make_graph()
        if graph is None:
            raise RuntimeError("pythonflow.Graph is not available")
        return pfmq.Worker.from_graph(graph, address, **options)
    return pfmq.Worker(TARGETS[target], address, **options)


def main(argv=None) -> int:
    """Run a worker until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("--target", default="double", choices=[*TARGETS, "graph"])
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--heartbeat-interval", type=float, default=0.2)
    parser.add_argument("--serializer", default="pickle", choices=["pickle", "json"])
    parser.add_argument("--signals", default="handle", choices=["handle", "default", "exit"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    worker = make_worker(args.address, args.target, args.prefetch, args.heartbeat_interval,
                         args.serializer)
    if args.signals == "handle":
        # The worker's own handler only asks it to stop, taking no lock: the thread it
        # interrupts may be the one evaluating a request, or hold any lock.
        signal.signal(signal.SIGTERM, worker.handle_signal)
        signal.signal(signal.SIGINT, worker.handle_signal)
    elif args.signals == "exit":
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        with worker:
            worker.process_requests()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
