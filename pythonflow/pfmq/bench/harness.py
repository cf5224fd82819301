"""The harness of the pfmq benchmark: it measures pfmq and the baselines the same way.

It starts and ends worker processes, checks the number and the sum of the results of every run
and times the runs; what the workers compute is in :mod:`pythonflow.pfmq.bench.work`.
"""
import math
import socket
import subprocess
import time
from typing import Callable, Sequence

import numpy as np

STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port of loopback that is free now (the system picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def end(process: subprocess.Popen) -> None:
    """End a subprocess by its PID: terminate it, and kill it if it lasts five seconds more."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


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


def wait_until(predicate: Callable[[], bool], processes: Processes, what: str,
               every: float = 0.01) -> None:
    """Poll ``predicate`` every ``every`` seconds until it holds; raise if ``processes`` die or
    it takes longer than :data:`STARTUP_TIMEOUT`."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not predicate():
        processes.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {STARTUP_TIMEOUT} s")
        time.sleep(every)


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
