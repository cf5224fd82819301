"""Large frames through shared memory between a task and a worker on one host.

Over ``ipc://`` (and in a :class:`~pythonflow.pfmq.LocalCluster`) a large array crosses the
kernel twice each way through the socket. With shared memory on, the sender copies each frame of
at least ``threshold`` bytes once into a *segment* and sends only a small manifest (its layout is
in :mod:`pythonflow.pfmq.protocol`, "Shared memory"); the receiver maps the segment and hands the
serializer read-only views of it, so that the array it gets is a view of the mapping, as it is a
view of the received frame over a socket. The broker routes the manifest like any payload frame.

Segments
--------
A segment is an anonymous ``memfd_create`` file (Linux): it never appears in ``/dev/shm`` or any
file system, and the kernel frees it when the last descriptor and the last mapping of it are
gone, whichever process held them and however that process ended (SIGKILL included). A receiver
opens the sender's descriptor as ``/proc/<sender pid>/fd/<n>``, which works for processes of one
user in one pid namespace; the manifest names the host (boot id and pid namespace), so that a
handle from another host fails with a clear :class:`SharedMemoryError` instead of a silent loss.

Lifetime rules
--------------
* **Receivers** hold a shared ``flock`` on their own descriptor of a segment for as long as
  anything views its mapping (the mapping keeps a duplicate of the descriptor, closed with it).
  The lock, like the memory, goes with the process if it dies. Opening checks the inode and
  the token of this use and takes the lock without waiting; any failure there means the sender
  let the segment go (it died, or gave up waiting) and raises :class:`SegmentLost`.
* **Senders** keep every segment they sent in a process-wide pool. A segment is *returned* when
  the frames that named it are dropped: for requests (a task) that is when the job's result has
  arrived, since the task keeps a job's frames to send it again; for results (a worker,
  ``handoff``) right after sending. A returned segment is used again only when an exclusive
  ``flock`` succeeds (no receiver views it) and, for results, once its receiver has written the
  token into the header (it has taken it: the one task a result goes to has mapped it). A new
  token is written before the data, so a late receiver of an old handle sees the mismatch.
* A returned segment not used again within ``linger`` seconds is closed (closing is always safe:
  receivers' mappings keep the memory as long as they need it), as are the oldest ones beyond a
  budget of :data:`POOL_BYTES`. A result never taken (its task died, or it was a duplicate) is
  therefore freed after ``linger`` seconds; a background thread sweeps while the pool holds any.
* A task that cannot map a result (the worker died between sending it and the task mapping it,
  or let it go after ``linger``) sends the job again, as for a lost job: the broker hands it to a
  worker as a new one, and the task delivers each result once. A worker that cannot map a
  request answers with a serialisation error (its task is gone).
* A forked child closes the descriptors it inherited from its parent's pool; those of the
  mappings it inherited keep their locks until it drops them (or ends), so that nothing it may
  still view is used again.

A receiver needs one descriptor per message it views, a sender two per segment it keeps (its
own and its mapping's); the pool holds about as many segments as jobs are in flight.
"""
import fcntl
import hashlib
import logging
import mmap
import os
import threading
import time
import weakref
from typing import List, Optional, Sequence, Union

from .errors import SerializationError
from .protocol import SHM_ENTRY, SHM_HEADER, SHM_MAGIC, SHM_MANIFEST, SHM_PAGE, Frame, frame_buffer
from .transport import RateLimitedLogger

__all__ = ["SharedMemory", "SharedMemoryError", "SegmentLost", "Courier", "available", "resolve",
           "POOL_BYTES"]

LOGGER = logging.getLogger(__name__)
_LOG = RateLimitedLogger(LOGGER)

#: Returned segments kept for use again, at most, in bytes per process.
POOL_BYTES = 512 << 20
_SWEEP_SECONDS = 0.25  # how often the pool looks for segments to close while it holds any


class SharedMemoryError(SerializationError):
    """Frames in shared memory cannot be mapped: the peer is on another host, or the segment is
    gone (see :class:`SegmentLost`)."""


class SegmentLost(SharedMemoryError):
    """The segment a manifest names is gone: its sender ended or let it go; send it again."""


