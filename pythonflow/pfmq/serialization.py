"""Serialisation of requests and results into ZeroMQ frames.

A serializer turns an object into a list of frames and back. The default, :class:`PickleSerializer`,
uses pickle protocol 5: buffers of at least ``threshold`` bytes (numpy arrays, ``bytes``,
``bytearray``) leave the pickle stream *out of band* and become frames of their own, which pyzmq
sends without copying and the receiver hands back to pickle as views of the received message. An
8 MiB array therefore crosses task, broker and worker without being copied by the library.

User-supplied ``dumps``/``loads`` (as in Pythonflow: object to ``bytes`` and back) are wrapped by
:class:`CallableSerializer` and travel as one frame.
"""
import pickle
from typing import Any, Callable, List, Optional

from .errors import SerializationError
from .protocol import ERROR, SERIALIZATION_ERROR

__all__ = ["SerializationError", "Serializer", "PickleSerializer", "CallableSerializer",
           "make_serializer"]


def _view(frame):
    """A buffer over a received frame without copying it."""
    return getattr(frame, "buffer", frame)


class Serializer:
    """Turns objects into frames and back; subclasses define :meth:`encode` and :meth:`decode`."""

    def encode(self, obj: Any) -> list:
        """Return the frames that represent ``obj``."""
        raise NotImplementedError

    def decode(self, frames: list) -> Any:
        """Return the object represented by ``frames``."""
        raise NotImplementedError


class PickleSerializer(Serializer):
    """Pickle protocol 5 with large buffers sent out of band, each as a frame of its own.

    Parameters
    ----------
    threshold : int
        Buffers smaller than this many bytes stay inside the pickle stream, where copying them is
        cheaper than a frame of their own.
    """

    def __init__(self, threshold: int = 1 << 16):
        self.threshold = threshold

    def encode(self, obj):
        buffers = []

        def keep_large_buffers_apart(buffer):
            if buffer.raw().nbytes < self.threshold:
                return True  # serialise in band
            buffers.append(buffer)
            return False

        try:
            data = pickle.dumps(obj, protocol=5, buffer_callback=keep_large_buffers_apart)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {type(obj).__name__}: {exc}") from exc
        return [data, *buffers]

    def decode(self, frames):
        try:
            return pickle.loads(_view(frames[0]), buffers=[_view(f) for f in frames[1:]])
        except Exception as exc:
            raise SerializationError(f"cannot unpickle: {exc}") from exc


class CallableSerializer(Serializer):
    """Wraps a ``dumps``/``loads`` pair working on ``bytes``; the object travels as one frame."""

    def __init__(self, dumps: Callable[[Any], bytes], loads: Callable[[bytes], Any]):
        self.dumps = dumps
        self.loads = loads

    def encode(self, obj):
        try:
            return [self.dumps(obj)]
        except Exception as exc:
            raise SerializationError(f"cannot serialise {type(obj).__name__}: {exc}") from exc

    def decode(self, frames):
        if len(frames) != 1:
            raise SerializationError(f"expected one frame, got {len(frames)}")
        try:
            return self.loads(bytes(_view(frames[0])))
        except Exception as exc:
            raise SerializationError(f"cannot deserialise: {exc}") from exc


def make_serializer(dumps: Optional[Callable] = None, loads: Optional[Callable] = None,
                    serializer: Optional[Serializer] = None) -> Serializer:
    """Return the serializer for a peer's ``dumps``/``loads``/``serializer`` options."""
    if serializer is not None:
        if dumps is not None or loads is not None:
            raise ValueError("give either serializer or dumps/loads, not both")
        if isinstance(serializer, str):
            from . import serializers  # optional extras live there

            return serializers.by_name(serializer)
        return serializer
    if dumps is None and loads is None:
        return PickleSerializer()
    return CallableSerializer(dumps or pickle.dumps, loads or pickle.loads)


def encode_outcomes(serializer: Serializer, outcomes: List[tuple]) -> list:
    """Encode a job's outcomes; an outcome that cannot be encoded becomes a serialisation error.

    The whole list is tried first, since that is one pickle stream for the whole job; only when it
    fails are outcomes encoded one by one to find the culprits.
    """
    try:
        return serializer.encode(outcomes)
    except SerializationError:
        pass
    checked = []
    for outcome in outcomes:
        try:
            serializer.encode(outcome)
            checked.append(outcome)
        except SerializationError as exc:
            if outcome[0] == ERROR:  # keep the remote traceback, lose the exception object
                checked.append((ERROR, None, outcome[2]))
            else:
                checked.append((SERIALIZATION_ERROR, f"the result cannot be serialised: {exc}"))
    return serializer.encode(checked)
