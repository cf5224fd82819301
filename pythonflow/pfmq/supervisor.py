"""Keeping a pool of worker processes alive, for LocalCluster and ``pfmq worker --processes N``.

A :class:`Supervisor` has one *slot* per worker process and runs one loop that moves each slot
through the states of :class:`SlotState`::

    STARTING ---target loaded---> RUNNING
       |                             |
       | died                        | died (SIGKILL, a segfault, the OOM killer, an error)
       v                             v
    BACKING_OFF <--------------------+     then, after the backoff: STARTING again (a restart)

    STARTING, died during start-up for the crash_limit-th time in a row -> FAILED: the supervisor
        stops every worker and raises CrashLoopError (slot, exit status, last lines of its log)
    STARTING or RUNNING, exited with status 0 (asked to stop) or EXIT_NO_BROKER (gave up
        waiting for the broker) -> STOPPED: not started again
    RUNNING, exited with EXIT_RESTART (ended itself to be replaced, after passing its
        max_memory) -> STARTING at once, with no death counted: a restart and a recycle

A process is *starting* until it has loaded its target (imported the graph's module, built the
graph) and made its worker. The n-th death in a row waits ``backoff * 2 ** (n - 1)`` seconds
(at most ``max_backoff``) before the next start; a process that served for ``stable_after``
seconds starts the count afresh.

What a worker process writes to stderr goes through a pipe: the supervisor copies it to its own
stderr, as if the worker wrote there, and keeps the last lines for the crash-loop error. The
supervisor also tells the broker how the pool is doing (``REPORT`` messages, see
:mod:`pythonflow.pfmq.protocol`), so that ``broker.stats()`` and ``pfmq status`` count restarts.
"""
import collections
import enum
import logging
import os
import signal
import threading
import time
from multiprocessing.connection import wait
from typing import Any, Callable, List, Optional

import zmq

from . import launch, protocol
from .protocol import Kind
from .security import resolve_key
from .transport import Wakeup

LOGGER = logging.getLogger(__name__)
_LOG_LINES = 20  # lines of each worker's stderr kept for the crash-loop error


class SlotState(enum.Enum):
    """Where a worker slot of a :class:`Supervisor` is."""

    STARTING = "starting"  #: a process is loading the target
    RUNNING = "running"  #: a process serves
    BACKING_OFF = "backing off"  #: the process died; a new one starts after the backoff
    STOPPED = "stopped"  #: the process ended on purpose; no new one starts
    FAILED = "failed"  #: processes died during start-up crash_limit times in a row


_LIVE = (SlotState.STARTING, SlotState.RUNNING)


class CrashLoopError(RuntimeError):
    """Worker processes of one slot died during start-up too many times in a row."""


def describe_exit(exitcode: int) -> str:
    """``"exit status 1"`` or ``"killed by SIGSEGV"`` for a process's ``exitcode``."""
    if exitcode >= 0:
        return f"exit status {exitcode}"
    try:
        return f"killed by {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"killed by signal {-exitcode}"


class _LogTail:
    """Copies what a worker process writes to stderr onto ours and keeps its last lines.

    A thread of its own reads the pipe, so that a chatty worker never blocks on a full pipe
    while the supervisor is busy; it closes the pipe at the end of the file.
    """

    def __init__(self, reader):
        self.lines = collections.deque(maxlen=_LOG_LINES)
        self._reader = reader
        self._thread = threading.Thread(target=self._pump, name="pfmq-worker-log", daemon=True)
        self._thread.start()

    def _pump(self):
        partial = b""
        try:
            while True:
                chunk = os.read(self._reader.fileno(), 1 << 16)
                if not chunk:
                    break
                try:
                    os.write(2, chunk)  # where the worker's stderr went before it was captured
                except OSError:
                    pass
                *complete, partial = (partial + chunk).split(b"\n")
                self.lines.extend(line.decode(errors="replace") for line in complete)
                partial = partial[-4096:]  # a line without end must not grow without bound
        except OSError:
            pass
        finally:
            if partial:
                self.lines.append(partial.decode(errors="replace"))
            self._reader.close()

    def finish(self, timeout: float = 1.0) -> List[str]:
        """Wait for the end of the file (the process exited), then return the last lines.

        A process the worker started itself may hold the pipe open for longer: then the lines
        read so far are returned, and the pump goes on until that one exits.
        """
        self._thread.join(timeout)
        return list(self.lines)


