"""Fixtures and helpers shared by the pfmq tests: brokers, thread workers, worker processes."""
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator, List, Tuple

import pytest
from worker_process import make_worker

import pythonflow
from pythonflow import pfmq

LOGGER = logging.getLogger(__name__)

#: Heartbeats in tests are fast so that lost peers are noticed within a second.
HEARTBEAT = 0.2
TESTS = os.path.dirname(os.path.abspath(__file__))
WORKER_SCRIPT = os.path.join(TESTS, "worker_process.py")
# Worker processes import the same pythonflow as the tests, wherever that is.
PACKAGE_PARENT = os.path.dirname(os.path.abspath(list(pythonflow.__path__)[0]))


def wait_until(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> object:
    """Poll ``condition`` until it returns something true and return that; fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout} s (last value {value!r})")
        time.sleep(interval)


def wait_until_steady(sample: Callable[[], object], timeout: float = 10.0,
                      interval: float = 0.05, message: str = "a steady state") -> object:
    """Poll ``sample`` until it returns the same true value twice in a row, ``interval`` seconds
    apart, and return that value; fail after ``timeout`` seconds.

    ``sample`` returns something false while the system is visibly busy; two equal samples
    tell that nothing changed in between."""
    previous = None
    deadline = time.monotonic() + timeout
    while True:
        value = sample()
        if value and value == previous:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout} s (last {value!r})")
        previous = value
        time.sleep(interval)


def workers_idle(workers: List[pfmq.Worker]) -> bool:
    """Whether none of ``workers`` holds a job (running or prefetched)."""
    return all(worker.held == 0 for worker in workers)


def wait_for_workers(broker: pfmq.Broker, count: int, timeout: float = 20.0) -> dict:
    """Wait until ``count`` workers signed up with ``broker``; return its statistics."""
    return wait_until(lambda: (lambda s: s if s["workers"] == count else None)(broker.stats()),
                      timeout, message=f"{count} workers signed up")


def context_terminates(context, timeout: float = 10.0) -> bool:
    """Terminate ``context`` in a helper thread and say whether that ended within ``timeout``
    (``term()`` waits for every socket of the context); the calling thread's ``apply``
    connections are closed first."""
    pfmq.task.close_apply_connections()
    terminating = threading.Thread(target=context.term, daemon=True)
    terminating.start()
    terminating.join(timeout)
    return not terminating.is_alive()


class CountingIterator:
    """Wraps an iterator and counts the items taken from it (to see how far a task read)."""

    def __init__(self, iterable):
        self._items = iter(iterable)
        self.count = 0

    def __iter__(self) -> "CountingIterator":
        return self

    def __next__(self):
        item = next(self._items)
        self.count += 1
        return item


def ipc_address(tmp_path, name: str) -> str:
    """An ``ipc://`` address in ``tmp_path`` (socket paths must stay short)."""
    path = os.path.join(str(tmp_path), name)
    assert len(path) < 100, f"ipc path too long for a socket: {path}"
    return f"ipc://{path}"


@contextlib.contextmanager
def running_broker(backend_address: str = "tcp://127.0.0.1:*", **options) -> Iterator:
    """A broker serving in a background thread, cancelled on exit."""
    options.setdefault("heartbeat_interval", HEARTBEAT)
    broker = pfmq.Broker(backend_address, **options)
    broker.run_async()
    try:
        yield broker
    finally:
        broker.cancel(timeout=10)
        assert not broker.is_alive


@pytest.fixture(name="broker")
def broker_fixture():
    """A broker on a free loopback port with an ``inproc://`` frontend and fast heartbeats."""
    with running_broker() as broker:
        yield broker


@contextlib.contextmanager
def thread_workers(address: str, count: int = 1, target: str = "double",
                   **options) -> Iterator[List[pfmq.Worker]]:
    """``count`` workers evaluating the named target of ``worker_process.TARGETS`` in threads,
    or any callable ``target``."""
    if callable(target):
        options.setdefault("heartbeat_interval", HEARTBEAT)
        workers = [pfmq.Worker(target, address, **options) for _ in range(count)]
    else:
        workers = [make_worker(address, target, **options) for _ in range(count)]
    threads = [threading.Thread(target=worker.run, daemon=True) for worker in workers]
    for thread in threads:
        thread.start()
    try:
        yield workers
    finally:
        for worker in workers:
            worker.cancel(timeout=10)
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive(), "a worker thread did not stop"


def end_process(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """Ask a process to stop (SIGTERM by its PID), wait, then kill it if it is still there."""
    if process.poll() is None:
        try:
            os.kill(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        LOGGER.warning("worker process %d ignored SIGTERM; killing it", process.pid)
        os.kill(process.pid, signal.SIGKILL)
        return process.wait(timeout)


@contextlib.contextmanager
def worker_processes(address: str, count: int = 1, target: str = "double", prefetch: int = 1,
                     serializer: str = "pickle",
                     signals: str = "handle") -> Iterator[List[subprocess.Popen]]:
    """``count`` worker processes running ``worker_process.py``, each ended by its PID."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    command = [sys.executable, WORKER_SCRIPT, address, "--target", target, "--prefetch",
               str(prefetch), "--heartbeat-interval", str(HEARTBEAT), "--serializer", serializer,
               "--signals", signals]
    processes = []
    try:
        for _ in range(count):
            processes.append(subprocess.Popen(command, env=env))
        yield processes
    finally:
        for process in processes:
            end_process(process)


def pfmq_cli(*args: str) -> Tuple[List[str], dict]:
    """The command and the environment that run ``pfmq ARGS`` with the pythonflow under test
    (and no ``PFMQ_KEY``), for ``subprocess``."""
    env = {name: value for name, value in os.environ.items() if name != "PFMQ_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "pythonflow.pfmq", *args], env


def pfmq_worker(*args: str, **popen_options) -> subprocess.Popen:
    """``pfmq worker ARGS`` in a process of its own, able to import the modules of the tests."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, TESTS,
                                                      env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "pythonflow.pfmq", "worker", *args], env=env,
                            **popen_options)


def worker_children(pid: int) -> List[int]:
    """PIDs of the multiprocessing worker processes whose parent is ``pid`` (from /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as file:
                parent = int(file.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                command = file.read()
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and b"spawn_main" in command:  # not the resource tracker
            children.append(int(entry))
    return sorted(children)


def end_worker_pool(pool: subprocess.Popen, log) -> str:
    """End a ``pfmq worker --processes N`` process and any worker process it left, by PID;
    return what it wrote to the file ``log``."""
    for pid in worker_children(pool.pid):  # should there be any left
        os.kill(pid, signal.SIGKILL)
    end_process(pool)
    log.seek(0)
    return log.read()
