"""Reading a task's request iterator without holding up the task's I/O loop.

The I/O loop of a task (:mod:`~pythonflow.pfmq.stream`) pings the broker every heartbeat interval;
a task silent for longer than the broker's liveness is presumed gone and its jobs are dropped (and
run again once it speaks up). A request iterator may take any time for its next item (a generator
that reads files, say), so unless it merely walks over a container it is read in a thread of its
own. That thread reads at most one batch ahead of what the loop took, so the task still reads
lazily and holds bounded memory.
"""
import collections
import itertools
import threading
import time
from typing import Callable, Iterator, List, Optional, Tuple

#: Seconds of reading after which the items read so far are handed over without waiting for more.
_HAND_OVER_AFTER = 0.001

# Iterators whose next item is at hand: they walk over a container or count.
_AT_HAND = frozenset(type(iter(container)) for container in (
    [], (), range(0), "", b"", bytearray(), {}, {}.values(), {}.items(), set(),
    reversed([]), reversed(()), reversed(range(0)), itertools.count(), itertools.repeat(None)))


def reader_for(iterator: Iterator) -> "DirectReader":
    """A reader in the loop's thread for iterators over containers, else one with a thread."""
    return DirectReader(iterator) if type(iterator) in _AT_HAND else ThreadedReader(iterator)


class DirectReader:
    """Reads, in the caller's thread, an iterator whose items are at hand.

    Attributes
    ----------
    error : BaseException or None
        What the iterator raised instead of its next item, once :meth:`take` said it is done.
    """

    threaded = False

    def __init__(self, iterator: Iterator):
        self._iterator = iterator
        self.error: Optional[BaseException] = None

    def start(self, notify: Callable[[], None]) -> None:
        """Get ready; ``notify`` is called from any thread when items are ready to take."""

    def take(self, count: int, least: int = 1) -> Tuple[List, bool]:
        """Up to ``count`` items (none unless ``least`` are ready) and whether no more will come.

        Not called again once it said that no more will come.
        """
        items = []
        try:
            for _ in range(count):
                items.append(next(self._iterator))
        except StopIteration:
            return items, True
        except Exception as exc:  # delivered in the failing request's place
            self.error = exc
            return items, True
        return items, False

    def close(self) -> None:
        """Stop reading."""


class ThreadedReader(DirectReader):
    """Reads an iterator in a thread of its own, at most one batch ahead of :meth:`take`."""

    threaded = True

    def __init__(self, iterator: Iterator):
        super().__init__(iterator)
        self._changed = threading.Condition()
        self._items = collections.deque()
        self._wanted = 0  # items to read before waiting for the next take
        self._least = 1  # the ``least`` of the last take: reaching it is worth a wake-up
        self._reading = False
        self._done = False
        self._closed = False
        self._notify: Callable[[], None] = lambda: None
        self._thread: Optional[threading.Thread] = None

    def start(self, notify: Callable[[], None]) -> None:
        self._notify = notify

    def take(self, count: int, least: int = 1) -> Tuple[List, bool]:
        with self._changed:
            self._least = least = min(least, count)
            items = []
            if len(self._items) >= least or self._done:
                items = [self._items.popleft() for _ in range(min(count, len(self._items)))]
            if not self._done:
                # Have the next `count` items read meanwhile, and no more.
                self._wanted = max(0, count - len(self._items) - self._reading)
                if self._wanted and self._thread is None:
                    self._thread = threading.Thread(target=self._read, name="pfmq-task-reader",
                                                    daemon=True)
                    self._thread.start()
                self._changed.notify()
            return items, self._done and not self._items

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._items.clear()
            self._changed.notify()

    def _read(self):
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._wanted or self._closed)
                if self._closed:
                    return
                claimed, self._wanted = self._wanted, 0
                self._reading = claimed
            if not self._read_claimed(claimed):
                return

    def _read_claimed(self, claimed: int) -> bool:
        """Read ``claimed`` items; False when the iterator is done or the reader closed.

        Items are handed over together while they come quickly (one lock and at most one
        wake-up for many), and one by one once one of them took long.
        """
        items, error, done = [], None, False
        handed_over = time.monotonic()
        for left in range(claimed - 1, -1, -1):
            try:
                items.append(next(self._iterator))
            except StopIteration:
                done = True
            except BaseException as exc:  # delivered in the failing request's place
                error, done = exc, True
            now = time.monotonic()
            if done or not left or now - handed_over > _HAND_OVER_AFTER:
                if not self._hand_over(items, done, error):
                    return False
                items, handed_over = [], now
            if done:
                return False
        return True

    def _hand_over(self, items: List, done: bool, error: Optional[BaseException]) -> bool:
        with self._changed:
            if self._closed:
                return False
            ready_before = len(self._items)
            self._items.extend(items)
            self._reading -= len(items)
            if done:
                self._done, self.error, self._reading = True, error, 0
            # Wake the loop when a take would now return something, not for every item.
            wake = done or ready_before < self._least <= len(self._items)
        if wake:
            self._notify()
        return True