def available() -> bool:
    """Whether this system has ``memfd_create`` and ``/proc``, which shared memory needs."""
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class SharedMemory:
    """Settings of shared memory for a task or a worker: ``shared_memory=SharedMemory(...)``.

    Parameters
    ----------
    threshold : int
        Frames (array buffers) of at least this many bytes go through shared memory; at least
        one page (4096).
    linger : float
        Seconds a sender keeps a segment nobody took or used again before it closes it.
    """

    def __init__(self, threshold: int = 1 << 20, linger: float = 30.0):
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < SHM_PAGE:
            raise ValueError(f"threshold must be a whole number of bytes of at least {SHM_PAGE}, "
                             f"not {threshold!r}")
        if isinstance(linger, bool) or not isinstance(linger, (int, float)) or not linger > 0:
            raise ValueError(f"linger must be a positive number of seconds, not {linger!r}")
        self.threshold = threshold
        self.linger = float(linger)

    def __repr__(self) -> str:
        return f"SharedMemory(threshold={self.threshold}, linger={self.linger})"


Option = Union[None, bool, SharedMemory]


def resolve(option: Option, address: Optional[str]) -> Optional[SharedMemory]:
    """The settings that ``shared_memory=option`` means for a peer connecting to ``address``.

    ``None`` (the default) turns shared memory on for ``ipc://`` addresses, which are on this
    host, where the system has it; ``True`` and ``False`` force it on (with the default
    :class:`SharedMemory`) or off.
    """
    if option is None:
        on = address is not None and address.startswith("ipc://") and available()
        return SharedMemory() if on else None
    if option is False:
        return None
    if option is True:
        option = SharedMemory()
    if not isinstance(option, SharedMemory):
        raise TypeError(f"shared_memory must be None, True, False or a SharedMemory, not "
                        f"{option!r}")
    if not available():
        raise ValueError("shared_memory needs Linux (memfd_create and /proc); pass "
                         "shared_memory=False")
    return option


_host = (0, b"")  # (pid, id): read once per process, not for every task (apply makes one a call)


def _host_id() -> bytes:
    """Names this host and pid namespace: handles only work within both."""
    global _host
    pid = os.getpid()
    if _host[0] == pid:  # a forked child, maybe in a pid namespace of its own, reads it again
        return _host[1]
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as stream:
            boot = stream.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        host = b"\x00" * 16
    else:
        host = hashlib.sha256(boot + b":%d" % namespace).digest()[:16]
    _host = (pid, host)
    return host


