"""The broker's bookkeeping: which jobs are queued for which task, which worker holds what.

Data flow::

    broker loop --on_task_message(SUBMIT, PING, CANCEL)--> Scheduler --send_to_task(RESULT,
    broker loop --on_worker_message(READY, DONE, PING,       |            FAILED, PONG)--> tasks
                                    RETURN, BYE)------------>|--send_to_worker(JOB, REVOKE,
    broker loop --dispatch(), expire_silent_peers()--------->|            PONG)--> workers

A :class:`Scheduler` owns that state and every decision about it; the broker's loop (see
:mod:`pythonflow.pfmq.broker`) owns the sockets and hands each message to the handler of its
kind. Messages go out through the two ``send`` callables the broker provides, which return
``False`` when the peer is gone.

The records it keeps of each job, task and worker are in :mod:`pythonflow.pfmq.records`; a job
goes from QUEUED to HELD to SETTLED, and back to QUEUED when its worker dies, leaves or returns
it (see :class:`~pythonflow.pfmq.records.JobState`).

Tasks take turns (round robin), so a long ``imap`` does not starve a concurrent ``apply``; each
job goes to the worker with the most free credit, found in a
:class:`~pythonflow.pfmq.records.CreditIndex` without looking at every worker (workers with
equal credit take turns).

A worker that stops sending heartbeats is presumed dead, and the jobs it held are sent again.
Which of them killed it is known only when it held one job and nothing else: a worker that dies
may take with it the ``DONE`` of the job it had just finished (ZeroMQ had not sent it yet), so
"the oldest job it held" may be one it had answered. A death therefore counts an attempt only
for a job its worker held alone; the jobs of any other death are *isolated* first: each is sent
again to a worker that holds nothing else and gets nothing else until it answers (when none is
idle, one is *reserved*: it gets no new jobs until it has answered those it holds). A poison job
thus costs at most ``max_attempts + 1`` workers, and an innocent one that shared a worker with it
is never blamed. After ``max_attempts`` counted deaths the job fails with
:data:`~pythonflow.pfmq.protocol.Kind.FAILED`.

A worker that gives up a request past its deadline says so (``DEADLINE``): the scheduler hands
that to :func:`pythonflow.pfmq.deadline.on_report`, which counts the hit, retries the request
alone (isolated) or fails it, and requeues the worker's other jobs unblamed.

A worker's credit (its free slots) drops with each job sent and comes back with the ``DONE`` of a
job it held, once: also for a job it held whose task was cancelled meanwhile or that another
worker answered first, never for a duplicate or a job it was not sent. A worker's heartbeats
count only while their numbers grow, and no peer's claimed heartbeat interval keeps it for
longer than :data:`MAX_PEER_INTERVAL` allows.
"""
import collections
import logging
from typing import Callable, List, Optional

from . import deadline, protocol
from .errors import ProtocolError
from .protocol import COMPLETED, FAILED_JOB, Frame, Kind
from .records import (
    MAX_SLOTS,
    CreditIndex,
    JobRecord,
    JobState,
    SupervisorRecord,
    TaskRecord,
    WorkerRecord,
)

__all__ = ["Scheduler", "MAX_PEER_INTERVAL"]

LOGGER = logging.getLogger(__name__)
MAX_SUPERVISORS = 1024  # reports from more supervisors at once are dropped
#: Seconds: the longest heartbeat interval a peer may claim (a longer one counts as this, or as
#: the broker's own interval if that is longer), so that no peer makes the broker keep its state
#: for weeks after it fell silent.
MAX_PEER_INTERVAL = 60.0


