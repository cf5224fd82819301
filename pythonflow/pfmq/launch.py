"""Starting and stopping worker processes on this machine.

Shared by :class:`~pythonflow.pfmq.LocalCluster`, ``pfmq worker --processes N`` and the
ipyparallel launcher. What a worker evaluates is given either as a graph object, which travels to
the worker process by pickle, or as an importable reference ``"package.module:name"``, which the
worker process imports itself. The name may refer to

* a :class:`pythonflow.Graph`: requests are evaluated with it (see
  :class:`~pythonflow.pfmq.GraphTarget`);
* a function taking no arguments that returns a graph (or a callable target), called once in each
  worker process, which is handy for graphs that are expensive to build or do not pickle;
* any other callable: it is called with each request, as with :class:`~pythonflow.pfmq.Worker`.

Worker processes are started with the ``spawn`` method of :mod:`multiprocessing`: a fresh
interpreter that inherits no threads, sockets or locks of the parent (forking a process that runs
ZeroMQ threads is unsafe). :mod:`pythonflow.pfmq.supervisor` keeps them alive.
"""
import faulthandler
import importlib
import inspect
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

from .errors import MemoryLimitError

LOGGER = logging.getLogger(__name__)

#: What travels to a worker process: ``("reference", "package.module:name")`` or
#: ``("pickle", bytes)``.
TargetSpec = Tuple[str, Any]


def load_reference(reference: str) -> Any:
    """Import the object named by ``"package.module:name"`` (the name may be dotted).

    Raises
    ------
    ValueError
        If ``reference`` does not have the form ``package.module:name``.
    ImportError
        If the module cannot be imported or has no such attribute.
    """
    module_name, sep, attribute = str(reference).partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{reference!r} is not a reference of the form package.module:graph")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import {module_name!r} for {reference!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return obj


def _is_graph(obj) -> bool:
    try:
        from pythonflow import Graph
    except ImportError:  # pragma: no cover - the graph core is part of the package
        return False
    return isinstance(obj, Graph)


def _takes_no_arguments(obj) -> bool:
    if inspect.isclass(obj):
        return False
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in signature.parameters.values())


def make_target(obj: Any, origin: str = "the target") -> Callable[[Any], Any]:
    """Return the callable a worker evaluates requests with (see the module docstring)."""
    from .worker import GraphTarget

    if _is_graph(obj):
        return GraphTarget(obj)
    if callable(obj) and _takes_no_arguments(obj):
        built = obj()
        if _is_graph(built):
            return GraphTarget(built)
        if callable(built):
            return built
        raise TypeError(f"{origin} returned {type(built).__name__}, not a graph or a callable")
    if callable(obj):
        return obj
    raise TypeError(f"{origin} is a {type(obj).__name__}, not a pythonflow graph or a callable")


