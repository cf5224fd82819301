"""Workers: evaluate the requests a broker hands them.

Threads and connections of a worker::

    broker <--DEALER (jobs, results)--> the serving thread: the worker's own (run_async) or the
                                        caller's (process_requests, run)
    broker <--DEALER (heartbeats)-----> the heartbeat thread

The serving thread signs up with the broker for ``prefetch + 1`` jobs (the one being evaluated and
``prefetch`` waiting in the socket's queue), reads them, evaluates them in the order they came and
sends each result itself, so a request crosses no thread inside the worker. The heartbeat thread
pings the broker every interval on behalf of the serving thread, also while a long transformation
runs, and notices a broker that restarted (it signs up again), went silent for
``heartbeat_liveness`` intervals (it reconnects, as the broker presumes a silent worker dead after
as many intervals) or for ``num_retries`` timeouts (it gives up).

Both styles of Pythonflow work: ``worker.run_async()`` alone serves in a background thread
(Pythonflow 0.3), and ``with worker: worker.process_requests()`` (Pythonflow's ``prefetch``
design) serves in the calling thread, which takes the connection and the jobs held over from the
background thread as soon as that thread has delivered what it was evaluating. The states of a
worker and their transitions are described in :mod:`pythonflow.pfmq.lifecycle`.

On :meth:`Worker.cancel` the request being evaluated is finished and delivered (heartbeats go on
meanwhile, for up to ``timeout`` seconds), the jobs not yet started go back to the broker, and
the worker says goodbye. :meth:`Worker.handle_signal` does the same from a signal handler: it
takes no lock and does not log, so it cannot deadlock with the thread it interrupts. A worker
whose process passes ``max_memory`` after a request stops the same way, with a
:class:`~pythonflow.pfmq.MemoryLimitError` as its :attr:`Worker.error` (see
:mod:`pythonflow.pfmq.memory`).
"""
import logging
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import zmq

from . import protocol, shm
from .connections import Heartbeat, Renewal, Session
from .deadline import DeadlineAction, Watchdog
from .jobs import Evaluator, GraphTarget, seed_generators
from .lifecycle import Lifecycle, Service, State
from .liveness import HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS
from .memory import MemoryLimit, parse_size
from .security import CurveClient, KeyLike, resolve_key
from .serialization import Dumps, Loads, Serializer, make_serializer
from .transport import RateLimitedLogger, Wakeup, check_address

if TYPE_CHECKING:
    from ..graph import Graph

__all__ = ["Worker", "GraphTarget", "State", "seed_generators"]

LOGGER = logging.getLogger(__name__)
_UNSET = object()


