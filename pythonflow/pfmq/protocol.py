"""The pfmq wire protocol: every frame layout, in one place.

Peers
-----
Tasks and workers are ZeroMQ ``DEALER`` sockets; the broker has one ``ROUTER`` socket for tasks
(the *frontend*) and one for workers (the *backend*). A worker has two connections: one for work
(``READY``, ``JOB``, ``DONE``, ...), used by the thread that evaluates, and one for heartbeats.
Each peer sets a random 16-byte routing id, so the broker knows it again after a reconnect (the
ROUTER sockets use ``ROUTER_HANDOVER``). The routing id is the envelope frame the ROUTER adds on
receipt and strips on sending; it is not part of the layouts below.

Message layout
--------------
Every message is a list of frames::

    [header, *body frames, signature?]

``header`` is ``struct``-packed, network byte order: a version byte (:data:`VERSION`), a kind byte
(:class:`Kind`) and the fixed fields of that kind (:data:`FIELDS`). A header of the wrong length,
version or kind is refused with :class:`ProtocolError`; receivers log and drop such messages.

When peers share a key, a 32-byte HMAC-SHA256 signature frame closes every message, and every
payload ends with a 32-byte *seal*. The seal is an HMAC of the payload frames bound to the job id
and the payload's purpose (requests or outcomes); its origin (the task, or the worker) makes it
once, the broker forwards it untouched, and the final recipient checks it before deserialising
anything. The signature covers every frame but the payload, each prefixed with its
length, and the seal in the payload's place, so frames can be neither altered, moved nor dropped
and yet a large payload is hashed twice on its way instead of at every hop. Receivers check
signatures and seals in constant time; the broker, which never deserialises payloads, checks
signatures only.

Kinds
-----
======================  ==========================  =============================================
kind                    fields                      body frames
======================  ==========================  =============================================
task -> broker
SUBMIT                  job                         payload (the serialised list of requests)
CANCEL                  --                          --
STATUS                  --                          --
PING                    ping, interval_ms           --
worker -> broker
READY                   capacity, credit            --
DONE                    job_id, status, elapsed     task id, payload (serialised outcomes)
DEADLINE                job_id, index, elapsed      task id
RETURN                  --                          task id, job id (8 bytes), repeated
BYE                     --                          --
PING                    ping, interval_ms           worker id (the worker it speaks for)
broker -> worker
JOB                     job                         task id, payload
REVOKE                  --                          task id
PONG                    see below                   --
supervisor -> broker
REPORT                  slots, running, restarts,   --
                        interval_ms
broker -> task
RESULT                  job_id, elapsed, capacity   payload (serialised outcomes)
FAILED                  job_id, cause, index        reason (UTF-8)
STATUS_REPLY            --                          statistics (JSON)
PONG                    see below                   --
======================  ==========================  =============================================

``job`` is ``(job_id, first_index, count, has_seed, seed, deadline_ms)``: a job carries ``count``
requests, the first of which is request number ``first_index`` of its task; ``seed`` (valid when
``has_seed``) seeds each request's random generators with ``(seed, index)``; ``deadline_ms``
(0: none) is how long a worker may evaluate each of its requests (the task's
``request_timeout``).

A worker that gave up a request past its deadline sends ``DEADLINE`` in place of the job's
``DONE`` (``index``: the request's number in its task; ``elapsed``: seconds it ran), and so gives
back every job it holds, taking no more until its next ``READY``. One that ends its process then
(see :mod:`pythonflow.pfmq.deadline`) sends ``BYE`` and a ``PING`` with no worker id on its work
connection, whose ``PONG`` tells it the broker read both. The broker retries the request alone,
or fails a job of several requests with cause :data:`FAILED_JOB` so that its task retries each;
after ``max_attempts`` deadlines hit by the request it fails it with :data:`FAILED_DEADLINE`.

``FAILED``'s ``cause`` says what the task does: :data:`FAILED_JOB`, a single request fails
(its workers died, or the broker refused the job) and a job of several requests is retried
request by request; :data:`FAILED_DEADLINE`, request ``index`` failed by its deadline and the
job's other requests are retried one by one. ``index`` is 0 for :data:`FAILED_JOB`.

A worker sends its heartbeats on its second connection, so that they never wait behind its work;
its ``PING`` names the routing id of its work connection. A ``PING`` carries the sender's
heartbeat interval in milliseconds: the broker presumes a peer gone after ``heartbeat_liveness``
of *its* intervals, whatever the broker's own, up to a bound (60 s, or the broker's own interval
if longer) so that no peer has the broker keep its state for long after it fell silent.

``ping`` numbers the heartbeats of one connection: 1, 2, 3, ... A worker's numbers must grow;
the broker drops a worker ``PING`` whose number is not above the last one it accepted for that
worker since it signed up, so that a captured ``PING`` sent again, from any connection, cannot
keep a dead worker alive. (A task's numbers start again with each ``apply`` on a shared
connection; they only pair answers with pings.)

A supervisor of worker processes (``LocalCluster``, ``pfmq worker --processes N``) sends a
``REPORT`` on the backend when its figures change and every ``interval_ms``: its worker slots,
the processes serving, and the processes it started in place of dead ones. The broker keeps the
last report of each supervisor until ``heartbeat_liveness`` intervals pass without one, and
shows them in its statistics; nothing answers a ``REPORT``.

A ``SUBMIT`` that no worker could run (an implausible ``job``, or no payload frame at all, which
only an unsigned message can lack) is refused: the broker answers ``FAILED`` for its job id, so
the task that sent it neither waits for it nor sends it again, and never queues it.

``PONG`` answers a ``PING`` with ``(incarnation, ping, capacity, pending, registered,
max_frame)``: the broker's random id for this run, the ping number it answers, the number of
request slots of all workers, how many jobs of this peer it holds, whether it knows the peer at
all, and the largest frame it accepts (0: no limit), so that peers refuse a request or result that
would get their connection cut instead of sending it. A task compares
``pending`` with the jobs it sent before that ping and resends the difference; a worker that is
not ``registered`` (after a broker restart, or after it was presumed dead) signs up again.

Payloads
--------
Payloads are opaque to the broker: it routes them and never deserialises them. A job's payload is
the list of its requests; a ``DONE``/``RESULT`` payload is the list of their outcomes, in order,
each one of ``(OK, value)``, ``(ERROR, exception, remote_traceback)`` or
``(SERIALIZATION_ERROR, message)``. ``DONE`` with status :data:`CANCELLED` has an empty payload
(only its seal, when keyed): the worker skipped a job whose task was cancelled.

Shared memory
-------------
Between peers on one host (see :mod:`pythonflow.pfmq.shm`), the large frames of a sealed payload
may travel in a shared-memory segment instead of over the socket. The payload then starts with a
*manifest* frame and lacks the frames that moved::

    [manifest, frames that stayed, ...]        (the seal, when keyed, stays the last frame)

``manifest`` is :data:`SHM_MAGIC`, then :data:`SHM_MANIFEST` (``host, pid, fd, inode, token,
count``: the sender's host and pid namespace digest, its process id, the segment's descriptor
number in that process and inode number, the token of this use of the segment, the number of
frames that moved), then ``count`` times :data:`SHM_ENTRY` (``index, offset, length``: the
frame's place in the payload, and where its bytes are in the segment's data, which starts at
:data:`SHM_PAGE`). The segment's first page holds :data:`SHM_HEADER` (``magic, token, taken``):
the receiver checks the magic and the token and writes the token into ``taken``. A payload's
first frame never begins with :data:`SHM_MAGIC` otherwise (a pickle stream starts with ``0x80``,
a msgpack payload with an array tag). The seal is made over the payload *before* frames move and
checked after they are mapped back, so it covers the array bytes exactly as over a socket.

Outcomes
--------
Beside the three codes that travel, a task makes three of its own: ``(WORKERS_DIED, reason)``
for a request the broker failed with ``FAILED`` (cause :data:`FAILED_JOB`),
``(DEADLINE_PASSED, reason, deadline)`` for one it failed by its deadline (cause
:data:`FAILED_DEADLINE`; ``deadline`` in seconds), and ``(ITERATOR_FAILED, exception)`` in the
place of the request its iterator raised instead of yielding. :func:`exception_for` turns a
failed outcome into the exception the consumer gets.
"""
import enum
import hashlib
import hmac
import os
import struct
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

