"""The soak: an endless ordered stream while processes are killed, links cut, requests hang and
workers grow, on a schedule; nothing may be lost or duplicated, and the pool must recover.

The broker (``pfmq broker``), each worker host's pool (``pfmq worker --processes N``, whose
supervisor replaces dead processes) and the consumer (:mod:`.soak_peer`) run as processes of
their own, on hosts of their own: network namespaces on a bridge (:mod:`.netns`) when this
machine allows them, else all on loopback, without link cuts. Everything speaks TCP.

:class:`Chaos` injects the faults of :class:`Fault`, one at a time, a random pause apart. It
takes them in rounds: each round is every fault kind switched on (worker kills twice), in a
shuffled order, so that a short run still meets them all. At the end the schedule stops, the
broker must see the full pool again within a bounded time, and the consumer's :class:`Ledger
<.soak_peer.Ledger>` says what came back. :func:`run` returns the report as a dict; the table
and the command line are in :mod:`.soak_report`, the fault kinds and the settings in
:mod:`.soak_settings`.
"""
import contextlib
import dataclasses
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

from . import netns
from .harness import free_port
from .soak_hosts import LocalHosts, Peer, worker_pids
from .soak_settings import CUTS, TARGET, Fault, Settings, unavailable_faults

__all__ = ["CUTS", "Chaos", "Cluster", "Fault", "Settings", "passed", "run",
           "unavailable_faults"]

LOGGER = logging.getLogger(__name__)
PEER = [sys.executable, "-m", "pythonflow.pfmq.bench.soak_peer"]
# Worker processes (and the pfmq commands) import the same pythonflow as this module.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


class Cluster:
    """The broker, the pools, the consumer and a statistics observer on their hosts."""

    def __init__(self, hosts, settings: Settings):
        self.hosts, self.settings = hosts, settings
        broker = hosts.addresses["broker"]
        frontend, backend = (5556, 5555) if isinstance(hosts, netns.Network) else (
            free_port(), free_port())
        self.frontend, self.backend = f"tcp://{broker}:{frontend}", f"tcp://{broker}:{backend}"
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")])))
        # Signed messages: the broker binds an address beyond loopback only with a key.
        self.env["PFMQ_KEY"] = os.urandom(16).hex()
        self.broker: Optional[subprocess.Popen] = None
        self.pools: Dict[str, subprocess.Popen] = {}
        self.pools_started = 0
        self.max_memory: Optional[str] = None
        self.workers_seen = set()  # worker process ids, to count those started in place of others
        self.consumer = self.observer = None

    @property
    def worker_hosts(self) -> List[str]:
        """The names of the worker hosts: ``worker1``, ``worker2``, ..."""
        return [f"worker{index + 1}" for index in range(self.settings.hosts)]

    def _pfmq(self, host: str, *args: str) -> subprocess.Popen:
        return self.hosts.popen(host, [sys.executable, "-m", "pythonflow.pfmq", *args,
                                       "--heartbeat-interval", str(self.settings.heartbeat),
                                       "--log-level", "WARNING"], env=self.env)

    def _peer(self, host: str, *args: str) -> Peer:
        return Peer(self.hosts.popen(host, [*PEER, *args], env=self.env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE))

    def start_broker(self) -> None:
        """Start ``pfmq broker`` on the broker's host (again, after it was killed)."""
        self.broker = self._pfmq("broker", "broker", "--frontend", self.frontend, "--backend",
                                 self.backend)

    def start_pool(self, host: str) -> None:
        """Start ``pfmq worker --processes N`` on ``host``."""
        memory = ["--max-memory", self.max_memory] if self.max_memory else []
        self.pools[host] = self._pfmq(host, "worker", TARGET, "--address", self.backend,
                                      "--processes", str(self.settings.processes), *memory)
        self.pools_started += 1

    def restart_pool(self, host: str) -> None:
        """Stop ``host``'s pool gracefully (SIGTERM to its supervisor), then start it again."""
        pool = self.pools[host]
        pool.send_signal(signal.SIGTERM)
        pool.wait(30)  # its workers hand back what they hold, then exit
        self.start_pool(host)

    def start(self, max_memory: Optional[str], request_timeout: Optional[float]) -> None:
        """Start every process; return once the consumer has its first result."""
        self.max_memory = max_memory
        self.start_broker()
        for host in self.worker_hosts:
            self.start_pool(host)
        self.observer = self._peer("broker", "observe", self.frontend)
        deadline = ["--request-timeout", str(request_timeout)] if request_timeout else []
        self.consumer = self._peer("consumer", "consume", self.frontend, "--heartbeat-interval",
                                   str(self.settings.heartbeat), *deadline)
        event = self.consumer.receive(timeout=120)
        if event.get("event") != "serving":
            raise RuntimeError(f"the consumer did not start serving: {event}")

    def stats(self) -> Optional[dict]:
        """The broker's statistics, or None if it does not answer within a second."""
        self.observer.send("")
        return self.observer.receive(timeout=30)

    def note_workers(self) -> List[int]:
        """The worker processes of every pool now (remembered, to count restarts)."""
        pids = [pid for pool in self.pools.values() for pid in worker_pids(pool.pid)]
        self.workers_seen.update(pids)
        return pids

    def full(self, stats: Optional[dict]) -> bool:
        """Whether ``stats`` show the full pool: every worker signed up with the broker, and
        every slot of every pool's supervisor running a process."""
        if stats is None:
            return False
        running = sum(figures.get("running", 0) for figures in stats["supervisors"].values())
        return stats["workers"] == running == self.settings.workers

    def wait_full(self, timeout: float) -> Optional[dict]:
        """Poll the broker until it sees the full pool twice in a row, a liveness window apart
        (a worker killed just before may not be presumed gone yet); its statistics then, else
        None after ``timeout`` seconds."""
        deadline, previous = time.monotonic() + timeout, False
        while time.monotonic() < deadline:
            stats = self.stats()
            self.note_workers()
            if self.full(stats) and previous:
                return stats
            previous = self.full(stats)
            time.sleep(self.settings.window)
        return None

    def stop_consumer(self, timeout: float = 60.0) -> dict:
        """Tell the consumer to stop; return its report."""
        self.consumer.send("stop")
        deadline = time.monotonic() + timeout
        while True:
            event = self.consumer.receive(timeout=max(0.1, deadline - time.monotonic()))
            if event.get("event") == "report":
                return event


