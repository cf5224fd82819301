"""Life cycles: the :class:`Service` that broker and worker share, and a worker's named states.

A :class:`Service` runs in a background thread, started on ``with`` entry and cancelled on exit.
A worker's life, the thread that serves it and its stop requests are a :class:`Lifecycle`::

    STOPPED --run_async(), with worker:--> BACKGROUND --process_requests()--> HANDOVER
    HANDOVER --the request being evaluated is delivered--> FOREGROUND
    STOPPED --run()--> FOREGROUND
    BACKGROUND, HANDOVER, FOREGROUND --cancel(), a signal, giving up--> CANCELLING
    CANCELLING --the worker has left the broker--> STOPPED  (and may be started again)

Every transition takes the lock of one condition variable, except a stop request: that is a
byte written to a socket pair (:class:`StopLatch`), which a signal handler can make without
waiting for a lock that the code it interrupted may hold. The worker's threads poll the socket and
carry the request out.
"""
import enum
import socket
import threading
import time
from typing import Callable, Optional

__all__ = ["Service", "State", "SERVING", "StopLatch", "Lifecycle"]


class Service:
    """What the broker and workers share: a background thread, started on ``with`` entry and
    cancelled on exit. Subclasses set ``_thread`` and define ``is_alive``, ``run_async`` and
    ``cancel``."""

    _thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Service":
        if not self.is_alive:
            self.run_async()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def _join(self, timeout: Optional[float]) -> None:
        """Wait for the background thread, unless called from it."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


class State(enum.Enum):
    """Where a worker is in its life."""

    STOPPED = "stopped"  # not serving: new, or left the broker
    BACKGROUND = "background"  # the worker's own thread serves
    HANDOVER = "handover"  # process_requests() waits for the background thread to hand over
    FOREGROUND = "foreground"  # the thread in process_requests() or run() serves
    CANCELLING = "cancelling"  # finishing the request being evaluated, then leaving


SERVING = (State.BACKGROUND, State.HANDOVER, State.FOREGROUND)


class StopLatch:
    """Stop requests that any thread, or a signal handler, can make without taking a lock.

    A request is a byte written to a socket pair whose reading end the worker's threads poll: the
    generation of the run to stop, or :data:`ANY` for whichever run is current or comes next.
    """

    ANY = 255

    def __init__(self):
        self._reader, self._writer = socket.socketpair()  # closed when collected, unlike os.pipe()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        """The descriptor to poll for reading."""
        return self._reader.fileno()

    def request(self, generation: int) -> None:
        """Ask the run ``generation`` (or :data:`ANY`) to stop; safe in a signal handler."""
        try:
            self._writer.send(bytes([generation]))
        except OSError:  # full: requests are already waiting, which is as good
            pass

    def take(self, generation: int) -> bool:
        """Consume the waiting requests; whether one of them is for ``generation``."""
        found = False
        try:
            while True:
                data = self._reader.recv(512)
                if not data:
                    break
                found = found or generation in data or self.ANY in data
        except OSError:  # BlockingIOError: nothing more waiting
            pass
        return found


class Lifecycle:
    """The state of a worker and its transitions.

    Parameters
    ----------
    wake : callable
        Called after a transition that the worker's threads must notice without delay.

    Attributes
    ----------
    state : State
        Where the worker is.
    server : threading.Thread or None
        The thread that serves (in BACKGROUND, HANDOVER and FOREGROUND).
    claimant : threading.Thread or None
        The thread waiting in ``process_requests`` for the hand-over (in HANDOVER).
    deadline : float
        In CANCELLING: the end (``time.monotonic()``) of the grace for leaving.
    error : BaseException or None
        Why the last run ended other than by a stop request.
    latch : StopLatch
        The pending stop requests.
    """

    def __init__(self, wake: Callable[[], None]):
        self._cond = threading.Condition()
        self._wake = wake
        self.latch = StopLatch()
        self.state = State.STOPPED
        self.generation = 0  # of the current run, so that a late request misses the next one
        self.server: Optional[threading.Thread] = None
        self.claimant: Optional[threading.Thread] = None
        self.deadline = 0.0
        self.error: Optional[BaseException] = None

    def start(self, state: State, server: Optional[threading.Thread]) -> None:
        """STOPPED to ``state``, served by ``server``.

        Raises
        ------
        RuntimeError
            If the worker is not STOPPED.
        """
        with self._cond:
            if self.state is not State.STOPPED:
                raise RuntimeError("the worker is already running")
            self.generation = self.generation % (StopLatch.ANY - 1) + 1
            self.state, self.server, self.claimant, self.error = state, server, None, None

    def claim(self, me: threading.Thread) -> bool:
        """BACKGROUND to HANDOVER, then wait for FOREGROUND; whether ``me`` serves now (not if
        the worker was cancelled meanwhile).

        Raises
        ------
        RuntimeError
            If the worker is not running, or another thread serves or claims it.
        """
        with self._cond:
            if self.state is State.STOPPED:
                reason = f" (it gave up: {self.error})" if self.error else ""
                raise RuntimeError(f"the worker is not running{reason}; start the worker first: "
                                   "with worker: worker.process_requests()") from self.error
            if self.state in (State.HANDOVER, State.FOREGROUND) or me is self.server:
                holder = self.claimant if self.state is State.HANDOVER else self.server
                raise RuntimeError(f"the worker already serves in thread {holder.name!r}")
            if self.state is State.BACKGROUND:
                self.state, self.claimant = State.HANDOVER, me
                self._wake()
            try:
                while self.state is State.HANDOVER:
                    self._cond.wait()
            except BaseException:  # interrupted (Ctrl-C): the background thread serves on
                if self.state is State.HANDOVER and self.claimant is me:
                    self.state, self.claimant = State.BACKGROUND, None
                    self._cond.notify_all()
                raise
            return self.server is me

    def hand_over(self) -> bool:
        """HANDOVER to FOREGROUND, served by the claimant; whether it happened."""
        with self._cond:
            if self.state is not State.HANDOVER:
                return False
            self.state, self.server, self.claimant = State.FOREGROUND, self.claimant, None
            self._cond.notify_all()
            return True

    def begin_cancel(self, grace: float, error: Optional[BaseException] = None) -> None:
        """A serving state to CANCELLING, with ``grace`` seconds to leave (``error``: why)."""
        with self._cond:
            if self.state in SERVING:
                self.state = State.CANCELLING
                self.deadline = time.monotonic() + grace
                self.error = error
                self._cond.notify_all()
        self._wake()

    def finish(self) -> None:
        """Any state to STOPPED: the worker has left."""
        with self._cond:
            self.state = State.STOPPED
            self.server = self.claimant = None
            self._cond.notify_all()
        self._wake()

    def wait_stopped(self, timeout: Optional[float]) -> bool:
        """Wait up to ``timeout`` seconds for STOPPED; whether it came."""
        with self._cond:
            return self._cond.wait_for(lambda: self.state is State.STOPPED, timeout)

    def request_stop(self, next_run: bool = False) -> None:
        """Ask the current run to stop (or, with ``next_run``, the next one if none runs).

        Takes no lock: safe in a signal handler.
        """
        if self.state is not State.STOPPED:
            self.latch.request(self.generation)
        elif next_run:
            self.latch.request(StopLatch.ANY)

    def stop_requested(self) -> bool:
        """Consume the stop requests; whether one is for the current run."""
        return self.latch.take(self.generation)

    def done_heart_beating(self) -> bool:
        """Heartbeats last until the worker has left, or its grace for leaving has run out."""
        if self.state is State.CANCELLING:
            return time.monotonic() > self.deadline
        return self.state is State.STOPPED
