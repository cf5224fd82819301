"""Reading a task's request iterator without holding up the task's I/O loop.

The I/O loop of a task (:mod:`~pythonflow.pfmq.stream`) pings the broker every heartbeat interval;
a task silent for longer than the broker's liveness is presumed gone and its jobs are dropped (and
run again once it speaks up). A request iterator may take any time for its next item (a generator
that reads files, say), so unless it merely walks over a container it is read in a thread of its
own. That thread reads at most one batch ahead of what the loop took, so the task still reads
lazily and holds bounded memory.

A task that resumes from a checkpoint first passes over the requests it delivered before: the
reader advances the iterator past them (in its own thread, if it has one) and hands over none.
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


def reader_for(iterator: Iterator, skip: int = 0) -> "DirectReader":
    """A reader in the loop's thread for iterators over containers, else one with a thread.

    The first ``skip`` items are passed over, never handed over.
    """
    kind = DirectReader if type(iterator) in _AT_HAND else ThreadedReader
    return kind(iterator, skip)


def source_too_short(needed: int) -> ValueError:
    """The error for requests that end before the ``needed`` items a resume state counts on."""
    return ValueError(f"the requests ended before request {needed - 1}, which the resume state "
                      f"counts as delivered: pass the same requests, from their start, as the "
                      f"task whose state_dict() it is")


class DirectReader:
    """Reads, in the caller's thread, an iterator whose items are at hand.

    Attributes
    ----------
    error : BaseException or None
        What the iterator raised instead of its next item, once :meth:`take` said it is done.
    """

    threaded = False
    _caught = Exception  # what the iterator may raise that ends the requests, not the caller

    def __init__(self, iterator: Iterator, skip: int = 0):
        self._iterator = iterator
        self._skip = skip
        self.error: Optional[BaseException] = None

    def start(self, notify: Callable[[], None]) -> None:
        """Get ready; ``notify`` is called from any thread when items are ready to take."""

    def take(self, count: int, least: int = 1) -> Tuple[List, bool]:
        """Up to ``count`` items (none unless ``least`` are ready) and whether no more will come.

        Not called again once it said that no more will come.
        """
        if self._skip:
            self.error = self._skip_ahead()
            if self.error is not None:
                return [], True
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

    def _skip_ahead(self) -> Optional[BaseException]:
        """Advance past the items to skip (once); what went wrong, if anything."""
        skip, self._skip = self._skip, 0
        end = object()
        try:
            # islice advances in C without keeping the items; the last one says it got that far.
            last = next(itertools.islice(self._iterator, skip - 1, skip), end)
        except self._caught as exc:  # delivered in the place of the first request after the skip
            return exc
        return source_too_short(skip) if last is end else None


class ThreadedReader(DirectReader):
    """Reads an iterator in a thread of its own, at most one batch ahead of :meth:`take`."""

    threaded = True
    _caught = BaseException  # nothing may end this thread without the loop hearing of it

    def __init__(self, iterator: Iterator, skip: int = 0):
        super().__init__(iterator, skip)
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
        if self._skip:
            error = self._skip_ahead()
            if error is not None:
                self._hand_over([], True, error)
                return
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
