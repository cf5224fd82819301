"""Workers: evaluate the requests a broker hands them.

Data flow inside a worker::

    broker <--DEALER--> communication thread --jobs-->    process_requests()
                        (heartbeats, credit)  <--results-- (the caller's thread)

The communication thread, started by ``with worker:`` or :meth:`Worker.run_async`, signs up with
the broker for ``prefetch + 1`` jobs (the one being evaluated and ``prefetch`` waiting), sends a
heartbeat every interval, also while a long transformation runs, and forwards results.
:meth:`Worker.process_requests` evaluates jobs in the calling thread, in the order they came.

On :meth:`Worker.cancel` the jobs not yet started go back to the broker, the job being evaluated
is finished and delivered (within ``timeout`` seconds), and the worker says goodbye.
"""
import collections
import hashlib
import logging
import random
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any, Callable, Optional

import numpy as np
import zmq

from . import protocol
from .common import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_LIVENESS,
    RateLimitedLogger,
    Service,
    Wakeup,
    check_address,
    dealer,
    key_hint,
    resolve_key,
    waiting_messages,
)
from .protocol import COMPLETED, ERROR, OK, SERIALIZATION_ERROR, Kind, ProtocolError
from .serialization import SerializationError, encode_outcomes, make_serializer

LOGGER = logging.getLogger(__name__)


def seed_generators(seed: int, index: int) -> None:
    """Seed Python's ``random`` and numpy's global generator for request ``index`` of a task.

    The seeds depend only on ``(seed, index)``, so a request gives the same random numbers on
    whichever worker runs it, however often it runs.
    """
    digest = hashlib.sha256(f"pfmq:{seed}:{index}".encode()).digest()
    random.seed(int.from_bytes(digest[:16], "big"))
    np.random.seed(int.from_bytes(digest[16:20], "big"))


class GraphTarget:
    """Evaluates requests with a graph: ``{'fetches': f, 'context': {...}}`` gives
    ``graph(f, context)``; ``{'fetches': f, 'contexts': [...]}`` gives a list, one per context.

    Parameters
    ----------
    graph : pythonflow.Graph
        The graph to evaluate.
    """

    def __init__(self, graph):
        self.graph = graph

    def __call__(self, request: Mapping) -> Any:
        if not isinstance(request, Mapping):
            raise TypeError("a request must be a dict with 'fetches' and 'context' or "
                            f"'contexts', not {type(request).__name__}")
        if "fetches" not in request:
            raise KeyError(f"the request has no 'fetches'; its keys are {sorted(request)}")
        fetches = request["fetches"]
        if "contexts" in request:
            return [self.graph(fetches, context) for context in request["contexts"]]
        if "context" in request:
            return self.graph(fetches, request["context"])
        raise KeyError("the request needs 'context' (for one result) or 'contexts' (for a list "
                       f"of results); its keys are {sorted(request)}")


