"""Real network partitions: the broker, two workers and a consumer each on a host of their own
(network namespaces joined by a bridge, see :mod:`pythonflow.pfmq.bench.netns`), all speaking
pfmq over TCP; one link is cut in the middle of an ordered stream and restored. Every result
arrives once, in order."""
import contextlib
import functools
import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest
from netns import Network, unavailable
from pfmq_helpers import PACKAGE_PARENT

pytestmark = pytest.mark.timeout(60)

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "partition_peer.py")
HEARTBEAT = 0.2  # a peer silent for 3 heartbeats (0.6 s) is presumed gone
COUNT = 300  # requests of 10 ms on two workers: a stream of about two seconds
CUT_SECONDS = 2.0  # several times the broker's patience, well below the consumer's
#: The consumer gives up after this many silent seconds (timeout * num_retries).
CONSUMER_OPTIONS = ["--timeout", "1.0", "--num-retries", "10", "--heartbeat-interval",
                    str(HEARTBEAT)]


@functools.lru_cache(maxsize=None)
def namespaces_refused():
    return unavailable()


class Cluster:
    """pfmq on the hosts of a :class:`Network`: the broker (and an observer asking it for its
    statistics, on the same host so that it can while the broker's link is cut), two workers."""

    def __init__(self, net: Network, log_dir):
        self.net = net
        broker = net.addresses["broker"]
        self.frontend, self.backend = f"tcp://{broker}:5556", f"tcp://{broker}:5555"
        self.env = dict(os.environ, PFMQ_KEY=os.urandom(16).hex(), PYTHONPATH=os.pathsep.join(
            filter(None, [PACKAGE_PARENT, HERE, os.environ.get("PYTHONPATH")])))
        self.log_dir = log_dir
        self.logs = {}

    def start(self) -> "Cluster":
        heartbeat = ["--heartbeat-interval", str(HEARTBEAT), "--log-level", "warning"]
        self._spawn("broker", "broker", "broker", "--frontend", self.frontend, "--backend",
                    self.backend, *heartbeat)
        for host in ("worker1", "worker2"):
            self._spawn(host, host, "worker", "partition_peer:slow_double", "--address",
                        self.backend, *heartbeat)
        self.observer = self.net.popen("broker", [sys.executable, PEER, "observe", self.frontend],
                                       env=self.env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        self.wait_stats(lambda s: s["workers"] == 2, timeout=30, what="two workers")
        return self

    def _spawn(self, name, host, *args):
        log = self.logs[name] = open(self.log_dir / f"{name}.log", "w+")
        self.net.popen(host, [sys.executable, "-m", "pythonflow.pfmq", *args], env=self.env,
                       stdout=log, stderr=subprocess.STDOUT)

    def stats(self):
        """The broker's statistics (None if it did not answer within a second)."""
        self.observer.stdin.write("\n")
        self.observer.stdin.flush()
        line = self.observer.stdout.readline()
        assert line, "the observer ended"
        return json.loads(line)

    def wait_stats(self, condition, timeout=15.0, what="a condition"):
        """Poll the broker's statistics until ``condition`` holds for them; return them."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats is not None and condition(stats):
                return stats
            assert time.monotonic() < deadline, f"no {what} within {timeout} s: {stats}\n" + \
                self.log_text()
            time.sleep(HEARTBEAT / 2)

    def log_text(self) -> str:
        texts = []
        for name, log in self.logs.items():
            log.flush()
            log.seek(0)
            texts.append(f"--- {name} ---\n{log.read()}")
        return "\n".join(texts)

    def consume(self, count: int) -> "Consumer":
        return Consumer(self.net.popen(
            "consumer", [sys.executable, PEER, "consume", self.frontend, str(count),
                         *CONSUMER_OPTIONS], env=self.env, stdout=subprocess.PIPE, text=True))

    def close(self):
        for log in self.logs.values():
            log.close()


class Consumer:
    """The consumer process, its output lines read as they come."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def _next(self, deadline):
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"the consumer is silent; it printed {self.seen[-3:]}") from None
        assert line is not None, f"the consumer ended after {self.seen[-3:]}"
        self.seen.append(line)
        return line

    def wait_for_results(self, count: int, timeout: float = 30.0) -> None:
        """Return once ``count`` results have arrived."""
        deadline = time.monotonic() + timeout
        while sum(line.startswith("result") for line in self.seen) < count:
            self._next(deadline)

    def finish(self, timeout: float = 40.0) -> list:
        """Wait for the end of the stream; return the values, in the order they arrived."""
        deadline = time.monotonic() + timeout
        while not self.seen or not self.seen[-1].startswith(("done", "error")):
            self._next(deadline)
        assert self.seen[-1] == "done", self.seen[-1]
        assert self.process.wait(10) == 0
        return [int(line.split()[2]) for line in self.seen if line.startswith("result")]


