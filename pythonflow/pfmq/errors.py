"""Every exception of pfmq, in a module that imports nothing of the package.

::

    ValueError   <- ProtocolError        a message that breaks the wire format (protocol)
    RuntimeError <- SerializationError   an object that cannot be encoded or decoded (serialization)
    RuntimeError <- RemoteError          a request that failed on a worker (raised at the task)
                    <- WorkerDiedError   every worker that ran the request died running it
RuntimeError <- MemoryLimitError     a worker passed its max_memory and stopped (worker.error)
TimeoutError <- RequestTimeoutError  a request ran past its deadline (request_timeout) too often

Which outcome of a request stands for which of them is decided by
:func:`pythonflow.pfmq.protocol.exception_for`, beside the outcome codes.
"""
from typing import Optional

__all__ = ["ProtocolError", "SerializationError", "RemoteError", "WorkerDiedError",
           "MemoryLimitError", "RequestTimeoutError"]


class ProtocolError(ValueError):
    """A message that does not follow the protocol (bad layout, version, kind or signature)."""


class SerializationError(RuntimeError):
    """An object could not be serialised or deserialised."""


class RemoteError(RuntimeError):
    """A request failed on a worker; ``traceback`` holds the worker's traceback as text.

    The exception raised by the transformation is re-raised at the consumer with its original
    type, chained to a ``RemoteError`` (its ``__cause__``). A ``StopIteration`` is re-raised
    inside a ``RuntimeError`` (its ``__cause__``), so that it cannot end the consumer's loop.

    Parameters
    ----------
    message : str
        What failed.
    traceback : str, optional
        The worker's traceback, appended to the message.
    """

    def __init__(self, message: str, traceback: Optional[str] = None):
        super().__init__(message if traceback is None else f"{message}\n\n{traceback}")
        self.traceback = traceback


class WorkerDiedError(RemoteError):
    """Every worker that ran a request died while running it."""


class MemoryLimitError(RuntimeError):
    """A worker's process held more resident memory than its ``max_memory`` after a request.

    The worker delivered that request, handed the jobs it had prefetched back to the broker and
    stopped; this is its :attr:`~pythonflow.pfmq.Worker.error`. A worker process exits with
    ``pythonflow.pfmq.launch.EXIT_RESTART`` then, to be replaced.

    Parameters
    ----------
    resident : int
        Bytes the process held.
    limit : int
        Its ``max_memory`` in bytes.
    """

    def __init__(self, resident: int, limit: int):
        super().__init__(f"the worker process held {resident / 2 ** 20:.1f} MiB of resident "
                         f"memory, above its max_memory of {limit / 2 ** 20:.1f} MiB")
        self.resident = resident
        self.limit = limit
class RequestTimeoutError(TimeoutError):
    """A request ran past its deadline (``request_timeout``) on ``max_attempts`` workers.

    Each time, the worker stopped evaluating it (see :mod:`pythonflow.pfmq.deadline`).

    Parameters
    ----------
    message : str
        What timed out; it names the request and the deadline.
    index : int
        The request's number in its task.
    deadline : float
        The deadline in seconds.
    """

    def __init__(self, message: str, index: int, deadline: float):
        super().__init__(message)
        self.index = index
        self.deadline = deadline

    def __reduce__(self):  # OSError's own would pass the three arguments as errno and strerror
        return type(self), (str(self), self.index, self.deadline)