from .errors import (
    ProtocolError,
    RemoteError,
    RequestTimeoutError,
    SerializationError,
    WorkerDiedError,
)

if TYPE_CHECKING:  # frames are duck-typed: the protocol needs no sockets
    import zmq

    from .shm import Courier

__all__ = [
    "VERSION", "SIGNATURE_SIZE", "ID_SIZE", "OK", "ERROR", "SERIALIZATION_ERROR", "WORKERS_DIED",
    "ITERATOR_FAILED", "DEADLINE_PASSED", "COMPLETED", "CANCELLED", "FAILED_JOB",
    "FAILED_DEADLINE", "Kind", "FIELDS", "MAX_JOB_REQUESTS",
    "REQUESTS", "OUTCOMES", "PAYLOAD_START", "BytesLike", "Frame", "Wire", "check_job",
    "new_id", "pack_job_id", "unpack_job_id", "frame_buffer", "exception_for", "SHM_MAGIC",
    "SHM_MANIFEST", "SHM_ENTRY", "SHM_HEADER", "SHM_PAGE",
]

#: What a frame to send may be; a received frame may also be a ``zmq.Frame``.
BytesLike = Union[bytes, bytearray, memoryview]
Frame = Union[BytesLike, "zmq.Frame"]

VERSION = 1
SIGNATURE_SIZE = 32
ID_SIZE = 16

