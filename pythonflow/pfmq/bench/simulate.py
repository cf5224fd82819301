"""Many peers in a few processes: what the broker-scale benchmark connects to a broker.

A thousand :class:`~pythonflow.pfmq.Worker` objects would need two thousand threads; the broker
cannot tell them from :class:`SimulatedWorkers`, which serves many workers from one thread of one
process with the library's own pieces: each worker has a work connection and a heartbeat
connection (:func:`~pythonflow.pfmq.transport.dealer`), signs up with ``READY``, pings every
heartbeat interval, and answers every job at once with
:class:`~pythonflow.pfmq.jobs.Evaluator`, whose ``DONE`` is the real worker's. Messages are
packed and read by :class:`~pythonflow.pfmq.protocol.Wire`, so no frame layout is written here.

:class:`IdleTasks` are tasks with nothing to send: they ping the broker and nothing else, as a
task whose request iterator waits does. The functions at the end are the bodies of the processes
the benchmark starts (a broker, a C proxy, simulated peers, raw REP workers); they live at module
level so that a ``forkserver`` child can run them.
"""
import pickle
import selectors
import threading
import time
from typing import Callable, List, Optional

import zmq

from .. import protocol
from ..broker import Broker
from ..jobs import Evaluator, read_job
from ..protocol import Kind
from ..security import resolve_key
from ..serialization import make_serializer
from ..transport import dealer, waiting_messages
from .work import divide_request

#: Sockets one process may open: many simulated peers share a context.
MAX_SOCKETS = 8192


def _context() -> zmq.Context:
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, MAX_SOCKETS)
    return context


class Metronome:
    """Spreads ``count`` periodic beats of ``interval`` seconds evenly over the interval.

    Real peers start at unrelated moments, so their heartbeats do not arrive in bursts; beat
    ``i`` falls at ``start + interval * (i + 0.5) / count`` and every ``interval`` after.
    """

    def __init__(self, count: int, interval: float):
        self.count = count
        self.step = interval / count
        self.due = time.monotonic() + self.step / 2
        self.cursor = 0

    def beats(self, now: float) -> List[int]:
        """The peers whose beat is due at ``now``, in turn."""
        due = []
        while now >= self.due:
            due.append(self.cursor)
            self.cursor = (self.cursor + 1) % self.count
            self.due += self.step
        return due

    def wait_ms(self, now: float) -> float:
        """Milliseconds until the next beat."""
        return max(0.0, self.due - now) * 1000


class Peers:
    """Many peers served by one thread, woken only for the connections with something to read.

    Polling a thousand sockets at every wake-up would cost the simulation more CPU time than the
    broker it measures; instead every connection's ZeroMQ descriptor is watched with the
    operating system's selector (epoll on Linux), and only the connections whose descriptor
    fired are read. That descriptor signals a change, not a message: whoever sends on a
    connection reads it right after (:meth:`watch` handlers drain until ``EVENTS`` says empty),
    or a message that came meanwhile could wait unnoticed.

    Subclasses call :meth:`watch` for every connection and define :meth:`beat`, which
    :meth:`run` calls for each peer every ``heartbeat_interval``, spread by a :class:`Metronome`.
    """

    def __init__(self, count: int, heartbeat_interval: float, context=None):
        self.context = context or _context()
        self.wire = protocol.Wire(resolve_key())
        self.interval = heartbeat_interval
        self.interval_ms = max(1, round(heartbeat_interval * 1000))
        self.pings = [0] * count
        self.metronome = Metronome(count, heartbeat_interval)
        self.selector = selectors.DefaultSelector()
        self.socks: List[zmq.Socket] = []

    def watch(self, sock: zmq.Socket, handler: Callable[[int], None], index: int) -> None:
        """Call ``handler(index)`` whenever ``sock`` may have messages to read."""
        self.socks.append(sock)
        self.selector.register(sock.getsockopt(zmq.FD), selectors.EVENT_READ, (handler, index))

    def beat(self, index: int) -> None:
        """Send peer ``index``'s heartbeat."""
        raise NotImplementedError

    def run(self, stop: Optional[threading.Event] = None) -> None:
        """Beat and read until ``stop`` is set (forever without one)."""
        while stop is None or not stop.is_set():
            for index in self.metronome.beats(time.monotonic()):
                self.beat(index)
            wait = min(100.0, self.metronome.wait_ms(time.monotonic())) / 1000
            for key, _ in self.selector.select(wait):
                handler, index = key.data
                handler(index)

    def close(self) -> None:
        """Close every connection."""
        self.selector.close()
        for sock in self.socks:
            sock.close(linger=0)


