"""The broker-scale benchmark: one broker, up to a thousand workers, one task or a hundred.

The broker runs in a process of its own, with both ends on loopback TCP; its workers are
:class:`~pythonflow.pfmq.bench.simulate.SimulatedWorkers`, many to a process (four processes),
each with a work and a heartbeat connection and the default heartbeat interval of a real worker;
tasks are real :class:`~pythonflow.pfmq.Task` objects in this process. For every number of
workers, a fresh broker measures

* requests per second of one task, batched (``max_batch=256``, the default) and one request per
  job (``max_batch=1``), and the CPU time per request of the broker, of the workers and of the
  task in each mode (from ``/proc``: every thread, ZeroMQ's I/O threads included);
* the share of a core the broker takes while idle, over a few seconds with nothing to do but
  answer heartbeats, and so its CPU time per heartbeat;
* its memory per idle worker: its resident memory grown by the workers' joining, per worker;
* how many workers it presumed dead meanwhile (heartbeats read too late).

Each round also measures the raw C-proxy pipeline (``zmq.proxy`` between a ROUTER and a DEALER in
a process of its own, as many REP workers as the reference number of pfmq workers, a window of
:data:`RAW_WINDOW` requests in flight, one request per message), 100 concurrent tasks against one
task on the reference workers (the same requests in total, their results read one task after the
other), and the broker's memory per idle task (a thousand tasks that only ping, no worker).
Rounds alternate the order of the worker counts; the figures printed are medians over the rounds,
the ratios those of the medians.

Run ``python benchmarks/bench_scale.py`` (``--quick`` for a smoke run; ``--help``).
"""
import contextlib
import logging
import multiprocessing
import os
import pickle
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import psutil
import zmq

from ..task import Task, query_status
from ..transport import waiting_messages
from .harness import STARTUP_TIMEOUT, Processes, Tally, best_rate, wait_until
from .simulate import (
    raw_rep_workers,
    serve_broker,
    serve_proxy,
    simulate_idle_tasks,
    simulate_workers,
)

LOGGER = logging.getLogger(__name__)
MODULE = "pythonflow.pfmq.bench.simulate"  # preloaded by the fork server
SIZES = {  # batched, single, raw: requests per run; idle: seconds of idle CPU measured
    "full": {"workers": (1, 10, 100, 500, 1000), "batched": 100_000, "single": 5_000,
             "raw": 50_000, "idle": 3.0, "rounds": 3, "tasks": 100, "idle_peers": 1000},
    "quick": {"workers": (1, 2, 8), "batched": 2_000, "single": 200, "raw": 500, "idle": 0.3,
              "rounds": 1, "tasks": 4, "idle_peers": 20},
}
PEER_PROCESSES = 4  # simulated workers (and raw REP workers) are spread over this many
HEARTBEAT_INTERVAL = 1.0
RAW_WINDOW = 1000  # requests in flight through the raw proxy, as in W1's raw pipeline
MODES = {"batched": 256, "single": 1}  # max_batch of the task in each mode
MODE_NAMES = {"batched": "batched", "single": "one request per job"}


