"""Pythonflow 0.3.0, the release pfmq replaces, as a baseline of the W4 round trip.

Its package is also called ``pythonflow``, so it cannot share a process with this one: its broker
(with the ``apply`` calls being timed) and its worker each run in a process of their own, started
with the directory holding it first on ``sys.path`` (see :mod:`.pf030_peer`). Install it apart,
for instance with ``pip install --no-deps --target DIR pythonflow==0.3.0``, and point the suite at
``DIR`` (``--pythonflow-030 DIR`` or the ``PYTHONFLOW_030`` environment variable), or let the suite
install it into a cache directory (``--install-pythonflow-030``).
"""
import glob
import json
import os
import subprocess
import sys
from typing import Optional

import numpy as np

from .harness import STARTUP_TIMEOUT, end, free_port

VERSION = "0.3.0"
ENVIRONMENT_VARIABLE = "PYTHONFLOW_030"
PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pf030_peer.py")


def default_cache() -> str:
    """Where ``--install-pythonflow-030`` installs it: the user's cache directory."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pythonflow-bench", f"pythonflow-{VERSION}")


def locate(directory: str) -> str:
    """Return ``directory`` as an absolute path if it holds Pythonflow 0.3.0.

    Raises
    ------
    FileNotFoundError
        If it holds no ``pythonflow`` package.
    ValueError
        If the package installed there is another version.
    """
    directory = os.path.abspath(directory)
    if not os.path.isfile(os.path.join(directory, "pythonflow", "pfmq", "__init__.py")):
        raise FileNotFoundError(f"no Pythonflow {VERSION} in {directory} (install it with pip "
                                f"install --no-deps --target {directory} pythonflow=={VERSION})")
    versions = [os.path.basename(path)[len("pythonflow-"):-len(".dist-info")]
                for path in glob.glob(os.path.join(directory, "pythonflow-*.dist-info"))]
    if versions and VERSION not in versions:
        raise ValueError(f"{directory} holds Pythonflow {', '.join(versions)}, not {VERSION}")
    return directory


def install(directory: Optional[str] = None) -> str:
    """Install Pythonflow 0.3.0 from PyPI into ``directory`` (default :func:`default_cache`)
    unless it is there already; return the directory."""
    directory = os.path.abspath(directory or default_cache())
    try:
        return locate(directory)
    except FileNotFoundError:
        pass
    os.makedirs(directory, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    directory, f"pythonflow=={VERSION}"], check=True, timeout=300)
    return locate(directory)


def find(directory: Optional[str] = None, install_if_absent: bool = False) -> Optional[str]:
    """The baseline's directory: ``directory``, else ``PYTHONFLOW_030``, else the cache if asked
    to install it; ``None`` when it is absent."""
    directory = directory or os.environ.get(ENVIRONMENT_VARIABLE)
    if install_if_absent:
        return install(directory)
    return locate(directory) if directory else None


def round_trips(directory: str, count: int) -> np.ndarray:
    """p50/p99 (ms) of ``count`` sequential ``broker.apply`` calls of Pythonflow 0.3.0.

    The same request, work and timing as pfmq's W4: the broker and the calls in one process, the
    worker in another, connected over loopback TCP.
    """
    address = f"tcp://127.0.0.1:{free_port()}"
    command = [sys.executable, "-I", PEER, directory, address]
    worker = subprocess.Popen([*command, "worker"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    client = subprocess.Popen([*command, "client", str(count)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        out, err = client.communicate(timeout=STARTUP_TIMEOUT + count * 0.05)
        if client.returncode != 0:
            if worker.poll() is not None:
                err = worker.stderr.read()
            lines = err.strip().splitlines() or ["no message"]
            raise RuntimeError(f"the Pythonflow {VERSION} round trips failed: {lines[-1]}")
        return np.array(json.loads(out.splitlines()[-1]))
    finally:
        end(client)
        end(worker)
        worker.stderr.close()
