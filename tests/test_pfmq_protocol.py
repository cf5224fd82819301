"""The pfmq wire protocol, signatures, zero-copy serialisation, and a broker under garbage."""
import random
import struct
import uuid

import numpy as np
import pytest
import zmq
from pfmq_helpers import running_broker, thread_workers, wait_for_workers, wait_until

from pythonflow import pfmq
from pythonflow.pfmq import protocol
from pythonflow.pfmq.protocol import VERSION, Kind, ProtocolError, Wire

pytestmark = pytest.mark.timeout(60)

# A value for each struct code used by the headers, chosen to catch byte-order and width slips.
SAMPLE = {"Q": (1 << 40) + 3, "I": 70_000, "?": True, "q": 12345, "B": 1, "d": 0.25}
KEY = b"a shared secret"


def sample_fields(kind: Kind) -> tuple:
    """Plausible field values for a message of ``kind``."""
    return tuple(SAMPLE[code] for code in protocol.FIELDS[kind])


# -- layouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY], ids=["unsigned", "signed"])
@pytest.mark.parametrize("kind", list(Kind), ids=lambda kind: kind.name)
def test_round_trip_of_every_kind(kind, key):
    fields = sample_fields(kind)
    body = [b"task id", b"", bytes(range(256)) * 4]
    frames = Wire(key).pack(kind, *fields, body=body)
    assert len(frames) == 1 + len(body) + (key is not None)
    assert frames[0][:2] == bytes([VERSION, kind])
    got_kind, got_fields, got_body = Wire(key).unpack(frames)
    assert got_kind is kind and tuple(got_fields) == fields and list(got_body) == body
    # Received messages hold zmq.Frame objects; the body comes back as it came.
    got_kind, got_fields, got_body = Wire(key).unpack([zmq.Frame(f) for f in frames])
    assert got_kind is kind and tuple(got_fields) == fields
    assert [frame.bytes for frame in got_body] == body


def test_job_id_frames():
    assert protocol.unpack_job_id(protocol.pack_job_id(2**63 + 5)) == 2**63 + 5
    with pytest.raises(ProtocolError, match="8 bytes"):
        protocol.unpack_job_id(b"1234")


def header_of(kind: Kind) -> bytearray:
    return bytearray(Wire().pack(kind, *sample_fields(kind))[0])


@pytest.mark.parametrize("frames, match", [
    ([], "empty"),
    ([b""], "too short"),
    ([b"\x01"], "too short"),
    ([bytes([VERSION + 1]) + header_of(Kind.PING)[1:]], "version"),
    ([bytes([0]) + header_of(Kind.PING)[1:]], "version"),
    ([bytes([VERSION, 0])], "unknown message kind 0"),
    ([bytes([VERSION, 200]) + bytes(8)], "unknown message kind 200"),
    ([header_of(Kind.READY)[:-1]], "READY header"),
    ([header_of(Kind.READY) + b"\0"], "READY header"),
    ([header_of(Kind.CANCEL) + b"\0", b"body"], "CANCEL header"),
], ids=["empty", "no header", "short header", "new version", "zero version", "kind 0",
        "kind 200", "truncated", "too long", "extra byte"])
def test_malformed_messages_are_refused(frames, match):
    with pytest.raises(ProtocolError, match=match):
        Wire().unpack(frames)


def test_implausible_jobs_are_refused():
    protocol.check_job((1, 0, 1, False, 0, 0))
    for count in (0, protocol.MAX_JOB_REQUESTS + 1, 2**32 - 1):
        with pytest.raises(ProtocolError, match="requests"):
            protocol.check_job((1, 0, count, False, 0, 0))


# -- signatures ---------------------------------------------------------------------------------


TASK_ID = b"t" * 16


def signed_submit():
    wire = Wire(KEY)
    fields = sample_fields(Kind.SUBMIT)
    sealed = wire.seal([b"ab", b"c", b"d"], fields[0], protocol.REQUESTS)
    return wire.pack(Kind.SUBMIT, *fields, payload=sealed)


def receive(frames, purpose=protocol.REQUESTS):
    """What the final recipient does: check the signature, then open the payload's seal."""
    wire = Wire(KEY)
    kind, fields, body = wire.unpack(frames)
    return wire.open(body, fields[0], purpose)


