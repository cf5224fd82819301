"""The broker: hands jobs from tasks to free workers and routes their results back.

Data flow::

    Task --SUBMIT/PING/CANCEL--> frontend ROUTER +------- broker loop --------+
    Task <--RESULT/FAILED/PONG--                 | tasks: jobs queued per task |
                                                 | (round robin between tasks) |
                                                 | workers: credit, jobs held  |
    Worker --READY/DONE/PING-->  backend ROUTER  +-----------------------------+
    Worker <--JOB/REVOKE/PONG--

One thread runs :meth:`Broker.run`: it polls both sockets, updates the state below and dispatches
queued jobs to workers with free credit. It never deserialises a payload; it reads headers and
moves frames.

States of a job: *queued* in its task's queue, *held* by one worker, then *settled* when the first
result for it arrives (later results for it are dropped: the consumer sees each result once). A
worker that stops sending heartbeats is presumed dead; the jobs it held go back to the front of
their queues, and the oldest of them (the one it was running) counts an attempt. After
``max_attempts`` the job fails with :data:`~pythonflow.pfmq.protocol.Kind.FAILED`.
"""
import collections
import json
import logging
import os
import threading
import time
import uuid
from typing import Optional

import zmq

from . import protocol
from .common import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_LIVENESS,
    RateLimitedLogger,
    Wakeup,
    check_address,
    resolve_key,
    waiting_messages,
)
from .protocol import COMPLETED, Kind, ProtocolError

LOGGER = logging.getLogger(__name__)
_DRAIN = 256  # messages read from one socket before looking at the other
_MAX_SLOTS = 1024  # a worker claiming more request slots is not believed


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
    __slots__ = ("id", "queue", "pending", "last_seen", "lapse", "ready")

    def __init__(self, task_id, now, lapse):
        self.id = task_id
        self.queue = collections.deque()  # jobs waiting for a worker
        self.pending = {}  # job id -> job not yet settled, queued or held
        self.last_seen = now
        self.lapse = lapse  # silent this long: presumed gone
        self.ready = False  # listed in the round robin of tasks with queued jobs


class _WorkerRecord:
    __slots__ = ("id", "capacity", "credit", "jobs", "last_seen", "lapse", "completed")

    def __init__(self, worker_id, capacity, credit, now, lapse):
        self.id = worker_id
        self.capacity = capacity
        self.credit = credit
        self.jobs = {}  # (task id, job id) -> job, in the order sent
        self.last_seen = now
        self.lapse = lapse  # silent this long: presumed dead
        self.completed = 0