@pytest.fixture
def cluster(tmp_path):
    reason = namespaces_refused()
    if reason is not None:
        pytest.skip(f"network namespaces are not available here: {reason}")
    with Network(["broker", "worker1", "worker2", "consumer"]) as net:
        running = Cluster(net, tmp_path)
        try:
            yield running.start()
        finally:
            running.close()


@contextlib.contextmanager
def cut_off(cluster, host):
    """Cut ``host``'s link for :data:`CUT_SECONDS` (the partition is the scenario: this wait is
    no synchronisation), whatever the body does meanwhile."""
    restore_at = time.monotonic() + CUT_SECONDS
    cluster.net.cut(host)
    try:
        yield
        time.sleep(max(0.0, restore_at - time.monotonic()))
    finally:
        cluster.net.restore(host)


def expected(count=COUNT):
    return [2 * i for i in range(count)]


def test_worker_cut_off_mid_stream_loses_nothing_and_rejoins(cluster):
    consumer = cluster.consume(COUNT)
    consumer.wait_for_results(40)
    cluster.net.cut("worker1")
    assert consumer.finish() == expected(), cluster.log_text()
    # What worker1 held went to worker2: the broker gave it up for dead.
    stats = cluster.stats()
    assert stats["workers"] == 1 and stats["workers_lost"] == 1, stats

    cluster.net.restore("worker1")
    restored = time.monotonic()
    cluster.wait_stats(lambda s: s["workers"] == 2, timeout=15, what="worker1 back")
    # TCP retransmits with backoff, so the first packet after a cut of about two seconds may
    # take a second or two; then the worker signs up again at its next heartbeat.
    assert time.monotonic() - restored < 10
    assert cluster.consume(100).finish() == expected(100)
    per_worker = cluster.stats()["per_worker"].values()
    assert len(per_worker) == 2 and all(figures["completed"] > 0 for figures in per_worker)


def test_consumer_cut_off_briefly_resumes_with_nothing_lost(cluster):
    consumer = cluster.consume(COUNT)
    consumer.wait_for_results(40)
    with cut_off(cluster, "consumer"):
        # The broker gives the silent task up, dropping what it held for it: the task must send
        # again what has not been answered once it hears from the broker.
        cluster.wait_stats(lambda s: s["tasks"] == 0, timeout=CUT_SECONDS, what="task dropped")
    assert consumer.finish() == expected(), cluster.log_text()


def test_broker_cut_off_is_like_a_broker_restart(cluster):
    consumer = cluster.consume(COUNT)
    consumer.wait_for_results(40)
    with cut_off(cluster, "broker"):
        # As after a restart, the broker has forgotten every worker and task when it is back.
        cluster.wait_stats(lambda s: s["tasks"] == s["workers"] == 0, timeout=CUT_SECONDS,
                           what="everyone forgotten")
    assert consumer.finish() == expected(), cluster.log_text()
    stats = cluster.wait_stats(lambda s: s["workers"] == 2, timeout=15, what="both workers back")
    assert stats["workers_lost"] == 2, stats


def test_network_helper_removes_everything(tmp_path):
    reason = namespaces_refused()
    if reason is not None:
        pytest.skip(f"network namespaces are not available here: {reason}")
    with pytest.raises(RuntimeError, match="boom"):
        with Network(["a", "b"]) as net:
            sleeper = net.popen("a", [sys.executable, "-c", "import time; time.sleep(60)"])
            made = net.namespaces.values()
            assert set(made) <= set(net.existing())
            raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert net.existing() == []
