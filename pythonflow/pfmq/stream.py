"""The I/O side of a task: the window of jobs in flight, batching, resending, ordering.

Data flow::

    requests iterator --> I/O thread --SUBMIT (jobs of one or more requests)--> broker
                          I/O thread <--RESULT/FAILED/PONG------------------- broker
                          I/O thread --results, in order--> outbox --> consumer (``for r in task``)

The I/O thread reads the request iterator lazily and keeps about two jobs per worker slot in
flight, so every worker stays busy; it stops reading while ``cache_size`` results (and at least
two jobs' results) wait for the consumer, so memory stays bounded however long (or infinite) the
iterator is. An iterator that is not a plain walk over a container is read in a thread of its own
(:mod:`.reader`), so that a slow one never delays the heartbeats. Cheap requests are batched
into larger jobs (sized from the workers' measured time per request) so that per-message costs do
not dominate.

It pings the broker every heartbeat interval. The broker's answer says how many of the task's
jobs it holds; jobs the broker has lost (because it restarted, or forgot a task that was silent
too long) are sent again. Results of jobs answered before are dropped, so the consumer gets each
result once. With no answer at all for ``timeout * num_retries`` seconds the task raises
``TimeoutError``.

A task resumed from a checkpoint starts at the request index the checkpoint gives (the reader
passes over the requests before it) and leaves out the requests above it that were delivered
already, so request indices, and with them the seeds of the workers' generators, are those of an
uninterrupted run.
"""
import collections
import itertools
import logging
import threading
import time

import zmq

from . import protocol
from .deadline import deadline_ms
from .errors import ProtocolError, SerializationError
from .liveness import Liveness
from .protocol import (
    DEADLINE_PASSED,
    FAILED_DEADLINE,
    FAILED_JOB,
    ITERATOR_FAILED,
    SERIALIZATION_ERROR,
    WORKERS_DIED,
    Kind,
)
from .reader import reader_for, source_too_short
from .security import key_hint
from .shm import SegmentLost
from .transport import RateLimitedLogger, Wakeup, dealer, handle_waiting

LOGGER = logging.getLogger(__name__)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: enum arithmetic costs


class _Job:
    __slots__ = ("first", "count", "frames", "epoch", "lost")

    def __init__(self, first, count, frames, epoch):
        self.first = first
        self.count = count
        self.frames = frames
        self.epoch = epoch  # the number of pings sent before this job was last sent
        self.lost = 0  # results of it that arrived in shared memory already let go


class _Outbox:
    """Results waiting for the consumer, in delivery order.

    The I/O thread appends to :attr:`items` under the lock; the consumer moves everything there
    is into a deque of its own at once and takes from that one without the lock, so a consumer
    of tiny results pays for one lock (and at most one wait) per batch, not per result.
    """

    def __init__(self):
        self.items = collections.deque()
        self.changed = threading.Condition()
        self.closed = False
        self.error = None
        self.waited = 0.0  # seconds get() spent waiting for an item: the consumer starved
        self._taken = collections.deque()  # moved out of items; the consumer's alone

    def __len__(self):
        """How many results wait for the consumer."""
        return len(self.items) + len(self._taken)

    def put(self, items):
        with self.changed:
            self.items.extend(items)
            self.changed.notify()

    def close(self, error=None):
        with self.changed:
            self.closed = True
            self.error = self.error or error
            self.changed.notify_all()

    def get(self, timeout=None):
        """The next ``(index, outcome)``; raises ``StopIteration`` when done."""
        try:
            return self._taken.popleft()  # atomic: safe beside another consumer thread
        except IndexError:
            pass
        with self.changed:
            if not self.items and not self.closed:
                # Timed only when there is nothing to take, so a fed consumer pays nothing.
                started = time.perf_counter()
                ready = self.changed.wait_for(lambda: self.items or self.closed, timeout)
                self.waited += time.perf_counter() - started
                if not ready:
                    raise TimeoutError(f"no result within {timeout} s")
            if self.items:
                first = self.items.popleft()
                self._taken.extend(self.items)
                self.items.clear()
                return first
            if self.error is not None:
                raise self.error
            raise StopIteration