# Outcome codes inside a result payload.
OK = 0
ERROR = 1
SERIALIZATION_ERROR = 2
#: Outcomes made at the task itself, beside those that come from workers.
WORKERS_DIED = 10
ITERATOR_FAILED = 11
DEADLINE_PASSED = 12

# DONE statuses.
COMPLETED = 0
CANCELLED = 1

# FAILED causes.
FAILED_JOB = 0
FAILED_DEADLINE = 1


class Kind(enum.IntEnum):
    """Message kinds; the second byte of every header."""

    SUBMIT = 1
    CANCEL = 2
    STATUS = 3
    PING = 4
    READY = 5
    DONE = 6
    RETURN = 7
    BYE = 8
    JOB = 9
    REVOKE = 10
    PONG = 11
    RESULT = 12
    FAILED = 13
    STATUS_REPLY = 14
    REPORT = 15
    DEADLINE = 16


_JOB = "QQI?qI"
#: The struct format of each kind's fields (after the version and kind bytes).
FIELDS = {
    Kind.SUBMIT: _JOB,
    Kind.CANCEL: "",
    Kind.STATUS: "",
    Kind.PING: "II",
    Kind.READY: "II",
    Kind.DONE: "QBd",
    Kind.DEADLINE: "QQd",
    Kind.RETURN: "",
    Kind.BYE: "",
    Kind.JOB: _JOB,
    Kind.REVOKE: "",
    Kind.PONG: "QIII?Q",
    Kind.RESULT: "QdI",
    Kind.FAILED: "QBQ",
    Kind.STATUS_REPLY: "",
    Kind.REPORT: "IIII",
}
_STRUCTS = {kind: struct.Struct("!BB" + fmt) for kind, fmt in FIELDS.items()}
_KINDS = {int(kind): kind for kind in Kind}  # a dict look-up is cheaper than calling the enum
_JOB_ID = struct.Struct("!Q")

#: Shared-memory frames (see "Shared memory" above): the manifest's first bytes, its fixed part,
#: one entry per frame that moved, and the header at the start of every segment.
SHM_MAGIC = b"\x00pfmq-shm-v1\x00\x00\x00\x00"  # 16 bytes
SHM_MANIFEST = struct.Struct("!16sIiQ16sI")
SHM_ENTRY = struct.Struct("!IQQ")
SHM_HEADER = struct.Struct("!16s16s16s")
SHM_PAGE = 4096  # segment data starts here; every frame's offset is a multiple of it

#: The most requests one job may carry; larger claims are refused as malformed.
MAX_JOB_REQUESTS = 1 << 16


