"""Heartbeats: when to ping a peer, and what its silence means.

Data flow of one connection's clocks (a :class:`Liveness`)::

    ping_due(now) --a number--> the caller sends PING n
    heard(now)    <-- any message from the peer: the silence is over
    lapsed(now)   --> silent for ``liveness`` intervals: presume the connection lost, reconnect,
                      renewed(now)
    count_silence(now) --> silent for ``timeout``: one retry counted; gave_up after
                      ``num_retries`` of them

A worker's heartbeat thread (:class:`~pythonflow.pfmq.connections.Heartbeat`) uses all of it; a
task's I/O loop needs the pings and the retries only. The broker's side of heartbeats (when it
presumes a peer gone) is the scheduler's; when its loop looks, :class:`BrokerClocks`.
"""
import time
from typing import Optional

__all__ = ["HEARTBEAT_INTERVAL", "HEARTBEAT_LIVENESS", "QUIET_SHARE", "Liveness", "BrokerClocks"]

#: Seconds between heartbeats, and how many may be missed before a peer is presumed dead.
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_LIVENESS = 3
#: While the broker has no job open, it reads its workers' messages (heartbeats, sign-ups) every
#: this share of the heartbeat interval instead of waking for each one.
QUIET_SHARE = 0.1


class Liveness:
    """The clocks and counters of one connection's heartbeats.

    Every method takes the time (``time.monotonic()``) instead of reading it, so that callers
    decide what "now" is and tests can step through time.

    Parameters
    ----------
    interval : float
        Seconds between pings.
    timeout : float
        Seconds of silence that count one retry.
    num_retries : int, optional
        Retries after which :attr:`gave_up` holds; ``None``: never.
    liveness : int, optional
        Intervals of silence after which the connection is presumed lost (see :meth:`lapsed`);
        ``None``: never.
    first_ping : float
        Seconds from ``now`` to the first ping.
    now : float, optional
        The time the clocks start at; defaults to ``time.monotonic()``.
    """

    def __init__(self, interval: float, timeout: float, num_retries: Optional[int] = None,
                 liveness: Optional[int] = None, first_ping: float = 0.0,
                 now: Optional[float] = None):
        now = time.monotonic() if now is None else now
        self.interval = interval
        self.timeout = timeout
        self.num_retries = num_retries
        self.lapse = None if liveness is None else interval * liveness
        self.pings = 0  # pings sent, and the number of the last one
        self.next_ping = now + first_ping
        self.last_heard = self.last_counted = self.last_renewed = now
        self.silent_timeouts = 0

    def rest(self, now: float) -> None:
        """There is nobody to speak for: silence until now means nothing."""
        self.last_heard = self.last_counted = self.last_renewed = now

    def ping_due(self, now: float) -> Optional[int]:
        """The number of the ping to send now, or ``None`` if none is due yet."""
        if now < self.next_ping:
            return None
        self.pings += 1
        self.next_ping = now + self.interval
        return self.pings

    def wait(self, now: float) -> float:
        """Seconds until the next ping is due or the silence is next judged."""
        return max(0.0, min(self.next_ping, self.last_counted + self.timeout) - now)

    def heard(self, now: float) -> bool:
        """The peer spoke; whether the connection had been presumed lost since it last did."""
        was_lost = self.presumed_lost
        self.last_heard = self.last_counted = now
        self.silent_timeouts = 0
        return was_lost

    @property
    def presumed_lost(self) -> bool:
        """Whether the connection was renewed after the peer last spoke."""
        return self.last_renewed > self.last_heard

    def lapsed(self, now: float) -> bool:
        """Whether the peer has been silent for ``liveness`` intervals since it last spoke or
        the connection was last renewed."""
        return self.lapse is not None and now - max(self.last_heard, self.last_renewed) > self.lapse

    def renewed(self, now: float) -> None:
        """The connection was made anew (after :meth:`lapsed`)."""
        self.last_renewed = now

    def count_silence(self, now: float) -> bool:
        """Count a retry if the peer has been silent for ``timeout`` since the last count;
        whether one was counted."""
        if now - self.last_counted <= self.timeout:
            return False
        self.silent_timeouts += 1
        self.last_counted = now
        return True

    @property
    def gave_up(self) -> bool:
        """Whether ``num_retries`` retries have been counted since the peer last spoke."""
        return self.num_retries is not None and self.silent_timeouts >= self.num_retries

    @property
    def silence(self) -> float:
        """The seconds of silence counted so far, for messages."""
        return self.timeout * self.silent_timeouts


class BrokerClocks:
    """When the broker's loop looks for silent peers, and when it reads its workers while quiet.

    With no job open nothing a worker says is urgent: its heartbeats, sign-ups and reports can
    wait for a fraction of the heartbeat interval (:data:`QUIET_SHARE`), and a thousand workers'
    heartbeats are then read in a few wake-ups a second instead of one wake-up each. With a job
    open the loop reads the workers as their messages come.

    Parameters
    ----------
    interval : float
        The broker's heartbeat interval, in seconds.
    now : float
        The time the clocks start at (``time.monotonic()``).
    """

    def __init__(self, interval: float, now: float):
        self.interval = interval
        self.quiet = interval * QUIET_SHARE
        self.next_check = now + interval  # for silent peers
        self.next_read = now  # of the workers' messages, while quiet

    def wait(self, now: float, quiet: bool) -> float:
        """Seconds the loop may wait for messages before one of its clocks is due."""
        due = min(self.next_check, self.next_read) if quiet else self.next_check
        return max(0.0, due - now)

    def read_due(self, now: float) -> bool:
        """Whether the workers' messages are due to be read, while quiet."""
        return now >= self.next_read

    def read(self, now: float, emptied: bool, shortest: Optional[float] = None) -> None:
        """The workers' messages were read; unless some were left (``emptied`` false), the next
        quiet read is a fraction of the interval away: of ``shortest``, the shortest heartbeat
        interval of the workers, if that is shorter than the broker's (they must not wait
        long for their answers)."""
        quiet = self.quiet if shortest is None else min(self.quiet, shortest * QUIET_SHARE)
        self.next_read = now + quiet if emptied else now

    def check_due(self, now: float) -> bool:
        """Whether to look for silent peers now; if so, the next look is an interval away."""
        if now < self.next_check:
            return False
        self.next_check = now + self.interval
        return True