@pytest.mark.parametrize("tamper", [
    lambda f: [f[0], b"xb", *f[2:]],  # a body frame altered
    lambda f: [bytes(f[0][:-1]) + b"\x01", *f[1:]],  # a header field altered
    lambda f: [f[0], f[2], f[1], *f[3:]],  # body frames moved
    lambda f: [f[0], b"a", b"bc", *f[3:]],  # a boundary between frames moved
    lambda f: [f[0], f[1], f[2], f[4]],  # a body frame dropped
    lambda f: f[:-1],  # the signature removed
    lambda f: [f[0], f[-1]],  # every body frame removed
    lambda f: f[:1],  # nothing but the header
    lambda f: [*f[:-1], bytes(32)],  # a forged signature
], ids=["altered", "header", "moved", "boundary", "dropped", "no signature", "no body",
        "header only", "forged"])
def test_tampered_signed_messages_are_refused(tamper):
    frames = signed_submit()
    assert receive(frames) == [b"ab", b"c", b"d"]
    with pytest.raises(ProtocolError, match="signature|seal"):
        receive(tamper(list(frames)))


def test_seals_bind_payloads_to_their_job_and_purpose():
    frames = signed_submit()
    with pytest.raises(ProtocolError, match="seal"):
        receive(frames, purpose=protocol.OUTCOMES)
    wire = Wire(KEY)
    kind, fields, body = wire.unpack(frames)
    with pytest.raises(ProtocolError, match="seal"):
        wire.open(body, fields[0] + 1, protocol.REQUESTS)


def test_broker_checks_signatures_without_hashing_payloads():
    """The message signature stands on the seal, so a hop need not read a large payload."""
    wire = Wire(KEY)
    sealed = wire.seal([b"x" * 1000], 7, protocol.REQUESTS)
    forwarded = wire.pack(Kind.JOB, 7, 0, 1, False, 0, 0, body=[TASK_ID], payload=sealed)
    kind, fields, body = wire.unpack(forwarded)
    assert wire.open(body[1:], fields[0], protocol.REQUESTS) == [b"x" * 1000]
    swapped = [forwarded[0], forwarded[1], b"y" * 1000, *forwarded[3:]]
    wire.unpack(swapped)  # a hop cannot tell ...
    with pytest.raises(ProtocolError, match="seal"):  # ... but the recipient can
        wire.open(wire.unpack(swapped)[2][1:], 7, protocol.REQUESTS)


def test_wrong_key_and_unsigned_peers_are_refused():
    with pytest.raises(ProtocolError, match="signature"):
        Wire(b"another secret").unpack(signed_submit())
    with pytest.raises(ProtocolError, match="signature"):
        Wire(KEY).unpack(Wire().pack(Kind.CANCEL))
    with pytest.raises(ProtocolError, match="signature"):
        Wire(KEY).unpack(Wire().pack(Kind.PING, 3, 1000, body=[b"x"]))
    assert Wire(KEY.decode()).unpack(signed_submit())[0] is Kind.SUBMIT  # str keys work
    with pytest.raises(ValueError, match="empty"):
        Wire(b"")


# -- zero-copy serialisation --------------------------------------------------------------------


def test_large_arrays_leave_the_pickle_stream_as_their_own_frames():
    array = np.arange(1 << 20, dtype=np.float32)
    serializer = pfmq.PickleSerializer()
    frames = serializer.encode({"image": array, "label": 3})
    assert len(frames) == 2
    assert memoryview(frames[0]).nbytes < 1024, "the array must not be copied into the pickle"
    assert np.shares_memory(np.frombuffer(frames[1], dtype=np.float32), array)
    received = [bytes(frames[0]), bytearray(frames[1])]  # as if they came from the network
    decoded = serializer.decode(received)
    assert decoded["label"] == 3
    np.testing.assert_array_equal(decoded["image"], array)
    assert np.shares_memory(decoded["image"], np.frombuffer(received[1], dtype=np.uint8))
    assert len(serializer.encode(np.arange(10))) == 1, "small buffers stay in band"


def test_zero_copy_through_zeromq_frames():
    array = np.random.default_rng(1).random((512, 1024)).astype(np.float32)
    serializer = pfmq.PickleSerializer()
    address = f"inproc://pfmq-zero-copy-{uuid.uuid4().hex}"
    context = zmq.Context.instance()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    try:
        sender.bind(address)
        receiver.connect(address)
        sender.send_multipart(serializer.encode(array), copy=False)
        frames = receiver.recv_multipart(copy=False)
        decoded = serializer.decode(frames)
        np.testing.assert_array_equal(decoded, array)
        assert np.shares_memory(decoded, np.frombuffer(frames[1].buffer, dtype=np.uint8))
    finally:
        sender.close(linger=0)
        receiver.close(linger=0)


