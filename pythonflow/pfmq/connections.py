"""A worker's two connections to its broker.

* :class:`Session`: one stint on the work connection, from sign-up (``READY``) to goodbye
  (``BYE``), owned by the thread that serves.
* :class:`Heartbeat`: the heartbeat connection, owned by the heartbeat thread, which pings on
  behalf of the session, adopts the broker's limits and judges its silence (with the clocks of a
  :class:`~pythonflow.pfmq.liveness.Liveness`).

Data flow::

    serving thread --READY, DONE, RETURN, BYE--> Session.sock --> broker
    serving thread <--JOB, REVOKE--------------- Session.sock <-- broker
    heartbeat thread --PING (names Session.routing_id)--> Heartbeat.sock --> broker
    heartbeat thread <--PONG (registered? max frame?)---- Heartbeat.sock <-- broker
    heartbeat thread --Renewal.SIGN_UP / RECONNECT, or giving up--> the serving thread
"""
import collections
import enum
import functools
import logging
import time
from typing import TYPE_CHECKING, Optional

import zmq

from . import protocol
from .errors import ProtocolError
from .jobs import Job, read_job
from .liveness import Liveness
from .protocol import Kind
from .security import key_hint
from .transport import RateLimitedLogger, dealer, handle_waiting

if TYPE_CHECKING:  # the worker owns its connections
    from .worker import Worker

__all__ = ["Session", "Heartbeat", "Renewal"]

LOGGER = logging.getLogger(__name__)


class Renewal(enum.IntEnum):
    """What the heartbeat thread asks of the serving thread about the work connection."""

    NONE = 0
    SIGN_UP = 1  # the broker does not know the worker (it restarted, or presumed it dead)
    RECONNECT = 2  # the broker has been silent for heartbeat_liveness intervals


class Session:
    """One stint on the work connection, from sign-up (``READY``) to goodbye (``BYE``).

    Parameters
    ----------
    worker : Worker
        Gives the address, context, CURVE client, wire, capacity and log; its wake-up and stop
        latch are polled beside the socket.
    """

    def __init__(self, worker: "Worker"):
        self.routing_id = protocol.new_id()
        self.sock = dealer(worker.context, worker.address, self.routing_id, worker.curve)
        self.poller = zmq.Poller()
        for pollable in (self.sock, worker._wakeup, worker._life.latch):
            self.poller.register(pollable, zmq.POLLIN)
        self.jobs = collections.deque()  # received, not yet started
        self.signed_up_at = 0.0
        self._wire = worker._wire
        self._capacity = worker.prefetch + 1
        self._log = worker._log

    def sign_up(self) -> None:
        """Tell the broker how many jobs the worker takes and how many more it can take now."""
        self.signed_up_at = time.monotonic()
        credit = max(0, self._capacity - len(self.jobs))
        self.sock.send_multipart(self._wire.pack(Kind.READY, self._capacity, credit))

    def read(self) -> None:
        """Take in every message waiting on the work connection."""
        handle_waiting(self.sock, self._wire, self._on_message, self._log)

    def _on_message(self, kind: Kind, fields: tuple, body: list) -> None:
        if kind is Kind.JOB:
            self.jobs.append(read_job(fields, body))  # answered even if unreadable
        elif kind is Kind.REVOKE and body:
            self._revoke(body[0].bytes)
        else:
            raise ProtocolError(f"{kind.name} is not for workers")

    def _revoke(self, task_id: bytes) -> None:
        """Drop the waiting jobs of a cancelled task, giving their slots back."""
        dropped = [job for job in self.jobs if job.task_id == task_id]
        for job in dropped:
            self.jobs.remove(job)
            job_id = job.spec[0]
            self.sock.send_multipart(self._wire.pack(
                Kind.DONE, job_id, protocol.CANCELLED, 0.0, body=[task_id],
                payload=self._wire.seal([], job_id, protocol.OUTCOMES)))

    def leave(self, interrupted: Optional[Job] = None) -> None:
        """Hand back the jobs not done (also one interrupted by an exception), say goodbye."""
        try:
            self.read()
            unfinished = ([interrupted] if interrupted else []) + list(self.jobs)
            self.jobs.clear()
            if unfinished:
                body = []
                for job in unfinished:
                    body += [job.task_id, protocol.pack_job_id(job.spec[0])]
                self.sock.send_multipart(self._wire.pack(Kind.RETURN, body=body))
            self.sock.send_multipart(self._wire.pack(Kind.BYE))
        finally:
            self.sock.close(linger=1000)  # let the goodbye reach the broker


