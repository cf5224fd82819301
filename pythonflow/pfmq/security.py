"""Shared keys, CurveZMQ encryption and authentication between machines, and key generation.

A shared key (``key=`` or ``PFMQ_KEY``, see :func:`resolve_key`) makes every message tamper-proof
(:class:`~pythonflow.pfmq.protocol.Wire` signs with it), but anyone on the network path can still
read the traffic. CurveZMQ encrypts it and authenticates both ends with public keys:

* the broker holds a server key pair (:class:`CurveServer`) and, optionally, an allow-list of the
  public keys of its clients (workers and tasks);
* every worker and task holds a client key pair and the broker's public key
  (:class:`CurveClient`).

Keys are Z85-encoded strings of 40 characters, as printed by ``zmq.curve_keypair()``, or
certificate files written by ``pfmq keygen DIR --name NAME`` (``NAME.key`` holds the public key
and may be copied anywhere, ``NAME.key_secret`` holds both and must stay private)::

    # on the broker's machine
    server = CurveServer.from_files("keys/broker.key_secret", allowed_clients="keys/clients")
    broker = pfmq.Broker("tcp://0.0.0.0:5555", "tcp://0.0.0.0:5556", curve=server)

    # on a worker's machine
    client = CurveClient.from_files("keys/broker.key", "keys/worker.key_secret")
    worker = pfmq.Worker.from_graph(graph, "tcp://broker-host:5555", curve=client)

CURVE applies to ``tcp://`` and ``ipc://`` endpoints; ``inproc://`` traffic never leaves the
process and stays in the clear. The allow-list is checked by a ZAP handler
(:mod:`pythonflow.pfmq.zap`) that asks :meth:`CurveServer.callback` about every client that
connects.
"""
import logging
import os
import uuid
from pathlib import Path
from typing import Iterable, Optional, Tuple, Union

import zmq
import zmq.auth
from zmq.utils import z85

from . import zap
from .transport import RateLimitedLogger

__all__ = ["CurveServer", "CurveClient", "generate_certificates", "generate_keypair",
           "is_loopback", "resolve_key", "key_hint", "KeyLike", "PathLike"]

LOGGER = logging.getLogger(__name__)
KeyLike = Union[bytes, str]
PathLike = Union[str, "os.PathLike[str]"]


def resolve_key(key: Optional[KeyLike] = None) -> Optional[bytes]:
    """Return the shared key: ``key`` if given, else the ``PFMQ_KEY`` environment variable."""
    if key is None:
        key = os.environ.get("PFMQ_KEY") or None
    if isinstance(key, str):
        key = key.encode()
    return key


def key_hint(key: Optional[bytes]) -> str:
    """Words added to "no answer from the broker" when a key is set: a mismatch looks the same."""
    if key is None:
        return ""
    return " (a key is set: a key that differs from the broker's, see PFMQ_KEY, may be the cause)"


def _key(value: KeyLike, what: str) -> bytes:
    """A Z85 key as 40 ASCII bytes; raises ``ValueError`` for anything else."""
    if isinstance(value, str):
        value = value.encode("ascii", errors="replace")
    if not isinstance(value, (bytes, bytearray)) or len(value) != 40:
        raise ValueError(f"the {what} must be a Z85-encoded CURVE key of 40 characters")
    try:
        z85.decode(bytes(value))
    except Exception:
        raise ValueError(f"the {what} is not valid Z85") from None
    return bytes(value)


def _check_curve_support():
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")


def generate_keypair() -> Tuple[bytes, bytes]:
    """Return a new ``(public_key, secret_key)`` pair, both Z85-encoded."""
    _check_curve_support()
    return zmq.curve_keypair()


def generate_certificates(directory: PathLike, name: str) -> Tuple[Path, Path]:
    """Write a key pair as certificate files ``NAME.key`` (public) and ``NAME.key_secret``.

    Parameters
    ----------
    directory : str or path
        Created if missing.
    name : str
        File name stem, such as ``broker`` or ``worker-1``.

    Returns
    -------
    public, secret : Path
        The two files; the secret one is readable by its owner only.
    """
    _check_curve_support()
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"{name!r} is not a plain file name")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = (Path(path) for path in zmq.auth.create_certificates(directory, name))
    secret.chmod(0o600)
    return public, secret


def _load(path: PathLike, need_secret: bool) -> Tuple[bytes, Optional[bytes]]:
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the certificate {os.fspath(path)!r}: {exc}") from None
    if need_secret and not secret:
        raise ValueError(f"{os.fspath(path)!r} holds no secret key (use the .key_secret file)")
    return public, secret


