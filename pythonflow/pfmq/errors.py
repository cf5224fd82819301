"""Errors a task raises for requests that failed, and the outcomes they stand for."""
from typing import Optional

from .protocol import ERROR, SERIALIZATION_ERROR
from .serialization import SerializationError

#: Outcomes made at the task itself, beside those that come from workers (see ``protocol``).
WORKERS_DIED = 10
ITERATOR_FAILED = 11


class RemoteError(RuntimeError):
    """A request failed on a worker; ``traceback`` holds the worker's traceback as text.

    The exception raised by the transformation is re-raised at the consumer with its original
    type, chained to a ``RemoteError`` (its ``__cause__``). A ``StopIteration`` is re-raised
    inside a ``RuntimeError`` (its ``__cause__``), so that it cannot end the consumer's loop.
    """

    def __init__(self, message: str, traceback: Optional[str] = None):
        super().__init__(message if traceback is None else f"{message}\n\n{traceback}")
        self.traceback = traceback


class WorkerDiedError(RemoteError):
    """Every worker that ran a request died while running it."""


def exception_for(index: int, outcome: tuple) -> BaseException:
    """The exception a failed request's outcome stands for."""
    code = outcome[0]
    if code == ERROR:
        original, remote_traceback = outcome[1], outcome[2]
        remote = RemoteError(f"request {index} failed on a worker", remote_traceback)
        if original is None:
            return remote
        original.__cause__ = remote
        original.__suppress_context__ = True
        if isinstance(original, (StopIteration, StopAsyncIteration)):
            # Raised at the consumer it would end the consumer's loop as if every result were
            # in; wrapped as PEP 479 wraps one escaping a generator.
            wrapped = RuntimeError(f"request {index} raised {type(original).__name__} on a "
                                   f"worker")
            wrapped.__cause__ = original
            return wrapped
        return original
    if code == SERIALIZATION_ERROR:
        return SerializationError(f"request {index}: {outcome[1]}")
    if code == WORKERS_DIED:
        return WorkerDiedError(f"request {index} failed: {outcome[1]}")
    if code == ITERATOR_FAILED:
        return outcome[1]
    return RemoteError(f"request {index}: unknown outcome {code!r}")
