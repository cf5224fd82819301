"""Workers: evaluate the requests a broker hands them.

Data flow inside a worker::

    broker <--DEALER (jobs, results)--> process_requests()  (the caller's thread)
    broker <--DEALER (heartbeats)-----> heartbeat thread     (started by ``with worker:``)

:meth:`Worker.process_requests` owns the connection that carries work: it signs up with the
broker for ``prefetch + 1`` jobs (the one being evaluated and ``prefetch`` waiting in the
socket's queue), reads them, evaluates them in the order they came and sends each result itself,
so a request crosses no thread inside the worker. A second connection, owned by the heartbeat
thread that ``with worker:`` (or :meth:`Worker.run_async`) starts, pings the broker every interval
on behalf of the first, also while a long transformation runs, and notices a broker that has
restarted or gone silent.

On :meth:`Worker.cancel` the request being evaluated is finished and delivered (heartbeats go on
meanwhile, for up to ``timeout`` seconds), the jobs not yet started go back to the broker, and
the worker says goodbye.
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


def _largest(frames) -> int:
    return max(memoryview(frame).nbytes for frame in frames)


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
        Start the heartbeat thread right away.
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
    max_message_size : int, optional
        The broker's ``max_message_size`` (by default learned from its heartbeats): a result that
        would need a larger frame fails with :class:`~pythonflow.pfmq.SerializationError` instead
        of being sent.
    context : zmq.Context, optional
        Defaults to the process-wide instance.
    """

    def __init__(self, target: Callable[[Any], Any], address: str, dumps=None, loads=None,
                 start: bool = False, timeout: float = 10, num_retries: Optional[int] = None,
                 prefetch: int = 1, *, heartbeat_interval: float = HEARTBEAT_INTERVAL,
                 heartbeat_liveness: int = HEARTBEAT_LIVENESS, key=None, serializer=None,
                 curve=None, max_message_size: Optional[int] = None,
                 context: Optional[zmq.Context] = None):
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
        self.max_message_size = max_message_size
        self.context = context or zmq.Context.instance()
        self.routing_id = protocol.new_id()
        self.executed = 0  # requests evaluated, for statistics and tests
        self.error: Optional[BaseException] = None
        self._wire = protocol.Wire(self.key)
        self._jobs = collections.deque()  # (spec, task id, payload) received, not yet started
        self._wakeup = Wakeup()  # wakes process_requests: cancelled, or sign up again
        self._heartbeat_wakeup = Wakeup()  # wakes the heartbeat thread: started or done
        self._cancelled = threading.Event()
        self._cancel_deadline = None
        self._processing = threading.Event()  # process_requests is serving the broker
        self._signed_up_at = 0.0
        self._sign_up_again = False
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
        """Whether the heartbeat thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def run_async(self) -> "Worker":
        """Start the heartbeat thread; evaluate with :meth:`process_requests`."""
        if self.is_alive:
            raise RuntimeError("the worker is already running")
        self._cancelled.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="pfmq-worker", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Start the heartbeat thread and evaluate requests in this thread until :meth:`cancel`."""
        with self:
            self.process_requests()

    def cancel(self, timeout: Optional[float] = None) -> None:
        """Stop: finish the request being evaluated, hand the others back to the broker.

        Waits up to ``timeout`` seconds for the heartbeat thread, which lasts until
        :meth:`process_requests` has said goodbye (or the worker's own ``timeout`` has passed).
        """
        if not self._cancelled.is_set():
            self._cancel_deadline = time.monotonic() + self.timeout
            self._cancelled.set()
        self._wakeup.set()
        self._heartbeat_wakeup.set()
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
        if not self.is_alive:
            raise RuntimeError("start the worker first: with worker: worker.process_requests()")
        sock = dealer(self.context, self.address, self.routing_id, self.curve)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wakeup, zmq.POLLIN)
        log = RateLimitedLogger(LOGGER)
        capacity = self.prefetch + 1
        running = None
        try:
            self._sign_up(sock, capacity)
            self._processing.set()
            self._heartbeat_wakeup.set()
            while not self._cancelled.is_set() and self.error is None:
                self._read(sock, log)  # before every job, so a revoked task's jobs never start
                if self._sign_up_again:
                    self._sign_up(sock, capacity)
                if self._jobs:
                    running = self._jobs.popleft()
                    self._busy = True
                    sock.send_multipart(self._execute(*running), copy=False)
                    running = None
                    self._busy = False
                else:
                    events = dict(poller.poll(self.heartbeat_interval * 1000))
                    self._wakeup.clear_if_woken(events)
        finally:
            self._busy = False
            self._leave(sock, running)
            self._processing.clear()
            self._heartbeat_wakeup.set()
        if self.error is not None:
            raise self.error

    def _sign_up(self, sock, capacity):
        self._sign_up_again = False
        self._signed_up_at = time.monotonic()
        credit = max(0, capacity - len(self._jobs))
        sock.send_multipart(self._wire.pack(Kind.READY, capacity, credit))

    def _read(self, sock, log):
        """Take in every message waiting on the work connection."""
        for frames in waiting_messages(sock):
            try:
                kind, fields, body = self._wire.unpack(frames)
                if kind is Kind.JOB:
                    if len(body) < 2:
                        raise ProtocolError("JOB without task id or payload")
                    protocol.check_job(fields)
                    self._jobs.append((fields, body[0].bytes, body[1:]))
                elif kind is Kind.REVOKE:
                    self._revoke(sock, body[0].bytes)
                else:
                    raise ProtocolError(f"{kind.name} is not for workers")
            except (ProtocolError, IndexError) as exc:
                log.log(logging.WARNING, str(exc), "dropped a message: %s", exc)

    def _revoke(self, sock, task_id):
        """Drop the waiting jobs of a cancelled task, giving their slots back."""
        dropped = [job for job in self._jobs if job[1] == task_id]
        for job in dropped:
            self._jobs.remove(job)
            job_id = job[0][0]
            sock.send_multipart(self._wire.pack(
                Kind.DONE, job_id, protocol.CANCELLED, 0.0, body=[task_id],
                payload=self._wire.seal([], job_id, protocol.OUTCOMES)))

    def _leave(self, sock, interrupted):
        """Hand back the jobs not done (also one interrupted by an exception), say goodbye."""
        try:
            self._read(sock, RateLimitedLogger(LOGGER))
            unfinished = ([interrupted] if interrupted else []) + list(self._jobs)
            self._jobs.clear()
            if unfinished:
                body = []
                for spec, task_id, _ in unfinished:
                    body += [task_id, protocol.pack_job_id(spec[0])]
                sock.send_multipart(self._wire.pack(Kind.RETURN, body=body))
            sock.send_multipart(self._wire.pack(Kind.BYE))
        finally:
            sock.close(linger=1000)  # let the goodbye reach the broker

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
        if self.max_message_size and _largest(frames) > self.max_message_size:
            # The broker would cut the connection and the result would never arrive.
            frames = encode_outcomes(self.serializer, [self._within_limit(o) for o in outcomes])
        sealed = self._wire.seal(frames, job_id, protocol.OUTCOMES)
        return self._wire.pack(Kind.DONE, job_id, COMPLETED, elapsed, body=[task_id],
                               payload=sealed)

    def _within_limit(self, outcome):
        size = _largest(encode_outcomes(self.serializer, [outcome]))
        if size <= self.max_message_size:
            return outcome
        return (SERIALIZATION_ERROR, f"the result needs a frame of {size} bytes; the broker "
                                     f"accepts at most {self.max_message_size} (max_message_size)")

    # -- heartbeats (the background thread) -------------------------------------------------------

    def _heartbeat(self):
        sock = dealer(self.context, self.address, protocol.new_id(), self.curve)
        ping = 0
        next_ping = last_heard = time.monotonic()
        silent_timeouts = 0
        try:
            while not self._done_heart_beating():
                now = time.monotonic()
                if not self._processing.is_set():
                    last_heard = now  # nobody to speak for: silence means nothing
                    wait = self.heartbeat_interval
                else:
                    if now >= next_ping:
                        ping += 1
                        sock.send_multipart(self._wire.pack(Kind.PING, ping, self._interval_ms,
                                                            body=[self.routing_id]))
                        next_ping = now + self.heartbeat_interval
                    wait = next_ping - now
                readable = zmq.select([sock, self._heartbeat_wakeup], [], [], max(0.0, wait))[0]
                self._heartbeat_wakeup.clear_if_woken(readable)
                for frames in waiting_messages(sock):
                    try:
                        kind, fields, _ = self._wire.unpack(frames)
                    except ProtocolError as exc:
                        LOGGER.debug("dropped a message: %s", exc)
                        continue
                    last_heard = time.monotonic()
                    silent_timeouts = 0
                    if kind is Kind.PONG and fields[5] and self.max_message_size is None:
                        self.max_message_size = fields[5]  # the broker's limit
                    recently = time.monotonic() - self._signed_up_at < 2 * self.heartbeat_interval
                    if kind is Kind.PONG and not fields[4] and not recently:
                        LOGGER.info("signing up again with the broker at %s", self.address)
                        self._sign_up_again = True
                        self._wakeup.set()
                if time.monotonic() - last_heard > self.timeout:
                    silent_timeouts += 1
                    last_heard = time.monotonic()
                    LOGGER.warning("no word from the broker at %s for %.1f s%s", self.address,
                                   self.timeout, key_hint(self.key))
                    if self.num_retries is not None and silent_timeouts >= self.num_retries:
                        self.error = TimeoutError(
                            f"no answer from the broker at {self.address} for "
                            f"{self.timeout * silent_timeouts:.0f} s{key_hint(self.key)}")
                        self._wakeup.set()
                        return
        finally:
            sock.close(linger=0)

    def _done_heart_beating(self):
        """Heartbeats last until the worker has left, or its grace for leaving has run out."""
        if not self._cancelled.is_set():
            return False
        return not self._processing.is_set() or time.monotonic() > self._cancel_deadline