class Worker(Service):
    """Evaluates requests from a broker with ``target``.

    Parameters
    ----------
    target : callable
        Called with each request; its return value is the result.
    address : str
        The broker's backend address.
    dumps, loads : callable, optional
        Replace pickle (object to ``bytes`` and back); must match the tasks'.
    start : bool
        Start the communication thread right away.
    timeout : float
        Seconds without a word from the broker before the worker counts a retry; also how long
        :meth:`cancel` waits for the request being evaluated.
    num_retries : int, optional
        Give up after this many silent timeouts (``process_requests`` raises ``TimeoutError``);
        ``None`` waits for the broker forever.
    prefetch : int
        Requests held ready beside the one being evaluated.
    heartbeat_interval, heartbeat_liveness : float, int
        As for the broker.
    key : bytes or str, optional
        Shared key for signed messages; defaults to ``PFMQ_KEY``.
    serializer : Serializer or str, optional
        Instead of ``dumps``/``loads``.
    curve : pythonflow.pfmq.security.CurveClient, optional
        Encrypt the connection to the broker with CurveZMQ.
    context : zmq.Context, optional
        Defaults to the process-wide instance.
    """

    def __init__(self, target: Callable[[Any], Any], address: str, dumps=None, loads=None,
                 start: bool = False, timeout: float = 10, num_retries: Optional[int] = None,
                 prefetch: int = 1, *, heartbeat_interval: float = HEARTBEAT_INTERVAL,
                 heartbeat_liveness: int = HEARTBEAT_LIVENESS, key=None, serializer=None,
                 curve=None, context: Optional[zmq.Context] = None):
        if not callable(target):
            raise TypeError(f"target must be callable, not {type(target).__name__}")
        if prefetch < 0:
            raise ValueError("prefetch must be at least 0")
        self.target = target
        self.address = check_address(address)
        self.serializer = make_serializer(dumps, loads, serializer)
        self.timeout = timeout
        self.num_retries = num_retries
        self.prefetch = prefetch
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_liveness = heartbeat_liveness
        self._interval_ms = max(1, round(heartbeat_interval * 1000))
        self.key = resolve_key(key)
        self.curve = curve
        self.context = context or zmq.Context.instance()
        self.routing_id = protocol.new_id()
        self.executed = 0  # requests evaluated, for statistics and tests
        self.error: Optional[BaseException] = None
        self._wire = protocol.Wire(self.key)
        self._jobs = collections.deque()  # (spec, task id, payload) waiting to be evaluated
        self._jobs_changed = threading.Condition()
        self._results = collections.deque()  # DONE messages waiting to be sent
        self._wakeup = Wakeup()
        self._cancelled = threading.Event()
        self._busy = False
        self._thread = None
        if start:
            self.run_async()

    @classmethod
    def from_graph(cls, graph, address: str, **kwargs) -> "Worker":
        """A worker evaluating requests with ``graph`` (see :class:`GraphTarget`)."""
        return cls(GraphTarget(graph), address, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def is_alive(self) -> bool:
        """Whether the communication thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def run_async(self) -> "Worker":
        """Start the communication thread; evaluate with :meth:`process_requests`."""
        if self.is_alive:
            raise RuntimeError("the worker is already running")
        self._cancelled.clear()
        self._thread = threading.Thread(target=self._communicate, name="pfmq-worker", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Start communicating and evaluate requests in this thread until :meth:`cancel`."""
        with self:
            self.process_requests()

    def cancel(self, timeout: Optional[float] = None) -> None:
        """Stop: hand unstarted requests back to the broker and end the communication thread."""
        with self._jobs_changed:
            self._cancelled.set()
            self._jobs_changed.notify_all()
        self._wakeup.set()
        self._join(timeout)

    # -- evaluation (the caller's thread) --------------------------------------------------------

    def process_requests(self) -> None:
        """Evaluate requests in the calling thread until :meth:`cancel` is called.

        Raises
        ------
        RuntimeError
            If the worker was not started (use ``with worker: worker.process_requests()``).
        TimeoutError
            If the worker gave up waiting for the broker (see ``num_retries``).
        """
        if not self.is_alive and not self._jobs:
            raise RuntimeError("start the worker first: with worker: worker.process_requests()")
        while True:
            with self._jobs_changed:
                while not self._jobs and not self._cancelled.is_set() and self.is_alive:
                    self._jobs_changed.wait()
                if self._cancelled.is_set() or not self._jobs:
                    break
                job = self._jobs.popleft()
                self._busy = True
            try:
                self._results.append(self._execute(*job))
            finally:
                self._busy = False
                self._wakeup.set()
        if self.error is not None:
            raise self.error

    def _execute(self, spec, task_id, sealed):
        job_id, first_index, count, has_seed, seed = spec
        started = time.perf_counter()
        try:
            payload = self._wire.open(sealed, job_id, protocol.REQUESTS)
            requests = self.serializer.decode(payload)
            if not isinstance(requests, list) or len(requests) != count:
                raise SerializationError(f"a job of {count} requests decoded to {requests!r:.80}")
        except (ProtocolError, SerializationError) as exc:
            outcomes = [(SERIALIZATION_ERROR, f"the worker cannot read the request: {exc}")] * count
        else:
            outcomes = []
            for offset, request in enumerate(requests):
                if has_seed:
                    seed_generators(seed, first_index + offset)
                try:
                    outcomes.append((OK, self.target(request)))
                except Exception as exc:
                    remote = "".join(traceback.format_exception(
                        type(exc), exc, exc.__traceback__.tb_next))
                    outcomes.append((ERROR, exc, remote))
                finally:
                    self.executed += 1
        elapsed = time.perf_counter() - started
        frames = encode_outcomes(self.serializer, outcomes)
        sealed = self._wire.seal(frames, job_id, protocol.OUTCOMES)
        return self._wire.pack(Kind.DONE, job_id, COMPLETED, elapsed, body=[task_id],
                               payload=sealed)

    # -- communication (the background thread) ---------------------------------------------------

    def _communicate(self):
        try:
            sock = dealer(self.context, self.address, self.routing_id, self.curve)
        except zmq.ZMQError as exc:
            self.error = OSError(exc.errno, f"cannot connect to {self.address}: {exc.strerror}")
            with self._jobs_changed:
                self._jobs_changed.notify_all()
            return
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wakeup, zmq.POLLIN)
        log = RateLimitedLogger(LOGGER)
        capacity = self.prefetch + 1
        held = 0  # jobs received and not yet answered or returned
        ping = 0
        next_ping = last_heard = time.monotonic()
        silent_timeouts = 0
        sock.send_multipart(self._wire.pack(Kind.READY, capacity, capacity))
        linger = 0
        try:
            while not self._cancelled.is_set():
                now = time.monotonic()
                if now >= next_ping:
                    ping += 1
                    sock.send_multipart(self._wire.pack(Kind.PING, ping, self._interval_ms))
                    next_ping = now + self.heartbeat_interval
                events = dict(poller.poll(max(0.0, next_ping - now) * 1000))
                self._wakeup.clear_if_woken(events)
                while self._results:
                    sock.send_multipart(self._results.popleft(), copy=False)
                    held -= 1
                if sock not in events:
                    if time.monotonic() - last_heard > self.timeout:
                        silent_timeouts += 1
                        last_heard = time.monotonic()
                        LOGGER.warning("no word from the broker at %s for %.1f s%s",
                                       self.address, self.timeout, key_hint(self.key))
                        if self.num_retries is not None and silent_timeouts >= self.num_retries:
                            self.error = TimeoutError(
                                f"no answer from the broker at {self.address} for "
                                f"{self.timeout * silent_timeouts:.0f} s{key_hint(self.key)}")
                            return
                    continue
                last_heard = time.monotonic()
                silent_timeouts = 0
                for frames in waiting_messages(sock):
                    try:
                        kind, fields, body = self._wire.unpack(frames)
                        if kind is Kind.JOB:
                            if len(body) < 2:
                                raise ProtocolError("JOB without task id or payload")
                            protocol.check_job(fields)
                            held += 1
                            with self._jobs_changed:
                                self._jobs.append((fields, body[0].bytes, body[1:]))
                                self._jobs_changed.notify()
                        elif kind is Kind.REVOKE:
                            held -= self._revoke(sock, body[0].bytes)
                        elif kind is Kind.PONG and not fields[4]:
                            LOGGER.info("signing up again with the broker at %s", self.address)
                            sock.send_multipart(self._wire.pack(
                                Kind.READY, capacity, max(0, capacity - held)))
                    except (ProtocolError, IndexError) as exc:
                        log.log(logging.WARNING, str(exc), "dropped a message: %s", exc)
            self._leave(sock)
            linger = 1000  # let the goodbye reach the broker
        finally:
            sock.close(linger=linger)
            with self._jobs_changed:
                self._jobs_changed.notify_all()

    def _revoke(self, sock, task_id):
        """Drop the waiting jobs of a cancelled task; returns how many."""
        with self._jobs_changed:
            dropped = [job for job in self._jobs if job[1] == task_id]
            for job in dropped:
                self._jobs.remove(job)
        for spec, _, _ in dropped:
            sock.send_multipart(self._wire.pack(
                Kind.DONE, spec[0], protocol.CANCELLED, 0.0, body=[task_id],
                payload=self._wire.seal([], spec[0], protocol.OUTCOMES)))
        return len(dropped)

    def _leave(self, sock):
        """Hand back waiting jobs, deliver the one being evaluated, then say goodbye."""
        with self._jobs_changed:
            waiting = list(self._jobs)
            self._jobs.clear()
        if waiting:
            body = []
            for spec, task_id, _ in waiting:
                body += [task_id, protocol.pack_job_id(spec[0])]
            sock.send_multipart(self._wire.pack(Kind.RETURN, body=body))
        deadline = time.monotonic() + self.timeout
        ping = 0
        while (self._busy or self._results) and time.monotonic() < deadline:
            self._wakeup.clear()
            while self._results:
                sock.send_multipart(self._results.popleft(), copy=False)
            if self._busy:  # keep the broker from presuming us dead while we finish
                ping += 1
                sock.send_multipart(self._wire.pack(Kind.PING, ping, self._interval_ms))
                wait = min(self.heartbeat_interval, max(0.0, deadline - time.monotonic()))
                zmq.select([self._wakeup], [], [], wait)
        sock.send_multipart(self._wire.pack(Kind.BYE))
