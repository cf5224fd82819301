"""Soak test: a long imap while workers and the broker are killed and restarted on a schedule.

The broker and the workers run as ``pfmq broker`` / ``pfmq worker`` processes on loopback, as in a
deployment; this process consumes an endless ordered ``imap`` over a TCP frontend. A chaos thread
kills random workers (SIGKILL), stops others gracefully (SIGTERM), starts replacements, and kills
and restarts the broker. Each result is the index of its request, so the consumer can tell a lost
result (an index skipped) from a duplicate (an index seen again)::

    python benchmarks/soak.py --duration 180

It prints requests done, faults injected, results lost and duplicated, and exits with status 1
unless both of the latter are 0.
"""
import argparse
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import pythonflow as pf  # noqa: E402
from pythonflow import pfmq  # noqa: E402


def work(index):
    """The transformation: a little CPU and a little waiting, then the request's own index."""
    time.sleep(random.uniform(0, 0.004))
    return index


def build_graph():
    """The soak graph, imported by the workers as ``soak:build_graph``."""
    with pf.Graph() as graph:
        pf.func_op(work, pf.placeholder("index")).set_name("result")
    return graph


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Chaos:
    """Starts, kills and restarts the broker and worker processes; remembers what it did."""

    def __init__(self, frontend, backend, heartbeat, workers, seed):
        self.frontend, self.backend = frontend, backend
        self.heartbeat = heartbeat
        self.target_workers = workers
        self.rng = random.Random(seed)
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, ROOT]))
        self.broker = None
        self.workers = []
        self.faults = {"worker SIGKILL": 0, "worker SIGTERM": 0, "broker SIGKILL": 0}
        self.stopping = threading.Event()

    def _pfmq(self, *args):
        return subprocess.Popen([sys.executable, "-m", "pythonflow.pfmq", *args,
                                 "--heartbeat-interval", str(self.heartbeat),
                                 "--log-level", "WARNING"], env=self.env)

    def start_broker(self):
        self.broker = self._pfmq("broker", "--frontend", self.frontend, "--backend", self.backend)

    def start_worker(self):
        self.workers.append(self._pfmq("worker", "soak:build_graph", "--address", self.backend))

    def start(self):
        self.start_broker()
        for _ in range(self.target_workers):
            self.start_worker()

    def run(self, interval):
        """Inject a fault every ``interval`` seconds on average until stopped."""
        while not self.stopping.wait(self.rng.uniform(0.5, 1.5) * interval):
            self.workers = [w for w in self.workers if w.poll() is None]
            # Every fourth fault takes the broker down; the others hit a random worker.
            injected = sum(self.faults.values())
            action = "broker" if injected % 4 == 3 else self.rng.choice(["kill", "kill", "term"])
            if action == "broker":
                self.broker.kill()
                self.broker.wait(10)
                self.faults["broker SIGKILL"] += 1
                self.stopping.wait(self.rng.uniform(0.1, 1.0))  # no broker at all for a while
                self.start_broker()
            elif self.workers:
                victim = self.rng.choice(self.workers)
                victim.send_signal(signal.SIGKILL if action == "kill" else signal.SIGTERM)
                self.faults["worker SIGKILL" if action == "kill" else "worker SIGTERM"] += 1
            while len([w for w in self.workers if w.poll() is None]) < self.target_workers:
                self.start_worker()

    def close(self):
        self.stopping.set()
        for process in [*self.workers, self.broker]:
            if process is not None and process.poll() is None:
                process.kill()
        for process in [*self.workers, self.broker]:
            if process is not None:
                process.wait(10)


def soak(duration, workers, interval, heartbeat, seed):
    """Run the soak for ``duration`` seconds; return the report as a dict."""
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    chaos = Chaos(frontend, backend, heartbeat, workers, seed)
    chaos_thread = threading.Thread(target=chaos.run, args=(interval,), daemon=True)
    report = {"done": 0, "lost": 0, "duplicated": 0}
    started = time.monotonic()
    try:
        chaos.start()
        requests = ({"fetches": "result", "context": {"index": i}} for i in itertools.count())
        task = pfmq.Task(requests, frontend, timeout=5, num_retries=12,
                         heartbeat_interval=heartbeat)
        expected = 0
        for result in task:
            if chaos_thread.ident is None:  # faults and the clock start once the pool serves
                chaos_thread.start()
                started = time.monotonic()
            if result > expected:
                report["lost"] += result - expected
            elif result < expected:
                report["duplicated"] += 1
                continue
            expected = result + 1
            report["done"] += 1
            if time.monotonic() - started > duration:
                break
        task.cancel()
    finally:
        chaos.close()
        if chaos_thread.ident is not None:
            chaos_thread.join(10)
    report["seconds"] = time.monotonic() - started
    report["faults"] = dict(chaos.faults)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180, help="seconds (default 180)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="mean seconds between faults (default 2)")
    parser.add_argument("--heartbeat", type=float, default=0.25,
                        help="heartbeat interval of every process (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    args = parser.parse_args(argv)
    report = soak(args.duration, args.workers, args.interval, args.heartbeat, args.seed)
    faults = report["faults"]
    print(f"soak: {report['seconds']:.0f} s, {report['done']} requests done "
          f"({report['done'] / report['seconds']:.0f}/s), "
          f"{sum(faults.values())} faults injected "
          f"({', '.join(f'{n} {name}' for name, n in faults.items())})")
    print(f"results lost: {report['lost']}, duplicated: {report['duplicated']}")
    return 0 if report["lost"] == 0 and report["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
