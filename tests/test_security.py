"""Signed messages, crafted pickles, wrong keys, replays, CURVE, LocalCluster, the command line."""
import itertools
import json
import logging
import operator
import os
import pickle
import threading
import time

import pytest
import zmq
from pfmq_helpers import (
    HEARTBEAT,
    context_terminates,
    running_broker,
    wait_for_workers,
    wait_until,
)

from pythonflow import pfmq
from pythonflow.pfmq import cli, protocol
from pythonflow.pfmq.protocol import Kind
from pythonflow.pfmq.security import (
    CurveClient,
    CurveServer,
    generate_certificates,
    is_loopback,
)

pytestmark = pytest.mark.timeout(90)

KEY = b"the right key"
WRONG = b"a wrong key"


class Evil:
    """Unpickling this creates a file: what an attacker would do to run code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def thread_worker(target, address, **options):
    options.setdefault("heartbeat_interval", HEARTBEAT)
    worker = pfmq.Worker(target, address, **options)
    thread = threading.Thread(target=_run_quietly, args=(worker,), daemon=True)
    thread.start()
    return worker, thread


def _run_quietly(worker):
    try:
        worker.run()
    except Exception:  # reported through worker.error, checked by the tests
        pass


def stop(*workers):
    for worker, thread in workers:
        worker.cancel(timeout=10)
        thread.join(10)


@pytest.fixture
def keyed_broker():
    with running_broker(frontend_address="tcp://127.0.0.1:*", key=KEY) as broker:
        worker = thread_worker(lambda x: x * 2, broker.backend_address, key=KEY)
        try:
            wait_for_workers(broker, 1)
            yield broker, worker[0]
        finally:
            stop(worker)


def test_key_as_argument(keyed_broker):
    broker, worker = keyed_broker
    assert list(pfmq.Task(range(20), broker.frontend_address, key=KEY)) == list(range(0, 40, 2))
    assert pfmq.apply(4, broker.frontend_address, key=KEY.decode()) == 8  # str keys too
    stats = broker.stats()
    assert stats["completed"] == 21 and stats["bad_signatures"] == 0 and stats["dropped"] == 0


def test_key_from_environment(monkeypatch):
    monkeypatch.setenv("PFMQ_KEY", "from the environment")
    with running_broker(frontend_address="tcp://127.0.0.1:*") as broker:
        assert broker.key == b"from the environment"
        worker = thread_worker(operator.neg, broker.backend_address)
        try:
            assert list(broker.imap(range(5))) == [0, -1, -2, -3, -4]
            assert pfmq.apply(3, broker.frontend_address) == -3
            with pytest.raises(TimeoutError, match="PFMQ_KEY"):  # a different key is ignored
                pfmq.apply(3, broker.frontend_address, key=WRONG, timeout=0.3, num_retries=1)
            assert broker.stats()["bad_signatures"] > 0
        finally:
            stop(worker)


def attack_messages(path):
    """Messages in many layouts whose payloads create ``path`` when unpickled: unsigned, signed
    with a wrong key, and with a forged signature."""
    bomb = pickle.dumps(Evil(path))
    bomb_list = pickle.dumps([Evil(path)])
    layouts = [[bomb], [bomb, bomb], [bomb_list] * 5, [b""]]
    for kind in Kind:
        fields = (0, 0, 1, False, 0, 0) if kind in (Kind.SUBMIT, Kind.JOB) else tuple(
            1 for _ in protocol.FIELDS[kind])
        header = protocol.Wire().pack(kind, *fields)[0]
        layouts += [[header, bomb], [header, os.urandom(16), bomb_list],
                    [header, bomb, bomb_list, os.urandom(32)], [header, os.urandom(16), bomb]]
    for frames in layouts:
        yield frames
        yield frames + [protocol._mac(WRONG, frames)]
        yield frames + [os.urandom(protocol.SIGNATURE_SIZE)]


def _send_all(address, messages):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(address)
    count = 0
    for frames in messages:
        sock.send_multipart(frames)
        count += 1
    sock.close()
    return count


def test_crafted_pickles_on_frontend_and_backend(keyed_broker, tmp_path):
    broker, worker = keyed_broker
    target = str(tmp_path / "pwned")
    messages = list(attack_messages(target))
    sent = _send_all(broker.frontend_address, messages)
    sent += _send_all(broker.backend_address, messages)
    single_frame = 2 * sum(len(frames) == 1 for frames in messages)
    stats = wait_until(lambda: (lambda s: s if s["dropped"] >= sent else None)(broker.stats()),
                       message="every attack message dropped")
    assert stats["dropped"] == sent
    assert stats["bad_signatures"] >= sent - single_frame > 0
    assert stats["tasks"] == 0 and stats["workers"] == 1 and stats["completed"] == 0
    assert list(broker.imap(range(30), key=KEY)) == list(range(0, 60, 2))  # service continues
    assert worker.executed == 30
    assert not os.path.exists(target)


def test_wrong_key_worker_never_gets_work(caplog):
    caplog.set_level(logging.WARNING)
    with running_broker(key=KEY) as broker:
        good = thread_worker(lambda x: x + 1, broker.backend_address, key=KEY)
        bad = thread_worker(lambda x: x + 1, broker.backend_address, key=WRONG, timeout=0.5,
                            num_retries=1)
        try:
            wait_for_workers(broker, 1)
            assert list(broker.imap(range(40), max_batch=1)) == list(range(1, 41))
            assert good[0].executed == 40 and bad[0].executed == 0
            bad[1].join(10)  # gives up: the broker never answered it
            assert isinstance(bad[0].error, TimeoutError) and "PFMQ_KEY" in str(bad[0].error)
            assert broker.stats()["bad_signatures"] > 0
        finally:
            stop(good, bad)
    mismatches = [r for r in caplog.records if "signature mismatch" in r.getMessage()]
    assert mismatches and all("PFMQ_KEY" in r.getMessage() for r in mismatches)
    assert len(mismatches) <= 3  # rate-limited, not one line per message


def test_wrong_key_task_times_out(keyed_broker):
    broker, worker = keyed_broker
    with pytest.raises(TimeoutError, match="PFMQ_KEY"):
        list(pfmq.Task(range(3), broker.frontend_address, key=WRONG, timeout=0.3, num_retries=2))
    with pytest.raises(TimeoutError):
        list(pfmq.Task(range(3), broker.frontend_address, key=None, timeout=0.3, num_retries=1))
    assert worker.executed == 0 and broker.stats()["tasks"] == 0


class RecordingProxy:
    """Sits between one task and the broker, forwarding both ways and keeping what the task sent."""

    def __init__(self, broker_address):
        context = zmq.Context.instance()
        self.front = context.socket(zmq.ROUTER)
        self.front.bind("tcp://127.0.0.1:*")
        self.address = self.front.getsockopt_string(zmq.LAST_ENDPOINT)
        self.back = context.socket(zmq.DEALER)
        self.back.connect(broker_address)
        self.sent = []
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        peer = None
        while not self.stopping:
            events = dict(poller.poll(50))
            with self.lock:
                if self.front in events:
                    peer, *frames = self.front.recv_multipart()
                    self.sent.append(frames)
                    self.back.send_multipart(frames)
                if self.back in events and peer is not None:
                    self.front.send_multipart([peer, *self.back.recv_multipart()])

    def replay(self, frames):
        with self.lock:
            self.back.send_multipart(frames)

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.front.close(linger=0)
        self.back.close(linger=0)


def test_replayed_submit_gives_no_second_result():
    seen = []

    def record(x):
        seen.append(x)
        return x * 2

    with running_broker(frontend_address="tcp://127.0.0.1:*", key=KEY) as broker:
        worker = thread_worker(record, broker.backend_address, key=KEY)
        proxy = RecordingProxy(broker.frontend_address)
        task = pfmq.Task(itertools.count(), proxy.address, key=KEY, cache_size=4, max_batch=1)
        try:
            results = task.iter_results(timeout=10)
            first = [next(results) for _ in range(5)]
            submits = [f for f in proxy.sent if protocol.Wire(KEY).unpack(f)[0] is Kind.SUBMIT]
            assert protocol.Wire(KEY).unpack(submits[0])[1][:3] == (0, 0, 1)  # request 0
            proxy.replay(submits[0])  # a valid signature: the broker has it evaluated again
            wait_until(lambda: seen.count(0) == 2, message="the replay was evaluated")
            later = [next(results) for _ in range(20)]
            assert first + later == list(range(0, 50, 2))  # each result once, in order
        finally:
            task.cancel(timeout=10)
            proxy.close()
            stop(worker)


def test_curve_encryption_and_refusal(tmp_path):
    public, secret = generate_certificates(tmp_path / "keys", "broker")
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    clients = tmp_path / "clients"
    worker_public, worker_secret = generate_certificates(clients, "worker")
    os.replace(worker_secret, tmp_path / "keys" / "worker.key_secret")  # only public keys stay
    task_client = CurveClient(CurveServer.from_files(secret).public_key)
    server = CurveServer.from_files(secret, allowed_clients=clients)
    (clients / "task.key").write_text(  # a certificate written by hand counts as well
        f'metadata\ncurve\n    public-key = "{task_client.public_key.decode()}"\n')
    with running_broker("tcp://127.0.0.1:*", frontend_address="tcp://127.0.0.1:*", key=KEY,
                        curve=server) as broker:
        good = thread_worker(operator.neg, broker.backend_address, key=KEY,
                             curve=CurveClient.from_files(public, tmp_path / "keys" /
                                                          "worker.key_secret"))
        stranger = CurveClient(server.public_key)  # a valid key pair nobody allowed
        intruder = thread_worker(operator.neg, broker.backend_address, key=KEY, curve=stranger)
        try:
            wait_for_workers(broker, 1)
            tasks = list(pfmq.Task(range(10), broker.frontend_address, key=KEY,
                                   curve=task_client))
            assert tasks == [-n for n in range(10)]
            assert broker.apply(5) == -5  # the broker's own client key
            with pytest.raises(TimeoutError):
                pfmq.apply(1, broker.frontend_address, key=KEY, curve=stranger, timeout=0.3,
                           num_retries=2)
            with pytest.raises(TimeoutError):  # the right key pair, the wrong server key
                pfmq.apply(1, broker.frontend_address, key=KEY, timeout=0.3, num_retries=1,
                           curve=CurveClient(CurveServer.generate().public_key,
                                             task_client.public_key, task_client.secret_key))
            stats = broker.stats()
            assert stats["workers"] == 1 and stats["completed"] == 11
            assert intruder[0].executed == 0 and server.refused >= 2
            assert stats["dropped"] == 0  # refused during the handshake, before any message
        finally:
            stop(good, intruder)


def test_client_without_curve_times_out_instead_of_hanging():
    server = CurveServer(*zmq.curve_keypair()[::-1], allowed_clients=[])
    with running_broker("tcp://127.0.0.1:*", frontend_address="tcp://127.0.0.1:*",
                        curve=server) as broker:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            pfmq.apply(1, broker.frontend_address, timeout=0.5, num_retries=2)
        assert time.monotonic() - started < 10


def test_curve_options_are_checked():
    server = CurveServer.generate()
    with pytest.raises(ValueError, match="40 characters"):
        CurveClient(b"short")
    with pytest.raises(ValueError, match="does not belong"):
        CurveServer(server.secret_key, CurveServer.generate().public_key)
    with pytest.raises(ValueError, match="directory"):
        CurveServer.generate(allowed_clients="/nonexistent/dir")
    assert CurveServer(server.secret_key).public_key == server.public_key
    listed = CurveServer.generate(allowed_clients=[server.public_key])
    assert listed.allows(server.public_key) and not listed.allows(CurveServer.generate().public_key)


def test_local_cluster_passes_its_key_to_worker_processes():
    with pfmq.LocalCluster(operator.neg, num_workers=1, key=KEY,
                           address="tcp://127.0.0.1:*") as cluster:
        assert cluster.broker.key == KEY
        assert list(cluster.imap(range(4))) == [0, -1, -2, -3]
        for pid in cluster.pids:  # not on a command line where others could read it
            cmdline = f"/proc/{pid}/cmdline"
            if os.path.exists(cmdline):
                with open(cmdline, "rb") as file:
                    assert KEY not in file.read()
        with pytest.raises(TimeoutError):
            pfmq.apply(1, cluster.broker.frontend_address, key=WRONG, timeout=0.3,
                       num_retries=1)


@pytest.mark.parametrize("address, local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://localhost:1", True), ("tcp://[::1]:5", True),
    ("ipc:///tmp/x", True), ("inproc://x", True), ("tcp://0.0.0.0:5555", False),
    ("tcp://*:5555", False), ("tcp://eth0:5555", False), ("tcp://10.1.2.3:5", False),
])
def test_is_loopback(address, local):
    assert is_loopback(address) is local


def test_command_line_refuses_exposed_binds(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("PFMQ_KEY", raising=False)
    assert cli.main(["broker", "--backend", "tcp://0.0.0.0:0"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "refusing to bind tcp://0.0.0.0:0" in error
    assert "--insecure" in error and "PFMQ_KEY" in error
    assert cli.main(["broker", "--frontend", "tcp://*:0", "--key-file",
                     str(tmp_path / "missing")]) == 1
    assert "cannot read the key file" in capsys.readouterr().err


def test_command_line_keygen_and_key_file(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("PFMQ_KEY", raising=False)
    assert cli.main(["keygen", str(tmp_path / "keys"), "--name", "node"]) == 0
    assert "node.key_secret" in capsys.readouterr().out
    assert CurveServer.from_files(tmp_path / "keys" / "node.key_secret").public_key
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")
    with running_broker(frontend_address="tcp://127.0.0.1:*", key=KEY) as broker:
        assert cli.main(["status", "--frontend", broker.frontend_address, "--json",
                         "--key-file", str(key_file)]) == 0
        assert json.loads(capsys.readouterr().out)["workers"] == 0
        key_file.write_bytes(WRONG)
        assert cli.main(["status", "--frontend", broker.frontend_address, "--timeout", "0.3",
                         "--key-file", str(key_file)]) == 1
        assert "PFMQ_KEY" in capsys.readouterr().err


# -- the ZAP handler's life ---------------------------------------------------------------------


def new_threads(before):
    return [thread for thread in threading.enumerate() if thread not in before]


def test_zap_handler_ends_with_the_last_curve_broker_of_its_context():
    context = zmq.Context()
    before = set(threading.enumerate())
    # Only the brokers' own clients may connect.
    first, second = (CurveServer.generate(allowed_clients=[]) for _ in range(2))
    options = dict(frontend_address="tcp://127.0.0.1:*", curve=first, context=context)
    try:
        with running_broker("tcp://127.0.0.1:*", **options) as one:
            with running_broker("tcp://127.0.0.1:*", **{**options, "curve": second}) as two:
                assert two.stats()["workers"] == 0  # over CURVE, with the broker's own client
            # The handler still answers for the broker that is left, and still refuses.
            assert one.stats()["workers"] == 0
            with pytest.raises(TimeoutError):
                pfmq.apply(1, one.frontend_address, context=context, timeout=0.3,
                           num_retries=1, curve=CurveClient(first.public_key))
        wait_until(lambda: not new_threads(before), timeout=5,
                   message="every thread of the brokers ended")
        # A broker started afterwards gets a handler of its own.
        with running_broker("tcp://127.0.0.1:*", **options) as again:
            assert again.stats()["workers"] == 0
        wait_until(lambda: not new_threads(before), timeout=5, message="the new handler ended")
    finally:
        terminated = context_terminates(context)
    assert terminated, "a ZAP handler kept the context from terminating"


def test_curve_brokers_one_after_another_on_the_shared_context():
    server = CurveServer.generate()
    for _ in range(10):  # each one binds the ZAP endpoint the one before released
        with running_broker("tcp://127.0.0.1:*", frontend_address="tcp://127.0.0.1:*",
                            curve=server) as broker:
            assert broker.stats()["workers"] == 0
