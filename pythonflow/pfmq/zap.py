"""The ZAP handler that lets CURVE clients in, or not: one thread per ZeroMQ context.

Data flow::

    client connects --> libzmq --ZAP request--> the handler's thread --> CurveServer.callback
    client gets in  <-- libzmq <--ZAP reply (200, or 300: temporary refusal)--/

A handler runs while a CURVE server socket of its context is open, and ends with the last one;
each :class:`~pythonflow.pfmq.security.CurveServer` answers for its own ZAP domain, so several
brokers can share a context.
"""
import asyncio
import inspect
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Optional

import zmq
from zmq.auth.base import Authenticator
from zmq.utils.monitor import recv_monitor_message

from .transport import Wakeup

if TYPE_CHECKING:  # the type of an argument only: security imports this module
    from .security import CurveServer

__all__ = ["serve"]

LOGGER = logging.getLogger(__name__)

# The ZAP handler of each context that has an open CURVE server socket. Keyed by the context
# itself, which the handler holds: an id() could name another context later.
_handlers = {}
_handlers_lock = threading.Lock()


class _ZapHandler(Authenticator):
    """The ZAP handler of one context, in a thread of its own while a CURVE server socket is open.

    Its refusals are temporary (status 300 instead of 400): libzmq ends a client's session for
    good after a permanent refusal, and a blocking send on the client's socket then never
    returns. After a temporary refusal the client keeps reconnecting, its messages simply never
    arrive, and the worker or task reports a timeout; it also gets in once its key is added to an
    allow-list directory.

    Each server socket is watched through a socket monitor: libzmq reports ``MONITOR_STOPPED``
    when the socket is closed. Once the last one is, the handler closes its own sockets (or the
    context could never terminate) and its thread ends.
    """

    def __init__(self, context: zmq.Context):
        super().__init__(context, log=LOGGER)
        self._wakeup = Wakeup()
        self._incoming = []  # (monitor, domain) not yet picked up by the thread; under the lock
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Bind the ZAP endpoint and start serving it."""
        deadline = time.monotonic() + 2.0
        while True:
            try:
                super().start()
                break
            except zmq.ZMQError as exc:
                self.stop()  # close the socket that could not bind
                # The endpoint of a handler that just ended is released asynchronously.
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    self._wakeup.close()
                    raise
                time.sleep(0.01)
        self._thread = threading.Thread(target=self._serve, name="pfmq-zap", daemon=True)
        self._thread.start()

    def watch(self, sock: zmq.Socket, domain: str) -> None:
        """Serve until ``sock`` is closed; called in ``sock``'s thread, with the lock held."""
        address = f"inproc://pfmq-zap-watch-{uuid.uuid4().hex}"
        sock.monitor(address, zmq.EVENT_MONITOR_STOPPED)
        monitor = self.context.socket(zmq.PAIR)
        monitor.connect(address)
        self._incoming.append((monitor, domain))
        self._wakeup.set()

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous"):
        if status_code == b"400":
            status_code = b"300"
        super()._send_zap_reply(request_id, status_code, status_text, user_id)

    def _serve(self):
        loop = asyncio.new_event_loop()  # the handling of a ZAP message is a coroutine
        watched = {}  # monitor -> domain of the server socket it watches
        poller = zmq.Poller()
        poller.register(self.zap_socket, zmq.POLLIN)
        poller.register(self._wakeup, zmq.POLLIN)
        try:
            while self._more_to_serve(watched, poller):
                events = dict(poller.poll())
                self._wakeup.clear_if_woken(events)
                if self.zap_socket in events:
                    outcome = self.handle_zap_message(self.zap_socket.recv_multipart())
                    if inspect.isawaitable(outcome):
                        loop.run_until_complete(outcome)
                for monitor in [monitor for monitor in watched if monitor in events]:
                    if recv_monitor_message(monitor)["event"] == zmq.EVENT_MONITOR_STOPPED:
                        self._forget(watched.pop(monitor), watched)
                        poller.unregister(monitor)
                        monitor.close(linger=0)
        except zmq.ZMQError as exc:  # the context was terminated or destroyed under us
            LOGGER.debug("the ZAP handler stops: %s", exc)
            with _handlers_lock:
                self._retire(list(watched) + [monitor for monitor, _ in self._incoming])
        finally:
            loop.close()

    def _more_to_serve(self, watched: dict, poller: zmq.Poller) -> bool:
        with _handlers_lock:
            for monitor, domain in self._incoming:
                watched[monitor] = domain
                poller.register(monitor, zmq.POLLIN)
            self._incoming.clear()
            if watched:
                return True
            # Under the lock: a socket configured from now on gets a new handler.
            self._retire([])
            return False

    def _forget(self, domain: str, watched: dict) -> None:
        with _handlers_lock:  # a socket of the same server may be on its way in
            if domain not in (*watched.values(), *(domain for _, domain in self._incoming)):
                self.credentials_providers.pop(domain, None)  # no open socket of its server

    def _retire(self, monitors: list) -> None:
        if _handlers.get(self.context) is self:
            del _handlers[self.context]
        for monitor in monitors:
            monitor.close(linger=0)
        self._incoming.clear()
        self.stop()  # closes the ZAP socket
        self._wakeup.close()


def serve(sock: zmq.Socket, server: "CurveServer") -> None:
    """Have the ZAP handler of ``sock``'s context answer for ``server`` while ``sock`` is open.

    Called with ``sock`` not yet bound, in the thread that owns it.
    """
    with _handlers_lock:
        handler = _handlers.get(sock.context)
        if handler is None:
            handler = _ZapHandler(sock.context)
            try:
                handler.start()
            except zmq.ZMQError as exc:
                raise RuntimeError("cannot start a ZAP handler in this ZeroMQ context (does "
                                   f"another one run there already?): {exc}") from None
            _handlers[sock.context] = handler
        handler.configure_curve_callback(server.domain, server)
        handler.watch(sock, server.domain)