class CurveServer:
    """The broker's side of CurveZMQ: its key pair and the clients it lets in.

    Parameters
    ----------
    secret_key : bytes or str
        The broker's Z85 secret key.
    public_key : bytes or str, optional
        The matching public key; derived from ``secret_key`` when omitted.
    allowed_clients : iterable of keys, str or path, optional
        Public keys of the workers and tasks that may connect: a list of Z85 keys, or a directory
        of public certificate files (read again at every connection, so a client can be added or
        revoked by adding or removing its file). ``None`` lets every client with any key pair in:
        the traffic is encrypted, but nobody is authenticated.

    Attributes
    ----------
    refused : int
        Connections refused because their client key is not on the allow-list.
    """

    def __init__(self, secret_key: KeyLike, public_key: Optional[KeyLike] = None,
                 allowed_clients: Union[None, PathLike, Iterable[KeyLike]] = None):
        _check_curve_support()
        self.secret_key = _key(secret_key, "server secret key")
        derived = zmq.curve_public(self.secret_key)
        self.public_key = derived if public_key is None else _key(public_key, "server public key")
        if self.public_key != derived:
            raise ValueError("the server public key does not belong to its secret key")
        self.allowed_directory: Optional[Path] = None
        self.allowed_keys: Optional[frozenset] = None
        if isinstance(allowed_clients, (str, os.PathLike)):
            self.allowed_directory = Path(allowed_clients)
            if not self.allowed_directory.is_dir():
                raise ValueError(f"{os.fspath(allowed_clients)!r} is not a directory of public "
                                 "certificates")
        elif allowed_clients is not None:
            self.allowed_keys = frozenset(_key(k, "client public key") for k in allowed_clients)
        self.domain = f"pfmq-{uuid.uuid4().hex}"
        self.refused = 0
        self._own_clients = set()  # keys made by client(), allowed whatever the list says
        self._log = RateLimitedLogger(LOGGER)

    @classmethod
    def from_files(cls, certificate: PathLike,
                   allowed_clients: Union[None, PathLike, Iterable[KeyLike]] = None
                   ) -> "CurveServer":
        """Read the server key pair from a secret certificate (``NAME.key_secret``)."""
        public, secret = _load(certificate, need_secret=True)
        return cls(secret, public, allowed_clients)

    @classmethod
    def generate(cls, allowed_clients: Union[None, PathLike, Iterable[KeyLike]] = None
                 ) -> "CurveServer":
        """A server with a fresh key pair (handy for tests and one-off clusters)."""
        public, secret = generate_keypair()
        return cls(secret, public, allowed_clients)

    def allows(self, client_key: KeyLike) -> bool:
        """Whether a client with this Z85 public key may connect."""
        client_key = _key(client_key, "client public key")
        if client_key in self._own_clients:
            return True
        if self.allowed_keys is not None:
            return client_key in self.allowed_keys
        if self.allowed_directory is not None:
            return client_key in zmq.auth.load_certificates(os.fspath(self.allowed_directory))
        return True

    def callback(self, domain: str, client_key: bytes) -> bool:
        """Called by the ZAP handler for every connection; see :meth:`allows`."""
        try:
            allowed = self.allows(client_key)
        except Exception as exc:  # a broken allow-list lets nobody in, and says why
            LOGGER.error("cannot check a CURVE client against the allow-list: %s", exc)
            allowed = False
        if not allowed:
            self.refused += 1
            self._log.log(logging.WARNING, "refused", "refused a CURVE client whose public key "
                          "%s is not on the allow-list", client_key.decode("ascii", "replace"))
        return allowed

    def configure(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (not yet bound) a CURVE server checking clients against the list."""
        zap.serve(sock, self)
        sock.setsockopt(zmq.ZAP_DOMAIN, self.domain.encode())
        if hasattr(zmq, "ZAP_ENFORCE_DOMAIN"):  # with no ZAP handler, refuse clients, not admit
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SERVER, 1)

    def client(self) -> "CurveClient":
        """A client of this server with a fresh key pair that the server lets in.

        The broker uses one for its own :meth:`~pythonflow.pfmq.Broker.stats`, ``apply`` and
        ``imap`` when its frontend is encrypted.
        """
        client = CurveClient(self.public_key)
        self._own_clients.add(client.public_key)
        return client

    def __repr__(self):
        allowed = (self.allowed_directory or
                   (f"{len(self.allowed_keys)} keys" if self.allowed_keys is not None else "any"))
        return f"CurveServer(public_key={self.public_key.decode()!r}, allowed_clients={allowed})"


class CurveClient:
    """A worker's or task's side of CurveZMQ: the broker's public key and its own key pair.

    Parameters
    ----------
    server_key : bytes or str
        The broker's Z85 public key.
    public_key, secret_key : bytes or str, optional
        The client's key pair; a fresh pair is made when both are omitted (enough for encryption
        against a server that lets any client in). The public key is derived from the secret key
        when only the latter is given.
    """

    def __init__(self, server_key: KeyLike, public_key: Optional[KeyLike] = None,
                 secret_key: Optional[KeyLike] = None):
        _check_curve_support()
        self.server_key = _key(server_key, "server public key")
        if secret_key is None:
            if public_key is not None:
                raise ValueError("a client public key needs its secret key")
            public_key, secret_key = generate_keypair()
        self.secret_key = _key(secret_key, "client secret key")
        derived = zmq.curve_public(self.secret_key)
        self.public_key = derived if public_key is None else _key(public_key, "client public key")
        if self.public_key != derived:
            raise ValueError("the client public key does not belong to its secret key")

    @classmethod
    def from_files(cls, server_certificate: PathLike, certificate: PathLike) -> "CurveClient":
        """Read the broker's public certificate and the client's secret certificate."""
        server_key, _ = _load(server_certificate, need_secret=False)
        public, secret = _load(certificate, need_secret=True)
        return cls(server_key, public, secret)

    def configure(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (not yet connected) a CURVE client of the server."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)

    def __repr__(self):
        return (f"CurveClient(server_key={self.server_key.decode()!r}, "
                f"public_key={self.public_key.decode()!r})")


def is_loopback(address: str) -> bool:
    """Whether binding ``address`` exposes nothing beyond this machine.

    ``inproc://`` and ``ipc://`` endpoints are local; a ``tcp://`` endpoint is local when its host
    is ``localhost``, ``127.x.y.z`` or ``::1``. Wildcards (``*``, ``0.0.0.0``) and interface names
    are not.
    """
    transport, _, rest = address.partition("://")
    if transport in ("inproc", "ipc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.split(";")[-1]  # a source address before ';' does not decide where we listen
    host = host.strip("[]").lower()
    return host == "localhost" or host == "::1" or host.startswith("127.")
