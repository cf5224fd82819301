"""Serialisation of requests and results into ZeroMQ frames: pickle, callables and msgpack.

Data flow::

    object --Serializer.encode--> [frame, frame, ...] --ZeroMQ, no copies--> Serializer.decode
    (a task's requests, a worker's outcomes)                               --> the same object

A :class:`Serializer` turns an object into a list of frames and back; a peer picks one with its
``dumps``/``loads``/``serializer`` options (:func:`make_serializer`), and tasks and workers must
agree.

* :class:`PickleSerializer`, the default, uses pickle protocol 5: buffers of at least
  ``threshold`` bytes (numpy arrays, ``bytes``, ``bytearray``) leave the pickle stream *out of
  band* and become frames of their own, which pyzmq sends without copying and the receiver hands
  back to pickle as views of the received message. An 8 MiB array therefore crosses task, broker
  and worker without being copied by the library.
* :class:`CallableSerializer` wraps user-supplied ``dumps``/``loads`` (as in Pythonflow: object
  to ``bytes`` and back); the object travels as one frame.
* :class:`MsgpackSerializer` (``serializer="msgpack"``) cannot run code where it decodes: pickle
  lets whoever can send a payload run code where it is loaded, msgpack only ever builds plain
  data. It needs the optional msgpack package: ``pip install pythonflow[msgpack]``.

:func:`encode_outcomes` encodes a job's outcomes so that one result that cannot be encoded fails
alone.
"""
import builtins
import pickle
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np

from .errors import RemoteError, SerializationError
from .protocol import ERROR, SERIALIZATION_ERROR, BytesLike, Frame, frame_buffer

__all__ = ["Serializer", "PickleSerializer", "CallableSerializer", "MsgpackSerializer",
           "make_serializer", "by_name", "encode_outcomes", "dumps", "loads", "Dumps", "Loads"]

#: A user-supplied serialiser, object to ``bytes``, and its inverse.
Dumps = Callable[[Any], bytes]
Loads = Callable[[bytes], Any]


class Serializer:
    """Turns objects into frames and back; subclasses define :meth:`encode` and :meth:`decode`."""

    def encode(self, obj: Any) -> List[BytesLike]:
        """Return the frames that represent ``obj``."""
        raise NotImplementedError

    def decode(self, frames: Sequence[Frame]) -> Any:
        """Return the object represented by ``frames``."""
        raise NotImplementedError


# -- pickle and callables ----------------------------------------------------------------------


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

    def encode(self, obj: Any) -> List[BytesLike]:
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

    def decode(self, frames: Sequence[Frame]) -> Any:
        try:
            return pickle.loads(frame_buffer(frames[0]),
                                buffers=[frame_buffer(frame) for frame in frames[1:]])
        except Exception as exc:
            raise SerializationError(f"cannot unpickle: {exc}") from exc


class CallableSerializer(Serializer):
    """Wraps a ``dumps``/``loads`` pair working on ``bytes``; the object travels as one frame.

    Parameters
    ----------
    dumps : callable
        Object to ``bytes``.
    loads : callable
        ``bytes`` to object.
    """

    def __init__(self, dumps: Dumps, loads: Loads):
        self.dumps = dumps
        self.loads = loads

    def encode(self, obj: Any) -> List[BytesLike]:
        try:
            return [self.dumps(obj)]
        except Exception as exc:
            raise SerializationError(f"cannot serialise {type(obj).__name__}: {exc}") from exc

    def decode(self, frames: Sequence[Frame]) -> Any:
        if len(frames) != 1:
            raise SerializationError(f"expected one frame, got {len(frames)}")
        try:
            return self.loads(bytes(frame_buffer(frames[0])))
        except Exception as exc:
            raise SerializationError(f"cannot deserialise: {exc}") from exc


# -- msgpack: plain data only ------------------------------------------------------------------

# Extension type codes.
_TUPLE = 1
_ARRAY_INLINE = 2  # [dtype, shape, data]
_ARRAY_FRAME = 3  # [dtype, shape, frame index]
_SCALAR = 4  # [dtype, data]
_EXCEPTION = 5  # [type name, args, message]

# Built-in exceptions that a peer must not be able to raise at the consumer under their own name.
_NOT_REBUILT = {"SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseExceptionGroup",
                "ExceptionGroup"}


def _msgpack():
    try:
        import msgpack
    except ImportError:
        raise ImportError("the msgpack serializer needs the msgpack package: "
                          "pip install pythonflow[msgpack]") from None
    return msgpack


