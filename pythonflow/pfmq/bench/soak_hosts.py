"""Where the processes of the soak (:mod:`.soak`) run, and how it talks to them.

:class:`LocalHosts` puts every host on this machine, for where network namespaces
(:class:`.netns.Network`) cannot be made; :class:`Peer` exchanges lines with a process of
:mod:`.soak_peer`; :func:`worker_pids` finds the worker processes of a supervised pool.
"""
import json
import os
import queue
import subprocess
import threading
from typing import List, Optional

from .harness import end


def worker_pids(supervisor_pid: int) -> List[int]:
    """The worker processes a ``pfmq worker --processes`` supervisor runs now (its children
    started by ``multiprocessing``'s spawn, not its resource tracker)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rpartition(")")[2].split()[1])
            if parent == supervisor_pid:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if b"spawn_main" in cmdline.read():
                        pids.append(int(entry))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return sorted(pids)


class LocalHosts:
    """Every host is this machine: its processes on loopback; links cannot be cut. Mirrors the
    part of :class:`.netns.Network` the soak uses."""

    def __init__(self, hosts: List[str]):
        self.addresses = {host: "127.0.0.1" for host in hosts}
        self._processes: List[subprocess.Popen] = []

    def __enter__(self) -> "LocalHosts":
        return self

    def __exit__(self, *exc_info):
        self.close()

    def popen(self, host: str, argv: List[str], **options) -> subprocess.Popen:
        """Start ``argv`` (on this machine); the process is ended by :meth:`close`."""
        process = subprocess.Popen(argv, **options)
        self._processes.append(process)
        return process

    def close(self) -> None:
        """End every process started here, by PID."""
        for process in self._processes:
            end(process)


class Peer:
    """A soak peer process on a host: lines to its stdin, JSON lines from its stdout."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.lines: "queue.Queue[Optional[object]]" = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(EOFError("the process ended"))

    def send(self, line: str) -> None:
        """Write one line to the process (ignored once it has ended)."""
        with self._lock:
            try:
                self.process.stdin.write(line + "\n")
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    def receive(self, timeout: float):
        """The next object the process printed; ``TimeoutError`` after ``timeout`` seconds."""
        try:
            item = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"process {self.process.pid} silent for {timeout} s") from None
        if isinstance(item, EOFError):
            self.lines.put(item)  # every later call meets the end too
            raise item
        return item
