"""Serializers that cannot run code, under the name they were first documented by.

:class:`MsgpackSerializer` and its helpers live in :mod:`pythonflow.pfmq.serialization`, beside
pickle and user-supplied callables; this module gives them their first address too.
"""
from .serialization import MsgpackSerializer, by_name, dumps, loads

__all__ = ["MsgpackSerializer", "by_name", "dumps", "loads"]
