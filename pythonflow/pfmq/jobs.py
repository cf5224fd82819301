"""What a worker does with one job: read it, evaluate its requests, and answer with outcomes.

Every job a worker receives is answered with a ``DONE`` message, also one that cannot be read
(no task id, no payload, a payload whose seal or serialisation is broken, an implausible number
of requests): the broker counts the worker's credit by its answers, so a job dropped in silence
would lose a slot for good and its requests would never reach the consumer.
"""
import hashlib
import logging
import random
import signal
import threading
import time
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, List, NamedTuple, Optional

import numpy as np

from . import protocol
from .errors import ProtocolError, SerializationError
from .protocol import COMPLETED, ERROR, OK, SERIALIZATION_ERROR, Kind
from .serialization import Serializer, encode_outcomes
from .transport import RateLimitedLogger

if TYPE_CHECKING:
    from ..graph import Graph

__all__ = ["GraphTarget", "Job", "Evaluator", "read_job", "seed_generators", "stops_the_worker"]

LOGGER = logging.getLogger(__name__)

#: Signals whose Python handlers may raise to stop the process (``sys.exit`` on SIGTERM, say).
_STOP_SIGNALS = tuple(getattr(signal, name) for name in (
    "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")
    if hasattr(signal, name))


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

    def __init__(self, graph: "Graph"):
        self.graph = graph

    def __call__(self, request: Mapping) -> Any:
        if type(request) is dict:  # noqa: E721 - the common case, without the ABC check
            fetches = request.get("fetches", _MISSING)
            context = request.get("context", _MISSING)
            if fetches is not _MISSING and context is not _MISSING and "contexts" not in request:
                return self.graph(fetches, context)
        elif not isinstance(request, Mapping):
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


_MISSING = object()


def stops_the_worker(exc: BaseException) -> bool:
    """Whether ``exc``, raised while a request was evaluated, stops the worker process.

    Ctrl-C (``KeyboardInterrupt``) and a ``BaseException`` raised by a Python signal handler
    (``sys.exit()`` on SIGTERM, say) are the process being told to stop; both reach the main
    thread only. Anything else, ``SystemExit`` from ``sys.exit()`` in a transformation included,
    fails its request alone: one bad sample must not empty the pool.
    """
    if isinstance(exc, Exception) or threading.current_thread() is not threading.main_thread():
        return False
    if isinstance(exc, KeyboardInterrupt):  # the default handler is in C: no frame to look for
        return True
    handlers = set()
    for signum in _STOP_SIGNALS:
        handler = signal.getsignal(signum)
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if code is not None:
            handlers.add(code)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in handlers:
            return True
        tb = tb.tb_next
    return False


def _remote_traceback(exc: BaseException) -> str:
    tb = exc.__traceback__
    return "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))


class Job(NamedTuple):
    """A job as received: ``spec`` is ``(job_id, first_index, count, has_seed, seed,
    deadline_ms)``;
    ``problem`` says why it cannot be evaluated (it is answered with errors), if it cannot."""

    spec: tuple
    task_id: bytes
    payload: list
    problem: Optional[str] = None


def read_job(fields: tuple, body: list) -> Job:
    """The :class:`Job` of a ``JOB`` message with header ``fields`` and ``body`` frames."""
    if not body:
        return Job(fields, b"", [], "a job without a task id")
    task_id = bytes(protocol.frame_buffer(body[0]))
    try:
        protocol.check_job(fields)
    except ProtocolError as exc:
        return Job(fields, task_id, [], f"an implausible job: {exc}")
    return Job(fields, task_id, list(body[1:]))


def _largest(frames) -> int:
    return max((memoryview(frame).nbytes for frame in frames), default=0)


