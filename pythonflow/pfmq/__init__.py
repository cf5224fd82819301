"""Distributed evaluation of pythonflow graphs (and any callable) over ZeroMQ.

``sink = map(transformation, source)`` spread over processes and machines: a :class:`Broker`
hands requests from :class:`Task` objects (``broker.apply``, ``broker.imap``) to :class:`Worker`
processes and routes the results back. See :mod:`pythonflow.pfmq.protocol` for the wire format,
:mod:`pythonflow.pfmq.security` for CurveZMQ and :mod:`pythonflow.pfmq.serializers` for a
serializer that cannot run code.

The library is the modules of this package. Three sub-packages are built on it and not imported
by it: :mod:`pythonflow.pfmq.demo` (the ``pfmq demo`` image pipeline, with the ``demo`` extra),
:mod:`pythonflow.pfmq.bench` (the ``pfmq bench`` performance suite) and
:mod:`pythonflow.pfmq.integrations` (adapters to other tools, such as ipyparallel).
"""
from . import security, serializers
from .broker import Broker
from .cluster import LocalCluster
from .errors import ProtocolError, RemoteError, SerializationError, WorkerDiedError
from .security import CurveClient, CurveServer
from .serialization import CallableSerializer, PickleSerializer, Serializer
from .serializers import MsgpackSerializer
from .task import Task, apply, query_status
from .worker import GraphTarget, Worker

__all__ = [
    "Broker", "Worker", "GraphTarget", "Task", "apply", "query_status", "LocalCluster",
    "RemoteError", "WorkerDiedError", "ProtocolError", "SerializationError", "Serializer",
    "PickleSerializer", "CallableSerializer", "MsgpackSerializer", "CurveServer", "CurveClient",
    "security", "serializers",
]
