"""The broker's bookkeeping: which jobs are queued for which task, which worker holds what.

A :class:`Scheduler` owns that state and every decision about it; the broker's loop (see
:mod:`pythonflow.pfmq.broker`) owns the sockets, reads messages, hands them to
:meth:`Scheduler.on_task_message` and :meth:`Scheduler.on_worker_message`, and calls
:meth:`Scheduler.dispatch` and :meth:`Scheduler.expire_silent_peers`. Messages go out through
the two ``send`` callables the broker provides, which return ``False`` when the peer is gone.

States of a job: *queued* in its task's queue, *held* by one worker, then *settled* when the first
result for it arrives (later results for it are dropped: the consumer sees each result once).
Tasks take turns (round robin), so a long ``imap`` does not starve a concurrent ``apply``; each
job goes to the worker with the most free credit. A worker that stops sending heartbeats is
presumed dead; the jobs it held go back to the front of their queues, and the oldest of them (the
one it was running: workers run jobs in the order they got them) counts an attempt. After
``max_attempts`` the job fails with :data:`~pythonflow.pfmq.protocol.Kind.FAILED`.

A worker's credit (its free slots) drops with each job sent and comes back with the ``DONE`` of a
job it held, once: also for a job it held whose task was cancelled meanwhile or that another
worker answered first, never for a duplicate or a job it was not sent. A worker's heartbeats
count only while their numbers grow, and no peer's claimed heartbeat interval keeps it for
longer than :data:`MAX_PEER_INTERVAL` allows.
"""
import collections
import logging
from typing import Callable

from . import protocol
from .protocol import COMPLETED, Kind, ProtocolError

LOGGER = logging.getLogger(__name__)
_MAX_SLOTS = 1024  # a worker claiming more request slots is not believed
_MAX_SUPERVISORS = 1024  # reports from more supervisors at once are dropped
#: Seconds: the longest heartbeat interval a peer may claim (a longer one counts as this, or as
#: the broker's own interval if that is longer), so that no peer makes the broker keep its state
#: for weeks after it fell silent.
MAX_PEER_INTERVAL = 60.0


class _Job:
    __slots__ = ("task_id", "job_id", "spec", "payload", "attempts", "worker", "settled")

    def __init__(self, task_id, spec, payload):
        self.task_id = task_id
        self.job_id = spec[0]
        self.spec = spec
        self.payload = payload
        self.attempts = 0
        self.worker = None
        self.settled = False


class _TaskRecord:
    __slots__ = ("id", "queue", "pending", "last_seen", "lapse", "ready", "completed")

    def __init__(self, task_id, now, lapse):
        self.id = task_id
        self.queue = collections.deque()  # jobs waiting for a worker
        self.pending = {}  # job id -> job not yet settled, queued or held
        self.last_seen = now
        self.lapse = lapse  # silent this long: presumed gone
        self.ready = False  # listed in the round robin of tasks with queued jobs
        self.completed = 0  # requests answered, for stats()


class _WorkerRecord:
    __slots__ = ("id", "capacity", "credit", "jobs", "revoked", "last_seen", "lapse", "completed",
                 "last_ping", "joined")

    def __init__(self, worker_id, capacity, credit, now, lapse):
        self.id = worker_id
        self.capacity = capacity
        self.credit = credit
        self.jobs = {}  # (task id, job id) -> job, in the order sent
        # (task id, job id) of jobs the worker holds that no longer count (their task was
        # forgotten, or another worker answered first): its DONE for them still frees a slot.
        self.revoked = set()
        self.last_seen = now
        self.lapse = lapse  # silent this long: presumed dead
        self.completed = 0
        self.last_ping = 0  # the number of the last heartbeat believed, see _on_worker_ping
        self.joined = now  # for its age and results per second in stats()

    def release(self, key) -> bool:
        """Forget that the worker holds job ``key``; whether it did (then a slot is free)."""
        if self.jobs.pop(key, None) is not None:
            return True
        if key in self.revoked:
            self.revoked.discard(key)
            return True
        return False