class Evaluator:
    """Evaluates jobs with a worker's serializer and wire and counts the requests it ran.

    Parameters
    ----------
    serializer : Serializer
        Decodes requests and encodes outcomes.
    wire : protocol.Wire
        Opens the payload seals and packs the answers.
    """

    def __init__(self, serializer: Serializer, wire: protocol.Wire):
        self.serializer = serializer
        self.wire = wire
        self.executed = 0  # requests evaluated, for statistics and tests
        #: The worker's :class:`~pythonflow.pfmq.deadline.Watchdog`, told of each request of a
        #: job with a deadline; ``None``: deadlines are not kept.
        self.watchdog = None
        self._log = RateLimitedLogger(LOGGER)

    def answer(self, target: Callable[[Any], Any], job: Job,
               max_message_size: Optional[int] = None) -> Optional[list]:
        """Evaluate ``job`` with ``target`` and return the frames of its ``DONE`` message, or
        ``None`` if the :attr:`watchdog` gave up one of its requests at its deadline (it has
        told the broker: the job must not be answered).

        Raises only what :func:`stops_the_worker` says stops the worker; every other failure is
        an outcome in the answer.
        """
        job_id, first_index, count, has_seed, seed, _ = job.spec
        started = time.perf_counter()
        try:
            requests = self._requests(job)
        except (ProtocolError, SerializationError) as exc:
            self._log.log(logging.WARNING, "unreadable", "cannot read job %d: %s", job_id, exc)
            plausible = 1 <= count <= protocol.MAX_JOB_REQUESTS
            outcomes = [(SERIALIZATION_ERROR, f"the worker cannot read the request: {exc}")] * (
                count if plausible else 0)  # the task fails all its requests on a wrong count
        else:
            outcomes = self._evaluate(target, job, requests, seed if has_seed else None)
            if outcomes is None:
                return None
        elapsed = time.perf_counter() - started
        sealed = self.wire.seal(self._encode(outcomes, max_message_size), job_id,
                                protocol.OUTCOMES)
        return self.wire.pack(Kind.DONE, job_id, COMPLETED, elapsed, body=[job.task_id],
                              payload=sealed)

    def _requests(self, job: Job) -> list:
        if job.problem:
            raise ProtocolError(job.problem)
        count = job.spec[2]
        frames = self.wire.open(job.payload, job.spec[0], protocol.REQUESTS)
        if not frames:
            raise SerializationError("the job has no payload")
        try:
            requests = self.serializer.decode(frames)
        except SerializationError:
            raise
        except Exception as exc:  # a serializer of the user's may raise anything
            raise SerializationError(f"cannot deserialise: {type(exc).__name__}: {exc}") from exc
        if not isinstance(requests, list) or len(requests) != count:
            raise SerializationError(f"a job of {count} requests decoded to {requests!r:.80}")
        return requests

    def _evaluate(self, target, job, requests, seed) -> Optional[List[tuple]]:
        """The outcomes of ``requests``; ``None`` if the watchdog gave one up at its deadline."""
        if not job.spec[5]:  # no deadline: the loop without a watch, for tiny requests
            return self._evaluate_each(target, job.spec[1], requests, seed)
        watch = self.watchdog
        try:
            return self._evaluate_watched(target, job, requests, seed, watch)
        finally:
            watch.disarm()

    def _evaluate_watched(self, target, job, requests, seed, watch) -> Optional[List[tuple]]:
        first_index, deadline = job.spec[1], job.spec[5] / 1000
        outcomes = []
        for offset, request in enumerate(requests):
            index = first_index + offset
            if not watch.begin(job, index, deadline):
                return None
            try:
                outcomes += self._evaluate_each(target, index, (request,), seed)
            finally:
                # Also when the worker stops: the watchdog must not take the connection over.
                owned = watch.finish()
            if not owned:
                return None
        return outcomes

    def _evaluate_each(self, target, first_index, requests, seed) -> List[tuple]:
        outcomes = []
        append = outcomes.append  # bound once: this loop runs for every request
        for offset, request in enumerate(requests):
            if seed is not None:
                seed_generators(seed, first_index + offset)
            try:
                append((OK, target(request)))
            except Exception as exc:
                append((ERROR, exc, _remote_traceback(exc)))
            except BaseException as exc:
                if stops_the_worker(exc):
                    self.executed += len(outcomes) + 1
                    raise
                self._log.log(logging.WARNING, type(exc).__name__, "a request raised %r; it "
                              "fails alone and the worker keeps serving", exc)
                # Not re-raised at the consumer (a SystemExit there would end the consumer):
                # it gets a RemoteError carrying the traceback.
                append((ERROR, None, _remote_traceback(exc)))
        self.executed += len(outcomes)  # once per job, not per request
        return outcomes

    def _encode(self, outcomes, max_message_size) -> list:
        try:
            frames = encode_outcomes(self.serializer, outcomes)
            if max_message_size and _largest(frames) > max_message_size:
                # The broker would cut the connection and the result would never arrive.
                frames = encode_outcomes(self.serializer, [
                    self._within_limit(outcome, max_message_size) for outcome in outcomes])
            return frames
        except Exception as exc:  # a serializer of the user's may raise anything
            self._log.log(logging.WARNING, "encode", "cannot encode outcomes: %s", exc)
        try:
            return self.serializer.encode(
                [(SERIALIZATION_ERROR, "the worker cannot encode the outcomes")] * len(outcomes))
        except Exception:
            return []  # the task fails every request of a payload it cannot read

    def _within_limit(self, outcome, max_message_size):
        size = _largest(encode_outcomes(self.serializer, [outcome]))
        if size <= max_message_size:
            return outcome
        return (SERIALIZATION_ERROR, f"the result needs a frame of {size} bytes; the broker "
                                     f"accepts at most {max_message_size} (max_message_size)")