class Heartbeat:
    """The heartbeat thread's connection and clocks (a :class:`~.liveness.Liveness`).

    It speaks for the worker's current :class:`Session` (none: silence means nothing), and tells
    the worker what it notices: a stop request, a broker that does not know the worker
    (:attr:`Renewal.SIGN_UP`), a broker silent for ``heartbeat_liveness`` intervals
    (:attr:`Renewal.RECONNECT`: the broker presumes a silent worker dead after as many
    intervals), or silent for ``num_retries`` timeouts (the worker gives up).
    """

    def __init__(self, worker: "Worker"):
        self.worker = worker
        self.sock = self._connect()
        self.liveness = Liveness(worker._ping_interval, worker.timeout, worker.num_retries,
                                 worker.heartbeat_liveness)
        self._log = RateLimitedLogger(LOGGER)

    def _connect(self):
        worker = self.worker
        return dealer(worker.context, worker.address, protocol.new_id(), worker.curve)

    def run(self) -> None:
        """Beat until the worker has left, its grace for leaving has run out, or it gave up."""
        try:
            while not self.liveness.gave_up and not self.worker._life.done_heart_beating():
                self.step()
        finally:
            self.sock.close(linger=0)

    def step(self) -> None:
        """Ping when due, wait for an answer or a wake-up, and judge the broker's silence."""
        worker, liveness = self.worker, self.liveness
        now = time.monotonic()
        session = worker._session
        if session is None:  # nobody signed up to speak for: silence means nothing
            liveness.rest(now)
            wait = worker._ping_interval
        else:
            ping = liveness.ping_due(now)
            if ping is not None:
                self.sock.send_multipart(worker._wire.pack(
                    Kind.PING, ping, worker._interval_ms, body=[session.routing_id]))
            wait = liveness.wait(now)
        latch = worker._life.latch
        readable = zmq.select([self.sock, worker._heartbeat_wakeup, latch], [], [], wait)[0]
        worker._heartbeat_wakeup.clear_if_woken(readable)
        if latch.fileno() in readable:
            worker._check_stop_requests()
        handle_waiting(self.sock, worker._wire, functools.partial(self._on_message, session),
                       self._log, level=logging.DEBUG)
        if session is not None:
            self._judge_silence(time.monotonic())

    def _on_message(self, session: Optional[Session], kind: Kind, fields: tuple,
                    body: list) -> None:
        worker = self.worker
        now = time.monotonic()
        if self.liveness.heard(now):
            LOGGER.info("the broker at %s answers again", worker.address)
        if kind is not Kind.PONG:
            return
        if fields[5] and worker.max_message_size is None:
            worker.max_message_size = fields[5]  # the broker's limit
        # Just signed up: the broker may answer a ping sent before it read the READY.
        recently = session is not None and now - session.signed_up_at < 2 * worker._ping_interval
        if not fields[4] and session is not None and not recently:
            LOGGER.info("signing up again with the broker at %s", worker.address)
            worker._request_renewal(Renewal.SIGN_UP)

    def _judge_silence(self, now: float) -> None:
        worker, liveness = self.worker, self.liveness
        if liveness.lapsed(now):
            level = logging.DEBUG if liveness.presumed_lost else logging.WARNING
            LOGGER.log(level, "no answer from the broker at %s to %d heartbeats; reconnecting%s",
                       worker.address, worker.heartbeat_liveness, key_hint(worker.key))
            self.sock.close(linger=0)
            self.sock = self._connect()
            liveness.renewed(now)
            worker._request_renewal(Renewal.RECONNECT)
        if liveness.count_silence(now):
            LOGGER.warning("no word from the broker at %s for %.1f s%s", worker.address,
                           worker.timeout, key_hint(worker.key))
            if liveness.gave_up:
                worker._life.begin_cancel(worker.timeout, TimeoutError(
                    f"no answer from the broker at {worker.address} for "
                    f"{liveness.silence:.1f} s{key_hint(worker.key)}"))