class Broker:
    """Load-balancing broker between tasks (frontend) and workers (backend).

    Parameters
    ----------
    backend_address : str
        Address workers connect to, e.g. ``tcp://127.0.0.1:5555``; a ``*`` port binds a free one
        (read it back from :attr:`backend_address` once started).
    frontend_address : str, optional
        Address tasks connect to; defaults to a fresh ``inproc://`` address, which serves tasks of
        this process with no set-up.
    start : bool
        Start serving in a background thread right away.
    heartbeat_interval : float
        Seconds between heartbeats; a worker silent for ``heartbeat_liveness`` intervals is
        presumed dead and its jobs are sent elsewhere.
    heartbeat_liveness : int
        Missed heartbeats before a worker or task is presumed gone.
    max_attempts : int
        A job whose worker dies while running it this many times fails at its task.
    max_message_size : int, optional
        Peers sending larger messages are disconnected (ZeroMQ ``MAXMSGSIZE``).
    key : bytes or str, optional
        Shared key for signed messages; defaults to the ``PFMQ_KEY`` environment variable.
    curve : pythonflow.pfmq.security.CurveServer, optional
        Encrypt and authenticate ``tcp://`` and ``ipc://`` connections with CurveZMQ.
    context : zmq.Context, optional
        Defaults to the process-wide instance, which ``inproc://`` tasks share.
    """

    def __init__(self, backend_address: str, frontend_address: Optional[str] = None,
                 start: bool = False, *, heartbeat_interval: float = HEARTBEAT_INTERVAL,
                 heartbeat_liveness: int = HEARTBEAT_LIVENESS, max_attempts: int = 3,
                 max_message_size: Optional[int] = None, key=None, curve=None,
                 context: Optional[zmq.Context] = None):
        self.backend_address = check_address(backend_address)
        self.frontend_address = check_address(
            frontend_address or f"inproc://pfmq-frontend-{uuid.uuid4().hex}")
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_liveness = heartbeat_liveness
        self.max_attempts = max_attempts
        self.max_message_size = max_message_size
        self.key = resolve_key(key)
        self.curve = curve
        self._own_curve = curve and curve.client()  # for stats/apply/imap over the frontend
        self.context = context or zmq.Context.instance()
        self.incarnation = int.from_bytes(os.urandom(8), "big") >> 1
        self._wire = protocol.Wire(self.key)
        self._log = RateLimitedLogger(LOGGER)
        self._wakeup = Wakeup()
        self._stopping = False
        self._thread = None
        self._running = threading.Event()
        self._reset_state()
        if start:
            self.run_async()

    def _reset_state(self):
        self.tasks = {}
        self.workers = {}
        self.ready_tasks = collections.deque()
        self.counters = collections.Counter()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def is_alive(self) -> bool:
        """Whether the broker is serving."""
        return self._running.is_set()

    def run(self) -> None:
        """Bind both sockets and serve in the calling thread until :meth:`cancel`."""
        frontend, backend = self._bind()
        self._loop_thread = threading.current_thread()  # stats() asks the loop from elsewhere
        try:
            self._running.set()
            self._serve(frontend, backend)
        finally:
            self._running.clear()
            frontend.close(linger=0)
            backend.close(linger=0)

    def run_async(self) -> "Broker":
        """Serve in a background thread; returns once the sockets are bound (or raises why not)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the broker is already running")
        self._stopping = False
        failure = []

        def serve():
            try:
                self.run()
            except BaseException as exc:
                if bound.is_set():
                    LOGGER.exception("the broker loop failed")
                else:  # reported to the caller of run_async
                    failure.append(exc)
            finally:
                bound.set()

        bound = threading.Event()
        self._on_bound = bound.set
        self._thread = threading.Thread(target=serve, name="pfmq-broker", daemon=True)
        self._thread.start()
        bound.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def cancel(self, timeout: Optional[float] = None) -> None:
        """Stop serving and wait up to ``timeout`` seconds for the loop to end."""
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self):
        if not self.is_alive:
            self.run_async()
        return self

    def __exit__(self, *exc_info):
        self.cancel()

    def _bind(self):
        frontend = self._router(self.frontend_address)
        try:
            backend = self._router(self.backend_address)
        except BaseException:
            frontend.close(linger=0)
            raise
        self.frontend_address = frontend.getsockopt_string(zmq.LAST_ENDPOINT)
        self.backend_address = backend.getsockopt_string(zmq.LAST_ENDPOINT)
        LOGGER.info("broker serving tasks on %s and workers on %s",
                    self.frontend_address, self.backend_address)
        getattr(self, "_on_bound", lambda: None)()
        return frontend, backend

    def _router(self, address):
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # tasks and workers bound what is in flight
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished peer raises instead of vanishing
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a peer reconnecting with its id takes over
        if self.max_message_size:
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        if self.curve is not None and not address.startswith("inproc://"):
            self.curve.configure(sock)
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise OSError(exc.errno, f"cannot bind {address}: {exc.strerror}") from None
        return sock

    # -- the loop --------------------------------------------------------------------------------

    def _serve(self, frontend, backend):
        self.frontend, self.backend = frontend, backend
        poller = zmq.Poller()
        poller.register(frontend, zmq.POLLIN)
        poller.register(backend, zmq.POLLIN)
        poller.register(self._wakeup, zmq.POLLIN)
        next_check = time.monotonic() + self.heartbeat_interval
        while not self._stopping:
            timeout = max(0.0, next_check - time.monotonic())
            events = dict(poller.poll(timeout * 1000))
            self.now = time.monotonic()
            if frontend in events:
                self._drain(frontend, self._on_task_message)
            if backend in events:
                self._drain(backend, self._on_worker_message)
            self._dispatch()
            if self.now >= next_check:
                self._expire_silent_peers()
                next_check = self.now + self.heartbeat_interval
            self._wakeup.clear_if_woken(events)

    def _drain(self, sock, handle):
        for frames in waiting_messages(sock, _DRAIN):
            peer = frames[0].bytes
            try:
                kind, fields, body = self._wire.unpack(frames[1:])
                handle(peer, kind, fields, body)
            except ProtocolError as exc:
                self.counters["dropped"] += 1
                if "signature" in str(exc):
                    self.counters["bad_signatures"] += 1
                self._log.log(logging.WARNING, str(exc), "dropped a message from %s: %s",
                              peer.hex()[:8], exc)

    def _send(self, sock, peer, kind, *fields, body=(), payload=()):
        """Send to a peer; returns False when the peer is gone."""
        try:
            sock.send_multipart([peer, *self._wire.pack(kind, *fields, body=body,
                                                        payload=payload)], copy=False)
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False

    # -- tasks -----------------------------------------------------------------------------------

    def _on_task_message(self, task_id, kind, fields, body):
        task = self.tasks.get(task_id)
        if kind is Kind.CANCEL:
            if task is not None:
                self._forget_task(task)
            return
        if kind is Kind.STATUS:  # a status query is not a task
            self._send(self.frontend, task_id, Kind.STATUS_REPLY,
                       body=[json.dumps(self.stats()).encode()])
            return
        if kind not in (Kind.SUBMIT, Kind.PING):
            raise ProtocolError(f"{kind.name} is not a task message")
        if task is None:
            task = self.tasks[task_id] = _TaskRecord(task_id, self.now, self._default_lapse)
        task.last_seen = self.now
        if kind is Kind.SUBMIT:
            protocol.check_job(fields)
            if fields[0] not in task.pending:  # a resent job the broker still has is ignored
                job = task.pending[fields[0]] = _Job(task_id, fields, body)
                self._enqueue(task, job)
        else:
            task.lapse = self._lapse(fields[1])
            self._send(self.frontend, task_id, Kind.PONG, self.incarnation, fields[0],
                       self.capacity, len(task.pending), True)

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
                    holders.add(holder.id)
        for worker_id in holders:
            self._send(self.backend, worker_id, Kind.REVOKE, body=[task.id])
        self.counters["cancelled"] += len(task.pending)
        task.pending.clear()
        task.queue.clear()
        if task.ready:  # else _dispatch would pop from its empty queue
            self.ready_tasks.remove(task)

    def _settle(self, task_id, job_id):
        """Mark a job answered and return it, or None if it was answered (or dropped) before."""
        task = self.tasks.get(task_id)
        job = task and task.pending.pop(job_id, None)
        if job is None:
            return None
        job.settled = True
        holder = job.worker and self.workers.get(job.worker)
        if holder:
            holder.jobs.pop((task_id, job_id), None)
        return job

    # -- workers ---------------------------------------------------------------------------------

    @property
    def _default_lapse(self):
        """Silence after which a peer that has not said its heartbeat interval is presumed gone."""
        return self.heartbeat_interval * self.heartbeat_liveness

    def _lapse(self, interval_ms):
        """Silence after which a peer pinging every ``interval_ms`` is presumed gone."""
        return max(interval_ms, 1) / 1000 * self.heartbeat_liveness

    @property
    def capacity(self) -> int:
        """Requests all workers can hold at once."""
        return sum(worker.capacity for worker in self.workers.values())

    def _on_worker_message(self, worker_id, kind, fields, body):
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.last_seen = self.now
        if kind is Kind.DONE:
            self._on_done(worker, fields, body)
        elif kind is Kind.PING:
            if worker is not None:
                worker.lapse = self._lapse(fields[1])
            self._send(self.backend, worker_id, Kind.PONG, self.incarnation, fields[0],
                       self.capacity, len(worker.jobs) if worker else 0, worker is not None)
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
        elif kind not in (Kind.RETURN, Kind.BYE):
            raise ProtocolError(f"{kind.name} is not a worker message")

    def _on_done(self, worker, fields, body):
        job_id, status, elapsed = fields
        if not body:
            raise ProtocolError("DONE without a task id")
        if worker is not None:
            worker.credit += 1
        task_id = body[0].bytes
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
        if not self._send(self.frontend, task_id, Kind.RESULT, job_id, elapsed, self.capacity,
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
        self._send(self.frontend, job.task_id, Kind.FAILED, job.job_id, body=[reason.encode()])

    def _dispatch(self):
        """Send queued jobs to the workers with the most free credit, one task at a time."""
        while self.ready_tasks:
            worker = max(self.workers.values(), key=lambda w: w.credit, default=None)
            if worker is None or worker.credit <= 0:
                return
            task = self.ready_tasks.popleft()
            if not task.queue or self.tasks.get(task.id) is not task:  # emptied or forgotten
                task.ready = False
                continue
            job = task.queue.popleft()
            if task.queue:
                self.ready_tasks.append(task)
            else:
                task.ready = False
            if job.settled:
                continue
            if self._send(self.backend, worker.id, Kind.JOB, *job.spec,
                          body=[job.task_id], payload=job.payload):
                worker.credit -= 1
                worker.jobs[(job.task_id, job.job_id)] = job
                job.worker = worker.id
            else:
                self._enqueue(task, job, front=True)
                self._remove_worker(worker, died=False)

    def _expire_silent_peers(self):
        for worker in [w for w in self.workers.values() if self.now - w.last_seen > w.lapse]:
            LOGGER.warning("worker %s missed %d heartbeats; presumed dead, %d jobs requeued",
                           worker.id.hex()[:8], self.heartbeat_liveness, len(worker.jobs))
            self.counters["workers_lost"] += 1
            self._remove_worker(worker, died=True)
        for task in [t for t in self.tasks.values() if self.now - t.last_seen > t.lapse]:
            LOGGER.info("task %s went silent; forgetting its %d jobs",
                        task.id.hex()[:8], len(task.pending))
            self._forget_task(task)

    # -- statistics and convenience --------------------------------------------------------------

    def stats(self) -> dict:
        """Return the broker's figures: workers, queued, in flight, completed, requeued, ...

        Called from another thread while the broker runs, the figures are asked of the loop over
        the frontend, so they are consistent.
        """
        if self._running.is_set() and threading.current_thread() is not self._loop_thread:
            from .task import query_status

            return query_status(self.frontend_address, key=self.key, context=self.context,
                                curve=self._own_curve)
        workers = {w.id.hex(): {"capacity": w.capacity, "credit": w.credit,
                                "in_flight": len(w.jobs), "completed": w.completed}
                   for w in self.workers.values()}
        return {
            "incarnation": self.incarnation,
            "workers": len(self.workers),
            "tasks": len(self.tasks),
            "capacity": self.capacity,
            "queued": sum(len(t.queue) for t in self.tasks.values()),
            "in_flight": sum(len(w.jobs) for w in self.workers.values()),
            **{name: self.counters[name] for name in (
                "completed", "requeued", "failed", "cancelled", "workers_lost",
                "duplicates_dropped", "dropped", "bad_signatures")},
            "per_worker": workers,
        }

    def apply(self, request, **task_options):
        """Evaluate one request on a worker and return its result (see :func:`pfmq.apply`)."""
        from .task import apply

        task_options.setdefault("key", self.key)
        task_options.setdefault("curve", self._own_curve)
        return apply(request, self.frontend_address, context=self.context, **task_options)

    def imap(self, requests, **task_options):
        """Return a :class:`~pythonflow.pfmq.Task` evaluating ``requests`` on the workers."""
        from .task import Task

        task_options.setdefault("key", self.key)
        task_options.setdefault("curve", self._own_curve)
        task_options.setdefault("heartbeat_interval", self.heartbeat_interval)
        return Task(requests, self.frontend_address, context=self.context, **task_options)
