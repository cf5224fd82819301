"""Distributed evaluation of pythonflow graphs (and any callable) over ZeroMQ.

``sink = map(transformation, source)`` spread over processes and machines: a :class:`Broker`
hands requests from :class:`Task` objects (``broker.apply``, ``broker.imap``) to :class:`Worker`
processes and routes the results back. See :mod:`pythonflow.pfmq.protocol` for the wire format,
:mod:`pythonflow.pfmq.security` for CurveZMQ and :mod:`pythonflow.pfmq.serializers` for a
serializer that cannot run code.

The library is the modules of this package, one concern each::

    task.py, stream.py, reader.py   a task: requests out, results back in order (Task, apply)
    position.py                     where a stream stands: state_dict() and resume=
    broker.py                       the broker's sockets and loop (Broker)
    scheduler.py, records.py        the broker's decisions, and what it knows of jobs and peers
    worker.py, lifecycle.py         a worker and its named states (Worker, Service)
    connections.py, jobs.py         a worker's two connections; evaluating one job
    liveness.py                     heartbeat clocks: pings, silence, retries
    protocol.py                     frames, kinds, outcome codes, signatures (Wire)
    serialization.py                pickle, callables and msgpack into frames (serializers.py:
                                    the msgpack serializer's first address)
    transport.py                    sockets: dealer, draining, wake-ups, rate-limited logs
    shm.py                          large frames through shared memory on one host
    security.py, zap.py             keys, CurveZMQ, and the handler that lets clients in
    errors.py                       every exception, importing nothing of the package
    cluster.py, launch.py, cli.py   local clusters, worker processes, the pfmq command
    status.py                       pfmq status and its --watch view
    supervisor.py                   replacing dead worker processes (CrashLoopError)
    deadline.py                     request deadlines: the worker's watchdog, the broker's verdict
    memory.py                       max_memory: sizes, resident memory, the check after each job
    torch.py                        the address of integrations.torch.IterableDataset

Three sub-packages are built on it and not imported by it: :mod:`pythonflow.pfmq.demo` (the
``pfmq demo`` image pipeline, with the ``demo`` extra), :mod:`pythonflow.pfmq.bench` (the ``pfmq
bench`` performance suite) and :mod:`pythonflow.pfmq.integrations` (adapters to other tools,
such as ipyparallel, PyTorch).
"""
from . import security, serializers
from .broker import Broker
from .cluster import LocalCluster
from .errors import (
    MemoryLimitError,
    ProtocolError,
    RemoteError,
    RequestTimeoutError,
    SerializationError,
    WorkerDiedError,
)
from .security import CurveClient, CurveServer
from .serialization import CallableSerializer, PickleSerializer, Serializer
from .serializers import MsgpackSerializer
from .shm import SharedMemory
from .supervisor import CrashLoopError
from .task import Task, apply, query_status
from .worker import GraphTarget, Worker

__all__ = [
    "Broker", "Worker", "GraphTarget", "Task", "apply", "query_status", "LocalCluster",
    "RemoteError", "WorkerDiedError", "ProtocolError", "SerializationError", "Serializer",
    "PickleSerializer", "CallableSerializer", "MsgpackSerializer", "CurveServer", "CurveClient",
    "security", "serializers", "CrashLoopError", "SharedMemory", "MemoryLimitError",
    "RequestTimeoutError",
]
