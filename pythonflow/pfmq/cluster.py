"""A broker and worker processes on this machine, as one context manager."""
import logging
import os
import shutil
import tempfile
import uuid
from typing import Any, Optional

from . import launch
from .broker import Broker

LOGGER = logging.getLogger(__name__)


class LocalCluster:
    """A broker and ``num_workers`` worker processes on this machine.

    The broker runs in a thread of this process and serves :meth:`apply` and :meth:`imap`; the
    workers are separate processes started with the ``spawn`` method, so the transformation runs
    in parallel, free of this process's global interpreter lock.

    .. code-block:: python

        with pfmq.LocalCluster(graph, num_workers=4) as cluster:
            for image in cluster.imap({'fetches': 'image', 'context': {'filename': name}}
                                      for name in filenames):
                ...

    Leaving the ``with`` block (also by an exception or Ctrl-C) stops every worker process: each
    gets SIGTERM and a few seconds to deliver what it is evaluating, then it is killed.

    Parameters
    ----------
    graph : pythonflow.Graph, callable or str
        What the workers evaluate: a graph (sent to the workers by pickle), an importable
        ``"package.module:graph"`` reference, or another callable target (see
        :mod:`pythonflow.pfmq.launch`).
    num_workers : int, optional
        Worker processes to start; defaults to the number of CPUs.
    address : str, optional
        The broker's backend address. Defaults to an ``ipc://`` address in a private temporary
        directory, so that no other user of the machine can connect, or to a free loopback TCP
        port where ``ipc://`` is not available.
    frontend_address : str, optional
        Address tasks connect to; defaults to an ``inproc://`` address serving this process.
    startup_timeout : float
        Seconds to wait for all workers to register with the broker.
    stop_timeout : float
        Seconds worker processes have to stop before they are killed.
    broker_options : dict, optional
        Keyword arguments for :class:`~pythonflow.pfmq.Broker`.
    log_level : int
        Logging level of the worker processes.
    **worker_options
        Keyword arguments for :class:`~pythonflow.pfmq.Worker`, such as ``prefetch``; a ``key``
        is given to the broker as well.
    """

    def __init__(self, graph: Any, num_workers: Optional[int] = None, *,
                 address: Optional[str] = None, frontend_address: Optional[str] = None,
                 startup_timeout: float = 60.0, stop_timeout: float = 5.0,
                 broker_options: Optional[dict] = None, log_level: int = logging.WARNING,
                 **worker_options):
        if num_workers is None:
            num_workers = launch.default_num_workers()
        if num_workers < 1:
            raise ValueError("num_workers must be at least 1")
        self.num_workers = num_workers
        self.spec = launch.pack_target(graph)
        self.address = address
        self.frontend_address = frontend_address
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.broker_options = dict(broker_options or {})
        if "key" in worker_options:
            self.broker_options.setdefault("key", worker_options["key"])
        self.log_level = log_level
        self.worker_options = worker_options
        self.broker: Optional[Broker] = None
        self.processes = []
        self._tempdir = None

    @property
    def pids(self) -> list:
        """Process ids of the worker processes."""
        return [process.pid for process in self.processes]

    def start(self) -> "LocalCluster":
        """Start the broker and the workers; returns once every worker has registered.

        Raises
        ------
        RuntimeError
            If a worker process exits during start-up.
        TimeoutError
            If not all workers registered within ``startup_timeout`` seconds.
        """
        if self.broker is not None:
            raise RuntimeError("the cluster is already running")
        try:
            self.broker = Broker(self._backend_address(), self.frontend_address,
                                 **self.broker_options)
            self.broker.run_async()
            self.processes = launch.start_processes(
                self.spec, self.broker.backend_address, self.num_workers, self.worker_options,
                self.log_level)
            launch.wait_for_workers(self.broker, self.num_workers, self.processes,
                                    self.startup_timeout)
        except BaseException:
            self.close()
            raise
        LOGGER.info("local cluster of %d workers serving on %s", self.num_workers,
                    self.broker.backend_address)
        return self

    def _backend_address(self):
        if self.address is not None:
            return self.address
        if os.name != "posix":
            return "tcp://127.0.0.1:*"
        self._tempdir = tempfile.mkdtemp(prefix="pfmq-")  # created with mode 0700
        return f"ipc://{self._tempdir}/{uuid.uuid4().hex[:8]}"

    def close(self) -> None:
        """Stop the worker processes and the broker (safe to call more than once)."""
        try:
            launch.stop_processes(self.processes, self.stop_timeout)
        finally:
            if self.broker is not None:
                self.broker.cancel(timeout=self.stop_timeout)
                self.broker = None
            if self._tempdir is not None:
                shutil.rmtree(self._tempdir, ignore_errors=True)
                self._tempdir = None

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc_info):
        self.close()

    def _running_broker(self) -> Broker:
        if self.broker is None:
            raise RuntimeError("the cluster is not running; use it in a with block")
        return self.broker

    def apply(self, request, **task_options) -> Any:
        """Evaluate one request on a worker (see :meth:`pythonflow.pfmq.Broker.apply`)."""
        return self._running_broker().apply(request, **task_options)

    def imap(self, requests, **task_options):
        """Evaluate requests on the workers (see :meth:`pythonflow.pfmq.Broker.imap`); with
        ``resume=task.state_dict()``, continue an earlier task over the same requests."""
        return self._running_broker().imap(requests, **task_options)

    def stats(self) -> dict:
        """The broker's statistics (see :meth:`pythonflow.pfmq.Broker.stats`)."""
        return self._running_broker().stats()
