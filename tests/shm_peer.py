"""Peers for the shared-memory tests, run as processes (or imported for their targets).

Usage::

    python tests/shm_peer.py broker FRONTEND BACKEND
    python tests/shm_peer.py worker BACKEND LINGER
    python tests/shm_peer.py consumer FRONTEND COUNT

The broker serves until it is killed; the worker evaluates :func:`plus_one` with shared memory
(segments let go after ``LINGER`` seconds) until SIGTERM; the consumer streams ``COUNT`` 8 MiB
arrays and prints the index of each result it checked, one a line.
"""
import mmap
import os
import signal
import sys
import threading

import numpy as np

from pythonflow import pfmq

ITEMS = 2 * 1024 * 1024  # float32: 8 MiB
HEARTBEAT = 0.2


def mapped(array: np.ndarray) -> bool:
    """Whether ``array`` is a view of a memory mapping (shared memory), not a copy."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)


def plus_one(request: np.ndarray) -> np.ndarray:
    """Return ``request + 1``."""
    return request + 1


def plus_one_where(request: np.ndarray) -> tuple:
    """Return ``request + 1`` and whether the request arrived as a view of shared memory."""
    return request + 1, mapped(request)


def memfds(pid: int) -> int:
    """How many descriptors and mappings of pfmq segments process ``pid`` holds."""
    count = 0
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                count += os.readlink(f"/proc/{pid}/fd/{name}").startswith("/memfd:pfmq-shm")
            except OSError:  # closed meanwhile
                pass
        with open(f"/proc/{pid}/maps") as maps:
            count += sum("memfd:pfmq-shm" in line for line in maps)
    except FileNotFoundError:  # the process is gone, and its segments with it
        return 0
    return count


def _broker(frontend: str, backend: str) -> None:
    broker = pfmq.Broker(backend, frontend, heartbeat_interval=HEARTBEAT)
    broker.run()


def _worker(backend: str, linger: str) -> None:
    worker = pfmq.Worker(plus_one, backend, heartbeat_interval=HEARTBEAT,
                         shared_memory=pfmq.SharedMemory(linger=float(linger)))
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    worker.run_async()
    stopped.wait()
    worker.cancel()


def _consumer(frontend: str, count: str) -> None:
    array = np.zeros(ITEMS, np.float32)
    for index, result in enumerate(pfmq.Task([array] * int(count), frontend,
                                             heartbeat_interval=HEARTBEAT)):
        assert result[0] == 1 and mapped(result)
        print(index, flush=True)


if __name__ == "__main__":
    role, *arguments = sys.argv[1:]
    {"broker": _broker, "worker": _worker, "consumer": _consumer}[role](*arguments)
