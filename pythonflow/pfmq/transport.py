r"""The sockets between peers: connecting, draining what waits, waking a poller, logging garbage.

Data flow::

    dealer(...) --connect--> broker ROUTER          (sends never block: see dealer)
    frames --send_frames--> socket                  (plain-int flags, one call per frame)
    socket --waiting_messages--> frames --Wire.unpack--> handler      (handle_waiting)
                                             \--> a malformed message: RateLimitedLogger,
                                                  one line per kind of complaint and interval
    any thread --Wakeup.set()--> the thread blocked in zmq.Poller.poll wakes up

Everything here is the same for tasks, workers and the broker; what the messages mean is theirs
(see :mod:`~pythonflow.pfmq.protocol` for the frames).
"""
import logging
import re
import socket
import threading
import time
from typing import TYPE_CHECKING, Callable, Collection, Iterator, List, Optional, Sequence, Tuple

import zmq

from .errors import ProtocolError

if TYPE_CHECKING:  # the types of arguments only: both modules import this one
    from .protocol import Wire
    from .security import CurveClient

__all__ = ["check_address", "dealer", "send_frames", "receive", "waiting_messages",
           "handle_waiting", "Wakeup", "RateLimitedLogger"]

LOGGER = logging.getLogger(__name__)
# Plain ints: pyzmq's enum flags cost microseconds per message in arithmetic and comparisons.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)

# What varies between log messages of one kind: runs of digits, and hexadecimal runs long enough
# to be ids rather than words (see RateLimitedLogger).
_VARYING = re.compile(r"\b[0-9a-fA-F]{8,}\b|\d+")
_MAX_KEY_LENGTH = 200


def check_address(address: str) -> str:
    """Return ``address``; raise ``ValueError`` unless it looks like a ZeroMQ endpoint."""
    if not isinstance(address, str) or "://" not in address:
        raise ValueError(f"{address!r} is not a ZeroMQ address such as tcp://127.0.0.1:5555")
    transport = address.split("://", 1)[0]
    if transport not in {"tcp", "ipc", "inproc"}:
        raise ValueError(f"{address!r}: transport must be tcp, ipc or inproc")
    return address


class _NeverBlockingSocket(zmq.Socket):
    """A socket whose sends never wait. A DEALER with no connection to queue on (one refused
    for good by a CURVE server, say) would block a send forever; the message is dropped instead,
    and the heartbeats and timeouts that follow report the silence."""

    def send_multipart(self, msg_parts, flags=0, copy=True, track=False, **kwargs):
        try:
            return send_frames(self, msg_parts, int(flags) | _NOBLOCK, copy=copy, track=track)
        except zmq.Again:  # raised by the first frame, before any of the message is queued
            LOGGER.debug("no connection to send on; message dropped")
            return None


def dealer(context: zmq.Context, address: str, routing_id: bytes,
           curve: Optional["CurveClient"] = None) -> zmq.Socket:
    """A DEALER socket connected to ``address`` that never blocks a send and never lingers.

    ``curve`` (a :class:`~pythonflow.pfmq.security.CurveClient`) encrypts the connection unless
    ``address`` is ``inproc://``.
    """
    sock = context.socket(zmq.DEALER, socket_class=_NeverBlockingSocket)
    if curve is not None and not address.startswith("inproc://"):
        curve.configure(sock)
    sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(address)
    return sock


def send_frames(sock: zmq.Socket, frames: Sequence[object], flags: int = 0, copy: bool = True,
                track: bool = False) -> Optional[zmq.MessageTracker]:
    """Send ``frames`` as one message, as ``send_multipart`` does at half its cost.

    ``flags`` must be a plain ``int``. A ``zmq.Frame`` is always sent without a copy; with
    ``copy=False`` so are large buffers (see pyzmq's ``copy_threshold``). Returns what the last
    frame's ``send`` returns.
    """
    send, more = sock.send, flags | _SNDMORE
    for frame in frames[:-1]:
        send(frame, more, copy=copy, track=track)
    return send(frames[-1], flags, copy=copy, track=track)


def receive(sock: zmq.Socket, flags: int = _NOBLOCK) -> List[zmq.Frame]:
    """Receive one whole message as ``zmq.Frame`` objects (by default without waiting: raises
    ``zmq.Again`` if none is there).

    Each frame says whether more follow, which spares ``recv_multipart``'s socket option call
    per frame; the rest of a message is there as soon as its first frame is.
    """
    recv = sock.recv
    frame = recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = recv(flags, copy=False)
        frames.append(frame)
    return frames


def waiting_messages(sock: zmq.Socket, limit: int = 1 << 30) -> Iterator[List[zmq.Frame]]:
    """Yield up to ``limit`` messages already waiting on ``sock``, as lists of ``zmq.Frame``.

    Receiving until ``zmq.Again`` costs one failed receive per call (about as much as asking
    ``EVENTS`` once); asking before every message would cost that per message.
    """
    for _ in range(limit):
        try:
            frames = receive(sock)
        except zmq.Again:
            return
        yield frames