class Scheduler:
    """Queues, credit and heartbeats of the tasks and workers of one broker.

    Parameters
    ----------
    send_to_task, send_to_worker : callable
        ``send(peer_id, kind, *fields, body=(), payload=())``, returning ``False`` when the peer
        is gone.
    incarnation : int
        The broker's random id for this run, told to peers in every ``PONG``.
    heartbeat_interval : float
        Seconds between heartbeats of peers that have not said theirs.
    heartbeat_liveness : int
        Missed heartbeats before a peer is presumed gone.
    max_attempts : int
        Deaths of workers that held a job alone before it fails.
    max_frame : int
        The largest frame the broker accepts (0: no limit), told to peers in every ``PONG``.

    Attributes
    ----------
    capacity : int
        Requests all workers can hold at once, kept up to date as workers come and go.
    open_jobs : int
        Jobs of all tasks QUEUED or HELD, kept up to date likewise.
    shortest_interval : float
        Seconds: the shortest heartbeat interval of the broker and its workers (as of the last
        look for silent peers, or shorter since).
    """

    def __init__(self, send_to_task: Callable[..., bool], send_to_worker: Callable[..., bool],
                 incarnation: int, heartbeat_interval: float, heartbeat_liveness: int,
                 max_attempts: int, max_frame: int = 0):
        self._send_to_task = send_to_task
        self._send_to_worker = send_to_worker
        self.incarnation, self.max_attempts, self.max_frame = incarnation, max_attempts, max_frame
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_liveness = heartbeat_liveness
        self.now = 0.0  # set by the loop before it hands over messages
        self.tasks = {}
        self.workers = {}
        self.supervisors = {}  # peer id -> the last REPORT of a supervisor of worker processes
        self.capacity = 0
        self.open_jobs = 0  # jobs of all tasks QUEUED or HELD, kept up to date as jobs come and go
        self.shortest_interval = heartbeat_interval  # of the workers' heartbeats and the broker's
        self._credit = CreditIndex()  # the workers with free credit, by how much
        # Tasks with QUEUED jobs, in turn; a dict for removal by id in constant time.
        self.ready_tasks = collections.OrderedDict()
        self.isolated = collections.deque()  # QUEUED jobs for a worker holding nothing else
        self._reserved = None  # the id of the worker that drains for the next isolated job
        self.counters = collections.Counter()
        self._task_handlers = {Kind.SUBMIT: self._on_submit, Kind.PING: self._on_task_ping,
                               Kind.CANCEL: self._on_cancel}
        self._worker_handlers = {Kind.READY: self._on_ready, Kind.DONE: self._on_done,
                                 Kind.PING: self._on_worker_ping, Kind.RETURN: self._on_return,
                                 Kind.BYE: self._on_bye, Kind.REPORT: self._on_report,
                                 Kind.DEADLINE: self._on_deadline}

    # -- tasks -----------------------------------------------------------------------------------

    def on_task_message(self, task_id: bytes, kind: Kind, fields: tuple,
                        body: List[Frame]) -> None:
        """Handle a message from a task: ``SUBMIT``, ``PING`` or ``CANCEL``.

        A message of another kind, or a malformed one, raises :class:`ProtocolError`.
        """
        _handler(self._task_handlers, kind, "task")(task_id, fields, body)

    def _heard_from_task(self, task_id):
        """The record of a task that speaks, made when it first does."""
        task = self.tasks.get(task_id)
        if task is None:
            task = self.tasks[task_id] = TaskRecord(task_id, self.now, self._default_lapse)
        task.last_seen = self.now
        return task

    def _on_submit(self, task_id, fields, body):
        self._check_submit(task_id, fields, body)
        task = self._heard_from_task(task_id)
        if fields[0] not in task.pending:  # a resent job the broker still has is ignored
            job = task.pending[fields[0]] = JobRecord(task_id, fields, body)
            self.open_jobs += 1
            self._enqueue(task, job)

    def _on_task_ping(self, task_id, fields, body):
        task = self._heard_from_task(task_id)
        task.lapse = self._lapse(fields[1])
        self._send_to_task(task_id, Kind.PONG, self.incarnation, fields[0], self.capacity,
                           len(task.pending), True, self.max_frame)

    def _on_cancel(self, task_id, fields, body):
        task = self.tasks.get(task_id)
        if task is not None:
            self._forget_task(task)

    def _check_submit(self, task_id, fields, body):
        """Refuse a job no worker could run, and tell its task so that it does not wait for it.

        Such a job is never queued: every job the broker accepts reaches a worker able to answer
        it. A task resends jobs the broker does not hold, so silence would make it resend forever;
        ``FAILED`` settles the job at the task with the reason instead.
        """
        try:
            protocol.check_job(fields)
            if not body:  # signed messages always carry the seal; unsigned ones may be empty
                raise ProtocolError("SUBMIT without a payload")
        except ProtocolError as exc:
            self._send_to_task(task_id, Kind.FAILED, fields[0], FAILED_JOB, 0,
                               body=[f"the broker refused the job: {exc}".encode()])
            raise

    def _enqueue(self, task, job, front=False):
        job.state, job.holder = JobState.QUEUED, None
        if front:
            task.queue.appendleft(job)
        else:
            task.queue.append(job)
        if task.id not in self.ready_tasks:
            self.ready_tasks[task.id] = task

    def _forget_task(self, task):
        """Drop a task's jobs; workers holding some of them are told to skip them."""
        del self.tasks[task.id]
        holders = set()
        for job in task.pending.values():
            if job.state is JobState.HELD:
                holder = self.workers.get(job.holder)
                if holder is not None and holder.revoke(job.key):
                    holders.add(holder.id)
            job.state = JobState.SETTLED
        for worker_id in holders:
            self._send_to_worker(worker_id, Kind.REVOKE, body=[task.id])
        self.counters["cancelled"] += len(task.pending)
        self.open_jobs -= len(task.pending)
        task.pending.clear()
        task.queue.clear()
        self.ready_tasks.pop(task.id, None)  # else dispatch() would pop from its empty queue

    def _settle(self, task_id, job_id):
        """Mark a job SETTLED and return it, or None if it was settled (or dropped) before."""
        task = self.tasks.get(task_id)
        job = task and task.pending.pop(job_id, None)
        if job is None:
            return None
        self.open_jobs -= 1
        holder = self.workers.get(job.holder) if job.state is JobState.HELD else None
        if holder is not None:
            holder.revoke(job.key)  # answered elsewhere; its DONE still frees a slot
        job.state = JobState.SETTLED
        return job

    # -- workers ---------------------------------------------------------------------------------

    @property
    def _default_lapse(self):
        """Silence after which a peer that has not said its heartbeat interval is presumed gone."""
        return self.heartbeat_interval * self.heartbeat_liveness

    def _lapse(self, interval_ms):
        """Silence after which a peer pinging every ``interval_ms`` is presumed gone.

        The interval is the peer's word, so it is bounded (see :data:`MAX_PEER_INTERVAL`).
        """
        longest = max(MAX_PEER_INTERVAL, self.heartbeat_interval)
        return min(max(interval_ms, 1) / 1000, longest) * self.heartbeat_liveness

    def on_worker_message(self, worker_id: bytes, kind: Kind, fields: tuple,
                          body: List[Frame]) -> None:
        """Handle a message from a worker (``READY``, ``DONE``, ``PING``, ``RETURN``, ``BYE``) or a
        supervisor (``REPORT``).

        The broker drops a message for which this raises :class:`ProtocolError`: one of another
        kind, or a malformed one.
        """
        worker = self.workers.get(worker_id)
        if worker is not None and kind is not Kind.PING:  # a PING is believed once checked
            worker.last_seen = self.now
        _handler(self._worker_handlers, kind, "worker")(worker_id, worker, fields, body)

    def _on_ready(self, worker_id, worker, fields, body):
        capacity = min(max(fields[0], 1), MAX_SLOTS)
        credit = min(fields[1], capacity)
        if worker is None:
            worker = self.workers[worker_id] = WorkerRecord(
                worker_id, 0, credit, self.now, self._default_lapse)
            LOGGER.info("worker %s joined with %d slots", worker_id.hex()[:8], capacity)
        self.capacity += capacity - worker.capacity
        worker.capacity = capacity
        self._credit.set(worker, credit)

    def _on_return(self, worker_id, worker, fields, body):
        if worker is None:
            return
        returned = [worker.jobs.pop((body[i].bytes, protocol.unpack_job_id(body[i + 1].bytes)),
                                    None) for i in range(0, len(body) - 1, 2)]
        self._credit.set(worker, 0)  # it returns jobs because it is leaving: send it no more
        self._requeue([job for job in returned if job is not None])

    def _on_bye(self, worker_id, worker, fields, body):
        if worker is not None:
            LOGGER.info("worker %s left", worker_id.hex()[:8])
            self._remove_worker(worker, died=False)

    def _on_worker_ping(self, worker_id, worker, fields, body):
        # A worker's heartbeats come on a connection of their own and name the worker.
        subject = self.workers.get(body[0].bytes) if body else worker
        if subject is not None:
            # Numbers grow with every heartbeat: one not above the last is a copy (a captured
            # PING sent again, perhaps long after its worker died) and proves nothing.
            if fields[0] <= subject.last_ping:
                raise ProtocolError("a worker PING whose number does not increase (a replay?)")
            subject.last_ping = fields[0]
            subject.last_seen = self.now
            subject.lapse = self._lapse(fields[1])
            self.shortest_interval = min(self.shortest_interval,
                                         subject.lapse / self.heartbeat_liveness)
        self._send_to_worker(worker_id, Kind.PONG, self.incarnation, fields[0], self.capacity,
                             len(subject.jobs) if subject else 0, subject is not None,
                             self.max_frame)

    def _on_report(self, peer_id, worker, fields, body):
        """Keep a supervisor's figures (see ``REPORT`` in the protocol) until it falls silent."""
        slots, running, restarts, interval_ms = fields
        record = self.supervisors.get(peer_id)
        if record is None:
            if len(self.supervisors) >= MAX_SUPERVISORS:
                raise ProtocolError("a REPORT from one supervisor too many")
            record = self.supervisors[peer_id] = SupervisorRecord()
            LOGGER.info("supervisor %s of %d worker processes reports", peer_id.hex()[:8], slots)
        elif restarts != record.figures["restarts"]:
            LOGGER.info("supervisor %s has restarted %d worker processes", peer_id.hex()[:8],
                        restarts)
        record.figures = {"slots": slots, "running": running, "restarts": restarts}
        record.last_seen, record.lapse = self.now, self._lapse(interval_ms)

    def _on_done(self, worker_id, worker, fields, body):
        job_id, status, elapsed = fields
        if not body:
            raise ProtocolError("DONE without a task id")
        task_id = body[0].bytes
        # Credit comes back only for a job the worker held: a duplicate DONE, or one for a job it
        # was never sent, must not let the broker send it more than it has room for.
        if worker is not None and worker.release((task_id, job_id)):
            self._credit.set(worker, worker.credit + 1)
        if status != COMPLETED:  # skipped by a worker because its task was cancelled
            return
        job = self._settle(task_id, job_id)
        if job is None:
            self.counters["duplicates_dropped"] += 1
            return
        requests = job.spec[2]
        if worker is not None:
            worker.completed += requests
        self.counters["completed"] += requests
        self.tasks[task_id].completed += requests
        if not self._send_to_task(task_id, Kind.RESULT, job_id, elapsed, self.capacity,
                                  payload=body[1:]):
            self._forget_task(self.tasks[task_id])

    def _on_deadline(self, worker_id, worker, fields, body):
        """A worker gave up a request past its deadline (see :mod:`pythonflow.pfmq.deadline`)."""
        deadline.on_report(self, worker, fields, body)

    def withdraw(self, worker: WorkerRecord) -> None:
        """Send every job ``worker`` holds elsewhere, blaming none, and send it no job until
        its next ``READY``: it stopped serving them (a request past its deadline)."""
        jobs = list(worker.jobs.values())
        worker.jobs.clear()
        worker.revoked.clear()  # it answers nothing it held any more
        self._credit.set(worker, 0)
        self._requeue(jobs)

    def _remove_worker(self, worker, died):
        """Forget a worker; the jobs it held are sent again, isolated if it died."""
        del self.workers[worker.id]
        self._credit.discard(worker)
        self.capacity -= worker.capacity
        jobs = list(worker.jobs.values())
        if died and len(jobs) == 1 and not worker.revoked:
            # It held nothing else, so this is the job it died running (if it died running one).
            blamed = jobs[0]
            blamed.attempts += 1
            if blamed.attempts >= self.max_attempts:
                jobs.pop()
                self._fail(blamed, f"its workers died {blamed.attempts} times while running it")
        self._requeue(jobs, isolate=died)

    def _requeue(self, jobs, isolate=False):
        """Put ``jobs`` back in order, at the front of their queues or of the isolated ones."""
        for job in reversed(jobs):
            task = self.tasks.get(job.task_id)
            if task is None or job.state is JobState.SETTLED:
                continue
            self.counters["requeued"] += 1
            if isolate or job.isolated:
                job.state, job.holder, job.isolated = JobState.QUEUED, None, True
                self.isolated.appendleft(job)
            else:
                self._enqueue(task, job, front=True)

    def _fail(self, job, reason, cause=FAILED_JOB, index=0):
        job_id = job.spec[0]
        self._settle(job.task_id, job_id)
        self.counters["failed"] += 1
        LOGGER.warning("job %d of task %s failed: %s", job_id, job.task_id.hex()[:8], reason)
        self._send_to_task(job.task_id, Kind.FAILED, job_id, cause, index, body=[reason.encode()])

    # -- placing jobs ----------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Send queued jobs: isolated ones first, then the others to the workers with the most
        free credit, one task at a time."""
        self._dispatch_isolated()
        while self.ready_tasks:
            worker = self._free_worker()
            if worker is None:
                return
            task_id, task = self.ready_tasks.popitem(last=False)
            job = task.queue.popleft()
            if task.queue:
                self.ready_tasks[task_id] = task  # at the back: its next job waits its turn
            if job.state is JobState.QUEUED:
                self._send_job(worker, job)

    def _free_worker(self) -> Optional[WorkerRecord]:
        """The worker with the most free credit that may take any job, or None."""
        return self._credit.most(self._may_take_any)

    def _may_take_any(self, worker: WorkerRecord) -> bool:
        """Whether ``worker`` is neither reserved nor running an isolated job."""
        return worker.id != self._reserved and not worker.alone

    def _dispatch_isolated(self):
        """Send each isolated job to an idle worker, reserving one to drain when none is."""
        while self.isolated:
            job = self.isolated[0]
            if job.state is not JobState.QUEUED:
                self.isolated.popleft()
                continue
            worker = self._idle_worker()
            if worker is None:
                return
            self.isolated.popleft()
            if self._send_job(worker, job):
                worker.alone_with = job.key
        self._reserved = None

    def _idle_worker(self) -> Optional[WorkerRecord]:
        """An idle worker; else None, after reserving the least busy one if none is reserved."""
        idle = next((worker for worker in self.workers.values() if worker.idle), None)
        if idle is None and self._reserved not in self.workers:
            candidates = [w for w in self.workers.values() if w.credit > 0 and not w.alone]
            if candidates:
                self._reserved = min(candidates, key=lambda w: len(w.jobs) + len(w.revoked)).id
        return idle

    def _send_job(self, worker, job) -> bool:
        """Send ``job`` to ``worker``; if the worker is gone, requeue the job and forget it."""
        if self._send_to_worker(worker.id, Kind.JOB, *job.spec, body=[job.task_id],
                                payload=job.payload):
            self._credit.set(worker, worker.credit - 1)
            worker.jobs[job.key] = job
            job.state, job.holder = JobState.HELD, worker.id
            return True
        # The router no longer reaches it: its connection closed without a BYE, so it died (with
        # what it held, if it held one job, counted as the job it was running).
        LOGGER.warning("worker %s is gone; presumed dead, %d jobs requeued", worker.id.hex()[:8],
                       len(worker.jobs))
        self.counters["workers_lost"] += 1
        self._requeue([job])
        self._remove_worker(worker, died=True)
        return False

    def expire_silent_peers(self) -> None:
        """Forget workers and tasks silent for longer than their lapse; requeue what they held."""
        for worker in [w for w in self.workers.values() if self.now - w.last_seen > w.lapse]:
            LOGGER.warning("worker %s missed %d heartbeats; presumed dead, %d jobs requeued",
                           worker.id.hex()[:8], self.heartbeat_liveness, len(worker.jobs))
            self.counters["workers_lost"] += 1
            self._remove_worker(worker, died=True)
        # Recounted here, where every worker is looked at anyway, so that it can grow again.
        self.shortest_interval = min([self.heartbeat_interval, *(
            w.lapse / self.heartbeat_liveness for w in self.workers.values())])
        for task in [t for t in self.tasks.values() if self.now - t.last_seen > t.lapse]:
            LOGGER.info("task %s went silent; forgetting its %d jobs",
                        task.id.hex()[:8], len(task.pending))
            self._forget_task(task)
        for peer_id in [p for p, r in self.supervisors.items() if self.now - r.last_seen > r.lapse]:
            del self.supervisors[peer_id]

    # -- statistics ------------------------------------------------------------------------------

    def stats(self) -> dict:
        """The figures reported by ``Broker.stats()`` and ``pfmq status``.

        The top-level figures are the broker's totals (``queued`` and ``in_flight`` count jobs,
        ``completed`` counts requests); ``per_worker`` and ``per_task`` break them down by peer
        id. All is computed here, when asked, from counters and timestamps: nothing per message.
        """
        workers = {}
        for w in self.workers.values():
            age = max(self.now - w.joined, 0.0)
            workers[w.id.hex()] = {"capacity": w.capacity, "credit": w.credit,
                                   "in_flight": len(w.jobs), "completed": w.completed,
                                   "deadlines_hit": w.deadlines_hit,
                                   "age": round(age, 3),  # seconds since it joined
                                   "per_second": round(w.completed / age, 3) if age else 0.0}
        tasks = {}
        for t in self.tasks.values():
            states = collections.Counter(job.state for job in t.pending.values())
            tasks[t.id.hex()] = {"queued": states[JobState.QUEUED],
                                 "in_flight": states[JobState.HELD], "completed": t.completed,
                                 "deadlines_hit": sum(t.deadlines_hit.values())}
        return {
            "incarnation": self.incarnation,
            "workers": len(self.workers),
            "tasks": len(self.tasks),
            "capacity": self.capacity,
            "queued": sum(task["queued"] for task in tasks.values()),
            "in_flight": sum(len(w.jobs) for w in self.workers.values()),
            **{name: self.counters[name] for name in (
                "completed", "requeued", "failed", "cancelled", "workers_lost",
                "duplicates_dropped", "dropped", "bad_signatures", "deadlines_hit")},
            "per_worker": workers,
            "per_task": tasks,
            # Worker processes started in place of dead ones, by the supervisors reporting now.
            "restarts": sum(r.figures["restarts"] for r in self.supervisors.values()),
            "supervisors": {p.hex(): dict(r.figures) for p, r in self.supervisors.items()},
        }


def _handler(handlers: dict, kind: Kind, side: str) -> Callable[..., None]:
    """The handler of ``kind`` in the table of one side's handlers."""
    handler = handlers.get(kind)
    if handler is None:
        raise ProtocolError(f"{kind.name} is not a {side} message")
    return handler