def pack_target(graph_or_reference: Any) -> TargetSpec:
    """Check what workers should evaluate and prepare it for the journey to a worker process.

    A reference is imported here once, so that a mistake shows up in the caller's process with a
    clear message instead of in every worker process.
    """
    if isinstance(graph_or_reference, str):
        obj = load_reference(graph_or_reference)
        if not callable(obj):  # graphs are callable; a factory is only called by the workers
            raise TypeError(f"{graph_or_reference!r} is a {type(obj).__name__}, not a pythonflow "
                            "graph, a function returning one or a callable")
        return ("reference", graph_or_reference)
    if not callable(graph_or_reference):  # graphs are callable too
        raise TypeError(f"expected a pythonflow graph, a callable or a 'package.module:graph' "
                        f"reference, not {type(graph_or_reference).__name__}")
    try:
        return ("pickle", pickle.dumps(graph_or_reference, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        raise TypeError(f"the graph cannot be pickled ({exc}); pass an importable "
                        "'package.module:graph' reference instead") from exc


def unpack_target(spec: TargetSpec) -> Callable[[Any], Any]:
    """The worker side of :func:`pack_target`."""
    kind, value = spec
    if kind == "reference":
        return make_target(load_reference(value), repr(value))
    if kind == "pickle":
        return make_target(pickle.loads(value))
    raise ValueError(f"unknown target kind {kind!r}")


#: Exit status of a worker process that gave up waiting for the broker (see ``num_retries``):
#: like status 0 (stopped on request), a supervisor does not start it again.
EXIT_NO_BROKER = 75  # EX_TEMPFAIL of sysexits.h

#: Exit status of a worker process that ended itself to be replaced (it passed its memory limit,
#: or stopped a request that ran past its deadline): a supervisor starts another at once, without
#: counting a death or backing off.
EXIT_RESTART = 79

#: Why a worker stops that make its process exit with :data:`EXIT_RESTART`.
RESTART_REASONS = (MemoryLimitError,)


def serve(spec: TargetSpec, address: str, worker_options: Optional[dict] = None,
          log_level: int = logging.WARNING, watch_parent: bool = False,
          on_ready: Optional[Callable[[], None]] = None) -> int:
    """Run one worker in this process until SIGINT/SIGTERM (or until its parent exits).

    ``on_ready`` is called once the target is loaded and the worker made, just before it starts
    serving: a supervisor counts a process that dies before then as one that cannot start.

    Returns the exit status for the process: 0 after a requested stop, :data:`EXIT_NO_BROKER`
    after giving up waiting for the broker, :data:`EXIT_RESTART` after stopping for one of the
    :data:`RESTART_REASONS` (passing ``max_memory``), 1 after another error, which is reported
    in one line on stderr. The worker's ``on_deadline`` is ``'exit'`` unless ``worker_options``
    say otherwise: the process ends with :data:`EXIT_RESTART` to stop a request past its
    deadline.
    """
    from .worker import Worker

    if not logging.getLogger().handlers:
        logging.basicConfig(level=log_level,
                            format="%(asctime)s pfmq worker %(process)d %(levelname)s %(message)s")
    try:
        # A process of its own: it ends itself to stop a request past its deadline.
        worker = Worker(unpack_target(spec), address,
                        **{"on_deadline": "exit", **(worker_options or {})})
    except Exception as exc:
        print(f"pfmq worker: error: {exc}", file=sys.stderr)
        return 1

    # The worker's handler takes no lock and does not wait: the signal may interrupt a request
    # that the worker still delivers, or code that holds a lock.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, worker.handle_signal)
    if watch_parent:
        parent = multiprocessing.parent_process()
        if parent is not None:  # a worker must not outlive the process that started it
            threading.Thread(target=lambda: (parent.join(), worker.handle_signal()), daemon=True,
                             name="pfmq-parent-watch").start()
    if on_ready is not None:
        on_ready()
    try:
        worker.run()
    except Exception as exc:
        error = exc
    else:
        error = worker.error  # where run() returns when the worker gave up waiting for a broker
    _let_last_messages_out(worker)
    if error is None:
        return 0
    if isinstance(error, RESTART_REASONS):  # logged by the worker; to be replaced, not an error
        return EXIT_RESTART
    print(f"pfmq worker: error: {error}", file=sys.stderr)
    return EXIT_NO_BROKER if isinstance(error, TimeoutError) else 1


def _let_last_messages_out(worker, timeout: float = 2.0) -> None:
    """Wait (a while) for ZeroMQ to send the worker's last messages before the process exits.

    Closing a socket only queues what it holds; a process that exits at once may lose its last
    results, the jobs it hands back and its goodbye, and the broker would then run those
    requests again elsewhere. Terminating the context waits for them (up to the sockets'
    linger); a socket the target left open would make it wait for ever, hence the bound.
    """
    worker.join(timeout)  # the heartbeat thread closes its socket on its way out
    ending = threading.Thread(target=worker.context.term, name="pfmq-flush", daemon=True)
    ending.start()
    ending.join(timeout)


def _process_main(spec, address, worker_options, log_level, ready=None, log=None):
    if log is not None:  # stderr goes to the supervisor, which keeps the last lines
        os.dup2(log.fileno(), 2)
        log.close()
    faulthandler.enable()  # a segfault leaves a Python traceback in that log

    def signal_ready():
        if ready is not None:
            try:
                ready.send_bytes(b"ready")
            except OSError:  # the supervisor is gone or stopping; the parent watch stops us
                pass
            ready.close()

    sys.exit(serve(spec, address, worker_options, log_level, watch_parent=True,
                   on_ready=signal_ready))


class WorkerProcess(NamedTuple):
    """A worker process started by :func:`start_process`, with the ends of its pipes."""

    #: The process (daemonic: also ended when this interpreter exits without stopping it).
    process: multiprocessing.Process
    #: Readable once the worker loaded its target (a message), or died before that (end of file).
    ready: Connection
    #: Everything the process writes to its stderr, as raw bytes on ``log.fileno()``; None where
    #: it cannot be captured (not POSIX), and the process shares this process's stderr.
    log: Optional[Connection]


def start_process(spec: TargetSpec, address: str, name: str = "pfmq-worker",
                  worker_options: Optional[dict] = None,
                  log_level: int = logging.WARNING) -> WorkerProcess:
    """Start a worker process serving ``spec`` for the broker at ``address``.

    The caller reads (and closes) the ends of the pipes it returns.
    """
    context = multiprocessing.get_context("spawn")
    ready, ready_end = context.Pipe(duplex=False)
    log, log_end = context.Pipe(duplex=False) if os.name == "posix" else (None, None)
    process = context.Process(target=_process_main, name=name, daemon=True,
                              args=(spec, address, worker_options, log_level, ready_end, log_end))
    try:
        process.start()
    except BaseException:
        for end in (ready, log):
            if end is not None:
                end.close()
        raise
    finally:
        # The child has its own copies: once it exits, reading ours meets the end of the file.
        for end in (ready_end, log_end):
            if end is not None:
                end.close()
    LOGGER.debug("started worker process %d", process.pid)
    return WorkerProcess(process, ready, log)


def stop_processes(processes: Sequence[multiprocessing.Process], timeout: float = 5.0) -> None:
    """Ask processes to stop (SIGTERM), wait up to ``timeout`` seconds, then kill what is left.

    A second interrupt while waiting still kills every process before it propagates.
    """
    try:
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in processes:
            if process.pid is not None:
                process.join(max(0.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                LOGGER.warning("worker process %d did not stop in time; killing it", process.pid)
                process.kill()
                process.join(timeout)


def wait_for_workers(broker, count: int, timeout: float = 60.0,
                     check: Optional[Callable[[], None]] = None) -> None:
    """Wait until ``count`` workers have registered with ``broker``.

    ``check`` is called while waiting, to raise if the workers cannot come (the supervisor of
    their processes gave up, say).

    Raises
    ------
    TimeoutError
        If they have not all registered within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        try:
            registered = broker.stats()["workers"]
        except (TimeoutError, RuntimeError):
            if check is not None:
                check()  # a pool that failed stops the broker, which then cannot answer: say why
            raise
        if registered >= count:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"only {registered} of {count} workers registered with the broker "
                               f"at {broker.backend_address} within {timeout:g} s")
        time.sleep(min(0.05, remaining))


def default_num_workers() -> int:
    """The number of CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1