class _Slot:
    """One worker process at a time, and what the supervisor remembers about that slot."""

    def __init__(self, index: int):
        self.index = index
        self.state = SlotState.BACKING_OFF  # the loop starts every slot at once
        self.process = None
        self.ready = None  # the readiness pipe while STARTING
        self.log: Optional[_LogTail] = None
        self.restart_at = 0.0
        self.ready_at = 0.0
        self.deaths = 0  # in a row, without serving for stable_after: sets the backoff
        self.startup_deaths = 0  # in a row, before loading the target: crash_limit ends it all
        self.restarts = 0
        self.recycles = 0  # exits with EXIT_RESTART: replaced at once, not deaths

    def became_ready(self) -> bool:
        """Whether the process has just said it loaded its target (reads the readiness pipe)."""
        if self.ready is None or not self.ready.poll():
            return False
        try:
            self.ready.recv_bytes()
            return True
        except (EOFError, OSError):  # died first; the loop sees the exit status next
            return False
        finally:
            self.ready.close()
            self.ready = None

    def release_pipes(self) -> List[str]:
        """Close what is left of the last process's pipes; return its last log lines."""
        if self.ready is not None:
            self.ready.close()
            self.ready = None
        return self.log.finish() if self.log is not None else []


class _Reporter:
    """Sends the pool's figures to the broker, at each change and every ``interval`` seconds."""

    def __init__(self, address: str, key, curve, interval: float):
        self.interval = interval
        self.due = 0.0
        self._interval_ms = max(1, round(interval * 1000))
        self._last = None
        self._wire = protocol.Wire(resolve_key(key))
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        if curve is not None and not address.startswith("inproc://"):
            curve.configure(self._sock)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 4)  # while the broker is away, old figures are moot
        self._sock.connect(address)

    def send(self, figures: tuple, now: float) -> None:
        if figures == self._last and now < self.due:
            return
        try:
            self._sock.send_multipart(self._wire.pack(Kind.REPORT, *figures, self._interval_ms),
                                      zmq.NOBLOCK)
        except zmq.Again:
            pass
        self._last, self.due = figures, now + self.interval

    def close(self) -> None:
        self._sock.close(linger=0)