class Chaos:
    """Injects faults into a :class:`Cluster`, one at a time, until :meth:`stop`.

    Parameters
    ----------
    cluster : Cluster
        Where the faults go.
    faults : list of Fault
        The kinds switched on.
    settings : Settings
        The seed, the mean pause between faults, the leak per request, the heartbeat.
    """

    def __init__(self, cluster: Cluster, faults: List[Fault], settings: Settings):
        self.cluster, self.faults, self.settings = cluster, list(faults), settings
        self.rng = random.Random(settings.seed)
        self.injected = {fault: 0 for fault in self.faults}
        self.stopping = threading.Event()
        self.error: Optional[BaseException] = None
        self._round: List[Fault] = []
        self.rounds = 0  # rounds of the schedule begun

    def next_fault(self) -> Fault:
        """The next fault of the schedule: rounds of every kind in a shuffled order (worker
        kills twice a round, the commonest fault of a real cluster)."""
        if not self._round:
            self.rounds += 1
            self._round = [*self.faults, *([Fault.WORKER_KILL] * (Fault.WORKER_KILL in
                                                                   self.faults))]
            self.rng.shuffle(self._round)
        return self._round.pop()

    def run(self) -> None:
        """Inject a fault every ``settings.interval`` seconds on average until stopped."""
        try:
            while not self.stopping.wait(self.rng.uniform(0.5, 1.5) * self.settings.interval):
                fault = self.next_fault()
                if self.inject(fault):
                    self.injected[fault] += 1
                else:  # nothing to hit now: it comes again at the end of the round
                    self._round.insert(0, fault)
                if not self._round and self.rounds == self.settings.rounds:
                    self.stop()  # the last round is over: run() stops waiting for the duration
        except Exception as exc:  # reported by run(): a soak whose chaos broke proves nothing
            LOGGER.exception("the fault schedule failed")
            self.error = exc

    def stop(self) -> None:
        """End the schedule after the fault under way (a cut is always restored)."""
        self.stopping.set()

    def inject(self, fault: Fault) -> bool:
        """Inject ``fault`` now; False if there was nothing to hit (a pool restarting)."""
        cluster, rng = self.cluster, self.rng
        if fault in CUTS:
            role, long = CUTS[fault]
            host = rng.choice(cluster.worker_hosts) if role == "worker" else role
            # Short: well inside the liveness window; long: a few windows, everyone gives up.
            window = self.settings.window
            self.cut(host, window * (rng.uniform(2.5, 4.0) if long else rng.uniform(0.2, 0.5)))
        elif fault is Fault.WORKER_KILL:
            pids = cluster.note_workers()
            if not pids:
                return False
            _signal(rng.choice(pids), signal.SIGKILL)
        elif fault is Fault.POOL_TERM:
            host = rng.choice(cluster.worker_hosts)
            cluster.note_workers()
            cluster.restart_pool(host)
        elif fault is Fault.BROKER_KILL:
            cluster.broker.kill()
            cluster.broker.wait(10)
            time.sleep(rng.uniform(0.1, 1.0))  # no broker at all for a while
            cluster.start_broker()
        elif fault is Fault.HANG:
            cluster.consumer.send("hang")
        elif fault is Fault.LEAK:
            cluster.consumer.send(f"leak {self.settings.leak}")
        return True

    def cut(self, host: str, seconds: float) -> None:
        """Cut ``host``'s link for ``seconds`` (the outage is the fault: this wait is its
        length, not a synchronisation)."""
        self.cluster.hosts.cut(host)
        try:
            time.sleep(seconds)
        finally:
            self.cluster.hosts.restore(host)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:  # it died meanwhile: the fault happened anyway
        pass


