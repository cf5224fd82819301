"""Network namespaces for partition tests and the soak: hosts on a private bridge whose links a
test cuts.

:class:`Network` makes one namespace per host and one for a bridge, and joins each host to the
bridge with a veth pair. The hosts' ``10.x.y.n`` addresses exist only inside those namespaces,
so nothing outside them can reach or be reached. A test runs processes on a host with
:meth:`Network.popen` (``ip netns exec``), cuts a host's link at its bridge port with
:meth:`Network.cut` (the host keeps its address and sees nothing but silence, as when a cable is
pulled) and mends it with :meth:`Network.restore`. :meth:`Network.close` ends every process and
removes every namespace, also after a failure. Namespace names carry this process's id, so
concurrent test runs do not meet.

Needs root and ``ip`` (iproute2); :func:`unavailable` says why namespaces cannot be made here.
"""
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
from typing import List, Optional, Sequence

LOGGER = logging.getLogger(__name__)
_PREFIX = "pfq"  # namespaces made here are called pfq<pid>-<run>-<host>
_NAME = re.compile(rf"^{_PREFIX}(\d+)-")
_runs = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unavailable() -> Optional[str]:
    """None if network namespaces can be made here, else the reason why not."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"{_PREFIX}{os.getpid()}-probe"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def remove_stale_namespaces() -> None:
    """Remove namespaces left by test runs whose process is gone (killed before cleaning up)."""
    listing = _ip("netns", "list", check=False).stdout
    for name in (line.split()[0] for line in listing.splitlines() if line.strip()):
        match = _NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _kill_namespace_processes(name)
            _ip("netns", "del", name, check=False)


def _kill_namespace_processes(namespace: str) -> None:
    for pid in _ip("netns", "pids", namespace, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


class Network:
    """Hosts on one bridge, each in a namespace of its own (see the module docstring).

    Parameters
    ----------
    hosts : sequence of str
        Short names of the hosts; host ``i`` gets the address ``10.<a>.<b>.<i + 1>``.
    """

    def __init__(self, hosts: Sequence[str]):
        run = f"{_PREFIX}{os.getpid()}-{next(_runs)}"
        self.bridge = f"{run}-bridge"
        self.hosts = list(hosts)
        self.namespaces = {host: f"{run}-{host}" for host in self.hosts}
        # Private addresses; the subnet varies with the run only to ease reading logs.
        subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() // 50 % 256}"
        self.addresses = {host: f"{subnet}.{index + 1}" for index, host in enumerate(self.hosts)}
        self._ports = {host: f"port{index}" for index, host in enumerate(self.hosts)}
        self._made: List[str] = []
        self._processes: List[subprocess.Popen] = []

    def __enter__(self) -> "Network":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _build(self):
        remove_stale_namespaces()
        for namespace in [self.bridge, *self.namespaces.values()]:
            _ip("netns", "add", namespace)
            self._made.append(namespace)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for host, namespace in self.namespaces.items():
            port = self._ports[host]
            _ip("link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", port,
                "netns", self.bridge)
            _ip("-n", self.bridge, "link", "set", port, "master", "br0")
            _ip("-n", self.bridge, "link", "set", port, "up")
            _ip("-n", namespace, "addr", "add", f"{self.addresses[host]}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def popen(self, host: str, argv: Sequence[str], **options) -> subprocess.Popen:
        """Start ``argv`` on ``host``; the process is ended by :meth:`close`."""
        process = subprocess.Popen(["ip", "netns", "exec", self.namespaces[host], *argv],
                                   **options)
        self._processes.append(process)  # ip netns exec execs argv: the same PID
        return process

    def cut(self, host: str) -> None:
        """Pull ``host``'s cable: its bridge port goes down, its packets go nowhere."""
        _ip("-n", self.bridge, "link", "set", self._ports[host], "down")

    def restore(self, host: str) -> None:
        """Plug ``host``'s cable back in."""
        _ip("-n", self.bridge, "link", "set", self._ports[host], "up")

    def close(self) -> None:
        """End every process started here (by PID) and remove every namespace."""
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self._processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                LOGGER.warning("process %d ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait(5)
        for namespace in reversed(self._made):
            _kill_namespace_processes(namespace)  # anything our processes started there
            _ip("netns", "del", namespace, check=False)
        self._made.clear()

    def existing(self) -> List[str]:
        """Namespaces of this network that exist now."""
        listing = _ip("netns", "list", check=False).stdout
        names = {line.split()[0] for line in listing.splitlines() if line.strip()}
        return [ns for ns in [self.bridge, *self.namespaces.values()] if ns in names]