# -- garbage on the broker's sockets ------------------------------------------------------------

TASK_KINDS = {Kind.SUBMIT, Kind.CANCEL, Kind.STATUS, Kind.PING}
WORKER_KINDS = {Kind.READY, Kind.DONE, Kind.RETURN, Kind.BYE, Kind.PING, Kind.REPORT,
                Kind.DEADLINE}


def garbage(rng: random.Random, accepted: set) -> list:
    """A random message that a broker socket accepting ``accepted`` kinds must drop."""
    def noise():
        return rng.randbytes(rng.choice([0, 1, 2, 9, 40, 300]))

    body = [noise() for _ in range(rng.randrange(4))]
    choice = rng.randrange(6)
    if choice == 0:  # not our protocol at all
        return [bytes([rng.choice([0, *range(VERSION + 1, 256)])]) + noise(), *body]
    if choice == 1:  # an unknown kind
        return [bytes([VERSION, rng.choice([0, *range(len(Kind) + 1, 256)])]) + noise(), *body]
    kind = rng.choice(list(Kind))
    header = header_of(kind)
    if choice == 2:  # a header of the wrong length
        cut = rng.randrange(2, len(header) + 8)
        header = header[:cut] if cut < len(header) else header + bytes(cut - len(header) + 1)
        return [bytes(header), *body]
    if choice == 3:  # a job nobody could mean
        fields = (rng.getrandbits(64), 0, rng.choice([0, 2**32 - 1]), False, 0, 0)
        return [struct.pack("!BBQQI?qI", VERSION, Kind.SUBMIT, *fields), *body]
    if choice == 4:  # a result without its task id
        return [bytes(header_of(Kind.DONE))]
    # A well-formed message of a kind this socket never receives.
    kind = rng.choice(sorted(set(Kind) - accepted - {Kind.SUBMIT, Kind.DONE}))
    return [bytes(header_of(kind)), *body]


def test_broker_drops_garbage_and_keeps_serving():
    rng = random.Random(20240601)
    context = zmq.Context.instance()
    with running_broker(frontend_address="tcp://127.0.0.1:*") as broker, \
            thread_workers(broker.backend_address, 2):
        wait_for_workers(broker, 2)
        sent = 0
        for address, accepted in [(broker.frontend_address, TASK_KINDS),
                                  (broker.backend_address, WORKER_KINDS)]:
            for _ in range(3):  # several peers
                sock = context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 2000)  # deliver everything before closing
                sock.connect(address)
                for _ in range(100):
                    sock.send_multipart(garbage(rng, accepted))
                    sent += 1
                sock.close()
        stats = wait_until(lambda: (lambda s: s["dropped"] >= sent and s)(broker.stats()),
                           timeout=10, message=f"{sent} messages dropped")
        assert stats["dropped"] == sent and stats["workers"] == 2
        assert stats["queued"] == stats["in_flight"] == 0
        assert list(broker.imap(range(100))) == [2 * i for i in range(100)]
        assert list(pfmq.Task(range(5), broker.frontend_address)) == [0, 2, 4, 6, 8]


def test_signed_broker_counts_bad_signatures():
    with running_broker(key=KEY) as broker, thread_workers(broker.backend_address, key=KEY):
        wait_for_workers(broker, 1)
        context = zmq.Context.instance()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(broker.backend_address)
        sock.send_multipart(Wire().pack(Kind.READY, 5, 5))  # unsigned
        sock.send_multipart(Wire(b"wrong").pack(Kind.READY, 5, 5))  # wrongly signed
        sock.close()
        stats = wait_until(lambda: (lambda s: s["bad_signatures"] >= 2 and s)(broker.stats()),
                           message="bad signatures counted")
        assert stats["bad_signatures"] == stats["dropped"] == 2
        assert stats["workers"] == 1, "an unsigned worker must not be signed up"
        assert list(broker.imap(range(10))) == [2 * i for i in range(10)]
        with pytest.raises(TimeoutError):  # a task without the key gets no answer
            pfmq.apply(1, broker.frontend_address, key=b"wrong", timeout=0.3, num_retries=1)