class _SupervisorRecord:
    __slots__ = ("figures", "last_seen", "lapse")

    def __init__(self):
        self.figures = {}  # of the last REPORT: slots, running, restarts
        self.last_seen = 0.0
        self.lapse = 0.0


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
        Deaths of the workers running a job before it fails.
    max_frame : int
        The largest frame the broker accepts (0: no limit), told to peers in every ``PONG``.
    """

    def __init__(self, send_to_task: Callable[..., bool], send_to_worker: Callable[..., bool],
                 incarnation: int, heartbeat_interval: float, heartbeat_liveness: int,
                 max_attempts: int, max_frame: int = 0):
        self._send_to_task = send_to_task
        self._send_to_worker = send_to_worker
        self.incarnation = incarnation
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_liveness = heartbeat_liveness
        self.max_attempts = max_attempts
        self.max_frame = max_frame
        self.now = 0.0  # set by the loop before it hands over messages
        self.tasks = {}
        self.workers = {}
        self.supervisors = {}  # peer id -> the last REPORT of a supervisor of worker processes
        self.ready_tasks = collections.deque()  # tasks with queued jobs, in turn
        self.counters = collections.Counter()

    # -- tasks -----------------------------------------------------------------------------------

    def on_task_message(self, task_id, kind, fields, body):
        """Handle a message from a task (``SUBMIT``, ``PING`` or ``CANCEL``)."""
        task = self.tasks.get(task_id)
        if kind is Kind.CANCEL:
            if task is not None:
                self._forget_task(task)
            return
        if kind not in (Kind.SUBMIT, Kind.PING):
            raise ProtocolError(f"{kind.name} is not a task message")
        if kind is Kind.SUBMIT:
            self._check_submit(task_id, fields, body)
        if task is None:
            task = self.tasks[task_id] = _TaskRecord(task_id, self.now, self._default_lapse)
        task.last_seen = self.now
        if kind is Kind.SUBMIT:
            if fields[0] not in task.pending:  # a resent job the broker still has is ignored
                job = task.pending[fields[0]] = _Job(task_id, fields, body)
                self._enqueue(task, job)
        else:
            task.lapse = self._lapse(fields[1])
            self._send_to_task(task_id, Kind.PONG, self.incarnation, fields[0], self.capacity,
                               len(task.pending), True, self.max_frame)

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
            self._send_to_task(task_id, Kind.FAILED, fields[0],
                               body=[f"the broker refused the job: {exc}".encode()])
            raise

    def _enqueue(self, task, job, front=False):
        if front:
            task.queue.appendleft(job)
        else:
            task.queue.append(job)
        if not task.ready:
            task.ready = True
            self.ready_tasks.append(task)

    def _forget_task(self, task):
        """Drop a task's jobs; workers holding some of them are told to skip them."""
        del self.tasks[task.id]
        holders = set()
        for job in task.pending.values():
            job.settled = True
            if job.worker is not None:
                holder = self.workers.get(job.worker)
                if holder is not None and holder.jobs.pop((task.id, job.job_id), None):
                    holder.revoked.add((task.id, job.job_id))  # it answers, skipped or not
                    holders.add(holder.id)
        for worker_id in holders:
            self._send_to_worker(worker_id, Kind.REVOKE, body=[task.id])
        self.counters["cancelled"] += len(task.pending)
        task.pending.clear()
        task.queue.clear()
        if task.ready:  # else dispatch() would pop from its empty queue
            self.ready_tasks.remove(task)

    def _settle(self, task_id, job_id):
        """Mark a job answered and return it, or None if it was answered (or dropped) before."""
        task = self.tasks.get(task_id)
        job = task and task.pending.pop(job_id, None)
        if job is None:
            return None
        job.settled = True
        holder = job.worker and self.workers.get(job.worker)
        if holder and holder.jobs.pop((task_id, job_id), None) is not None:
            holder.revoked.add((task_id, job_id))  # answered elsewhere; its DONE frees a slot
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

    @property
    def capacity(self) -> int:
        """Requests all workers can hold at once."""
        return sum(worker.capacity for worker in self.workers.values())

    def on_worker_message(self, worker_id, kind, fields, body):
        """Handle a message from a worker (``READY``, ``DONE``, ``PING``, ``RETURN``, ``BYE``)."""
        worker = self.workers.get(worker_id)
        if worker is not None and kind is not Kind.PING:  # a PING is believed once checked
            worker.last_seen = self.now
        if kind is Kind.DONE:
            self._on_done(worker, fields, body)
        elif kind is Kind.PING:
            self._on_worker_ping(worker_id, worker, fields, body)
        elif kind is Kind.READY:
            capacity = min(max(fields[0], 1), _MAX_SLOTS)
            credit = min(fields[1], capacity)
            if worker is None:
                worker = self.workers[worker_id] = _WorkerRecord(
                    worker_id, capacity, credit, self.now, self._default_lapse)
                LOGGER.info("worker %s joined with %d slots", worker_id.hex()[:8], capacity)
            worker.capacity, worker.credit = capacity, credit
        elif kind is Kind.RETURN and worker is not None:
            returned = [worker.jobs.pop((body[i].bytes, protocol.unpack_job_id(body[i + 1].bytes)),
                                        None) for i in range(0, len(body) - 1, 2)]
            worker.credit = 0  # it returns jobs because it is leaving: send it no more
            self._requeue([job for job in returned if job is not None])
        elif kind is Kind.BYE and worker is not None:
            LOGGER.info("worker %s left", worker_id.hex()[:8])
            self._remove_worker(worker, died=False)
        elif kind is Kind.REPORT:
            self._on_report(worker_id, fields)
        elif kind not in (Kind.RETURN, Kind.BYE):
            raise ProtocolError(f"{kind.name} is not a worker message")

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
        self._send_to_worker(worker_id, Kind.PONG, self.incarnation, fields[0], self.capacity,
                             len(subject.jobs) if subject else 0, subject is not None,
                             self.max_frame)

    def _on_report(self, peer_id, fields):
        """Keep a supervisor's figures (see ``REPORT`` in the protocol) until it falls silent."""
        slots, running, restarts, interval_ms = fields
        record = self.supervisors.get(peer_id)
        if record is None:
            if len(self.supervisors) >= _MAX_SUPERVISORS:
                raise ProtocolError("a REPORT from one supervisor too many")
            record = self.supervisors[peer_id] = _SupervisorRecord()
            LOGGER.info("supervisor %s of %d worker processes reports", peer_id.hex()[:8], slots)
        elif restarts != record.figures["restarts"]:
            LOGGER.info("supervisor %s has restarted %d worker processes", peer_id.hex()[:8],
                        restarts)
        record.figures = {"slots": slots, "running": running, "restarts": restarts}
        record.last_seen, record.lapse = self.now, self._lapse(interval_ms)

    def _on_done(self, worker, fields, body):
        job_id, status, elapsed = fields
        if not body:
            raise ProtocolError("DONE without a task id")
        task_id = body[0].bytes
        # Credit comes back only for a job the worker held: a duplicate DONE, or one for a job it
        # was never sent, must not let the broker send it more than it has room for.
        if worker is not None and worker.release((task_id, job_id)):
            worker.credit += 1
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

    def _remove_worker(self, worker, died):
        """Forget a worker; the jobs it held go back to the front of their queues."""
        del self.workers[worker.id]
        jobs = list(worker.jobs.values())
        if died and jobs:
            running = jobs[0]  # workers run jobs in the order they got them
            running.attempts += 1
            if running.attempts >= self.max_attempts:
                jobs.pop(0)
                self._fail(running, f"its workers died {running.attempts} times while running it")
        self._requeue(jobs)

    def _requeue(self, jobs):
        for job in reversed(jobs):
            job.worker = None
            task = self.tasks.get(job.task_id)
            if task is not None and not job.settled:
                self._enqueue(task, job, front=True)
                self.counters["requeued"] += 1

    def _fail(self, job, reason):
        self._settle(job.task_id, job.job_id)
        self.counters["failed"] += 1
        LOGGER.warning("job %d of task %s failed: %s", job.job_id, job.task_id.hex()[:8], reason)
        self._send_to_task(job.task_id, Kind.FAILED, job.job_id, body=[reason.encode()])

    def dispatch(self):
        """Send queued jobs to the workers with the most free credit, one task at a time."""
        while self.ready_tasks:
            worker = max(self.workers.values(), key=lambda w: w.credit, default=None)
            if worker is None or worker.credit <= 0:
                return
            task = self.ready_tasks.popleft()  # listed only while its queue holds jobs
            job = task.queue.popleft()
            if task.queue:
                self.ready_tasks.append(task)
            else:
                task.ready = False
            if job.settled:
                continue
            if self._send_to_worker(worker.id, Kind.JOB, *job.spec, body=[job.task_id],
                                    payload=job.payload):
                worker.credit -= 1
                worker.jobs[(job.task_id, job.job_id)] = job
                job.worker = worker.id
            else:
                self._enqueue(task, job, front=True)
                self._remove_worker(worker, died=False)

    def expire_silent_peers(self):
        """Forget workers and tasks silent for longer than their lapse; requeue what they held."""
        for worker in [w for w in self.workers.values() if self.now - w.last_seen > w.lapse]:
            LOGGER.warning("worker %s missed %d heartbeats; presumed dead, %d jobs requeued",
                           worker.id.hex()[:8], self.heartbeat_liveness, len(worker.jobs))
            self.counters["workers_lost"] += 1
            self._remove_worker(worker, died=True)
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
                                   "age": round(age, 3),  # seconds since it joined
                                   "per_second": round(w.completed / age, 3) if age else 0.0}
        tasks = {}
        for t in self.tasks.values():
            held = sum(job.worker is not None for job in t.pending.values())
            tasks[t.id.hex()] = {"queued": len(t.pending) - held, "in_flight": held,
                                 "completed": t.completed}
        return {
            "incarnation": self.incarnation,
            "workers": len(self.workers),
            "tasks": len(self.tasks),
            "capacity": self.capacity,
            # Pending jobs not held by a worker (a queue may still list a job answered meanwhile).
            "queued": sum(task["queued"] for task in tasks.values()),
            "in_flight": sum(len(w.jobs) for w in self.workers.values()),
            **{name: self.counters[name] for name in (
                "completed", "requeued", "failed", "cancelled", "workers_lost",
                "duplicates_dropped", "dropped", "bad_signatures")},
            "per_worker": workers,
            "per_task": tasks,
            # Worker processes started in place of dead ones, by the supervisors reporting now.
            "restarts": sum(r.figures["restarts"] for r in self.supervisors.values()),
            "supervisors": {p.hex(): dict(r.figures) for p, r in self.supervisors.items()},
        }