def check_job(fields: Sequence[int]) -> None:
    """Raise :class:`ProtocolError` unless ``fields`` describe a plausible job."""
    count = fields[2]
    if not 1 <= count <= MAX_JOB_REQUESTS:
        raise ProtocolError(f"a job of {count} requests")
    if fields[4] < 0:
        raise ProtocolError("a negative seed")


def new_id() -> bytes:
    """Return a fresh random routing id."""
    return os.urandom(ID_SIZE)


def pack_job_id(job_id: int) -> bytes:
    """Pack a job id into the 8-byte frame used by ``RETURN``."""
    return _JOB_ID.pack(job_id)


def unpack_job_id(frame: bytes) -> int:
    """Unpack an 8-byte job id frame."""
    if len(frame) != _JOB_ID.size:
        raise ProtocolError("a job id frame must be 8 bytes")
    return _JOB_ID.unpack(frame)[0]


def frame_buffer(frame: Frame) -> BytesLike:
    """The bytes-like content of a received frame, ``bytes`` or ``zmq.Frame``, without a copy."""
    return getattr(frame, "buffer", frame)


#: Payload purposes, bound into seals so that requests and outcomes cannot be swapped.
REQUESTS = b"requests"
OUTCOMES = b"outcomes"
#: For kinds that carry a payload: how many body frames precede it.
PAYLOAD_START = {Kind.SUBMIT: 0, Kind.RESULT: 0, Kind.JOB: 1, Kind.DONE: 1}


class Wire:
    """Packs and unpacks messages, signing and verifying them when a key is set.

    Parameters
    ----------
    key : bytes or str, optional
        Shared secret. With a key every message is signed with HMAC-SHA256 and every message
        received must carry a valid signature; payloads are sealed by their origin (see
        :meth:`seal`) and opened by their final recipient (see :meth:`open`).
    courier : pythonflow.pfmq.shm.Courier, optional
        Moves the large frames of sealed payloads into shared memory and maps them back on
        opening (see "Shared memory" above); the broker, which never opens payloads, has none.
    """

    def __init__(self, key: Union[bytes, str, None] = None,
                 courier: Optional["Courier"] = None):
        if isinstance(key, str):
            key = key.encode()
        if key is not None and not key:
            raise ValueError("the key must not be empty")
        self.key: Optional[bytes] = key
        self.courier = courier

    def pack(self, kind: Kind, *fields: Union[int, float, bool], body: Sequence[Frame] = (),
             payload: Sequence[Frame] = ()) -> List[Frame]:
        """Return the frames of a message of ``kind``.

        ``body`` holds the frames before the payload (a task id); ``payload`` is a payload as
        :meth:`seal` returned it, passed on unchanged by the broker.
        """
        frames = [_STRUCTS[kind].pack(VERSION, kind, *fields), *body, *payload]
        if self.key is not None:
            frames.append(_mac(self.key, _signed_part(kind, frames)))
        return frames

    def unpack(self, frames: Sequence[Frame]) -> Tuple[Kind, tuple, List[Frame]]:
        """Return ``(kind, fields, body)`` of a received message; ``body`` includes the payload.

        ``frames`` may hold ``bytes`` or ``zmq.Frame`` objects; ``body`` holds them as they came.

        Raises
        ------
        ProtocolError
            If the message is malformed, of an unknown version or kind, or not signed correctly.
        """
        if not frames:
            raise ProtocolError("empty message")
        if self.key is not None:
            if len(frames) < 2:
                raise ProtocolError("unsigned message: no signature frame")
            signature = bytes(frame_buffer(frames[-1]))
            frames = frames[:-1]
        try:
            kind, header = _kind_of(frames[0])
        except ProtocolError as exc:
            if self.key is None:
                raise
            raise ProtocolError(f"no valid signature on a malformed message: {exc}") from None
        if self.key is not None:
            if len(frames) < 2 + PAYLOAD_START.get(kind, -1):
                raise ProtocolError(f"{kind.name} too short for a payload seal and a signature")
            expected = _mac(self.key, _signed_part(kind, frames))
            if not hmac.compare_digest(signature, expected):
                raise ProtocolError("signature mismatch: check the shared key (PFMQ_KEY)")
        layout = _STRUCTS[kind]
        if len(header) != layout.size:
            raise ProtocolError(f"{kind.name} header of {len(header)} bytes, not {layout.size}")
        return kind, layout.unpack(header)[2:], frames[1:]

    def seal(self, payload: Sequence[Frame], job_id: int, purpose: bytes) -> List[Frame]:
        """Return ``payload`` with a seal frame that binds it to its job and purpose, if keyed.

        The seal is an HMAC of the payload made once by its origin (the task for requests, the
        worker for outcomes) and checked once by its final recipient; the broker forwards it
        untouched, so large payloads are not hashed on every hop.
        """
        if self.key is None:
            sealed = list(payload)
        else:
            sealed = [*payload, _mac(self.key, payload, purpose + _JOB_ID.pack(job_id))]
        return sealed if self.courier is None else self.courier.pack(sealed)

    def open(self, sealed: Sequence[Frame], job_id: int, purpose: bytes) -> List[Frame]:
        """Return the payload frames of ``sealed`` after checking its seal, if keyed.

        Raises
        ------
        ProtocolError
            If the seal is missing or does not match: the payload must not be deserialised.
        SerializationError
            If frames in shared memory cannot be mapped (see :mod:`pythonflow.pfmq.shm`).
        """
        if self.courier is not None:
            sealed = self.courier.unpack(sealed)
        if self.key is None:
            return list(sealed)
        if not sealed:
            raise ProtocolError("payload without its seal")
        payload, seal = sealed[:-1], bytes(frame_buffer(sealed[-1]))
        expected = _mac(self.key, payload, purpose + _JOB_ID.pack(job_id))
        if not hmac.compare_digest(seal, expected):
            raise ProtocolError("payload seal mismatch: check the shared key (PFMQ_KEY)")
        return payload