class Worker(Service):
    """Evaluates requests from a broker with ``target``.

    Parameters
    ----------
    target : callable
        Called with each request; its return value is the result. May be ``None`` until the
        worker starts.
    address : str
        The broker's backend address. May be ``None`` until the worker starts.
    dumps, loads : callable, optional
        Replace pickle (object to ``bytes`` and back); must match the tasks'.
    start : bool
        Start serving in a background thread right away (as :meth:`run_async`).
    timeout : float
        Seconds without a word from the broker before the worker counts a retry (it pings at
        least twice per timeout); also how long :meth:`cancel` waits for the request being
        evaluated.
    num_retries : int, optional
        Give up after this many silent timeouts (see :meth:`run` and :meth:`process_requests`);
        ``None`` waits for the broker forever. ``max_retries`` is Pythonflow 0.3's name for it.
    prefetch : int
        Requests held ready beside the one being evaluated.
    heartbeat_interval : float
        Seconds between heartbeats.
    heartbeat_liveness : int
        Heartbeats without an answer after which the worker presumes its connection lost: it
        hands the jobs it has not started back, reconnects and signs up again. The broker presumes
        a worker dead after as many of the worker's intervals.
    key : bytes or str, optional
        The key shared with the broker and tasks, which signs every message; ``PFMQ_KEY`` if
        not given.
    serializer : Serializer or str, optional
        A serializer (or ``"msgpack"``, ``"pickle"``) to use in place of ``dumps``/``loads``.
    curve : pythonflow.pfmq.security.CurveClient, optional
        The worker's CurveZMQ keys and the broker's public key, to encrypt its connections.
    max_message_size : int, optional
        The broker's ``max_message_size`` (by default learned from its heartbeats): a result that
        would need a larger frame fails with :class:`~pythonflow.pfmq.SerializationError` instead
        of being sent.
    max_memory : int or str, optional
        Resident memory of the process (bytes, or a size such as ``"2GiB"``) past which the worker
        stops after delivering a request, with a :class:`~pythonflow.pfmq.MemoryLimitError` in
        :attr:`error`; see :mod:`pythonflow.pfmq.memory`.
    on_deadline : {'rejoin', 'exit'}
        What the worker does when a request runs past the deadline its task set
        (``request_timeout``): it tells the broker, which sends the request and every job the
        worker held elsewhere, and then either waits out of service until the transformation
        returns, drops its result and signs up again (``'rejoin'``, the default: the worker runs
        in your process, which it leaves alone), or ends its process with
        :data:`~pythonflow.pfmq.launch.EXIT_RESTART` so that its supervisor starts another
        (``'exit'``, what the worker processes of ``LocalCluster`` and ``pfmq worker`` do). See
        :mod:`pythonflow.pfmq.deadline`.
    context : zmq.Context, optional
        Defaults to the process-wide instance.
    shared_memory : bool or SharedMemory, optional
        Send large result arrays through shared memory (see :mod:`pythonflow.pfmq.shm`): by
        default when ``address`` is an ``ipc://`` address (on this host); ``False`` never,
        ``True`` or a :class:`~pythonflow.pfmq.shm.SharedMemory` with its ``threshold`` always.
        Requests in shared memory are read whatever this says.

    """

    def __init__(self, target: Optional[Callable[[Any], Any]], address: Optional[str],
                 dumps: Optional[Dumps] = None, loads: Optional[Loads] = None,
                 start: bool = False, timeout: float = 10,
                 num_retries: Optional[int] = None, prefetch: int = 1, *,
                 max_retries: Optional[int] = _UNSET,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL,
                 heartbeat_liveness: int = HEARTBEAT_LIVENESS, key: Optional[KeyLike] = None,
                 serializer: Union[Serializer, str, None] = None,
                 curve: Optional[CurveClient] = None, max_message_size: Optional[int] = None,
                 max_memory: Union[int, str, None] = None,
                 on_deadline: str = "rejoin", context: Optional[zmq.Context] = None,
                 shared_memory: shm.Option = None):
        if target is not None and not callable(target):
            raise TypeError(f"target must be callable, not {type(target).__name__}")
        self.target = target
        self.address = address if address is None else check_address(address)
        self.num_retries = _retries(num_retries, max_retries)
        _check_options(timeout, prefetch, heartbeat_interval, heartbeat_liveness)
        self.serializer = make_serializer(dumps, loads, serializer)
        self.timeout, self.prefetch = timeout, prefetch
        self.heartbeat_interval, self.heartbeat_liveness = heartbeat_interval, heartbeat_liveness
        # Pinging at least twice per timeout keeps a short timeout from expiring between the
        # answers of a live broker; the broker is told the interval actually used.
        self._ping_interval = min(heartbeat_interval, timeout / 2)
        self._interval_ms = max(1, round(self._ping_interval * 1000))
        self.key = resolve_key(key)
        self.curve = curve
        self.max_message_size = max_message_size
        self.max_memory = None if max_memory is None else parse_size(max_memory)
        self._memory = None if max_memory is None else MemoryLimit(self.max_memory)
        self.on_deadline = _deadline_action(on_deadline)
        self.context = context or zmq.Context.instance()
        self.routing_id: Optional[bytes] = None  # of the work connection, while signed up
        self.shared_memory = shared_memory
        self._wire = protocol.Wire(self.key, courier=shm.Courier(
            shm.resolve(shared_memory, self.address), handoff=True))
        self._log = RateLimitedLogger(LOGGER)
        self._evaluator = Evaluator(self.serializer, self._wire)
        self._watchdog = self._evaluator.watchdog = Watchdog(self)
        self._wakeup = Wakeup()  # wakes the serving thread
        self._heartbeat_wakeup = Wakeup()  # wakes the heartbeat thread
        self._life = Lifecycle(self._wake)
        self._renewal = Renewal.NONE  # guarded by the lock below
        self._renewal_lock = threading.Lock()
        self._session: Optional[Session] = None
        self._running = None  # the job being evaluated
        self._heartbeat_thread: Optional[threading.Thread] = None
        self._thread: Optional[threading.Thread] = None  # the background serving thread
        if start:
            self.run_async()

    @classmethod
    def from_graph(cls, graph: "Graph", address: Optional[str], *args: Any,
                   **kwargs: Any) -> "Worker":
        """A worker evaluating requests with ``graph`` (see :class:`GraphTarget`)."""
        return cls(GraphTarget(graph), address, *args, **kwargs)

    @property
    def max_retries(self) -> Optional[int]:
        """Pythonflow 0.3's name for ``num_retries``."""
        return self.num_retries

    @property
    def executed(self) -> int:
        """Requests evaluated so far."""
        return self._evaluator.executed

    @property
    def busy(self) -> bool:
        """Whether a job is being evaluated right now."""
        return self._running is not None

    @property
    def held(self) -> int:
        """Jobs received and not answered yet, the one being evaluated included."""
        session = self._session
        return (len(session.jobs) if session else 0) + self.busy

    @property
    def state(self) -> State:
        """Where the worker is in its life (see :mod:`pythonflow.pfmq.lifecycle`)."""
        return self._life.state

    @property
    def is_alive(self) -> bool:
        """Whether the worker serves (or is finishing, after :meth:`cancel`)."""
        return self._life.state is not State.STOPPED

    @property
    def error(self) -> Optional[BaseException]:
        """Why the last run ended other than by :meth:`cancel` (a ``TimeoutError`` when the
        broker stayed silent, a :class:`~pythonflow.pfmq.MemoryLimitError` after passing
        ``max_memory``), or ``None``; reset when the worker starts again."""
        return self._life.error

    # -- lifecycle -------------------------------------------------------------------------------

    def run_async(self) -> "Worker":
        """Serve in a background thread until :meth:`cancel`.

        A later :meth:`process_requests` moves the serving into its calling thread.

        Raises
        ------
        RuntimeError
            If the worker is already running.
        """
        self._start(State.BACKGROUND)
        return self

    def run(self) -> None:
        """Serve in the calling thread until :meth:`cancel`, or until the broker has been silent
        for ``num_retries`` timeouts: then this returns and :attr:`error` holds the
        ``TimeoutError`` (as in Pythonflow 0.3, whose ``run`` returned after its retries)."""
        self._start(State.FOREGROUND)
        self._serve()
        if isinstance(self.error, TimeoutError):
            LOGGER.error("%s; the worker gave up", self.error)

    def process_requests(self) -> None:
        """Evaluate requests in the calling thread until :meth:`cancel`.

        The worker must have been started (``with worker:`` or :meth:`run_async`); this takes
        the serving over from the background thread, after it has delivered the request it was
        evaluating.

        Raises
        ------
        RuntimeError
            At once, if the worker is not running or another thread serves it already.
        TimeoutError
            If the worker gave up because the broker stayed silent for ``num_retries`` timeouts
            (unlike :meth:`run`, which returns: a caller of ``process_requests`` asked to serve
            until cancelled, so an end for any other reason is an error).
        """
        me = threading.current_thread()
        try:
            took_over = self._life.claim(me)
        except RuntimeError:  # refused: nothing changed
            raise
        except BaseException:
            if self._life.server is me:  # handed over to us, but we are interrupted (Ctrl-C)
                self._leave_and_finish(self._session)
            raise
        if took_over:
            self._serve()
        if self.error is not None:
            raise self.error

    def cancel(self, timeout: Optional[float] = None) -> None:
        """Stop: finish the request being evaluated, hand the others back to the broker, leave.

        Waits up to ``timeout`` seconds (and no longer than the worker's own ``timeout``) for the
        worker to leave; ``cancel(timeout=0)`` only asks and takes no lock, so it may be called
        from a signal handler. A worker that is not running is left alone.
        """
        life = self._life
        if life.state is State.STOPPED:
            return
        life.request_stop()
        if timeout == 0 or threading.current_thread() is life.server:
            return  # the serving thread leaves when it gets back to its loop
        limit = self.timeout if timeout is None else min(timeout, self.timeout)
        if life.wait_stopped(limit):
            self.join(limit)

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait up to ``timeout`` seconds for each of the worker's threads to end; they end as
        soon as they see the worker stopped."""
        for thread in (self._thread, self._heartbeat_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)

    def handle_signal(self, signum: Optional[int] = None,
                      frame: Optional[FrameType] = None) -> None:
        """A signal handler that cancels the worker.

        Install it with ``signal.signal(signal.SIGTERM, worker.handle_signal)``. It only writes
        a byte to a socket: no lock, no logging, no waiting, so it cannot deadlock with the code
        it interrupts. The request being evaluated is finished and delivered. A signal received
        while the worker is not running stops its next run as soon as it starts.
        """
        self._life.request_stop(next_run=True)

    def _start(self, state: State) -> None:
        if not callable(self.target):
            raise TypeError(f"the worker needs a callable target, not {self.target!r}")
        check_address(self.address)
        self._wire.courier.settings = shm.resolve(self.shared_memory, self.address)
        if self.is_alive:
            raise RuntimeError("the worker is already running")
        if self._memory is not None:
            self._memory.check_headroom()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join()  # the last run's: it ends as soon as that run stopped
        background = threading.Thread(target=self._serve_in_background, name="pfmq-worker",
                                      daemon=True)
        server = background if state is State.BACKGROUND else threading.current_thread()
        self._life.start(state, server)
        self._renewal = Renewal.NONE
        self._heartbeat_thread = threading.Thread(target=self._heartbeat,
                                                  name="pfmq-worker-heartbeat", daemon=True)
        self._heartbeat_thread.start()
        if state is State.BACKGROUND:
            self._thread = background
            background.start()

    def _wake(self) -> None:
        self._wakeup.set()
        self._heartbeat_wakeup.set()

    def _check_stop_requests(self) -> None:
        if self._life.stop_requested():
            self._life.begin_cancel(self.timeout)

    def _leave_and_finish(self, session: Optional[Session], interrupted=None) -> None:
        try:
            if session is not None:
                session.leave(interrupted)
        finally:
            self._session = self.routing_id = None
            self._watchdog.close()
            self._life.finish()

    # -- serving (the serving thread) ------------------------------------------------------------

    def _serve_in_background(self) -> None:
        try:
            self._serve()
        except BaseException:  # noqa: B036 - nobody to raise to in this thread; kept in error
            LOGGER.exception("the worker stopped serving")
        if isinstance(self.error, TimeoutError):
            LOGGER.error("%s; the worker gave up", self.error)

    def _serve(self) -> None:
        """Serve until cancelled, or until a HANDOVER moves the serving to another thread."""
        session = self._session
        try:
            if session is None:
                session = self._session = self._open_session()
            while True:
                state = self._life.state
                if state is State.HANDOVER:
                    if self._life.hand_over():
                        return  # the claimant serves on with this session
                    continue  # the claimant changed its mind, or the worker was cancelled
                if state not in (State.BACKGROUND, State.FOREGROUND):
                    break
                session.read()  # before every job, so a revoked task's jobs never start
                if self._renewal:
                    session = self._renew(session)
                if session.jobs:
                    self._running = session.jobs.popleft()
                    frames = self._evaluator.answer(self.target, self._running,
                                                    self.max_message_size)
                    self._running = None
                    if frames is None:  # given up at its deadline; the broker was told
                        self._watchdog.resume(session)
                        continue
                    session.sock.send_multipart(frames, copy=False)
                    del frames  # its shared memory goes back to the pool once ZeroMQ sent it
                    if self._memory is not None:  # after the delivery: nothing is lost
                        self._stop_if_over_memory(session)
                else:
                    events = dict(session.poller.poll(self._interval_ms))
                    self._wakeup.clear_if_woken(events)
                    if self._life.latch.fileno() in events:
                        self._check_stop_requests()
        except BaseException as exc:
            if threading.current_thread() is self._thread and self._life.error is None:
                self._life.error = exc
            interrupted, self._running = self._running, None
            self._leave_and_finish(self._session, interrupted)
            raise
        self._leave_and_finish(session)

    def _stop_if_over_memory(self, session: Session) -> None:
        over = self._memory.check(len(session.jobs))
        if over is not None:
            self._life.begin_cancel(self.timeout, over)

    def _open_session(self) -> Session:
        session = Session(self)
        self.routing_id = session.routing_id
        session.sign_up()
        self._heartbeat_wakeup.set()  # to speak for it from now on
        return session

    def _renew(self, session: Session) -> Session:
        """Do what the heartbeat thread asked: sign up again, or reconnect."""
        with self._renewal_lock:
            renewal, self._renewal = self._renewal, Renewal.NONE
        if renewal is Renewal.RECONNECT:
            self._session = None
            session.leave()  # best effort: a broker that still listens requeues the jobs
            session = self._session = self._open_session()
        elif renewal is Renewal.SIGN_UP:
            session.sign_up()
        return session

    def _request_renewal(self, renewal: Renewal) -> None:
        with self._renewal_lock:
            self._renewal = max(self._renewal, renewal)
        self._wakeup.set()

    # -- heartbeats (the heartbeat thread) --------------------------------------------------------

    def _heartbeat(self) -> None:
        Heartbeat(self).run()


def _retries(num_retries, max_retries):
    """``num_retries``, or Pythonflow 0.3's ``max_retries`` if only that was given."""
    if max_retries is not _UNSET:
        if num_retries is not None and num_retries != max_retries:
            raise TypeError(f"num_retries={num_retries!r} and max_retries={max_retries!r} "
                            "disagree; max_retries is Pythonflow 0.3's name for num_retries: "
                            "give one of them")
        num_retries = max_retries
    if num_retries is not None and (not isinstance(num_retries, int) or num_retries < 1):
        raise ValueError(f"num_retries must be a positive integer or None, not {num_retries!r}")
    return num_retries


def _deadline_action(value):
    try:
        return DeadlineAction(value)
    except ValueError:
        choices = ", ".join(repr(action.value) for action in DeadlineAction)
        raise ValueError(f"on_deadline must be one of {choices}, not {value!r}") from None


def _check_options(timeout, prefetch, heartbeat_interval, heartbeat_liveness):
    seconds = "a positive number of seconds"
    for name, value, kinds, what in [("timeout", timeout, (int, float), seconds),
                                     ("heartbeat_interval", heartbeat_interval, (int, float),
                                      seconds),
                                     ("heartbeat_liveness", heartbeat_liveness, int,
                                      "a positive integer")]:
        if not isinstance(value, kinds) or value <= 0:
            raise ValueError(f"{name} must be {what}, not {value!r}")
    if not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be an integer of at least 0, not {prefetch!r}")