def _plain(value) -> bool:
    """Whether ``value`` is made of types msgpack carries as such (for exception arguments)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    return False


def _safe_dtype(text: str) -> np.dtype:
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError):
        raise SerializationError(f"unknown dtype {text!r}") from None
    if dtype.hasobject:
        raise SerializationError("arrays of Python objects cannot be sent with msgpack")
    return dtype


def _array_bytes(array: np.ndarray):
    """A flat byte view of a C-contiguous copy (or the array itself) for a frame."""
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array.reshape(-1).view(np.uint8)


def _dtype_text(dtype: np.dtype) -> str:
    if dtype.hasobject:
        raise TypeError("arrays of Python objects cannot be sent with msgpack")
    if dtype.fields is not None:
        raise TypeError("structured arrays cannot be sent with msgpack")
    return dtype.str


class MsgpackSerializer(Serializer):
    """msgpack with numpy support; decoding never imports or calls anything the sender names.

    Decoding only ever builds plain data: ``None``, booleans, numbers, strings, ``bytes``, lists,
    dicts, and the few extension types below. Use it (``serializer="msgpack"``) on every task and
    worker where no peer may run code on another.

    Parameters
    ----------
    threshold : float
        Arrays of at least this many bytes travel as frames of their own, without copies; smaller
        ones stay inside the msgpack stream. Use ``float('inf')`` for a single frame.

    Notes
    -----
    What travels:

    * tuples stay tuples (an extension type), lists stay lists;
    * numpy arrays of numeric, boolean, string, bytes, ``datetime64``/``timedelta64`` or void
      dtypes: the dtype and shape go in the msgpack stream, the data as a ZeroMQ frame of its own
      when it holds at least ``threshold`` bytes (sent without a copy; the received array is a
      view of the received frame, made with ``np.frombuffer``), else inline. Object arrays are
      refused;
    * numpy scalars (``np.float32(1.5)``) come back as numpy scalars of the same type;
    * exceptions travel as their type name and arguments: built-in exception types
      (``ValueError``, ``KeyError``, ...) are rebuilt as such; any other type arrives as a
      :class:`~pythonflow.pfmq.RemoteError` whose ``remote_type`` names it.

    Everything else (sets, custom classes, graphs) raises :class:`SerializationError`.
    """

    def __init__(self, threshold: float = 1 << 16):
        self._msgpack = _msgpack()
        self.threshold = threshold

    # -- encoding --------------------------------------------------------------------------------

    def encode(self, obj: Any) -> List[BytesLike]:
        frames = [None]

        def pack(value):
            # A packer of its own for each nested value: a msgpack Packer is not reentrant.
            return self._msgpack.packb(value, default=lambda item: self._ext(item, frames, pack),
                                       use_bin_type=True, strict_types=True)

        try:
            frames[0] = pack(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"msgpack cannot encode {type(obj).__name__}: {exc}") from exc
        finally:
            pack = None  # the closure refers to itself: a cycle would keep the frames alive
        return frames

    def _ext(self, value, frames, pack):
        ext = self._msgpack.ExtType
        if isinstance(value, tuple):
            return ext(_TUPLE, pack(list(value)))
        if isinstance(value, np.ndarray):
            dtype = _dtype_text(value.dtype)
            data = _array_bytes(value)
            if data.nbytes >= self.threshold:
                frames.append(data)
                return ext(_ARRAY_FRAME, pack([dtype, list(value.shape), len(frames) - 1]))
            return ext(_ARRAY_INLINE, pack([dtype, list(value.shape), data.tobytes()]))
        if isinstance(value, np.generic):
            return ext(_SCALAR, pack([_dtype_text(value.dtype), value.tobytes()]))
        if isinstance(value, BaseException):
            args = [arg if _plain(arg) else repr(arg) for arg in value.args]
            return ext(_EXCEPTION, pack([type(value).__qualname__, args, str(value)]))
        if isinstance(value, (list, dict, bool, int, float, str, bytes)):  # a subclass
            return _plain_copy(value)
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        raise TypeError(f"msgpack cannot carry {type(value).__module__}.{type(value).__name__}")

    # -- decoding --------------------------------------------------------------------------------

    def decode(self, frames: Sequence[Frame]) -> Any:
        if not frames:
            raise SerializationError("no frames to decode")
        buffers = [frame_buffer(frame) for frame in frames]

        def ext_hook(code, data):
            return self._from_ext(code, data, buffers, unpack)

        def unpack(data):
            return self._msgpack.unpackb(data, ext_hook=ext_hook, raw=False, use_list=True,
                                         strict_map_key=False)

        try:
            return unpack(buffers[0])
        except SerializationError:
            raise
        except Exception as exc:  # whatever malformed input makes msgpack or numpy raise
            raise SerializationError(f"cannot decode msgpack: {exc}") from exc
        finally:
            # The two closures refer to each other: left as a cycle they would keep the received
            # buffers (shared memory a sender waits for) until the garbage collector runs.
            ext_hook = unpack = None  # noqa: F841

    def _from_ext(self, code, data, buffers, unpack):
        if code == _TUPLE:
            return tuple(unpack(data))
        if code in (_ARRAY_INLINE, _ARRAY_FRAME):
            dtype_text, shape, source = unpack(data)
            dtype = _safe_dtype(dtype_text)
            if code == _ARRAY_FRAME:
                if not isinstance(source, int) or not 0 < source < len(buffers):
                    raise SerializationError(f"array frame {source!r} does not exist")
                source = buffers[source]
            count = 1
            for size in shape:
                if not isinstance(size, int) or size < 0:
                    raise SerializationError(f"bad array shape {shape!r}")
                count *= size
            if memoryview(source).nbytes != count * dtype.itemsize:
                raise SerializationError("array data does not match its shape and dtype")
            return np.frombuffer(source, dtype=dtype, count=count).reshape(shape)
        if code == _SCALAR:
            dtype_text, raw = unpack(data)
            dtype = _safe_dtype(dtype_text)
            if len(raw) != dtype.itemsize:
                raise SerializationError("scalar data does not match its dtype")
            return np.frombuffer(raw, dtype=dtype)[0]
        if code == _EXCEPTION:
            return _rebuild_exception(*unpack(data))
        raise SerializationError(f"unknown msgpack extension type {code}")


def _plain_copy(value):
    """Subclasses of plain types (an ``IntEnum``, an ``OrderedDict``) become the plain type."""
    for plain in (bool, int, float, str, bytes, list, dict):
        if isinstance(value, plain):
            return plain(value)
    raise TypeError(type(value).__name__)


def _rebuild_exception(type_name, args, message):
    """A built-in exception type by name, anything else as a RemoteError; never imports."""
    if not isinstance(type_name, str) or not isinstance(args, list):
        raise SerializationError("malformed exception")
    candidate = getattr(builtins, type_name, None) if type_name not in _NOT_REBUILT else None
    if isinstance(candidate, type) and issubclass(candidate, BaseException):
        try:
            return candidate(*args)
        except Exception:  # arguments the constructor does not take
            pass
    error = RemoteError(f"{type_name}: {message}")
    error.remote_type = type_name
    return error


def by_name(name: str) -> Serializer:
    """The serializer called ``name``: ``"msgpack"`` or ``"pickle"``."""
    if name == "msgpack":
        return MsgpackSerializer()
    if name == "pickle":
        return PickleSerializer()
    raise ValueError(f"unknown serializer {name!r}; choose msgpack or pickle")


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` as one msgpack ``bytes`` object (arrays inline); see :func:`loads`."""
    return bytes(MsgpackSerializer(threshold=float("inf")).encode(obj)[0])


def loads(data: bytes) -> Any:
    """Decode what :func:`dumps` made; never runs code."""
    return MsgpackSerializer().decode([data])


# -- choosing and using a serializer -----------------------------------------------------------


def make_serializer(dumps: Optional[Dumps] = None, loads: Optional[Loads] = None,
                    serializer: Union[Serializer, str, None] = None) -> Serializer:
    """Return the serializer for a peer's ``dumps``/``loads``/``serializer`` options.

    Parameters
    ----------
    dumps, loads : callable, optional
        Object to ``bytes`` and back; the one that is missing is pickle's.
    serializer : Serializer or str, optional
        A serializer, or its name (see :func:`by_name`); not together with ``dumps``/``loads``.
    """
    if serializer is not None:
        if dumps is not None or loads is not None:
            raise ValueError("give either serializer or dumps/loads, not both")
        if isinstance(serializer, str):
            return by_name(serializer)
        return serializer
    if dumps is None and loads is None:
        return PickleSerializer()
    return CallableSerializer(dumps or pickle.dumps, loads or pickle.loads)


def encode_outcomes(serializer: Serializer, outcomes: List[tuple]) -> List[BytesLike]:
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
