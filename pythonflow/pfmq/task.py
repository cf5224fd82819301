"""Tasks: send requests to a broker and iterate over their results.

A :class:`Task` is what the consumer holds: an iterator over results with ``errors=`` handling.
The sending and receiving happen in a :class:`~pythonflow.pfmq.stream.Stream`, in a thread of its
own for ``imap`` and in the calling thread for :func:`apply`.
"""
import itertools
import json
import logging
import os
import threading
import time
import weakref
from typing import Any, Iterable, Optional

import zmq

from . import position, protocol, shm
from .deadline import check_request_timeout
from .errors import ProtocolError
from .liveness import HEARTBEAT_INTERVAL
from .protocol import ITERATOR_FAILED, OK, Kind, exception_for
from .security import resolve_key
from .serialization import make_serializer
from .stream import Stream
from .transport import Wakeup, check_address, dealer

LOGGER = logging.getLogger(__name__)

ERRORS = ("raise", "skip", "return")


class Task:
    """Evaluates ``requests`` on a broker's workers; iterate over it for the results.

    Parameters
    ----------
    requests : iterable
        Requests such as ``{'fetches': 'image', 'context': {'filename': f}}``, read lazily.
    frontend_address : str
        The broker's frontend address.
    dumps, loads : callable, optional
        Replace pickle; must match the workers'.
    start : bool
        Start sending right away.
    timeout : float
        Seconds without any word from the broker before a retry is counted. A transformation
        that runs longer is fine: the broker answers heartbeats meanwhile.
    num_retries : int
        Silent timeouts before ``TimeoutError``; ``max_retries`` is its Pythonflow 0.3 name.
    cache_size : int
        Results held for the consumer before the task stops reading requests, or two jobs'
        results when cheap requests are batched into larger jobs (each job's results are kept
        to about a MiB); ``max_results`` is its Pythonflow 0.3 name.
    ordered : bool
        Yield results in request order; else as they complete.
    errors : {'raise', 'skip', 'return'}
        What a failed request gives: its exception is raised, logged and skipped, or yielded.
    seed : int, optional
        Seed Python's and numpy's global generators for request ``i`` from ``(seed, i)`` on the
        worker, so results do not depend on which worker ran what.
    key : bytes or str, optional
        Shared key for signed messages; defaults to ``PFMQ_KEY``.
    serializer : Serializer or str, optional
        Instead of ``dumps``/``loads``.
    curve : pythonflow.pfmq.security.CurveClient, optional
        Encrypt the connection to the broker with CurveZMQ.
    heartbeat_interval : float
        Seconds between pings to the broker.
    max_batch : int
        Most requests sent in one job. Jobs are sized from the workers' measured time per
        request (about ``target_job_seconds`` of work each) and kept to about a MiB of requests
        and of results; the bound of 1,024 lets tiny requests share the per-message costs of
        broker, worker and task widely.
    target_job_seconds : float
        The seconds of work a job of several requests aims at.
    max_message_size : int, optional
        The broker's ``max_message_size`` (by default learned from its heartbeats): a request
        that would need a larger frame fails with :class:`~pythonflow.pfmq.SerializationError`
        instead of being sent.
    context : zmq.Context, optional
        Defaults to the process-wide instance.
    max_retries, max_results : int, optional
        The Pythonflow 0.3 names of ``num_retries`` and ``cache_size``.
    resume : dict, optional
        A :meth:`state_dict` of an earlier task over the same requests, with the same
        ``ordered`` and ``seed``: continue where its consumer stopped (see Notes).
    shared_memory : bool or SharedMemory, optional
        Send large request arrays through shared memory (see :mod:`pythonflow.pfmq.shm`): by
        default when ``frontend_address`` is an ``ipc://`` address (on this host); ``False``
        never, ``True`` or a :class:`~pythonflow.pfmq.shm.SharedMemory` with its ``threshold``
        always. Results in shared memory are read whatever this says.
    request_timeout : float, optional
        Seconds a worker may evaluate each request; ``None`` (the default) sets no deadline,
        since long transformations are legitimate. A request that runs longer is given up: the
        worker stops serving it (a worker process ends and is replaced) and the broker sends it
        to another worker, up to the broker's ``max_attempts`` times; then it fails with
        :class:`~pythonflow.pfmq.RequestTimeoutError` (a ``TimeoutError``), handled as
        ``errors`` says like any failed request, and the stream goes on.

    Raises
    ------
    ValueError
        For an option out of range, or a ``resume`` that is not a state of a task like this one.
    TypeError
        For a ``request_timeout`` that is not a number.

    Notes
    -----
    The request iterator is read in a thread of its own (unless it iterates over a list, tuple,
    range or similar container), so that an iterator that takes long for an item never delays
    the task's heartbeats: the broker would presume the task gone and drop its jobs.

    **Checkpoint and resume.** ``state_dict()`` says how far the consumer got, in a small dict
    of JSON types (see :mod:`pythonflow.pfmq.position`). A task made with ``resume=state`` over
    the same requests, passed again from their start, advances them past those delivered before
    without sending them and keeps the others' indices: with ``seed=``, every result equals bit
    for bit that of an uninterrupted task at the same position, whatever the number of workers.
    Requests that end before the state's position fail the stream with a ``ValueError`` (at once
    if they have a length); requests that end exactly there give an empty stream.

    **Statistics.** :meth:`stats` tells, among other figures, how long the consumer waited for
    results: a training loop that waits most of its time is starved.
    """

    def __init__(self, requests: Iterable, frontend_address: str, dumps=None, loads=None,
                 start: bool = True, timeout: float = 10, num_retries: int = 3,
                 cache_size: int = 64, ordered: bool = True, *, errors: str = "raise",
                 seed: Optional[int] = None, key=None, serializer=None, curve=None,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL, max_batch: int = 1024,
                 target_job_seconds: float = 0.005, max_message_size: Optional[int] = None,
                 context: Optional[zmq.Context] = None, max_retries: Optional[int] = None,
                 max_results: Optional[int] = None, resume: Optional[dict] = None,
                 shared_memory: shm.Option = None, request_timeout: Optional[float] = None):
        num_retries = _renamed("num_retries", num_retries, 3, "max_retries", max_retries)
        cache_size = _renamed("cache_size", cache_size, 64, "max_results", max_results)
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {ERRORS}, not {errors!r}")
        if not 1 <= max_batch <= protocol.MAX_JOB_REQUESTS:
            raise ValueError(f"max_batch must be in [1, {protocol.MAX_JOB_REQUESTS}]")
        if not _is_count(cache_size):
            raise ValueError(f"cache_size must be a whole number of at least 1, not {cache_size!r}")
        if not _is_count(num_retries):
            raise ValueError(f"num_retries must be a whole number of at least 1, not "
                             f"{num_retries!r}")
        if seed is not None and not 0 <= seed < 1 << 63:
            raise ValueError("seed must be an integer in [0, 2**63)")
        self.request_timeout = check_request_timeout(request_timeout)
        first, delivered = (0, []) if resume is None else position.parse(
            resume, ordered, seed, requests)
        self.requests = requests
        self.errors = errors
        self.ordered = ordered
        self.seed = seed
        # What the consumer has had: ordered, all before _last + 1; else what _unordered holds.
        self._last = first - 1
        self._unordered = None if ordered else position.Unordered(first, delivered)
        self._started_at = self._count_delivered()
        self._failed = 0
        self._ended = None  # perf_counter() when the consumer reached the end of the stream
        courier = shm.Courier(shm.resolve(shared_memory, frontend_address))
        self._io = Stream(
            requests, check_address(frontend_address), make_serializer(dumps, loads, serializer),
            protocol.Wire(resolve_key(key), courier), context or zmq.Context.instance(), timeout,
            num_retries, cache_size, ordered, seed, heartbeat_interval, max_batch,
            target_job_seconds, first, delivered, self.request_timeout)
        self._io.curve = curve
        self._io.max_message_size = max_message_size
        self._thread = None
        self._finalizer = weakref.finalize(self, Stream.cancel, self._io)
        if start:
            self.run_async()

    def run_async(self) -> "Task":
        """Start sending requests in a background thread."""
        if self._thread is not None:
            raise RuntimeError("the task was started already")
        self._io.wakeup = Wakeup()
        self._thread = threading.Thread(target=self._io.run, name="pfmq-task", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Send every request and collect every result in the calling thread.

        Iterating over the task afterwards reads the results without waiting. A task that runs
        in the background already (``start=True``) is waited for instead, as in Pythonflow 0.3.
        """
        if self._thread is None:
            self._thread = threading.current_thread()
            self._io.run()
        elif self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def is_alive(self) -> bool:
        """Whether the task is still sending or receiving."""
        return self._thread is not None and self._thread.is_alive() and not self._io.outbox.closed

    def cancel(self, timeout: Optional[float] = None) -> None:
        """Stop; the broker drops this task's queued requests."""
        self._io.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._io.outbox.close()

    def __enter__(self):
        if self._thread is None:  # created with start=False: Pythonflow starts it here
            self.run_async()
        return self

    def __exit__(self, *exc_info):
        self.cancel()

    def __len__(self) -> int:
        try:
            return len(self.requests)
        except TypeError:
            raise TypeError("the requests of this task have no length") from None

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        return self._next(None)

    def iter_results(self, timeout: Optional[float] = None):
        """Yield results, waiting at most ``timeout`` seconds for each (``TimeoutError``)."""
        while True:
            try:
                yield self._next(timeout)
            except StopIteration:
                return

    def state_dict(self) -> dict:
        """How far the consumer got, for ``resume=``: a small dict of JSON types.

        Cheap enough to take at every step. It counts the results this thread received from the
        task (take it in the thread that iterates), not those still waiting in the cache.
        """
        if self._unordered is None:
            return {"format": position.FORMAT, "ordered": True, "seed": self.seed,
                    "position": self._last + 1}
        return position.state(self.seed, self._unordered)

    def stats(self) -> dict:
        """Figures of the stream so far, from the consumer's side.

        Returns
        -------
        dict
            ``delivered``: results the consumer received from this task (failed requests
            included; those before a resume not); ``failed``: how many of them failed;
            ``results_per_second``: ``delivered`` over ``elapsed_seconds``, the time from the
            start to now, or to the consumer reaching the end; ``in_flight``: requests sent and
            not yet answered; ``cached``: results waiting for the consumer; ``requests_read``:
            requests read from the source to be sent; ``waiting_seconds``: the time the
            consumer spent blocked in ``next()`` or :meth:`iter_results` waiting for a result
            (near ``elapsed_seconds``: the workers cannot keep up; near zero: the consumer is
            the bottleneck). From another thread, each figure is of a slightly different moment.
        """
        io = self._io
        end = time.perf_counter() if self._ended is None else self._ended
        elapsed = 0.0 if io.started is None else end - io.started
        delivered = self._count_delivered() - self._started_at
        return {
            "delivered": delivered, "failed": self._failed,
            "results_per_second": delivered / elapsed if elapsed > 0 else 0.0,
            "in_flight": io.in_flight, "cached": len(io.outbox), "requests_read": io.read,
            "waiting_seconds": io.outbox.waited, "elapsed_seconds": elapsed,
        }

    def _mark(self, index: int) -> None:
        unordered = self._unordered
        if unordered is None:
            self._last = index
        elif index == unordered.end:
            unordered.end += 1
        else:
            unordered.jump(index)

    def _count_delivered(self) -> int:
        return self._last + 1 if self._unordered is None else self._unordered.count()

    def _next(self, timeout):
        if self._thread is None:
            raise RuntimeError("the task was not started: call run_async() or pass start=True")
        while True:
            try:
                index, outcome = self._io.outbox.get(timeout)
            except StopIteration:
                self._ended = self._ended or time.perf_counter()  # the rate stays the stream's
                raise
            io = self._io
            if io.waiting_for_consumer and io.wakeup is not None and len(io.outbox) < io.room:
                io.wakeup.set()  # there is room again: the I/O thread reads on
            if outcome[0] == OK:
                unordered = self._unordered  # _mark() inline: this is the hot path
                if unordered is None:
                    self._last = index
                elif index == unordered.end:
                    unordered.end += 1
                else:
                    unordered.jump(index)
                return outcome[1]
            if outcome[0] == ITERATOR_FAILED:  # not a request: nothing delivered
                raise outcome[1]
            self._mark(index)
            self._failed += 1
            error = exception_for(index, outcome)
            if self.errors == "raise":
                raise error
            if self.errors == "return":
                return error
            LOGGER.warning("skipping request %d: %s: %s", index, type(error).__name__, error)


def _renamed(name: str, value, default, old_name: str, old_value):
    """``value``, or ``old_value`` if it was passed under the Pythonflow 0.3 name ``old_name``.

    A ``value`` equal to its default counts as not given.
    """
    if old_value is None:
        return value
    if value != default and value != old_value:
        raise ValueError(f"{name}={value!r} and its old name {old_name}={old_value!r} disagree: "
                         f"pass {name} only")
    return old_value


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class _Connections:
    """The connections :func:`apply` keeps for one thread, closed when the thread ends.

    They are keyed by value (the context, which each socket holds, the address, the shared key and
    the CURVE keys), never by ``id()``: a collected object's id may be another's later.
    """

    def __init__(self):
        self.pid = os.getpid()
        self.sockets = {}  # key -> (DEALER socket, job ids)

    @staticmethod
    def key(io: Stream) -> tuple:
        curve = io.curve
        if curve is not None and all(hasattr(curve, name) for name in _CURVE_KEYS):
            curve = tuple(getattr(curve, name) for name in _CURVE_KEYS)
        return io.context, io.address, io.wire.key, curve

    def get(self, key: tuple, io: Stream) -> tuple:
        """The connection for ``key``, made now if there is none or it was closed."""
        entry = self.sockets.get(key)
        if entry is None or entry[0].closed:
            entry = self.sockets[key] = (
                dealer(io.context, io.address, protocol.new_id(), io.curve), itertools.count())
        return entry

    def discard(self, key: tuple) -> None:
        sock, _ = self.sockets.pop(key, (None, None))
        if sock is not None:
            sock.close(linger=0)

    def close(self) -> None:
        while self.sockets:
            self.discard(next(iter(self.sockets)))

    def __del__(self):
        # The thread ended and its thread-local data goes. A forked child must leave the
        # parent's sockets alone.
        if self.pid == os.getpid():
            self.close()


_CURVE_KEYS = ("server_key", "public_key", "secret_key")
_apply_local = threading.local()


def _connections() -> _Connections:
    connections = getattr(_apply_local, "connections", None)
    if connections is None or connections.pid != os.getpid():
        connections = _apply_local.connections = _Connections()
    return connections


def close_apply_connections() -> None:
    """Close the connections that :func:`apply` keeps for the calling thread.

    Those of other threads are closed when their thread ends. ``zmq.Context.term()`` waits for
    every socket of its context: call this first in a thread that used ``apply`` on it.
    """
    connections = getattr(_apply_local, "connections", None)
    if connections is not None and connections.pid == os.getpid():
        connections.close()


def apply(request, frontend_address: str, **task_options) -> Any:
    """Evaluate one request on a worker and return its result.

    It runs in the calling thread on a connection kept for the thread (until it ends, or
    :func:`close_apply_connections`), so a loop of ``apply`` calls costs one round trip each
    and no set-up.
    """
    task_options["start"] = False
    task = Task([request], frontend_address, **task_options)
    io = task._io
    connections = _connections()
    key = connections.key(io)
    sock, io.job_ids = connections.get(key, io)
    task._thread = threading.current_thread()
    try:
        io.run(sock)
    finally:
        if io.outbox.error is not None or sock.closed:
            connections.discard(key)
    return next(task)


def query_status(frontend_address: str, key=None, timeout: float = 5.0,
                 context: Optional[zmq.Context] = None, curve=None) -> dict:
    """Ask the broker at ``frontend_address`` for its statistics (see ``Broker.stats``)."""
    wire = protocol.Wire(resolve_key(key))
    sock = dealer(context or zmq.Context.instance(), check_address(frontend_address),
                  protocol.new_id(), curve)
    try:
        sock.send_multipart(wire.pack(Kind.STATUS))
        if not sock.poll(timeout * 1000):
            raise TimeoutError(f"no answer from the broker at {frontend_address} in {timeout} s")
        kind, _, body = wire.unpack(sock.recv_multipart())
        if kind is not Kind.STATUS_REPLY or len(body) != 1:
            raise ProtocolError(f"unexpected answer {kind.name} to a status query")
        return json.loads(body[0])
    finally:
        sock.close(linger=0)
