"""Distributed evaluation of pythonflow graphs (and any callable) over ZeroMQ.

``sink = map(transformation, source)`` spread over processes and machines: a :class:`Broker`
hands requests from :class:`Task` objects (``broker.apply``, ``broker.imap``) to :class:`Worker`
processes and routes the results back. See :mod:`pythonflow.pfmq.protocol` for the wire format.
"""
from .broker import Broker
from .cluster import LocalCluster as LocalCluster
from .serialization import PickleSerializer, SerializationError, Serializer
from .task import RemoteError, Task, WorkerDiedError, apply, query_status
from .worker import GraphTarget, Worker

__all__ = [
    "Broker", "Worker", "GraphTarget", "Task", "apply", "query_status", "RemoteError",
    "WorkerDiedError", "SerializationError", "Serializer", "PickleSerializer",
]
