r"""What the broker knows of each job, task and worker; the scheduler decides what to do with it.

A job's life at the broker (:class:`JobState`)::

    SUBMIT --> QUEUED --dispatch--> HELD --DONE (the first), FAILED--> SETTLED
                 ^                   |
                 \-------------------/  its worker died, left, or returned it unstarted
    QUEUED, HELD --its task is cancelled or forgotten--> SETTLED

A QUEUED job waits in its task's queue, or in the scheduler's isolated queue once a worker died
holding it with others (see :mod:`pythonflow.pfmq.scheduler`). A SETTLED job is left wherever it
is queued and skipped when reached; later results for it are dropped, so the consumer sees each
result once. A :class:`CreditIndex` groups the workers by their free credit, so that the one with
the most is found without a scan.
"""
import collections
import enum
from typing import Callable, Dict, Optional, Set, Tuple

#: How a worker's record names a job it holds: ``(task id, job id)``.
JobKey = Tuple[bytes, int]

__all__ = ["JobState", "JobRecord", "TaskRecord", "WorkerRecord", "JobKey", "MAX_SLOTS",
           "SupervisorRecord", "CreditIndex"]

#: The most request slots a worker is believed to have.
MAX_SLOTS = 1024


class JobState(enum.Enum):
    """Where a job is at the broker."""

    QUEUED = "queued"  # waiting for a worker, in its task's queue or the isolated queue
    HELD = "held"  # sent to one worker, not answered yet
    SETTLED = "settled"  # answered, failed or dropped with its task: nothing more to do


class JobRecord:
    """A job as the broker holds it: the task's frames, and where it is."""

    __slots__ = ("task_id", "spec", "payload", "attempts", "state", "holder", "isolated")

    def __init__(self, task_id: bytes, spec: tuple, payload: list):
        self.task_id = task_id
        self.spec = spec  # (job_id, first_index, count, has_seed, seed, deadline_ms), as sent
        self.payload = payload
        self.attempts = 0  # deaths of workers that held it alone
        self.state = JobState.QUEUED
        self.holder: Optional[bytes] = None  # the id of the worker that holds it, while HELD
        self.isolated = False  # sent again only to a worker that holds nothing else

    @property
    def key(self) -> JobKey:
        """``(task id, job id)``: how workers' records name it."""
        return self.task_id, self.spec[0]


class TaskRecord:
    """A task's queue of jobs, the jobs it still waits for, and when it last spoke."""

    __slots__ = ("id", "queue", "pending", "last_seen", "lapse", "completed", "deadlines_hit")

    def __init__(self, task_id: bytes, now: float, lapse: float):
        self.id = task_id
        self.queue = collections.deque()  # QUEUED jobs (and SETTLED ones, skipped when reached)
        self.pending: Dict[int, JobRecord] = {}  # job id -> job QUEUED or HELD
        self.last_seen = now
        self.lapse = lapse  # silent this long: presumed gone
        self.completed = 0  # requests answered, for stats()
        # Request index -> deadlines it ran past (see pythonflow.pfmq.deadline): by index, not by
        # job, since a job of several requests is split once one of them hangs.
        self.deadlines_hit: Dict[int, int] = collections.Counter()


class WorkerRecord:
    """A worker's slots and free credit, the jobs it holds, and when it last spoke."""

    __slots__ = ("id", "capacity", "credit", "jobs", "revoked", "last_seen", "lapse", "completed",
                 "last_ping", "alone_with", "joined", "deadlines_hit")

    def __init__(self, worker_id: bytes, capacity: int, credit: int, now: float, lapse: float):
        self.id = worker_id
        self.capacity = capacity
        self.credit = credit
        self.jobs: Dict[JobKey, JobRecord] = {}  # in the order sent
        # (task id, job id) of jobs the worker holds that no longer count (their task was
        # forgotten, or another worker answered first): its DONE for them still frees a slot.
        self.revoked: Set[JobKey] = set()
        self.last_seen = now
        self.lapse = lapse  # silent this long: presumed dead
        self.completed = 0
        self.last_ping = 0  # the number of the last heartbeat believed, see _on_worker_ping
        self.alone_with: Optional[JobKey] = None  # the isolated job last sent to it
        self.joined = now  # for its age and results per second in stats()
        self.deadlines_hit = 0  # requests it stopped at their deadline

    @property
    def idle(self) -> bool:
        """Whether it holds nothing, not even a job that no longer counts, and has credit."""
        return not self.jobs and not self.revoked and self.credit > 0

    @property
    def alone(self) -> bool:
        """Whether it runs an isolated job, and so must get nothing else until it answers."""
        return self.alone_with in self.jobs or self.alone_with in self.revoked

    def revoke(self, key: JobKey) -> bool:
        """The job ``key`` no longer counts, though the worker may still run it; whether the
        worker held it."""
        if self.jobs.pop(key, None) is None:
            return False
        self.revoked.add(key)  # its DONE, skipped or not, still frees a slot
        return True

    def release(self, key: JobKey) -> bool:
        """Forget that the worker holds job ``key``; whether it did (then a slot is free)."""
        if self.jobs.pop(key, None) is not None:
            return True
        if key in self.revoked:
            self.revoked.discard(key)
            return True
        return False


class SupervisorRecord:
    """What the broker knows of a supervisor of worker processes: its last ``REPORT``."""

    __slots__ = ("figures", "last_seen", "lapse")

    def __init__(self):
        self.figures = {}  # of the last REPORT: slots, running, restarts
        self.last_seen = 0.0
        self.lapse = 0.0


class CreditIndex:
    """The workers with free credit, grouped by how much, so that the one with the most is found
    without looking at every worker.

    Every change of a worker's credit goes through :meth:`set` (or :meth:`discard` when the
    worker is forgotten). Among workers with equal credit, the one whose credit changed least
    recently comes first, so that equal workers take turns.
    """

    def __init__(self):
        self._groups: Dict[int, Dict[bytes, WorkerRecord]] = {}  # credit -> workers, in turn
        self._most = 0  # no group above this one

    def set(self, worker: WorkerRecord, credit: int) -> None:
        """Give ``worker`` ``credit`` free slots (and its place among the workers with as many)."""
        self.discard(worker)
        worker.credit = credit
        if credit > 0:
            self._groups.setdefault(credit, {})[worker.id] = worker
            self._most = max(self._most, credit)

    def discard(self, worker: WorkerRecord) -> None:
        """Take ``worker`` out of the index; its credit is left as it was."""
        group = self._groups.get(worker.credit)
        if group is not None and group.pop(worker.id, None) is not None and not group:
            del self._groups[worker.credit]

    def most(self, eligible: Callable[[WorkerRecord], bool]) -> Optional[WorkerRecord]:
        """The first ``eligible`` worker of those with the most credit, or None."""
        while self._most > 0 and self._most not in self._groups:
            self._most -= 1
        # Few workers are ever ineligible (reserved, or running an isolated job), so the group
        # with the most credit almost always answers; the others are sorted only when it does not.
        best = self._most and _first(self._groups[self._most], eligible)
        if best:
            return best
        for credit in sorted(self._groups, reverse=True)[1:]:
            best = _first(self._groups[credit], eligible)
            if best:
                return best
        return None


def _first(group: Dict[bytes, WorkerRecord], eligible: Callable[[WorkerRecord], bool]):
    return next((worker for worker in group.values() if eligible(worker)), None)
