"""A broker and worker processes on this machine, as one context manager."""
import logging
import os
import shutil
import tempfile
import uuid
from typing import Any, List, Optional

from . import launch, shm
from .broker import Broker
from .deadline import check_request_timeout
from .memory import parse_size
from .supervisor import Supervisor, check_count

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

    A worker process that dies (SIGKILL, a segfault, the OOM killer) is replaced within seconds;
    the broker sends what it held to the others meanwhile, so an ``imap`` still yields every
    result once. Processes that die while loading the graph ``crash_limit`` times in a row end
    the cluster instead: :meth:`start` (or the next :meth:`apply`, :meth:`imap` or
    :meth:`stats`) raises :class:`~pythonflow.pfmq.supervisor.CrashLoopError` with the last lines
    the worker wrote to stderr, and the broker stops, so that running tasks end with a
    ``TimeoutError`` instead of waiting for ever. See :mod:`pythonflow.pfmq.supervisor`.

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
    crash_limit : int
        Deaths of a worker process during start-up in a row that end the cluster.
    shared_memory : bool or SharedMemory, optional
        Large arrays between this process and the workers go through shared memory instead of
        the sockets (see :mod:`pythonflow.pfmq.shm`), both ways; on by default where the system
        has it (Linux), since the workers are on this host. ``False`` turns it off, a
        :class:`~pythonflow.pfmq.shm.SharedMemory` sets the size from which an array goes.
    request_timeout : float, optional
        The deadline of each request of :meth:`apply` and :meth:`imap` that do not give their
        own (see :class:`~pythonflow.pfmq.Task`); ``None``, the default, sets none. A worker
        process that runs a request past it ends and is replaced at once.
    **worker_options
        Keyword arguments for :class:`~pythonflow.pfmq.Worker`, such as ``prefetch``; a ``key``
        is given to the broker as well. With ``max_memory`` (bytes, or a size such as
        ``"2GiB"``), a worker process whose resident memory passes it after a request hands its
        prefetched jobs back, exits and is replaced at once (see :attr:`recycles`).
    """

    def __init__(self, graph: Any, num_workers: Optional[int] = None, *,
                 address: Optional[str] = None, frontend_address: Optional[str] = None,
                 startup_timeout: float = 60.0, stop_timeout: float = 5.0,
                 broker_options: Optional[dict] = None, log_level: int = logging.WARNING,
                 crash_limit: int = 3, shared_memory: shm.Option = None,
                 request_timeout: Optional[float] = None, **worker_options):
        if num_workers is None:
            num_workers = launch.default_num_workers()
        self.num_workers = check_count(num_workers, "num_workers")
        self.crash_limit = check_count(crash_limit, "crash_limit")
        self.request_timeout = check_request_timeout(request_timeout)
        self.spec = launch.pack_target(graph)
        self.address = address
        self.frontend_address = frontend_address
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.broker_options = dict(broker_options or {})
        if "key" in worker_options:
            self.broker_options.setdefault("key", worker_options["key"])
        self.log_level = log_level
        if worker_options.get("max_memory") is not None:  # a mistake is told here, not in a worker
            worker_options["max_memory"] = parse_size(worker_options["max_memory"])
        if shared_memory is None:
            shared_memory = shm.available()
        shm.resolve(shared_memory, None)  # a bad value fails here, not in every worker
        self.shared_memory = shared_memory
        self.worker_options = {**worker_options, "shared_memory": shared_memory}
        self.broker: Optional[Broker] = None
        self.supervisor: Optional[Supervisor] = None
        self._tempdir = None

    @property
    def pids(self) -> List[int]:
        """Process ids of the worker processes alive now (they change when one is replaced)."""
        return self.supervisor.pids if self.supervisor is not None else []

    @property
    def processes(self) -> list:
        """The last ``multiprocessing.Process`` of each worker slot."""
        return self.supervisor.processes if self.supervisor is not None else []

    @property
    def restarts(self) -> int:
        """Worker processes started in place of ones that died or were recycled."""
        return self.supervisor.restarts if self.supervisor is not None else 0

    @property
    def recycles(self) -> int:
        """Worker processes replaced because they passed ``max_memory``."""
        return self.supervisor.recycles if self.supervisor is not None else 0

    def start(self) -> "LocalCluster":
        """Start the broker and the workers; returns once every worker has registered.

        Raises
        ------
        CrashLoopError
            If the processes of a worker slot die during start-up ``crash_limit`` times in a row
            (a ``RuntimeError``).
        TimeoutError
            If not all workers registered within ``startup_timeout`` seconds.
        """
        if self.broker is not None:
            raise RuntimeError("the cluster is already running")
        try:
            self.broker = Broker(self._backend_address(), self.frontend_address,
                                 **self.broker_options)
            self.broker.run_async()
            self.supervisor = Supervisor(
                self.spec, self.broker.backend_address, self.num_workers, self.worker_options,
                self.log_level, crash_limit=self.crash_limit, stop_timeout=self.stop_timeout)
            self.supervisor.run_async(on_failure=self._on_pool_failure)
            launch.wait_for_workers(self.broker, self.num_workers, self.startup_timeout,
                                    check=self.supervisor.check)
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

    def _on_pool_failure(self, error: Exception) -> None:
        # Without workers for good (a crash loop, say), a running task would wait for ever;
        # without a broker it ends after its timeouts. The supervisor stopped the workers.
        broker = self.broker
        if broker is not None:
            broker.cancel(timeout=self.stop_timeout)

    def close(self) -> None:
        """Stop the worker processes and the broker (safe to call more than once)."""
        try:
            if self.supervisor is not None:
                self.supervisor.stop()
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
        if self.supervisor is not None:
            self.supervisor.check()
        if self.broker is None:
            raise RuntimeError("the cluster is not running; use it in a with block")
        return self.broker

    def apply(self, request, **task_options) -> Any:
        """Evaluate one request on a worker (see :meth:`pythonflow.pfmq.Broker.apply`)."""
        task_options.setdefault("shared_memory", self.shared_memory)
        task_options.setdefault("request_timeout", self.request_timeout)
        return self._running_broker().apply(request, **task_options)

    def imap(self, requests, **task_options):
        """Evaluate requests on the workers (see :meth:`pythonflow.pfmq.Broker.imap`); with
        ``resume=task.state_dict()``, continue an earlier task over the same requests."""
        task_options.setdefault("shared_memory", self.shared_memory)
        task_options.setdefault("request_timeout", self.request_timeout)
        return self._running_broker().imap(requests, **task_options)

    def stats(self) -> dict:
        """The broker's statistics (see :meth:`pythonflow.pfmq.Broker.stats`)."""
        return self._running_broker().stats()