class Supervisor:
    """Runs ``num_workers`` worker processes and replaces those that die (see the module docs).

    Parameters
    ----------
    spec : tuple
        What the workers evaluate, from :func:`pythonflow.pfmq.launch.pack_target`.
    address : str
        The broker's backend address.
    num_workers : int
        Worker processes (slots).
    worker_options : dict, optional
        Keyword arguments for :class:`~pythonflow.pfmq.Worker`; its ``key``, ``curve`` and
        ``heartbeat_interval`` serve the reports to the broker too.
    log_level : int
        Logging level of the worker processes.
    crash_limit : int
        Deaths during start-up in a row after which a slot fails and the supervisor gives up.
    backoff, max_backoff : float
        Seconds before the first restart after a death, doubled with each death in a row up to
        ``max_backoff``.
    stable_after : float
        Seconds of serving after which a death no longer counts as one in a row.
    stop_timeout : float
        Seconds worker processes have to stop before they are killed.
    report : bool
        Tell the broker the pool's figures (restarts), so that its statistics show them.
    """

    def __init__(self, spec: launch.TargetSpec, address: str, num_workers: int,
                 worker_options: Optional[dict] = None, log_level: int = logging.WARNING, *,
                 crash_limit: int = 3, backoff: float = 0.1, max_backoff: float = 10.0,
                 stable_after: float = 10.0, stop_timeout: float = 5.0, report: bool = True):
        check_count(num_workers, "num_workers")
        check_count(crash_limit, "crash_limit")
        if not 0 < backoff <= max_backoff:
            raise ValueError(f"need 0 < backoff <= max_backoff, not {backoff} and {max_backoff}")
        self.spec = spec
        self.address = address
        self.worker_options = dict(worker_options or {})
        self.log_level = log_level
        self.crash_limit = crash_limit
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.stop_timeout = stop_timeout
        self.report = report
        self.slots = [_Slot(index) for index in range(num_workers)]
        self.error: Optional[Exception] = None  # what ended a loop in the background
        self._stopping = False
        self._wakeup = Wakeup()
        self._thread: Optional[threading.Thread] = None

    # -- what others may look at, from any thread ------------------------------------------------

    @property
    def pids(self) -> List[int]:
        """Process ids of the worker processes alive now (none for a slot backing off)."""
        slots = [(slot.state, slot.process) for slot in self.slots]
        return [process.pid for state, process in slots if state in _LIVE and process is not None]

    @property
    def processes(self) -> list:
        """The last process of each slot (``multiprocessing.Process``)."""
        return [slot.process for slot in self.slots if slot.process is not None]

    @property
    def restarts(self) -> int:
        """Worker processes started in place of one that ended: one that died, or one that
        asked to be replaced (counted in :attr:`recycles` as well)."""
        return sum(slot.restarts for slot in self.slots)

    @property
    def recycles(self) -> int:
        """Worker processes that ended themselves to be replaced (exit status
        :data:`~pythonflow.pfmq.launch.EXIT_RESTART`: they passed their ``max_memory``)."""
        return sum(slot.recycles for slot in self.slots)

    @property
    def states(self) -> List[SlotState]:
        """The state of each slot."""
        return [slot.state for slot in self.slots]

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        """Supervise in the calling thread until :meth:`stop`, or until every slot stopped.

        Every worker process is stopped on the way out, also by an exception.

        Raises
        ------
        CrashLoopError
            If the processes of one slot died during start-up ``crash_limit`` times in a row.
        """
        reporter = self._reporter()
        try:
            while not self._stopping:
                now = time.monotonic()
                for slot in self.slots:
                    if slot.state is SlotState.STARTING and slot.became_ready():
                        slot.state, slot.ready_at, slot.startup_deaths = SlotState.RUNNING, now, 0
                    if slot.state in _LIVE and slot.process.exitcode is not None:
                        self._on_exit(slot, now)
                    elif slot.state is SlotState.BACKING_OFF and now >= slot.restart_at:
                        slot.restarts += slot.process is not None  # not the first start
                        self._start(slot)
                if reporter is not None:
                    running = sum(slot.state is SlotState.RUNNING for slot in self.slots)
                    reporter.send((len(self.slots), running, self.restarts), now)
                if all(slot.state is SlotState.STOPPED for slot in self.slots):
                    return
                self._wait(reporter)
        finally:
            self._stop_all()
            self._wakeup.close()
            if reporter is not None:
                reporter.close()

    def _start(self, slot: _Slot) -> None:
        slot.release_pipes()
        started = launch.start_process(self.spec, self.address, f"pfmq-worker-{slot.index}",
                                       self.worker_options, self.log_level)
        slot.process, slot.ready = started.process, started.ready
        slot.log = _LogTail(started.log) if started.log is not None else None
        slot.state = SlotState.STARTING
        LOGGER.info("worker %d: started process %d", slot.index, started.process.pid)

    def _on_exit(self, slot: _Slot, now: float) -> None:
        """A slot's process has exited: stop there, start again after a while, or give up."""
        code, pid = slot.process.exitcode, slot.process.pid
        lines = slot.release_pipes()
        if code in (0, launch.EXIT_NO_BROKER):
            slot.state = SlotState.STOPPED
            LOGGER.info("worker %d: process %d ended (%s)", slot.index, pid, describe_exit(code))
            return
        if code == launch.EXIT_RESTART and slot.state is SlotState.RUNNING:
            slot.state, slot.restart_at = SlotState.BACKING_OFF, now  # replaced without a pause
            slot.recycles += 1
            LOGGER.info("worker %d: process %d asked to be replaced", slot.index, pid)
            return
        starting = slot.state is SlotState.STARTING
        if not starting and now - slot.ready_at >= self.stable_after:
            slot.deaths = 0  # it served a good while: this death is news, not a pattern
        slot.deaths += 1
        slot.startup_deaths += starting
        if slot.startup_deaths >= self.crash_limit:
            slot.state = SlotState.FAILED
            while lines and not lines[-1].strip():
                lines.pop()
            shown = "\n".join(f"    {line}" for line in lines)
            log = f"the last lines of its log:\n{shown}" if lines else "it wrote nothing to stderr"
            raise CrashLoopError(f"worker {slot.index} exited during start-up "
                                 f"{slot.startup_deaths} times in a row (the last time: "
                                 f"{describe_exit(code)}); {log}")
        delay = min(self.backoff * 2 ** (slot.deaths - 1), self.max_backoff)
        slot.state, slot.restart_at = SlotState.BACKING_OFF, now + delay
        LOGGER.warning("worker %d: process %d %s while %s; starting another in %.1f s",
                       slot.index, pid, describe_exit(code),
                       "starting" if starting else "serving", delay)

    def _wait(self, reporter: Optional[_Reporter]) -> None:
        """Sleep until a process exits or loads its target, a backoff ends or a report is due."""
        deadlines = [slot.restart_at for slot in self.slots if slot.state is SlotState.BACKING_OFF]
        if reporter is not None:
            deadlines.append(reporter.due)
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        waitables = [self._wakeup]
        for slot in self.slots:
            if slot.state in _LIVE:
                waitables.append(slot.process.sentinel)
            if slot.ready is not None:
                waitables.append(slot.ready)
        wait(waitables, timeout)
        self._wakeup.clear()

    def _stop_all(self) -> None:
        launch.stop_processes([slot.process for slot in self.slots if slot.state in _LIVE],
                              self.stop_timeout)
        for slot in self.slots:
            slot.release_pipes()
            if slot.state is not SlotState.FAILED:
                slot.state = SlotState.STOPPED

    def _reporter(self) -> Optional[_Reporter]:
        if not self.report:
            return None
        options = self.worker_options
        interval = options.get("heartbeat_interval") or 1.0
        return _Reporter(self.address, options.get("key"), options.get("curve"), interval)

    # -- in a background thread ------------------------------------------------------------------

    def run_async(self, on_failure: Optional[Callable[[Exception], Any]] = None
                  ) -> "Supervisor":
        """Supervise in a background thread. What ends it early (a :class:`CrashLoopError`, or
        processes that cannot be started at all) is kept in :attr:`error`, raised by
        :meth:`check`, and handed to ``on_failure`` if given."""
        if self._thread is not None:
            raise RuntimeError("the supervisor was started before")

        def supervise():
            try:
                self.run()
            except Exception as exc:
                self.error = exc
                LOGGER.error("the worker processes are gone: %s", exc,
                             exc_info=not isinstance(exc, CrashLoopError))
                if on_failure is not None:
                    on_failure(exc)

        self._thread = threading.Thread(target=supervise, name="pfmq-supervisor", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise what ended a supervisor running in the background early, if anything."""
        if self.error is not None:
            raise self.error

    def stop(self, timeout: Optional[float] = None) -> None:
        """End the loop, which stops every worker process; waits for a background loop."""
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def check_count(value: Any, name: str) -> int:
    """Raise a one-line error unless ``value`` is a whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value