def split(count: int, parts: int) -> List[int]:
    """``count`` spread over at most ``parts`` shares, as even as can be, none empty."""
    parts = max(1, min(parts, count))
    return [count // parts + (index < count % parts) for index in range(parts)]


def requests_of(count: int):
    """``count`` W1 requests (``x / y`` of ``i`` and 2) and what their results add up to."""
    return ([{"fetches": "z", "context": {"x": i, "y": 2}} for i in range(count)],
            count * (count - 1) / 4)


def started(processes: Processes, what: str, body: Callable, *args):
    """Start ``body(*args, connection)`` and return what it sends on ``connection`` first."""
    receiver, sender = processes.mp_context.Pipe(duplex=False)
    processes.start(body, *args, sender)
    sender.close()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not receiver.poll(0.1):
            processes.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not start within {STARTUP_TIMEOUT} s")
        return receiver.recv()
    finally:
        receiver.close()


def cpu_seconds(pid: int) -> float:
    """CPU seconds process ``pid`` has used, all its threads together.

    Linux counts them in nanoseconds per thread (``/proc/PID/task/*/schedstat``); the process
    times elsewhere come in clock ticks of 10 ms, too coarse for an idle broker.
    """
    tasks = f"/proc/{pid}/task"
    try:
        total = 0
        for thread in os.listdir(tasks):
            with open(f"{tasks}/{thread}/schedstat", encoding="ascii") as stream:
                total += int(stream.read().split()[0])
        return total / 1e9
    except OSError:  # not Linux, or a thread ended between the listing and the reading
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system


class BrokerProcess:
    """A broker in a process of its own, started among ``processes``; its addresses and figures.

    Parameters
    ----------
    processes : Processes
        Where the broker process is started (and, by the caller, ended).
    """

    def __init__(self, processes: Processes):
        self.processes = processes
        self.frontend, self.backend = started(processes, "the broker", serve_broker,
                                              HEARTBEAT_INTERVAL)
        self.process = psutil.Process(processes.processes[-1].pid)

    def cpu(self) -> float:
        """CPU seconds the broker process has used, all its threads together."""
        return cpu_seconds(self.process.pid)

    def peers_cpu(self) -> float:
        """CPU seconds the other processes started beside the broker (its peers) have used."""
        return sum(cpu_seconds(process.pid) for process in self.processes.processes
                   if process.pid != self.process.pid)

    def rss(self) -> int:
        """The broker process's resident memory, in bytes."""
        return self.process.memory_info().rss

    def wait_for(self, what: str, count: int) -> None:
        """Wait until the broker counts ``count`` of ``what`` (``"workers"`` or ``"tasks"``)."""
        wait_until(lambda: query_status(self.frontend)[what] >= count, self.processes,
                   f"{count} {what}", every=0.2)

    def idle_share(self, seconds: float) -> float:
        """The share of one core the broker takes over ``seconds`` of doing nothing else."""
        cpu, started = self.cpu(), time.perf_counter()
        time.sleep(seconds)
        return (self.cpu() - cpu) / (time.perf_counter() - started)


def start_peers(processes: Processes, body: Callable, address: str, count: int) -> None:
    """Start ``count`` simulated peers of ``body`` over :data:`PEER_PROCESSES` processes."""
    for share in split(count, PEER_PROCESSES):
        processes.start(body, address, share, HEARTBEAT_INTERVAL)


def task_rate(frontend: str, count: int, max_batch: int, tasks: int = 1,
              cache_size: Optional[int] = None) -> float:
    """Requests per second of ``count`` requests split over ``tasks`` concurrent tasks.

    The tasks run at once; their results are read one task after the other, so ``cache_size``
    must let a task run on while the consumer reads another (it defaults to the task's share).
    """
    requests, expected = requests_of(count)

    def run(requests, tally):
        shares, start = [], 0
        for share in split(len(requests), tasks):
            shares.append(requests[start:start + share])
            start += share
        options = {"max_batch": max_batch}
        if tasks > 1 or cache_size:
            options["cache_size"] = cache_size or max(shares, key=len).__len__()
        running = [Task(share, frontend, **options) for share in shares]
        for task in running:
            for result in task:
                tally(result)

    return best_rate(run, requests, expected, f"{tasks} tasks", 1)


def measure_load(broker: BrokerProcess, sizes: dict) -> Dict[str, float]:
    """Requests/s of one task in each mode, and the CPU time per request (µs) of the broker, of
    the simulated workers and of this process (the task and its consumer)."""
    figures = {}
    for mode, max_batch in MODES.items():
        count = sizes[mode]
        task_rate(broker.frontend, max(20, count // 50), max_batch)  # warm-up
        before = broker.cpu(), broker.peers_cpu(), cpu_seconds(os.getpid())
        figures[mode] = task_rate(broker.frontend, count, max_batch)
        after = broker.cpu(), broker.peers_cpu(), cpu_seconds(os.getpid())
        for party, start, end in zip(("cpu_us", "workers cpu_us", "task cpu_us"), before, after):
            figures[f"{mode} {party}"] = (end - start) / count * 1e6
    return figures


def measure_tasks(broker: BrokerProcess, sizes: dict) -> Dict[str, float]:
    """Total requests/s of one task and of ``sizes['tasks']`` concurrent tasks, in each mode."""
    figures = {}
    for mode, max_batch in MODES.items():
        count = sizes[mode]
        for tasks in (1, sizes["tasks"]):
            figures[f"{mode} tasks={tasks}"] = task_rate(broker.frontend, count, max_batch,
                                                         tasks, cache_size=count)
    return figures


@contextlib.contextmanager
def broker_with(mp_context, body: Callable, what: str, count: int):
    """A fresh broker with ``count`` simulated peers of ``body`` (``what`` says which:
    ``"workers"`` or ``"tasks"``); yields the broker and its memory per peer, in bytes."""
    processes = Processes(mp_context)
    try:
        broker = BrokerProcess(processes)
        before = broker.rss()
        start_peers(processes, body, broker.backend if what == "workers" else broker.frontend,
                    count)
        broker.wait_for(what, count)
        yield broker, (broker.rss() - before) / count
    finally:
        processes.close()


def workers_round(mp_context, workers: int, sizes: dict, reference: int) -> Dict[str, float]:
    """A fresh broker with ``workers`` simulated workers: every figure measured with them."""
    with broker_with(mp_context, simulate_workers, "workers", workers) as (broker, memory):
        time.sleep(HEARTBEAT_INTERVAL)  # the sign-up burst is over; heartbeats are spread
        idle = broker.idle_share(sizes["idle"])
        # Idle, the broker answers each worker's heartbeat (one per interval) and nothing else.
        figures = {"memory per worker": memory, "idle": idle,
                   "ping cpu_us": idle * HEARTBEAT_INTERVAL / workers * 1e6}
        figures.update(measure_load(broker, sizes))
        if workers == reference:
            figures.update(measure_tasks(broker, sizes))
        # Workers whose heartbeats the broker read too late: it presumed them dead meanwhile.
        figures["workers lost"] = query_status(broker.frontend)["workers_lost"]
        return figures


def idle_task_memory(mp_context, count: int) -> float:
    """Bytes of broker memory per idle task, with ``count`` of them and no worker."""
    with broker_with(mp_context, simulate_idle_tasks, "tasks", count) as (_, memory):
        return memory


def raw_proxy_rate(mp_context, workers: int, count: int, window: int) -> float:
    """Requests/s through ``zmq.proxy`` (its own process) to ``workers`` REP sockets.

    The client keeps at most ``window`` requests unanswered, one pickled request per message.
    """
    requests, expected = requests_of(count)
    payloads = [pickle.dumps(request, protocol=5) for request in requests]
    processes = Processes(mp_context)
    context = zmq.Context()
    client = context.socket(zmq.DEALER)
    try:
        front, back = started(processes, "the proxy", serve_proxy)
        for share in split(workers, PEER_PROCESSES):
            started(processes, "raw REP workers", raw_rep_workers, back, share)
        client.connect(front)

        def run(items, tally):
            sent = received = 0
            while received < len(items):
                while sent < len(items) and sent - received < window:
                    client.send_multipart([b"", payloads[items[sent]]])
                    sent += 1
                if not client.poll(STARTUP_TIMEOUT * 1000):
                    raise TimeoutError("no answer through the raw proxy")
                for frames in waiting_messages(client):  # every answer there is, per wake-up
                    tally(pickle.loads(frames[1]))
                    received += 1

        indices = list(range(count))
        run(indices[:max(20, count // 50)], Tally())  # warm-up
        return best_rate(run, indices, expected, "raw C proxy", 1)
    finally:
        client.close(linger=0)
        context.term()
        processes.close()


# -- rounds, medians and ratios -------------------------------------------------------------------

def reference_of(counts: Sequence[int]) -> int:
    """The worker count others are compared with: 10 if measured, else the smallest above 1."""
    if 10 in counts:
        return 10
    return min([count for count in counts if count > 1] or counts)


def run(counts: Sequence[int] = SIZES["full"]["workers"], quick: bool = False,
        rounds: Optional[int] = None, progress: Callable[[str], None] = lambda line: None) -> dict:
    """Measure every figure ``rounds`` times; return the settings, samples, medians and ratios.

    Parameters
    ----------
    counts : sequence of int
        Numbers of connected workers.
    quick : bool
        Small sizes, for a smoke test; the figures mean little.
    rounds : int, optional
        How many times everything is measured (the size's default: 3, or 1 when quick).
    progress : callable
        Called with a line of text as each measurement ends.
    """
    mp_context = multiprocessing.get_context("forkserver")
    mp_context.set_forkserver_preload([MODULE])
    sizes = dict(SIZES["quick" if quick else "full"])
    rounds = rounds or sizes["rounds"]
    counts = sorted(set(counts))
    reference, largest = reference_of(counts), max(counts)
    samples: Dict[str, List[float]] = {}

    def keep(figures, suffix=""):
        for name, value in figures.items():
            samples.setdefault(f"{name}{suffix}", []).append(value)

    for index in range(rounds):
        started_at = time.perf_counter()
        keep({"raw": raw_proxy_rate(mp_context, reference, sizes["raw"], RAW_WINDOW)})
        keep({"memory per task": idle_task_memory(mp_context, sizes["idle_peers"])})
        for workers in counts if index % 2 == 0 else counts[::-1]:  # drift touches all alike
            keep(workers_round(mp_context, workers, sizes, reference),
                 f" workers={workers}")
            progress(f"round {index + 1}: {workers} workers done")
        progress(f"round {index + 1} of {rounds} done in {time.perf_counter() - started_at:.0f} s")
    medians = {name: statistics.median(values) for name, values in samples.items()}
    settings = {"mode": "quick" if quick else "full", "sizes": sizes, "rounds": rounds,
                "workers": counts, "reference": reference, "largest": largest,
                "tasks": sizes["tasks"], "peer_processes": PEER_PROCESSES,
                "python": platform.python_version(), "pyzmq": zmq.__version__,
                "libzmq": zmq.zmq_version(), "cpus": multiprocessing.cpu_count()}
    return {"settings": settings, "samples": samples, "medians": medians,
            "ratios": ratios(medians, reference, largest, sizes["tasks"])}


def ratios(medians: dict, reference: int, largest: int, tasks: int) -> List[dict]:
    """The comparisons the issue sets goals for, each with its value, goal and verdict."""
    def at(name, workers):
        return medians[f"{name} workers={workers}"]

    rows = [("one request per job / raw C proxy", at("single", reference) / medians["raw"],
             ">= 0.5", lambda value: value >= 0.5)]
    for mode in MODES:
        rows.append((f"{largest} / {reference} workers, {MODE_NAMES[mode]}",
                     at(mode, largest) / at(mode, reference), ">= 0.8", lambda v: v >= 0.8))
    rows.append((f"idle broker CPU at {largest} workers, % of a core", 100 * at("idle", largest),
                 "< 3", lambda value: value < 3))
    for mode in MODES:
        rows.append((f"{tasks} tasks / 1 task, {MODE_NAMES[mode]}",
                     at(f"{mode} tasks={tasks}", reference) / at(f"{mode} tasks=1", reference),
                     ">= 0.8", lambda value: value >= 0.8))
    return [{"measure": name, "value": value, "target": target, "met": bool(test(value))}
            for name, value, target, test in rows]

