"""The fault kinds of the soak (:mod:`.soak`), its settings, and which kinds can run here."""
import dataclasses
import enum
from typing import Dict, List, Optional

from ..liveness import HEARTBEAT_LIVENESS
from . import netns

#: What the soak's workers serve (``pfmq worker TARGET``).
TARGET = "pythonflow.pfmq.bench.soak_peer:build_graph"


class Fault(enum.Enum):
    """The kinds of fault the soak injects."""

    WORKER_KILL = "worker SIGKILL"  #: a worker process dies; its supervisor replaces it
    POOL_TERM = "pool SIGTERM"  #: a host's pool stops gracefully, and is started again
    BROKER_KILL = "broker SIGKILL"  #: the broker dies and is started again a moment later
    CUT_WORKER_SHORT = "link cut, worker host, short"
    CUT_WORKER_LONG = "link cut, worker host, long"
    CUT_CONSUMER_SHORT = "link cut, consumer, short"
    CUT_CONSUMER_LONG = "link cut, consumer, long"
    CUT_BROKER_SHORT = "link cut, broker, short"
    CUT_BROKER_LONG = "link cut, broker, long"
    HANG = "hung transformation"  #: a request never ends; its deadline gives it up
    LEAK = "memory growth"  #: a worker keeps allocating; its memory limit recycles it

    @property
    def option(self) -> str:
        """The kind's name on the command line: ``worker-kill``, ``cut-broker-long``, ..."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def named(cls, option: str) -> "Fault":
        """The kind called ``option`` on the command line; ``ValueError`` naming it if none."""
        for fault in cls:
            if fault.option == option:
                return fault
        raise ValueError(f"no fault kind {option!r}; the kinds are "
                         f"{', '.join(fault.option for fault in cls)}")


#: The cuts: (the role of the host cut, whether longer than the heartbeat liveness window).
CUTS = {Fault.CUT_WORKER_SHORT: ("worker", False), Fault.CUT_WORKER_LONG: ("worker", True),
        Fault.CUT_CONSUMER_SHORT: ("consumer", False), Fault.CUT_CONSUMER_LONG: ("consumer", True),
        Fault.CUT_BROKER_SHORT: ("broker", False), Fault.CUT_BROKER_LONG: ("broker", True)}


@dataclasses.dataclass
class Settings:
    """What the soak runs and how hard it hits (see ``python benchmarks/soak.py --help``)."""

    duration: float = 180.0  #: seconds of faults, from the first result on
    hosts: int = 2  #: worker hosts, each with a pool of its own
    processes: int = 2  #: worker processes of each pool
    interval: float = 2.0  #: mean seconds between faults
    heartbeat: float = 0.25  #: heartbeat interval of every process
    seed: int = 0  #: seed of the schedule
    cuts: bool = True  #: cut links, if namespaces can be made here
    request_timeout: float = 1.0  #: the deadline of the requests, if pfmq has deadlines
    max_memory: str = "256MiB"  #: each worker process's memory limit, if pfmq has them
    leak: int = 4 << 20  #: bytes a leaking worker keeps per request
    settle: float = 60.0  #: seconds the pool has to be full again at the end
    rounds: Optional[int] = None  #: end after this many rounds of the schedule, if sooner
    only: Optional[List[str]] = None  #: names (:attr:`Fault.option`) of the only kinds to inject

    @property
    def workers(self) -> int:
        """The full pool: worker processes on all hosts."""
        return self.hosts * self.processes

    @property
    def window(self) -> float:
        """Seconds of silence after which a peer is presumed gone."""
        return self.heartbeat * HEARTBEAT_LIVENESS


def unavailable_faults(settings: Settings) -> Dict[Fault, str]:
    """The fault kinds that cannot be injected here, each with the reason why."""
    missing = {}
    reason = netns.unavailable() if settings.cuts else "link cuts were switched off"
    if reason is not None:
        missing.update((fault, reason) for fault in CUTS)
    if not _has_request_timeout():
        missing[Fault.HANG] = "pfmq has no request_timeout= (a hung request would stall all)"
    if not _has_max_memory():
        missing[Fault.LEAK] = "pfmq worker has no --max-memory (a leak would grow unbounded)"
    return missing


def _has_request_timeout() -> bool:
    import inspect

    from ..task import Task

    return "request_timeout" in inspect.signature(Task).parameters


def _has_max_memory() -> bool:
    from ..cli import build_parser

    _, unknown = build_parser().parse_known_args(["worker", TARGET, "--max-memory", "1GiB"])
    return not unknown
