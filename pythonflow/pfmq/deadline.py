"""Request deadlines (``request_timeout``): the worker's watchdog and the broker's verdict.

A task's ``request_timeout`` travels with each of its jobs (``deadline_ms`` in the ``job``
fields, see :mod:`pythonflow.pfmq.protocol`); by default there is none, since long
transformations are legitimate. Python code cannot be interrupted safely from outside, so a
request that runs past its deadline is given up, not stopped in its tracks::

    serving thread  --begin(job, index)--> Watchdog (IDLE -> RUNNING)
    serving thread  --finish()-----------> Watchdog (RUNNING -> IDLE): the outcome counts
    watchdog thread --deadline passed----> Watchdog (RUNNING -> EXPIRED): it owns the work
                    connection now, sends DEADLINE to the broker, then, by the worker's
                    ``on_deadline``:
        "exit"   : BYE, waits for the broker to have read them, ends the process with
                   launch.EXIT_RESTART; its supervisor starts another at once
        "rejoin" : -> REPORTED; when the transformation returns at last, the serving thread
                   drops its outcome and the jobs it had waiting, signs up again (READY) and
                   serves on (:meth:`Watchdog.resume`)

The serving thread touches the work connection only between requests, and the watchdog only
after it took the request over (both under one lock), so the connection is never used by two
threads at once. ``"exit"`` is what worker processes of :func:`pythonflow.pfmq.launch.serve`
(``LocalCluster``, ``pfmq worker``) do; ``"rejoin"`` is the default of a :class:`Worker` made in
the user's own process, whose end would be a surprise. A transformation that holds the global
interpreter lock (a long C call) keeps the watchdog thread from running: in ``"exit"`` mode a
process timer (``SIGALRM``, whose default action ends the process at once) ends the process
between ``deadline + max(2 s, deadline)`` and twice that after the request started (see
:meth:`Watchdog._arm`), and the broker treats it as any dead worker.

The broker (:func:`on_report`, called by the scheduler) counts a deadline hit for the request,
the task and the worker, and sends every other job the worker held again, blaming none. A job of
that one request goes again to a worker that holds nothing else (the isolated queue) until the
request has hit ``max_attempts`` deadlines; then it fails with ``FAILED`` (cause
:data:`~pythonflow.pfmq.protocol.FAILED_DEADLINE`), which the task turns into a
:class:`~pythonflow.pfmq.errors.RequestTimeoutError`. A job of several requests fails at once
(the broker cannot split a payload it does not read) so that the task retries each request
alone; hits are counted by request index, so those the request hit inside the job count too.
Requests of that job that had finished are evaluated again.
"""
import enum
import logging
import math
import os
import signal
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Optional

from . import protocol
from .launch import EXIT_RESTART
from .protocol import FAILED_DEADLINE, FAILED_JOB, Kind

if TYPE_CHECKING:
    from .connections import Session
    from .jobs import Job
    from .records import JobRecord, WorkerRecord
    from .scheduler import Scheduler
    from .worker import Worker

__all__ = ["DeadlineAction", "Watch", "Watchdog", "check_request_timeout", "deadline_ms",
           "on_report", "MAX_DEADLINE_MS"]

LOGGER = logging.getLogger(__name__)

#: The longest deadline a job can carry (the ``deadline_ms`` field is 32 bits): about 49 days.
MAX_DEADLINE_MS = 0xFFFFFFFF
#: Seconds at least between a deadline and the process timer that backs the watchdog up.
BACKSTOP_GRACE = 2.0
#: Seconds after the last request began that the watchdog still looks every deadline; then it
#: sleeps until the next request begins.
IDLE_PATIENCE = 1.0


class DeadlineAction(enum.Enum):
    """What a worker does once it has reported a request that ran past its deadline."""

    REJOIN = "rejoin"  # wait for the transformation to return, drop its outcome, sign up again
    EXIT = "exit"  # end the process (launch.EXIT_RESTART), to be replaced by its supervisor


class Watch(enum.Enum):
    """Where the watchdog is; who owns the work connection."""

    IDLE = "idle"  # no request with a deadline runs: the serving thread owns the connection
    RUNNING = "running"  # one runs: the serving thread owns the connection, not using it
    EXPIRED = "expired"  # it ran past its deadline: the watchdog owns the connection, reports
    REPORTED = "reported"  # reported: the serving thread takes the connection back (resume)


