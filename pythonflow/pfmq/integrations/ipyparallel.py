"""Launch pfmq workers on every engine of an ipyparallel cluster with one call.

.. code-block:: python

    import secrets

    import ipyparallel as ipp
    from pythonflow import pfmq
    from pythonflow.pfmq.integrations.ipyparallel import start_workers

    key = secrets.token_hex(32)  # signs every message: nobody without it can submit work
    cluster = ipp.Cluster(n=8)
    view = cluster.start_and_connect_sync()[:]
    with pfmq.Broker('tcp://0.0.0.0:5555', key=key) as broker:
        workers = start_workers(view, 'mypackage.graphs:augment', 'tcp://trainer-host:5555',
                                key=key)
        try:
            for batch in broker.imap(requests):
                ...
        finally:
            workers.stop()

Each engine runs one worker in a background thread, so the engine stays free to answer
ipyparallel (for :meth:`EngineWorkers.stop` and :meth:`EngineWorkers.status`). The engines must
reach the broker's backend: a TCP address of the broker's machine, not ``inproc://``. What the
workers evaluate is a graph (sent by pickle, so the functions it uses must be importable on the
engines) or a ``"package.module:graph"`` reference (see :mod:`pythonflow.pfmq.launch`).
A broker bound beyond loopback needs a key (or CURVE with an allow-list of clients): without one,
anyone who can reach it can submit work. Here the key travels to the engines as an argument over
ipyparallel's own connections; where those are not private, set ``PFMQ_KEY`` in the engines'
environment instead and leave ``key=`` out.
"""
import logging
import os
import threading
import uuid
from typing import Any, List, Optional

from .. import launch
from ..transport import check_address

LOGGER = logging.getLogger(__name__)

# On an engine: handle id -> (worker, thread, outcome dict) of the workers started there.
_RUNNING = {}


def _engine_start(spec, address, worker_options, handle_id):
    """Runs on an engine: start a worker thread and return this engine's process id."""
    from pythonflow.pfmq.worker import Worker

    worker = Worker(launch.unpack_target(spec), address, **worker_options)
    outcome = {"error": None}

    def run():
        try:
            worker.run()
            error = worker.error  # run() returns when the worker gave up waiting for a broker
        except Exception as exc:
            error = exc
        if error is not None:  # kept for status() and stop()
            outcome["error"] = f"{type(error).__name__}: {error}"

    thread = threading.Thread(target=run, name=f"pfmq-worker-{handle_id[:8]}", daemon=True)
    thread.start()
    _RUNNING[handle_id] = (worker, thread, outcome)
    return os.getpid()


def _engine_report(handle_id, stop=False, timeout=None):
    """Runs on an engine: describe (and optionally stop) the worker of ``handle_id``."""
    entry = _RUNNING.get(handle_id)
    if entry is None:
        return {"pid": os.getpid(), "running": False, "executed": 0, "error": "no such worker"}
    worker, thread, outcome = entry
    if stop:
        worker.cancel(timeout=timeout)
        thread.join(timeout)
        if not thread.is_alive():
            del _RUNNING[handle_id]
    return {"pid": os.getpid(), "running": thread.is_alive(), "executed": worker.executed,
            "error": outcome["error"]}


class EngineWorkers:
    """The pfmq workers started by :func:`start_workers`; stop them with :meth:`stop`.

    Also a context manager that stops the workers on exit.

    Attributes
    ----------
    view : ipyparallel.DirectView
        The engines the workers run on.
    pids : list of int
        Process ids of those engines.
    """

    def __init__(self, view, handle_id: str, pids: List[int]):
        self.view = view
        self.handle_id = handle_id
        self.pids = pids
        self.stopped = False

    def status(self) -> List[dict]:
        """Per engine: ``pid``, ``running``, requests ``executed`` and any ``error``."""
        return self.view.apply_sync(_engine_report, self.handle_id)

    def stop(self, timeout: float = 10.0) -> List[dict]:
        """Stop the workers (each finishes the request it evaluates) and return their status."""
        report = self.view.apply_sync(_engine_report, self.handle_id, True, timeout)
        self.stopped = True
        return report

    def __enter__(self) -> "EngineWorkers":
        return self

    def __exit__(self, *exc_info):
        if not self.stopped:
            self.stop()

    def __len__(self) -> int:
        return len(self.pids)


def start_workers(view, graph_or_reference: Any, address: str,
                  **worker_options) -> EngineWorkers:
    """Start a pfmq worker on every engine of ``view``, serving ``graph_or_reference``.

    Parameters
    ----------
    view : ipyparallel.DirectView or ipyparallel.Client
        The engines to use (a client stands for all its engines).
    graph_or_reference : pythonflow.Graph, callable or str
        What the workers evaluate: a graph, a callable target or an importable
        ``"package.module:graph"`` reference.
    address : str
        The broker's backend address as seen from the engines, e.g. ``tcp://10.0.0.5:5555``.
    **worker_options
        Keyword arguments for :class:`~pythonflow.pfmq.Worker`, such as ``prefetch``.

    Returns
    -------
    EngineWorkers
        Call its :meth:`~EngineWorkers.stop` to stop the workers.
    """
    check_address(address)
    if address.startswith("inproc://") or "*" in address:
        raise ValueError(f"engines cannot connect to {address!r}: give the broker's resolved "
                         "tcp:// (or, on one machine, ipc://) backend address")
    import ipyparallel  # absolute import: the package, not this module

    if isinstance(view, ipyparallel.Client):
        view = view[:]
    if not isinstance(view, ipyparallel.DirectView):
        raise TypeError(f"expected an ipyparallel DirectView, not {type(view).__name__}")
    spec = launch.pack_target(graph_or_reference)
    handle_id = uuid.uuid4().hex
    try:
        pids = view.apply_sync(_engine_start, spec, address, worker_options, handle_id)
    except BaseException:
        _stop_quietly(view, handle_id)
        raise
    LOGGER.info("started pfmq workers on %d engines for %s", len(pids), address)
    return EngineWorkers(view, handle_id, list(pids))


def _stop_quietly(view, handle_id: str, timeout: Optional[float] = 5.0) -> None:
    """Stop whatever workers of ``handle_id`` did start when starting others failed."""
    try:
        view.apply_sync(_engine_report, handle_id, True, timeout)
    except Exception as exc:
        LOGGER.warning("could not stop the workers that did start: %s", exc)
