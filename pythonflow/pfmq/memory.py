"""Per-worker memory limits: ``max_memory=`` sizes, the resident memory of this process, the check.

A worker given ``max_memory`` (:class:`~pythonflow.pfmq.Worker`,
:class:`~pythonflow.pfmq.LocalCluster`, ``pfmq worker --max-memory``) asks a
:class:`MemoryLimit` after each job it delivered whether the process's resident set size (RSS)
has passed the limit. When it has, the worker stops as on :meth:`~pythonflow.pfmq.Worker.cancel`:
the job just evaluated is already delivered, the jobs it prefetched go back to the broker, it says
goodbye, and :attr:`~pythonflow.pfmq.Worker.error` holds a
:class:`~pythonflow.pfmq.MemoryLimitError`. A worker process then exits with
:data:`~pythonflow.pfmq.launch.EXIT_RESTART`, which its supervisor answers by starting another at
once (no death counted, no backoff).

The check sits on the hot path of every job, so it costs next to nothing: a clock read, and a
read of the RSS at most every :data:`CHECK_INTERVAL` seconds. On Linux the RSS comes from
``/proc/self/statm`` through a descriptor kept open (one ``pread``, about a microsecond and a
half); elsewhere from :mod:`psutil`, if installed.
"""
import logging
import math
import os
import re
import threading
import time
from typing import Any, Callable, Optional

from .errors import MemoryLimitError

__all__ = ["parse_size", "format_size", "resident_memory", "MemoryLimit", "CHECK_INTERVAL"]

LOGGER = logging.getLogger(__name__)

#: Seconds between two reads of the resident memory at the most (jobs in between are not checked).
CHECK_INTERVAL = 0.005

_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"\s*([-+]?)(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(value: Any, name: str = "max_memory") -> int:
    """The number of bytes ``value`` stands for: an integer (bytes) or a string such as ``"2GiB"``.

    Units are ``B``, ``KB``, ``MB``, ``GB``, ``TB`` (powers of 1000) and ``KiB``, ``MiB``,
    ``GiB``, ``TiB`` (powers of 1024), in any case, with or without a space after the number,
    which may have decimals (``"1.5 GB"``); a string without a unit counts bytes. Fractions of a
    byte are dropped.

    Parameters
    ----------
    value : int, float or str
        The size.
    name : str
        What the size is for, to name it in the error message.

    Returns
    -------
    int
        At least 1.

    Raises
    ------
    TypeError
        If ``value`` is neither a number nor a string (a ``bool`` is neither).
    ValueError
        If ``value`` is not a size with a known unit, or not at least one byte.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{name} must be a number of bytes or a size such as '2GiB', not "
                        f"{type(value).__name__} {value!r}")
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match is None:
            raise ValueError(f"{name}={value!r} is not a size such as '2GiB' or '500 MB'")
        sign, number, unit = match.groups()
        scale = _UNITS.get(unit.lower())
        if scale is None:
            raise ValueError(f"{name}={value!r} has an unknown unit {unit!r} (use B, KB, MB, GB, "
                             "TB: powers of 1000, or KiB, MiB, GiB, TiB: powers of 1024)")
        size = -1 if sign == "-" else _scaled(number, scale)
    else:
        size = _scaled(value, 1)
    if size is None:
        raise ValueError(f"{name} must be a finite number of bytes, not {value!r}")
    if size < 1:
        raise ValueError(f"{name} must be at least one byte, not {value!r}")
    return size


def _scaled(number, scale: int) -> Optional[int]:
    """``number * scale`` rounded down, exactly for decimal strings; None if not finite."""
    if isinstance(number, str):
        whole, _, fraction = number.partition(".")
        digits = int(whole or "0") * 10 ** len(fraction) + int(fraction or "0")
        return digits * scale // 10 ** len(fraction)
    if isinstance(number, float) and not math.isfinite(number):
        return None
    return int(number * scale)


def format_size(size: float) -> str:
    """``size`` bytes as a short figure for messages: ``"1.5 GiB"``, ``"312.0 MiB"``, ``"8 B"``."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:g} B"


class _StatmReader:
    """The resident set size from ``/proc/self/statm``, through a descriptor kept open.

    The descriptor names the process that opened it (``/proc/self`` is resolved then), so a
    forked child opens its own.
    """

    def __init__(self):
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._fd = -1
        self._pid = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        if self._pid != os.getpid():
            self._reopen()
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page

    def _reopen(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            fd = os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self._fd, self._pid = fd, os.getpid()  # an inherited one is the parent's: left open


def _find_reader() -> Optional[Callable[[], int]]:
    if os.path.exists("/proc/self/statm") and hasattr(os, "pread"):
        reader = _StatmReader()
        try:
            reader()
            return reader
        except (OSError, ValueError, IndexError):  # an unusual /proc: try psutil
            pass
    try:
        import psutil
    except ImportError:
        return None
    process = psutil.Process()
    return lambda: process.memory_info().rss


_READER: Optional[Callable[[], int]] = None


def resident_memory() -> int:
    """The resident set size of this process in bytes.

    Raises
    ------
    RuntimeError
        Where neither ``/proc/self/statm`` nor :mod:`psutil` is available.
    """
    global _READER
    if _READER is None:
        _READER = _find_reader()
        if _READER is None:
            raise RuntimeError("max_memory needs /proc/self/statm (Linux) or the psutil package "
                               "to measure the memory of the worker process: pip install psutil")
    return _READER()


class MemoryLimit:
    """The check of a worker's resident memory against its ``max_memory``.

    Parameters
    ----------
    limit : int
        Bytes (see :func:`parse_size`).
    interval : float, optional
        Seconds between two reads of the resident memory at the most; defaults to
        :data:`CHECK_INTERVAL`.

    Raises
    ------
    ValueError
        If the process is already above ``limit`` (see :meth:`check_headroom`).
    RuntimeError
        Where the resident memory cannot be measured (see :func:`resident_memory`).
    """

    def __init__(self, limit: int, interval: Optional[float] = None):
        self.limit = limit
        self.interval = CHECK_INTERVAL if interval is None else interval
        self._next = 0.0  # time.monotonic() of the next read
        self.check_headroom()

    def check_headroom(self) -> None:
        """Raise ``ValueError`` if the process is above the limit already, before any request:
        it would be replaced after every job, for ever."""
        rss = resident_memory()
        if rss > self.limit:
            raise ValueError(f"max_memory={format_size(self.limit)} is below what this process "
                             f"holds already ({format_size(rss)} resident): give a larger limit")

    def check(self, held: int = 0) -> Optional[MemoryLimitError]:
        """After a job: the error to stop with if the process is above the limit, else None.

        ``held`` is the number of jobs the worker holds and will hand back, for the log.
        """
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.interval
        rss = _READER()
        if rss <= self.limit:
            return None
        LOGGER.info("worker process %d holds %s, above its max_memory of %s: it stops (jobs "
                    "handed back: %d)", os.getpid(), format_size(rss), format_size(self.limit),
                    held)
        return MemoryLimitError(rss, self.limit)