def handle_waiting(sock: zmq.Socket, wire: "Wire", handle: Callable[..., None],
                   log: "RateLimitedLogger", *, routed: bool = False, limit: int = 1 << 30,
                   errors: Tuple[type, ...] = (ProtocolError,), level: int = logging.WARNING,
                   on_drop: Optional[Callable[[Exception], None]] = None) -> int:
    """Unpack each message waiting on ``sock`` and hand it to ``handle``; log and drop the bad.

    Returns how many messages were read (``limit`` if more may wait).

    Parameters
    ----------
    sock : zmq.Socket
        The socket to drain.
    wire : Wire
        Unpacks (and checks the signature of) every message.
    handle : callable
        Called as ``handle(kind, fields, body)``; with ``routed``, as
        ``handle(peer, kind, fields, body)``, ``peer`` being the routing id a ROUTER socket put
        first.
    log : RateLimitedLogger
        Where a dropped message is reported, at ``level``.
    routed : bool
        Whether ``sock`` is a ROUTER.
    limit : int
        Most messages read, so that a busy socket cannot starve the caller's other sockets.
    errors : tuple of exception types
        What a malformed message makes ``Wire.unpack`` or ``handle`` raise: such a message is
        dropped, and the next one read.
    on_drop : callable, optional
        Called with the exception for every dropped message (the broker counts them).
    """
    count = 0
    for frames in waiting_messages(sock, limit):
        count += 1
        peer = None
        try:
            if routed:
                peer = frames[0].bytes
                handle(peer, *wire.unpack(frames[1:]))
            else:
                handle(*wire.unpack(frames))
        except errors as exc:
            if on_drop is not None:
                on_drop(exc)
            source = "" if peer is None else f" from {peer.hex()[:8]}"
            log.log(level, str(exc), "dropped a message%s: %s", source, exc)
    return count


class Wakeup:
    """Wakes a thread blocked in ``zmq.Poller.poll`` from any other thread.

    A connected pair of OS sockets: :meth:`set` writes a byte, the polling thread watches
    :attr:`fileno` and calls :meth:`clear`. Several :meth:`set` calls before a :meth:`clear` write
    one byte, so a busy producer costs one system call per wake-up, not one per event.
    """

    def __init__(self):
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._pending = False
        self._lock = threading.Lock()

    def fileno(self) -> int:
        """The descriptor to poll for reading."""
        return self._reader.fileno()

    def set(self) -> None:
        """Wake the polling thread."""
        with self._lock:
            if self._pending:
                return
            self._pending = True
        try:
            self._writer.send(b"\0")
        except OSError:  # closed: nobody is polling any more
            pass

    def clear(self) -> None:
        """Acknowledge wake-ups; call before looking at the state that they announce."""
        # Drain first, then re-arm: a set() between the two finds the flag still up and writes
        # nothing, which is safe because its news is in the state the caller looks at next; a
        # set() after re-arming writes a byte that no drain of ours can swallow.
        try:
            while self._reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            self._pending = False

    def clear_if_woken(self, ready: Collection) -> None:
        """:meth:`clear` if ``ready`` (the events of ``zmq.Poller.poll`` or the readable list of
        ``zmq.select``, which name the descriptor, not this object) says this wake-up fired."""
        if self._reader.fileno() in ready:
            self.clear()

    def close(self) -> None:
        """Release both sockets."""
        self._reader.close()
        self._writer.close()


class RateLimitedLogger:
    """Logs at most one message per ``interval`` seconds per kind of message, and counts what it
    held back.

    Peers that send garbage must not be able to flood the log, nor to grow the table of what was
    logged: messages are told apart by their template (``key`` with its numbers and hexadecimal
    runs replaced by ``#``), and past ``max_keys`` templates all others share one entry.
    """

    #: The entry shared by the templates that do not fit in the table.
    OTHER = "(other messages)"

    def __init__(self, logger: logging.Logger, interval: float = 5.0, max_keys: int = 64):
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._last = {}
        self._suppressed = {}

    @staticmethod
    def template(key: str) -> str:
        """``key`` with what varies between messages of one kind (numbers, ids) made ``#``."""
        return _VARYING.sub("#", key[:_MAX_KEY_LENGTH])

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        """Log ``message % args`` at ``level`` unless a message like ``key`` was logged within
        the interval."""
        key = self.template(key)
        if key not in self._last and len(self._last) >= self.max_keys:
            key = self.OTHER
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        held_back = self._suppressed.pop(key, 0)
        if held_back:
            message += " (%d similar messages suppressed)"
            args = (*args, held_back)
        self.logger.log(level, message, *args)