def check_request_timeout(value: Any) -> Optional[float]:
    """``value`` as a deadline in seconds, or ``None`` for none.

    Raises
    ------
    TypeError
        If ``value`` is not a number (a ``bool`` is not one).
    ValueError
        If it is not a positive finite number of seconds from 1 ms to about 49 days.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"request_timeout must be a number of seconds or None, not {value!r}")
    if not math.isfinite(value) or not 0.001 <= value <= MAX_DEADLINE_MS / 1000:
        raise ValueError(f"request_timeout must be a positive number of seconds (at least "
                         f"0.001, at most {MAX_DEADLINE_MS / 1000:g}) or None, not {value!r}")
    return float(value)


def deadline_ms(seconds: Optional[float]) -> int:
    """The ``deadline_ms`` field for a checked ``request_timeout`` (0: none)."""
    return 0 if seconds is None else max(1, round(seconds * 1000))


class Watchdog:
    """Watches the requests a worker evaluates and gives up those that pass their deadline.

    Parameters
    ----------
    worker : Worker
        Gives the work connection (its session), the wire, its ``timeout`` and ``on_deadline``.
    """

    def __init__(self, worker: "Worker"):
        # A weak reference: a cycle would keep an abandoned worker (and its sockets) alive
        # until the garbage collector happens to run.
        self._worker = weakref.ref(worker)
        self._exit = worker.on_deadline is DeadlineAction.EXIT
        self._lock = threading.Lock()  # guards the state: a plain one, taken twice per request
        self._reported = threading.Event()  # set once the state is REPORTED
        self._wake = threading.Event()
        self.state = Watch.IDLE
        self._job: Optional["Job"] = None
        self._index = 0
        self._due = 0.0  # monotonic time the running request's deadline passes
        self._began = self._deadline = 0.0  # of the last request begun
        self._next_look = math.inf  # monotonic time the thread looks again (inf: when woken)
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._armed_until = 0.0  # monotonic time the process timer goes off; 0: not set
        # The process timer is the default SIGALRM only where nothing else uses that signal.
        self._backstop = (self._exit and hasattr(signal, "SIGALRM")
                          and signal.getsignal(signal.SIGALRM) == signal.SIG_DFL)

    def begin(self, job: "Job", index: int, deadline: float) -> bool:
        """Request ``index`` of ``job`` starts now with ``deadline`` seconds; whether it may
        (not when the watchdog took the job over)."""
        with self._lock:
            taken_over = self.state is not Watch.IDLE
            wake = not taken_over and self._start(job, index, deadline)
        if taken_over:
            self._reported.wait()  # the connection is the watchdog's until it has reported
            return False
        if self._backstop:
            self._arm(deadline + max(BACKSTOP_GRACE, deadline))
        if wake:
            self._wake.set()
        return True

    def _start(self, job: "Job", index: int, deadline: float) -> bool:
        """Make request ``index`` of ``job`` the running one (the lock is held); whether the
        thread must be woken: only if it would look too late, not for every request."""
        now = time.monotonic()
        self.state, self._job, self._index = Watch.RUNNING, job, index
        self._began, self._deadline, self._due = now, deadline, now + deadline
        if self._thread is None:
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="pfmq-worker-watchdog",
                                            daemon=True)
            self._thread.start()
        return self._due < self._next_look

    def finish(self) -> bool:
        """The request that :meth:`begin` announced has returned; whether its outcome counts.

        When the watchdog took it over this waits until the deadline is reported (for ever,
        when the process ends after it) and returns False: call :meth:`resume`.
        """
        with self._lock:
            if self.state is Watch.RUNNING:
                self.state, self._job = Watch.IDLE, None
                return True
        self._reported.wait()  # for ever when the process ends after the report
        return False

    def _arm(self, backstop: float) -> None:
        """Have the process timer go off no sooner than ``backstop`` seconds from now.

        A system call per request would halve the rate of cheap requests: the timer is set for
        twice as long and set again only once less than ``backstop`` is left, so a hung request
        ends its process between ``backstop`` and twice that after it started.
        """
        now = time.monotonic()
        if self._armed_until < now + backstop:
            signal.setitimer(signal.ITIMER_REAL, 2 * backstop)
            self._armed_until = now + 2 * backstop

    def disarm(self) -> None:
        """A job is done: the process timer must not go off while the worker waits for work."""
        if self._armed_until:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._armed_until = 0.0

    def resume(self, session: "Session") -> None:
        """Serve on after a reported deadline: the broker sent the jobs waiting here elsewhere,
        so drop them and sign up again."""
        with self._lock:
            self.state, self._job = Watch.IDLE, None
            self._reported.clear()
        session.read()  # jobs that came after the report went elsewhere too
        session.jobs.clear()
        session.sign_up()
        LOGGER.info("the request past its deadline returned; serving again")

    def close(self) -> None:
        """Stop the watchdog thread (the worker stopped); :meth:`begin` starts another."""
        with self._lock:
            thread, self._thread, self._closed = self._thread, None, True
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # it ends at once, or after a report it is sending
        with self._lock:
            self.state, self._job = Watch.IDLE, None  # the next run starts afresh
            self._reported.clear()

    def _run(self) -> None:
        while True:
            self._wake.clear()  # before looking, so that a begin() after the look wakes us
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                running = self.state is Watch.RUNNING
                if running and self._due <= now:
                    self.state = Watch.EXPIRED
                    job, index = self._job, self._index
                    expired = True
                else:
                    expired = False
                    wait = self._next_wait(running, now)
                    self._next_look = math.inf if wait is None else now + wait
            if expired:
                self._expire(job, index, now - self._due)
            else:
                self._wake.wait(wait)

    def _next_wait(self, running: bool, now: float) -> Optional[float]:
        """Seconds until the watchdog looks again; ``None``: when woken."""
        if running:
            return self._due - now
        if now - self._began < IDLE_PATIENCE:
            # Between two requests of a stream: looking again one deadline later keeps begin()
            # from having to wake this thread for the next request.
            return self._deadline
        return None  # idle for a while: sleep until a request begins

    def _expire(self, job: "Job", index: int, late: float) -> None:
        """Report request ``index`` of ``job``; end the process or hand the connection back."""
        worker = self._worker()
        if worker is None:
            return  # collected: nobody serves
        deadline = job.spec[5] / 1000
        exiting = self._exit
        LOGGER.warning("request %d ran past its deadline of %g s; %s", index, deadline,
                       "ending the worker process" if exiting else
                       "giving it up (the worker serves again when it returns)")
        self.disarm()  # this thread runs: no need for the timer
        try:
            session = worker._session
            if session is not None:
                wire = worker._wire
                session.sock.send_multipart(wire.pack(
                    Kind.DEADLINE, job.spec[0], index, deadline + late, body=[job.task_id]))
                if exiting:
                    session.sock.send_multipart(wire.pack(Kind.BYE))
                    _await_pong(session.sock, wire, worker.timeout)
        except Exception:  # noqa: BLE001 - the broker then sees a worker fall silent instead
            LOGGER.exception("cannot report the deadline to the broker")
        if exiting:
            logging.shutdown()
            sys.stderr.flush()
            os._exit(EXIT_RESTART)  # noqa: SLF001 - the only way past the hung thread
        with self._lock:
            self.state = Watch.REPORTED
        self._reported.set()


def _await_pong(sock: Any, wire: protocol.Wire, timeout: float) -> None:
    """Ping on the work connection and wait up to ``timeout`` s for the answer: the broker read
    what was sent before it."""
    sock.send_multipart(wire.pack(Kind.PING, 0, max(1, round(timeout * 1000))))
    end = time.monotonic() + timeout
    while sock.poll(max(0.0, end - time.monotonic()) * 1000):
        try:
            if wire.unpack(sock.recv_multipart(copy=False))[0] is Kind.PONG:
                return
        except protocol.ProtocolError:
            continue
    LOGGER.warning("the broker did not confirm the deadline report within %g s", timeout)


# -- the broker's side ---------------------------------------------------------------------------

def on_report(scheduler: "Scheduler", worker: Optional["WorkerRecord"], fields: tuple,
              body: list) -> None:
    """Handle a worker's ``DEADLINE``: requeue what it held, count the hit, retry or fail."""
    job_id, index, elapsed = fields
    if not body:
        raise protocol.ProtocolError("DEADLINE without a task id")
    if worker is None:
        return  # not signed up: it holds nothing here, and the job is not its to blame
    job = worker.jobs.pop((body[0].bytes, job_id), None)
    scheduler.withdraw(worker)  # the others go elsewhere, unblamed; no more until its READY
    if job is None:
        return  # revoked meanwhile, or answered elsewhere: nothing to count
    first, count, limit = job.spec[1], job.spec[2], job.spec[5]
    if not first <= index < first + count:
        raise protocol.ProtocolError(f"DEADLINE for request {index}, not one of job {job_id}")
    task = scheduler.tasks[job.task_id]
    task.deadlines_hit[index] += 1
    worker.deadlines_hit += 1
    scheduler.counters["deadlines_hit"] += 1
    hits = task.deadlines_hit[index]
    LOGGER.info("request %d of task %s ran past its deadline (%.3f s) %d times",
                index, job.task_id.hex()[:8], elapsed, hits)
    if hits >= scheduler.max_attempts:
        _fail(scheduler, job, FAILED_DEADLINE, index,
              f"ran past its deadline of {limit / 1000:g} s (request_timeout) {hits} times")
    elif count > 1:
        _fail(scheduler, job, FAILED_JOB, 0,
              f"request {index} ran past its deadline; retrying each request alone")
    else:
        scheduler._requeue([job], isolate=True)


def _fail(scheduler: "Scheduler", job: "JobRecord", cause: int, index: int, reason: str) -> None:
    if job.spec[2] > 1:  # the task retries the others alone: not a failure of theirs
        scheduler._settle(job.task_id, job.spec[0])
        scheduler._send_to_task(job.task_id, Kind.FAILED, job.spec[0], cause, index,
                                body=[reason.encode()])
    else:
        scheduler._fail(job, reason, cause, index)