def _pages(size: int) -> int:
    return -(-size // SHM_PAGE) * SHM_PAGE


# -- the sender's side -------------------------------------------------------------------------


class _Segment:
    """One memfd, mapped for writing, with the token of its current use."""

    __slots__ = ("fd", "map", "capacity", "inode", "token", "handoff", "linger", "returned")

    def __init__(self, capacity: int):
        self.fd = os.memfd_create("pfmq-shm", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, SHM_PAGE + capacity)
            self.map = mmap.mmap(self.fd, SHM_PAGE + capacity, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(self.fd)
            raise
        self.capacity = capacity
        self.inode = os.fstat(self.fd).st_ino
        self.token = b""
        self.handoff = False
        self.linger = 0.0
        self.returned = None  # monotonic time it was returned; None while frames name it

    def reusable(self) -> bool:
        """Whether no receiver views it and, for a result, its receiver has taken it."""
        if self.handoff:
            _, _, taken = SHM_HEADER.unpack_from(self.map, 0)
            if taken != self.token:
                return False
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def begin(self, handoff: bool, linger: float) -> None:
        """Start a new use (the exclusive lock is held): a fresh token before any data."""
        self.token = os.urandom(16)
        self.handoff, self.linger, self.returned = handoff, linger, None
        SHM_HEADER.pack_into(self.map, 0, SHM_MAGIC, b"\x00" * 16, b"\x00" * 16)

    def publish(self) -> None:
        """Make the data visible to receivers of the current token."""
        SHM_HEADER.pack_into(self.map, 0, SHM_MAGIC, self.token, b"\x00" * 16)
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class _Pool:
    """The segments of this process: lent to frames, or returned and waiting for use again."""

    def __init__(self):
        self.pid = os.getpid()
        # Reentrant: a finaliser that gives a segment back may run wherever the last reference
        # to its frames goes, also in a garbage collection inside a locked section.
        self.lock = threading.RLock()
        self.lent = set()
        self.returned: List[_Segment] = []  # oldest first
        self.sweeping = threading.Condition(self.lock)
        self.sweeper: Optional[threading.Thread] = None

    def acquire(self, size: int, handoff: bool, linger: float) -> _Segment:
        with self.lock:
            self._sweep(time.monotonic())
            for segment in self.returned:
                if size <= segment.capacity <= 2 * size + SHM_PAGE and segment.reusable():
                    self.returned.remove(segment)
                    break
            else:
                segment = _Segment(_pages(size))
                fcntl.flock(segment.fd, fcntl.LOCK_EX)
            segment.begin(handoff, linger)
            self.lent.add(segment)
        return segment

    def give_back(self, segment: _Segment) -> None:
        if os.getpid() != self.pid:
            return  # a forked child's copy: the parent's segment is not the child's to keep
        with self.lock:
            if segment not in self.lent:
                return
            self.lent.discard(segment)
            segment.returned = time.monotonic()
            self.returned.append(segment)
            excess = sum(s.capacity for s in self.returned) - POOL_BYTES
            while excess > 0:
                oldest = self.returned.pop(0)
                excess -= oldest.capacity
                oldest.close()
            if self.sweeper is None:
                self.sweeper = threading.Thread(target=self._sweep_forever, daemon=True,
                                                name="pfmq-shm-sweeper")
                self.sweeper.start()
            self.sweeping.notify()

    def _sweep(self, now: float) -> None:
        """Close returned segments not used again within their linger (the lock is held)."""
        keep = []
        for segment in self.returned:
            if now - segment.returned >= segment.linger:
                segment.close()
            else:
                keep.append(segment)
        self.returned = keep

    def _sweep_forever(self) -> None:
        with self.lock:
            while True:
                self.sweeping.wait_for(lambda: self.returned)
                self.sweeping.wait(_SWEEP_SECONDS)
                self._sweep(time.monotonic())

    def forget(self) -> None:
        """In a forked child: close the inherited descriptors, keep nothing."""
        for segment in [*self.lent, *self.returned]:
            try:
                os.close(segment.fd)
            except OSError:
                pass
        # The parent's lock may have been held at the fork, and its sweeper is not here.
        self.__init__()


_POOL = _Pool()


class _Loan:
    """Returns its segment to the pool when the manifest holding it is dropped."""

    __slots__ = ("segment", "__weakref__")

    def __init__(self, segment: _Segment):
        self.segment = segment
        weakref.finalize(self, _POOL.give_back, segment)


class _Manifest(bytes):
    """A manifest frame that keeps its segment lent for as long as it exists."""


# -- the receiver's side -----------------------------------------------------------------------


def _lease(pid: int, number: int, inode: int, token: bytes, length: int) -> mmap.mmap:
    """Open, lock, check and map the data of the segment a manifest names."""
    try:
        fd = os.open(f"/proc/{pid}/fd/{number}", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise SegmentLost(f"shared memory of process {pid} is gone: {exc.strerror}") from None
    try:
        status = os.fstat(fd)
        if status.st_ino != inode or status.st_size < SHM_PAGE + length:
            raise SegmentLost(f"shared memory of process {pid} was let go")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SegmentLost(f"shared memory of process {pid} is in use again") from None
        magic, current, _ = SHM_HEADER.unpack(os.pread(fd, SHM_HEADER.size, 0))
        if magic != SHM_MAGIC or current != token:
            raise SegmentLost(f"shared memory of process {pid} was let go")
        os.pwrite(fd, token, 32)  # taken: the header's third field
        # Copy on write, as a received frame is the receiver's own: writes stay private (a
        # request sent again to another worker stays as it was) and copy only what they touch.
        mapping = mmap.mmap(fd, length, access=mmap.ACCESS_COPY, offset=SHM_PAGE)
    finally:
        # The mapping holds a duplicate of the descriptor, and with it the lock, until the
        # last view of it is gone (a forked child's copy too: the segment is then not reused).
        os.close(fd)
    return mapping


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget)


# -- both sides --------------------------------------------------------------------------------


class Courier:
    """Moves a sealed payload's large frames into shared memory and maps them back.

    A :class:`~pythonflow.pfmq.protocol.Wire` with a courier calls :meth:`pack` on every sealed
    payload and :meth:`unpack` before opening one. Every task and worker has one, so that each
    can read manifests; it sends them only while :attr:`settings` is not ``None``.

    Parameters
    ----------
    settings : SharedMemory, optional
        Shared memory for what this peer sends; ``None``: everything goes over the socket.
    handoff : bool
        Segments go to one receiver and are not kept by the sender's frames (a worker's
        results), rather than kept until the frames are dropped (a task's requests).
    """

    def __init__(self, settings: Optional[SharedMemory] = None, handoff: bool = False):
        self.settings = settings
        self.handoff = handoff
        self.host = _host_id()

    def pack(self, frames: List[Frame]) -> List[Frame]:
        """``frames`` with those of at least ``threshold`` bytes (never the first) moved."""
        settings = self.settings
        if settings is None or len(frames) < 2:
            return frames
        moved, offset = [], 0
        for index in range(1, len(frames)):
            view = memoryview(frame_buffer(frames[index]))
            if view.nbytes >= settings.threshold and view.c_contiguous:
                moved.append((index, offset, view.cast("B")))
                offset += _pages(view.nbytes)
        if not moved:
            return frames
        try:
            segment = _POOL.acquire(offset, self.handoff, settings.linger)
        except OSError as exc:  # out of memory or descriptors: the socket still works
            _LOG.log(logging.WARNING, "acquire", "no shared memory for %d bytes (%s); sending "
                     "over the socket", offset, exc)
            return frames
        loan = _Loan(segment)
        try:
            for _, start, view in moved:
                segment.map[SHM_PAGE + start:SHM_PAGE + start + view.nbytes] = view
        finally:
            segment.publish()
        manifest = _Manifest(b"".join([
            SHM_MAGIC, SHM_MANIFEST.pack(self.host, os.getpid(), segment.fd, segment.inode,
                                         segment.token, len(moved)),
            *(SHM_ENTRY.pack(index, start, view.nbytes) for index, start, view in moved)]))
        manifest.loan = loan
        indices = {index for index, _, _ in moved}
        return [manifest, *(frame for index, frame in enumerate(frames) if index not in indices)]

    def unpack(self, frames: Sequence[Frame]) -> List[Frame]:
        """``frames`` as they were before :meth:`pack`: moved frames as views of a mapping."""
        if len(frames) < 2:
            return list(frames)
        head = frame_buffer(frames[0])
        if bytes(head[:len(SHM_MAGIC)]) != SHM_MAGIC:
            return list(frames)
        entries = self._entries(bytes(head))
        host, pid, number, inode, token, _ = SHM_MANIFEST.unpack_from(head, len(SHM_MAGIC))
        if host != self.host:
            raise SharedMemoryError(
                "the payload's arrays are in the shared memory of a process on another host; "
                "pass shared_memory=False to the tasks and workers that are not on one host")
        length = max(start + size for _, start, size in entries)
        mapping = _lease(pid, number, inode, token, _pages(length))
        view = memoryview(mapping)
        rebuilt = list(frames[1:])
        for index, start, size in sorted(entries):
            if index > len(rebuilt):
                raise SharedMemoryError(f"a manifest entry for frame {index} of "
                                        f"{len(rebuilt) + 1}")
            rebuilt.insert(index, view[start:start + size])
        return rebuilt

    @staticmethod
    def _entries(manifest: bytes) -> list:
        start = len(SHM_MAGIC) + SHM_MANIFEST.size
        if len(manifest) < start:
            raise SharedMemoryError("a shared-memory manifest too short")
        count = SHM_MANIFEST.unpack_from(manifest, len(SHM_MAGIC))[-1]
        if len(manifest) != start + count * SHM_ENTRY.size or count == 0:
            raise SharedMemoryError(f"a shared-memory manifest of {len(manifest)} bytes for "
                                    f"{count} frames")
        entries = [SHM_ENTRY.unpack_from(manifest, start + i * SHM_ENTRY.size)
                   for i in range(count)]
        if any(index == 0 or start % SHM_PAGE for index, start, _ in entries):
            raise SharedMemoryError("a malformed shared-memory manifest")
        return entries
