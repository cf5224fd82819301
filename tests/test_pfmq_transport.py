"""The transport helpers of pfmq: the cross-thread wake-up and address checks."""
import collections
import threading
import time

import pytest
import zmq

from pythonflow.pfmq.transport import Wakeup, check_address

pytestmark = pytest.mark.timeout(60)


def test_wakeup_is_never_lost_between_threads():
    """A consumer that sleeps in poll until woken must see every item a producer hands over."""
    wakeup = Wakeup()
    items = collections.deque()
    count = 20000
    poller = zmq.Poller()
    poller.register(wakeup, zmq.POLLIN)

    def produce():
        for i in range(count):
            items.append(i)
            wakeup.set()

    producer = threading.Thread(target=produce)
    received = 0
    started = time.monotonic()
    producer.start()
    try:
        while received < count:
            # A lost wake-up shows as a poll that sleeps its whole timeout with items waiting.
            events = dict(poller.poll(2000))
            wakeup.clear_if_woken(events)
            assert events or not items, "items were waiting but no wake-up came"
            while items:
                items.popleft()
                received += 1
    finally:
        producer.join()
        wakeup.close()
    assert time.monotonic() - started < 30


def test_wakeup_set_while_clearing_is_not_swallowed():
    """A set() racing with clear() must leave the wake-up able to fire again."""
    wakeup = Wakeup()
    reader = wakeup._reader

    class SetDuringDrain:  # another thread's set() lands while clear() reads the pipe
        fired = False

        def recv(self, size):
            if not self.fired:
                self.fired = True
                wakeup.set()
            return reader.recv(size)

    try:
        wakeup.set()
        wakeup._reader = SetDuringDrain()
        wakeup.clear()
        wakeup._reader = reader
        wakeup.set()
        assert zmq.select([reader], [], [], 0)[0], "the wake-up after clear() was lost"
    finally:
        wakeup._reader = reader
        wakeup.close()


def test_wakeup_coalesces_and_rearms():
    wakeup = Wakeup()
    try:
        assert not zmq.select([wakeup], [], [], 0)[0]
        for _ in range(100):
            wakeup.set()
        assert zmq.select([wakeup], [], [], 0)[0]
        wakeup.clear()
        assert not zmq.select([wakeup], [], [], 0)[0]
        wakeup.set()
        assert zmq.select([wakeup], [], [], 0)[0]
    finally:
        wakeup.close()


@pytest.mark.parametrize("address", ["localhost:5555", "udp://127.0.0.1:5", 5555, ""])
def test_bad_addresses_are_refused(address):
    with pytest.raises(ValueError, match="address|transport"):
        check_address(address)