def _kind_of(header_frame):
    header = bytes(frame_buffer(header_frame))
    if len(header) < 2:
        raise ProtocolError("header too short")
    if header[0] != VERSION:
        raise ProtocolError(f"protocol version {header[0]} is not {VERSION}")
    kind = _KINDS.get(header[1])
    if kind is None:
        raise ProtocolError(f"unknown message kind {header[1]}")
    return kind, header


def _signed_part(kind, frames):
    """The frames a message signature covers: all but a payload, for which its seal stands."""
    start = PAYLOAD_START.get(kind)
    if start is None:
        return frames
    return [*frames[:1 + start], frames[-1]]


def _mac(key, frames, prefix=b"") -> bytes:
    mac = hmac.new(key, prefix, digestmod=hashlib.sha256)
    for frame in frames:
        data = frame_buffer(frame)
        mac.update(struct.pack("!Q", memoryview(data).nbytes))
        mac.update(data)
    return mac.digest()


def exception_for(index: int, outcome: tuple) -> BaseException:
    """The exception that the failed ``outcome`` of request ``index`` stands for."""
    code = outcome[0]
    if code == ERROR:
        original, remote_traceback = outcome[1], outcome[2]
        remote = RemoteError(f"request {index} failed on a worker", remote_traceback)
        if original is None:
            return remote
        original.__cause__ = remote
        original.__suppress_context__ = True
        if isinstance(original, (StopIteration, StopAsyncIteration)):
            # Raised at the consumer it would end the consumer's loop as if every result were
            # in; wrapped as PEP 479 wraps one escaping a generator.
            wrapped = RuntimeError(f"request {index} raised {type(original).__name__} on a "
                                   f"worker")
            wrapped.__cause__ = original
            return wrapped
        return original
    if code == SERIALIZATION_ERROR:
        return SerializationError(f"request {index}: {outcome[1]}")
    if code == WORKERS_DIED:
        return WorkerDiedError(f"request {index} failed: {outcome[1]}")
    if code == DEADLINE_PASSED:
        return RequestTimeoutError(f"request {index} {outcome[1]}", index, outcome[2])
    if code == ITERATOR_FAILED:
        return outcome[1]
    return RemoteError(f"request {index}: unknown outcome {code!r}")