@contextlib.contextmanager
def _sampling(cluster: Cluster, interval: float):
    """Note the pools' worker processes every ``interval`` seconds meanwhile: each one seen
    beyond the first of its slot was started in place of another."""
    stopping = threading.Event()

    def sample():  # until the block ends
        while not stopping.wait(interval):
            cluster.note_workers()

    thread = threading.Thread(target=sample, name="soak-sampler", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        thread.join(10)


def run(settings: Settings) -> dict:
    """Run the soak; return its report (see :func:`.soak_report.format_report`)."""
    missing = unavailable_faults(settings)
    chosen = set(Fault) if settings.only is None else {Fault.named(n) for n in settings.only}
    faults = [fault for fault in Fault if fault in chosen and fault not in missing]
    for fault, reason in missing.items():
        LOGGER.warning("soak without %s: %s", fault.value, reason)
    can_cut = not any(fault in missing for fault in CUTS)
    names = ["broker", "consumer", *(f"worker{index + 1}" for index in range(settings.hosts))]
    with (netns.Network(names) if can_cut else LocalHosts(names)) as hosts:
        cluster = Cluster(hosts, settings)
        chaos = Chaos(cluster, faults, settings)
        chaos_thread = threading.Thread(target=chaos.run, name="soak-chaos", daemon=True)
        cluster.start(settings.max_memory if Fault.LEAK in faults else None,
                      settings.request_timeout if Fault.HANG in faults else None)
        with _sampling(cluster, 0.05):
            started = time.monotonic()
            chaos_thread.start()
            try:
                chaos.stopping.wait(settings.duration)
            finally:
                chaos.stop()
                chaos_thread.join()
            seconds = time.monotonic() - started
            stats = cluster.wait_full(settings.settle)
            settled = time.monotonic() - started - seconds
            consumer = cluster.stop_consumer()
        if stats is None:
            stats = cluster.stats() or {}
    workers_seen = len(cluster.workers_seen)
    return {"settings": dataclasses.asdict(settings), "seconds": seconds, "settled": settled,
            "consumer": consumer, "faults": {fault.value: n for fault, n in chaos.injected.items()},
            "unavailable": {fault.value: reason for fault, reason in missing.items()},
            "chaos_error": None if chaos.error is None else repr(chaos.error),
            "workers_end": stats.get("workers"), "workers_full": settings.workers,
            "restarts": workers_seen - settings.processes * cluster.pools_started,
            "broker": {name: stats.get(name) for name in (
                "workers_lost", "requeued", "failed", "restarts", "deadlines_hit")}}


def passed(report: dict) -> bool:
    """Whether the soak met its contract: nothing lost or duplicated, no other failure, the
    schedule ran, the stream still flowed at the end and the broker saw the full pool."""
    consumer = report["consumer"]
    return (consumer["lost"] == 0 and consumer["duplicated"] == 0 and consumer["failed"] == 0
            and consumer["error"] is None and not consumer["stalled"]
            and report["chaos_error"] is None
            and report["workers_end"] == report["workers_full"])
