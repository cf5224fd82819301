"""The broker: hands jobs from tasks to free workers and routes their results back.

Data flow::

    Task --SUBMIT/PING/CANCEL--> frontend ROUTER +------- broker loop --------+
    Task <--RESULT/FAILED/PONG--                 | tasks: jobs queued per task |
                                                 | (round robin between tasks) |
                                                 | workers: credit, jobs held  |
    Worker --READY/DONE/PING-->  backend ROUTER  +-----------------------------+
    Worker <--JOB/REVOKE/PONG--

One thread runs :meth:`Broker.run`: it polls both sockets, checks each message's header and
signature, hands it to the :class:`~pythonflow.pfmq.scheduler.Scheduler` (which keeps the queues,
the workers' credit and the heartbeats, and decides where each job goes) and sends what the
scheduler decides. It never deserialises a payload; it reads headers and moves frames. While no
job is open nothing a worker says is urgent, so the loop then reads the workers' side on a clock
(:class:`~pythonflow.pfmq.liveness.BrokerClocks`), many heartbeats a wake-up, and wakes at once
only for tasks.
"""
import json
import logging
import math
import os
import threading
import time
import uuid
import warnings
from typing import TYPE_CHECKING, Any, Iterable, Optional

import zmq

from . import protocol
from .lifecycle import Service
from .liveness import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS, BrokerClocks
from .protocol import Kind
from .scheduler import Scheduler
from .security import CurveServer, KeyLike, is_loopback, resolve_key
from .transport import RateLimitedLogger, Wakeup, check_address, handle_waiting, send_frames

if TYPE_CHECKING:  # task.py imports the broker's peers, not the broker: imported when used
    from .task import Task

__all__ = ["Broker"]

LOGGER = logging.getLogger(__name__)
_DRAIN = 256  # messages read from one socket before looking at the other


