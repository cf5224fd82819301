"""The transport helpers of pfmq: the cross-thread wake-up, address checks and draining."""
import collections
import logging
import threading
import time
import uuid

import pytest
import zmq

from pythonflow.pfmq.errors import ProtocolError
from pythonflow.pfmq.protocol import VERSION, Kind, Wire
from pythonflow.pfmq.transport import (
    RateLimitedLogger,
    Wakeup,
    check_address,
    handle_waiting,
    receive,
    send_frames,
)

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


def test_handle_waiting_hands_over_good_messages_and_drops_the_rest_with_one_log_line(caplog):
    context = zmq.Context.instance()
    address = f"inproc://transport-test-{uuid.uuid4().hex}"
    router = context.socket(zmq.ROUTER)
    router.bind(address)
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"peer-one")
    dealer.connect(address)
    wire, handled, dropped = Wire(), [], []

    def handle(peer, kind, fields, body):
        if kind is Kind.BYE:
            raise ProtocolError("BYE is not expected here")
        handled.append((peer, kind, tuple(fields), [bytes(frame) for frame in body]))

    try:
        dealer.send_multipart(wire.pack(Kind.PING, 1, 500))
        for garbage in range(5):  # an unknown kind, then a kind the handler refuses
            dealer.send_multipart([bytes([VERSION, 200 + garbage])])
        dealer.send_multipart(wire.pack(Kind.BYE))
        dealer.send_multipart(wire.pack(Kind.RETURN, body=[b"task", b"12345678"]))
        log = RateLimitedLogger(logging.getLogger("transport-test"), interval=60)
        deadline = time.monotonic() + 10
        with caplog.at_level(logging.WARNING, "transport-test"):
            while len(handled) < 2:
                assert time.monotonic() < deadline, "the messages did not arrive"
                router.poll(100)
                handle_waiting(router, wire, handle, log, routed=True, limit=3,
                               on_drop=dropped.append)
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
    assert handled == [(b"peer-one", Kind.PING, (1, 500), []),
                       (b"peer-one", Kind.RETURN, (), [b"task", b"12345678"])]
    assert len(dropped) == 6 and all(isinstance(exc, ProtocolError) for exc in dropped)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines  # one per kind of complaint: unknown kinds, a refused BYE
    assert all(line.startswith(f"dropped a message from {b'peer-one'.hex()[:8]}: ")
               for line in lines)



def test_send_frames_and_receive_carry_whole_messages_and_forward_received_frames():
    context = zmq.Context.instance()
    address = f"inproc://transport-{uuid.uuid4().hex}"
    router, client = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    try:
        router.bind(address)
        client.connect(address)
        with pytest.raises(zmq.Again):
            receive(router)  # nothing waits: the default does not block
        big = bytearray(b"x" * 100_000)  # above pyzmq's copy threshold
        send_frames(client, [b"header", memoryview(big), b""], copy=False)
        send_frames(client, [b"one frame"])
        assert router.poll(5000)
        first = receive(router)
        peer = first[0].bytes
        assert [frame.bytes for frame in first[1:]] == [b"header", bytes(big), b""]
        assert [frame.bytes for frame in receive(router)[1:]] == [b"one frame"]
        send_frames(router, [peer, first[2], b"back"])  # a received frame goes on as it is
        assert client.poll(5000)
        assert [frame.bytes for frame in receive(client, 0)] == [bytes(big), b"back"]
    finally:
        router.close(linger=0)
        client.close(linger=0)