class Stream:
    """The state and loop of a task's communication; runs in its own thread or the caller's.

    It holds no reference to the :class:`Task` so that an abandoned task can be collected.
    """

    def __init__(self, requests, address, serializer, wire, context, timeout, num_retries,
                 cache_size, ordered, seed, heartbeat_interval, max_batch, target_job_seconds,
                 start_index=0, delivered=(), request_timeout=None):
        self.reader = reader_for(iter(requests), start_index)
        self.address = address
        self.serializer = serializer
        self.wire = wire
        self.context = context
        self.timeout = timeout
        self.num_retries = num_retries
        self.cache_size = cache_size
        self.ordered = ordered
        self.seed = seed
        self.request_timeout = request_timeout  # seconds, checked by the Task; None: no deadline
        self.deadline_ms = deadline_ms(request_timeout)
        self.ping_interval = min(heartbeat_interval, timeout / 3)
        self.ping_interval_ms = max(1, round(self.ping_interval * 1000))
        self.max_batch = max_batch
        self.target_job_seconds = target_job_seconds
        self.curve = None  # a CurveClient, set by Task
        self.max_message_size = None  # the broker's limit on a frame, if the task knows it
        self.outbox = _Outbox()
        self.wakeup = None  # set when a consumer in another thread must be able to wake us
        self.cancelled = False
        self.waiting_for_consumer = False
        self.log = RateLimitedLogger(LOGGER)
        self.pending = {}  # job id -> _Job sent and not yet answered
        self.job_ids = itertools.count()
        self.next_index = start_index  # index of the next request read from the iterator
        # Indices above start_index not to send again, from runs [start, end); as many as the
        # earlier task held in flight and cached at most.
        self.delivered_before = {index for run in delivered for index in range(*run)}
        # The requests must reach this far, or they are not those the resume state was made of.
        self.needed = max([start_index, *(end for _, end in delivered)])
        self.exhausted = False
        self.held = {}  # ordered mode: index -> outcome that arrived ahead of its turn
        self.next_delivery = start_index
        self.started = None  # perf_counter() when run() began
        self.read = 0  # requests read to be sent (those a resume passes over not counted)
        self.in_flight = 0  # requests of the jobs in self.pending
        self.capacity = 0  # request slots of all workers, as the broker last said
        self.incarnation = None
        self.seconds_per_request = None
        self.bytes_per_request = 0
        self.result_bytes_per_request = 0
        self.room = cache_size  # results that may wait before reading stops (see _submit_new_jobs)
        self.liveness = None  # the heartbeat clocks, set by run()

    # -- the loop --------------------------------------------------------------------------------

    def run(self, sock=None):
        """Send and receive until every result is in the outbox, or cancelled.

        ``sock`` is a connected DEALER to reuse (see :func:`apply`); it is left open when the task
        ends normally, so the caller owns it.
        """
        self.started = time.perf_counter()
        own_socket = sock is None
        poller = self._connect(sock)
        try:
            while not self.cancelled:
                self._submit_new_jobs()
                if self._finished():
                    break
                now = time.monotonic()
                ping = self.liveness.ping_due(now)
                if ping is not None:
                    self.sock.send_multipart(self.wire.pack(Kind.PING, ping, self.ping_interval_ms))
                # Not Liveness.wait: with nothing in flight the silence is not judged, and an old
                # silence would make that wait zero and the loop spin.
                self._on_events(dict(poller.poll(max(0.0, self.liveness.next_ping - now) * 1000)))
            self.outbox.close()
        except BaseException as exc:
            self.outbox.close(exc)
            own_socket = True  # its state is unknown now: close it
            if not isinstance(exc, Exception):
                raise
        finally:
            self._hang_up(own_socket)

    def cancel(self):
        self.cancelled = True
        if self.wakeup is not None:
            self.wakeup.set()

    def _connect(self, sock):
        """Open (or adopt) the socket, start the reader and the heartbeat clocks; the poller."""
        own_socket = sock is None
        if own_socket:
            sock = dealer(self.context, self.address, protocol.new_id(), self.curve)
        if self.reader.threaded:
            if self.wakeup is None:  # run in the caller's thread: the reader must wake us
                self.wakeup = Wakeup()
            self.reader.start(self.wakeup.set)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if self.wakeup is not None:
            poller.register(self.wakeup, zmq.POLLIN)
        self.sock = sock
        # A task of its own pings at once to learn how many workers there are; a one-off apply
        # on a shared connection does not need to know.
        self.liveness = Liveness(self.ping_interval, self.timeout, self.num_retries,
                                 first_ping=0 if own_socket else self.ping_interval)
        return poller

    def _on_events(self, events):
        """Read what the poll found, or judge the broker's silence if it found nothing."""
        if self.wakeup is not None:
            self.wakeup.clear_if_woken(events)
        now = time.monotonic()
        if self.sock in events:
            self.liveness.heard(now)
            handle_waiting(self.sock, self.wire, self._on_message, self.log,
                           errors=(ProtocolError, IndexError))
        elif self.pending and self.liveness.count_silence(now):
            if self.liveness.gave_up:
                raise TimeoutError(f"no answer from the broker at {self.address} for "
                                   f"{self.liveness.silence:.0f} s{key_hint(self.wire.key)}")
            LOGGER.warning("no answer from the broker at %s for %.1f s; still trying",
                           self.address, self.timeout)

    def _hang_up(self, own_socket):
        if own_socket:
            try:  # the broker forgets this task and drops what it still has queued
                self.sock.send_multipart(self.wire.pack(Kind.CANCEL), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self.sock.close(linger=100)
        self.pending.clear()  # their frames keep request segments of shared memory lent
        self.reader.close()
        if self.wakeup is not None:
            self.wakeup.close()

    def _finished(self):
        return self.exhausted and not self.pending and not self.held

    def _on_message(self, kind, fields, body):
        if kind is Kind.RESULT:
            self._on_result(*fields, body)
        elif kind is Kind.PONG:
            self._on_pong(*fields)
        elif kind is Kind.FAILED:
            self._on_failed(fields[0], bytes(body[0].buffer).decode(errors="replace"), *fields[1:])
        else:
            raise ProtocolError(f"{kind.name} is not for tasks")

    # -- sending ---------------------------------------------------------------------------------

    def _submit_new_jobs(self):
        while not self.exhausted and not self.cancelled:
            count = self._batch_size()
            # Room for two jobs' results at least: with a cache smaller than a batch, every
            # result that came in would stop the reading until the consumer had nearly emptied
            # the cache, and the workers would wait for it.
            self.room = max(self.cache_size, 2 * count)
            if len(self.outbox) + len(self.held) >= self.room:
                self.waiting_for_consumer = True
                return
            self.waiting_for_consumer = False
            if len(self.pending) >= 2 * max(self.capacity, 1) + 1:
                return
            # While every worker slot has a job, a full batch is worth waiting for.
            least = count if len(self.pending) >= max(self.capacity, 1) else 1
            batch, done = self.reader.take(count, least)
            if batch:
                self.next_index += len(batch)
                self.read += len(batch)
                if self.delivered_before:
                    self._submit_undelivered(self.next_index - len(batch), batch)
                else:
                    self._submit(self.next_index - len(batch), batch)
            if done:
                self.exhausted = True
                error = self.reader.error
                if error is None and self.next_index < self.needed:
                    error = source_too_short(self.needed)
                if error is not None:  # delivered in the failing request's place
                    self._deliver([(self.next_index, (ITERATOR_FAILED, error))])
            elif not batch:
                return  # the reader wakes the loop when there is more
            if self.seconds_per_request is None and self._result_waiting():
                return  # read it first: it sets the batch size of the jobs still to send

    def _result_waiting(self):
        """Whether a message from the broker waits (asked cheaply, without reading it)."""
        return bool(self.sock.getsockopt(_EVENTS) & _POLLIN)

    def _batch_size(self):
        if self.seconds_per_request is None:
            return 1
        by_time = self.target_job_seconds / max(self.seconds_per_request, 1e-7)
        # A job's requests and its results each fit in about a MiB.
        by_size = (1 << 20) / max(self.bytes_per_request, self.result_bytes_per_request, 1)
        return int(max(1, min(self.max_batch, by_time, by_size)))

    def _submit_undelivered(self, first, requests):
        """Submit those of ``requests`` (index ``first`` on) not delivered before a resume, each
        run of consecutive indices as one job."""
        start = 0
        for offset in range(len(requests)):
            if first + offset in self.delivered_before:
                self.delivered_before.discard(first + offset)
                self.read -= 1
                if offset > start:
                    self._submit(first + start, requests[start:offset])
                start = offset + 1
        if start < len(requests):
            self._submit(first + start, requests[start:])

    def _submit(self, first, requests):
        try:
            frames = self.serializer.encode(requests)
        except SerializationError as exc:
            self._refuse(first, requests, f"the request cannot be serialised: {exc}")
            return
        sizes = [memoryview(frame).nbytes for frame in frames]
        if self.max_message_size and max(sizes) > self.max_message_size:
            # The broker would cut the connection at every resend: refuse it here instead.
            self._refuse(first, requests, (
                f"the request needs a frame of {max(sizes)} bytes; the broker accepts at "
                f"most {self.max_message_size} (max_message_size)"))
            return
        self.bytes_per_request = sum(sizes) / len(requests)
        job_id = next(self.job_ids)
        sealed = self.wire.seal(frames, job_id, protocol.REQUESTS)
        job = self.pending[job_id] = _Job(first, len(requests), sealed, self.liveness.pings)
        self.in_flight += job.count
        self._send_job(job_id, job)

    def _refuse(self, first, requests, reason):
        """A job that cannot go: deliver ``reason`` for a single request, split a batch."""
        if len(requests) > 1:  # find the culprits; the others still go
            self._submit_each(first, requests)
        else:
            self._deliver([(first, (SERIALIZATION_ERROR, reason))])

    def _submit_each(self, first, requests, skip=None):
        """Submit every request (but that of index ``skip``) as a job of its own, so that one
        bad request fails alone."""
        for offset, request in enumerate(requests):
            if first + offset != skip:
                self._submit(first + offset, [request])

    def _send_job(self, job_id, job):
        job.epoch = self.liveness.pings
        seed = 0 if self.seed is None else self.seed
        self.sock.send_multipart(
            self.wire.pack(Kind.SUBMIT, job_id, job.first, job.count, self.seed is not None, seed,
                           self.deadline_ms, payload=job.frames), copy=False)

    # -- receiving -------------------------------------------------------------------------------

    def _on_result(self, job_id, elapsed, capacity, body):
        self.capacity = capacity
        job = self.pending.pop(job_id, None)
        if job is None:
            return  # answered before, or not ours: each result is delivered once
        self.in_flight -= job.count
        per_request = elapsed / job.count
        self.seconds_per_request = per_request if self.seconds_per_request is None else (
            0.8 * self.seconds_per_request + 0.2 * per_request)
        self.result_bytes_per_request = sum(
            memoryview(protocol.frame_buffer(frame)).nbytes for frame in body) / job.count
        try:
            payload = self.wire.open(body, job_id, protocol.OUTCOMES)
            outcomes = self.serializer.decode(payload)
            if not isinstance(outcomes, list) or len(outcomes) != job.count:
                raise SerializationError(f"expected {job.count} outcomes")
        except SegmentLost as exc:  # the worker died (or let it go) before we mapped it
            if job.lost < self.num_retries:
                job.lost += 1
                LOGGER.info("the result of job %d is lost (%s); sending it again", job_id, exc)
                self.pending[job_id] = job
                self.in_flight += job.count
                self._send_job(job_id, job)
                return
            outcomes = [(SERIALIZATION_ERROR, f"the result cannot be read: {exc}")] * job.count
        except (ProtocolError, SerializationError) as exc:
            outcomes = [(SERIALIZATION_ERROR, f"the result cannot be read: {exc}")] * job.count
        self._deliver_run(job.first, outcomes)

    def _on_failed(self, job_id, reason, cause=FAILED_JOB, index=0):
        job = self.pending.pop(job_id, None)
        if job is None:
            return
        self.in_flight -= job.count
        failed = None
        if cause == FAILED_DEADLINE and job.first <= index < job.first + job.count:
            failed = (index, (DEADLINE_PASSED, reason, self.request_timeout))
        elif job.count == 1:
            failed = (job.first, (WORKERS_DIED, reason))
        if job.count > 1:
            # One request of the batch may be the culprit: try each (but a failed one) alone.
            payload = self.wire.open(job.frames, job_id, protocol.REQUESTS)
            self._submit_each(job.first, self.serializer.decode(payload),
                              skip=None if failed is None else failed[0])
        if failed is not None:
            self._deliver([failed])

    def _on_pong(self, incarnation, ping, capacity, held_by_broker, registered, max_frame):
        self.capacity = capacity
        if max_frame and self.max_message_size is None:
            self.max_message_size = max_frame
        if self.incarnation not in (None, incarnation):
            LOGGER.info("the broker at %s restarted", self.address)
        self.incarnation = incarnation
        # The broker answered ping number `ping` after reading every job sent before it.
        sent_before = [(job_id, job) for job_id, job in self.pending.items() if job.epoch < ping]
        if held_by_broker < len(sent_before):
            LOGGER.info("the broker lost %d jobs; sending them again",
                        len(sent_before) - held_by_broker)
            for job_id, job in sent_before:
                self._send_job(job_id, job)

    def _deliver(self, results):
        if not self.ordered:
            self.outbox.put(results)
            return
        self.held.update(results)
        self._deliver_held()

    def _deliver_run(self, first, outcomes):
        """Deliver the outcomes of requests ``first``, ``first + 1``, ...: a job's results."""
        if self.ordered and first != self.next_delivery:
            self.held.update(zip(range(first, first + len(outcomes)), outcomes))
            return
        # In order, or unordered: straight to the outbox, with no detour through `held`.
        self.outbox.put(zip(range(first, first + len(outcomes)), outcomes))
        if self.ordered:
            self.next_delivery += len(outcomes)
            if self.held:
                self._deliver_held()

    def _deliver_held(self):
        ready = []
        while self.next_delivery in self.held:
            ready.append((self.next_delivery, self.held.pop(self.next_delivery)))
            self.next_delivery += 1
        if ready:
            self.outbox.put(ready)