class Broker(Service):
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
        Peers sending a larger frame are disconnected (ZeroMQ ``MAXMSGSIZE``). Workers and tasks
        learn the limit from the broker's heartbeats and fail a request or result that exceeds it
        instead of sending it.
    key : bytes or str, optional
        Shared key for signed messages; defaults to the ``PFMQ_KEY`` environment variable.
        Binding an address beyond loopback with neither a key nor a CURVE allow-list of clients
        warns (``UserWarning``): anyone who can reach it could submit work.
    curve : pythonflow.pfmq.security.CurveServer, optional
        Encrypt and authenticate ``tcp://`` and ``ipc://`` connections with CurveZMQ.
    context : zmq.Context, optional
        Defaults to the process-wide instance, which ``inproc://`` tasks share.
    """

    def __init__(self, backend_address: str, frontend_address: Optional[str] = None,
                 start: bool = False, *, heartbeat_interval: float = HEARTBEAT_INTERVAL,
                 heartbeat_liveness: int = HEARTBEAT_LIVENESS, max_attempts: int = 3,
                 max_message_size: Optional[int] = None, key: Optional[KeyLike] = None,
                 curve: Optional[CurveServer] = None, context: Optional[zmq.Context] = None):
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
        self._wakeup = None  # made by run(), closed when it ends: a broker never run holds none
        self._stopping = False
        self._thread = None
        self._running = threading.Event()
        self.scheduler = Scheduler(self._send_to_task, self._send_to_worker, self.incarnation,
                                   heartbeat_interval, heartbeat_liveness, max_attempts,
                                   max_message_size or 0)
        self._warn_if_exposed()
        if start:
            self.run_async()

    def _warn_if_exposed(self):
        """Warn when an address beyond loopback is bound and nothing checks who connects."""
        exposed = [a for a in (self.backend_address, self.frontend_address) if not is_loopback(a)]
        curve_checks_clients = self.curve is not None and (
            getattr(self.curve, "allowed_keys", None) is not None
            or getattr(self.curve, "allowed_directory", None) is not None)
        if exposed and self.key is None and not curve_checks_clients:
            # stacklevel 3: the line that made the broker, not this method or __init__
            warnings.warn(f"the broker binds {exposed[0]} without a key: anyone who can reach it "
                          "can submit work and, with pickle, run code on the workers; set "
                          "PFMQ_KEY or pass key= (or curve= with allowed_clients)", UserWarning,
                          stacklevel=3)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def is_alive(self) -> bool:
        """Whether the broker is serving."""
        return self._running.is_set()

    def run(self) -> None:
        """Bind both sockets and serve in the calling thread until :meth:`cancel`."""
        frontend, backend = self._bind()
        self._loop_thread = threading.current_thread()  # stats() asks the loop from elsewhere
        self._wakeup = Wakeup()
        try:
            self._running.set()  # before run_async returns, so that apply() finds it running
            getattr(self, "_on_bound", lambda: None)()
            self._serve(frontend, backend)
        finally:
            self._running.clear()
            self._wakeup.close()  # a cancel() still to come writes to it in vain, harmlessly
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
        if self._wakeup is not None:  # else the loop has not begun, and sees _stopping first
            self._wakeup.set()
        self._join(timeout)

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
        # With no job open, the workers' messages wait for the clock (see BrokerClocks).
        working, quiet = zmq.Poller(), zmq.Poller()
        for poller in (working, quiet):
            poller.register(frontend, zmq.POLLIN)
            poller.register(self._wakeup, zmq.POLLIN)
        working.register(backend, zmq.POLLIN)
        clocks = BrokerClocks(self.heartbeat_interval, time.monotonic())
        while not self._stopping:
            is_quiet = not self.scheduler.open_jobs
            wait = clocks.wait(time.monotonic(), is_quiet)
            # Whole milliseconds, rounded up: pyzmq truncates, and a poll of 0 ms spins.
            events = dict((quiet if is_quiet else working).poll(math.ceil(wait * 1000)))
            now = self.scheduler.now = time.monotonic()
            if frontend in events:
                self._drain(frontend, self._on_task_message)
            if backend in events or (is_quiet and clocks.read_due(now)):
                emptied = self._drain(backend, self.scheduler.on_worker_message) < _DRAIN
                clocks.read(now, emptied, self.scheduler.shortest_interval)
            self.scheduler.dispatch()
            if clocks.check_due(now):
                self.scheduler.expire_silent_peers()
            self._wakeup.clear_if_woken(events)

    def _on_task_message(self, task_id, kind, fields, body):
        if kind is Kind.STATUS:  # a status query, not a task
            # The workers' messages may wait for the quiet clock: read them, so that the figures
            # count a worker that has just signed up or left.
            self._drain(self.backend, self.scheduler.on_worker_message)
            self._send_to_task(task_id, Kind.STATUS_REPLY,
                               body=[json.dumps(self.scheduler.stats()).encode()])
        else:
            self.scheduler.on_task_message(task_id, kind, fields, body)

    def _drain(self, sock, handle) -> int:
        return handle_waiting(sock, self._wire, handle, self._log, routed=True, limit=_DRAIN,
                              on_drop=self._count_dropped)

    def _count_dropped(self, exc: Exception) -> None:
        self.scheduler.counters["dropped"] += 1
        if "signature" in str(exc):
            self.scheduler.counters["bad_signatures"] += 1

    def _send(self, sock, peer, kind, *fields, body=(), payload=()):
        """Send to a peer; returns False when the peer is gone."""
        try:
            # Received frames (payloads) go on without a copy; the small new ones are copied,
            # which costs less than wrapping them in zmq.Frame objects.
            send_frames(sock, [peer, *self._wire.pack(kind, *fields, body=body, payload=payload)])
            return True
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            return False

    def _send_to_task(self, task_id, kind, *fields, body=(), payload=()):
        return self._send(self.frontend, task_id, kind, *fields, body=body, payload=payload)

    def _send_to_worker(self, worker_id, kind, *fields, body=(), payload=()):
        return self._send(self.backend, worker_id, kind, *fields, body=body, payload=payload)

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
        return self.scheduler.stats()

    def _task_options(self, task_options: dict, **defaults: Any) -> dict:
        """``task_options`` with the broker's context, key, CURVE client and limit (and
        ``defaults``) where not given.

        Raises ``RuntimeError`` if the broker is not running (never started, or cancelled).
        """
        if not self.is_alive:
            raise RuntimeError("the broker is not running: call broker.run_async() first, or use "
                               "it as `with pfmq.Broker(...) as broker:`")
        options = {"key": self.key, "curve": self._own_curve, "context": self.context,
                   "max_message_size": self.max_message_size, **defaults}
        options.update(task_options)
        return options

    def apply(self, request: Any, **task_options: Any) -> Any:
        """Evaluate one request on a worker and return its result (see :func:`pfmq.apply`).

        Raises
        ------
        RuntimeError
            If the broker is not running (never started, or cancelled).
        """
        from .task import apply

        return apply(request, self.frontend_address, **self._task_options(task_options))

    def imap(self, requests: Iterable, **task_options: Any) -> "Task":
        """Return a :class:`~pythonflow.pfmq.Task` evaluating ``requests`` on the workers.

        ``task_options`` are those of the task; ``resume=task.state_dict()`` of an earlier task
        over the same ``requests`` continues where its consumer stopped.

        Raises
        ------
        RuntimeError
            If the broker is not running (never started, or cancelled).
        """
        from .task import Task

        return Task(requests, self.frontend_address, **self._task_options(
            task_options, heartbeat_interval=self.heartbeat_interval))