class SimulatedWorkers(Peers):
    """``count`` pfmq workers served by one thread, each answering its jobs as soon as they come.

    Parameters
    ----------
    address : str
        The broker's backend address.
    count : int
        How many workers.
    heartbeat_interval : float
        Seconds between the heartbeats of each worker (the default of a real worker: 1 s).
    target : callable
        Evaluates each request.
    prefetch : int
        As for a real worker: each signs up for ``prefetch + 1`` jobs.
    context : zmq.Context, optional
        A context allowing ``2 * count`` sockets.
    """

    def __init__(self, address: str, count: int, heartbeat_interval: float = 1.0,
                 target: Callable = divide_request, prefetch: int = 1, context=None):
        super().__init__(count, heartbeat_interval, context)
        self.evaluator = Evaluator(make_serializer(), self.wire)
        self.target = target
        self.capacity = prefetch + 1
        self.ids = [protocol.new_id() for _ in range(count)]
        self.work = [dealer(self.context, address, routing_id) for routing_id in self.ids]
        self.heartbeats = [dealer(self.context, address, protocol.new_id()) for _ in range(count)]
        self.signed_up = [0.0] * count
        for index in range(count):
            self.watch(self.work[index], self.serve, index)
            self.watch(self.heartbeats[index], self.read_pongs, index)
            self.sign_up(index)

    def sign_up(self, index: int) -> None:
        """Send worker ``index``'s ``READY``: it holds no job, so all its slots are free."""
        self.signed_up[index] = time.monotonic()
        self.work[index].send_multipart(self.wire.pack(Kind.READY, self.capacity, self.capacity))
        self.serve(index)

    def serve(self, index: int) -> None:
        """Answer every job waiting on worker ``index``'s work connection."""
        sock = self.work[index]
        for frames in waiting_messages(sock):
            kind, fields, body = self.wire.unpack(frames)
            if kind is Kind.JOB:  # a REVOKE finds nothing waiting: every job is answered at once
                sock.send_multipart(self.evaluator.answer(self.target, read_job(fields, body)),
                                    copy=False)

    def beat(self, index: int) -> None:
        """Send worker ``index``'s next heartbeat on its heartbeat connection."""
        self.pings[index] += 1
        self.heartbeats[index].send_multipart(self.wire.pack(
            Kind.PING, self.pings[index], self.interval_ms, body=[self.ids[index]]))
        self.read_pongs(index)

    def read_pongs(self, index: int) -> None:
        """Read worker ``index``'s answers; sign up again if the broker forgot the worker."""
        for frames in waiting_messages(self.heartbeats[index]):
            kind, fields, _ = self.wire.unpack(frames)
            # A PONG's fields: (incarnation, ping, capacity, pending, registered, max_frame).
            if kind is Kind.PONG and not fields[4] and \
                    time.monotonic() - self.signed_up[index] > 2 * self.interval:
                self.sign_up(index)


class IdleTasks(Peers):
    """``count`` tasks with nothing to send, which ping the broker every ``heartbeat_interval``.

    Parameters
    ----------
    address : str
        The broker's frontend address.
    count : int
        How many tasks.
    heartbeat_interval : float
        Seconds between the pings of each task.
    context : zmq.Context, optional
        A context allowing ``count`` sockets; the broker's own to reach an ``inproc://`` frontend.
    """

    def __init__(self, address: str, count: int, heartbeat_interval: float = 1.0, context=None):
        super().__init__(count, heartbeat_interval, context)
        self.tasks = [dealer(self.context, address, protocol.new_id()) for _ in range(count)]
        for index, sock in enumerate(self.tasks):
            self.watch(sock, self.drop_answers, index)

    def beat(self, index: int) -> None:
        """Send task ``index``'s next ping."""
        self.pings[index] += 1
        self.tasks[index].send_multipart(
            self.wire.pack(Kind.PING, self.pings[index], self.interval_ms))
        self.drop_answers(index)

    def drop_answers(self, index: int) -> None:
        """Read and drop what the broker sent task ``index``."""
        for _ in waiting_messages(self.tasks[index]):
            pass


# -- process bodies -------------------------------------------------------------------------------

def serve_broker(heartbeat_interval: float, connection) -> None:
    """Run a broker with both ends on loopback TCP; send ``(frontend, backend)`` addresses."""
    broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*",
                    heartbeat_interval=heartbeat_interval).run_async()
    connection.send((broker.frontend_address, broker.backend_address))
    threading.Event().wait()  # the loop serves in its thread until the process is terminated


def serve_proxy(connection) -> None:
    """Run ``zmq.proxy`` between a ROUTER and a DEALER on loopback TCP; send their addresses."""
    context = zmq.Context()
    front, back = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    for sock in (front, back):
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.bind("tcp://127.0.0.1:*")
    connection.send(tuple(sock.getsockopt_string(zmq.LAST_ENDPOINT) for sock in (front, back)))
    zmq.proxy(front, back)


def simulate_workers(address: str, count: int, heartbeat_interval: float) -> None:
    """Serve ``count`` :class:`SimulatedWorkers` until the process is terminated."""
    SimulatedWorkers(address, count, heartbeat_interval).run()


def simulate_idle_tasks(address: str, count: int, heartbeat_interval: float) -> None:
    """Keep ``count`` :class:`IdleTasks` pinging until the process is terminated."""
    IdleTasks(address, count, heartbeat_interval).run()


def raw_rep_workers(address: str, count: int, connection) -> None:
    """``count`` REP sockets of the raw baseline: each answers ``divide_request`` of a pickle.

    Sends ``True`` on ``connection`` once every socket is connected: the proxy's DEALER deals
    requests only to the peers it has.
    """
    context = _context()
    socks = [context.socket(zmq.REP) for _ in range(count)]
    poller = zmq.Poller()
    for sock in socks:
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        sock.connect(address)
        monitor.recv_multipart()  # the only event it reports: connected
        sock.disable_monitor()
        monitor.close(linger=0)
        poller.register(sock, zmq.POLLIN)
    connection.send(True)
    while True:
        for sock, _ in poller.poll():
            sock.send(pickle.dumps(divide_request(pickle.loads(sock.recv())), protocol=5))
