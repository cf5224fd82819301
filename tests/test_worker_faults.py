"""Worker faults: a transformation that raises SystemExit, jobs the worker cannot read, a signal
handler that could deadlock, a worker that cannot start again, a broker that falls silent."""
import contextlib
import logging
import os
import signal
import threading
import time

import pytest
import zmq
from pfmq_helpers import (  # noqa: F401 (broker_fixture provides the ``broker`` fixture)
    HEARTBEAT,
    broker_fixture,
    end_process,
    running_broker,
    wait_for_workers,
    wait_until,
    worker_processes,
)

from pythonflow import pfmq
from pythonflow.pfmq import protocol
from pythonflow.pfmq.protocol import COMPLETED, OK, SERIALIZATION_ERROR, Kind, Wire
from pythonflow.pfmq.serialization import PickleSerializer

pytestmark = pytest.mark.timeout(90)


class Abort(BaseException):
    """A BaseException of some framework: no signal to the worker process."""


@contextlib.contextmanager
def serving_in_a_thread(worker):
    """``worker.run()`` in a thread, cancelled and joined on exit."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.cancel(timeout=10)
        thread.join(10)
        assert not thread.is_alive(), "the worker thread did not stop"


# -- fault 1: BaseException from a transformation ----------------------------------------------


def test_sys_exit_in_a_transformation_fails_its_request_only():
    with running_broker() as broker, \
            worker_processes(broker.backend_address, 2, "exit") as processes:
        wait_for_workers(broker, 2)
        task = broker.imap([1, "exit", 2, "abort", 3, "exit"], errors="return")
        results = list(task.iter_results(timeout=20))  # a pool emptied by sys.exit() hangs
        assert [results[i] for i in (0, 2, 4)] == [2, 4, 6]
        for index, name in [(1, "SystemExit"), (3, "Abort"), (5, "SystemExit")]:
            assert isinstance(results[index], pfmq.RemoteError)
            assert name in results[index].traceback
        assert "the transformation called sys.exit()" in results[1].traceback
        assert [process.poll() for process in processes] == [None, None]
        assert broker.apply(5) == 10
        assert broker.stats()["workers"] == 2
        assert [end_process(process) for process in processes] == [0, 0]


@pytest.mark.parametrize("signals, sig, status", [
    ("default", signal.SIGINT, 130),  # Ctrl-C: KeyboardInterrupt in the transformation
    ("exit", signal.SIGTERM, 0),  # a handler of the program's own that calls sys.exit(0)
], ids=["ctrl-c", "sigterm-handler-exits"])
def test_a_signal_still_stops_a_worker_process_mid_request(tmp_path, signals, sig, status):
    marker = str(tmp_path / "started")
    with running_broker() as broker:
        with worker_processes(broker.backend_address, 1, "sleep-first-time",
                              signals=signals) as (process,):
            wait_for_workers(broker, 1)
            task = broker.imap([(marker, 60)])
            wait_until(lambda: os.path.exists(marker), message="the request running")
            os.kill(process.pid, sig)
            assert process.wait(15) == status  # at once, not after the minute of the request
            stats = wait_for_workers(broker, 0, timeout=5)
            assert stats["workers_lost"] == 0, "the worker should have said goodbye"
        with worker_processes(broker.backend_address, 1, "sleep-first-time"):
            assert list(task.iter_results(timeout=20)) == ["again"]  # handed back, run again
        assert broker.stats()["requeued"] == 1


def test_base_exceptions_in_a_thread_worker_fail_their_request(broker):
    raised = {"exit": SystemExit(3), "interrupt": KeyboardInterrupt(), "abort": Abort("no"),
              "generator": GeneratorExit()}

    def target(request):
        if request in raised:
            raise raised[request]
        return request

    worker = pfmq.Worker(target, broker.backend_address, heartbeat_interval=HEARTBEAT)
    with serving_in_a_thread(worker):
        requests = ["a", *raised, "b"]
        results = list(broker.imap(requests, errors="return").iter_results(timeout=20))
        assert results[0] == "a" and results[-1] == "b"
        for result, exception in zip(results[1:-1], raised.values()):
            assert isinstance(result, pfmq.RemoteError)
            assert type(exception).__name__ in result.traceback
        # A KeyboardInterrupt outside the main thread cannot come from Ctrl-C: it fails alone.
        assert worker.is_alive and worker.executed == len(requests)


# -- fault 2: jobs the worker cannot read ------------------------------------------------------


class FakeBroker:
    """A ROUTER socket speaking the broker's side of the protocol, message by message."""

    def __init__(self, key=None):
        self.wire = Wire(key)
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.answer_pings = True
        self.log = []  # (seconds since start, peer, kind) of every message received
        self.started = time.monotonic()

    def close(self):
        self.sock.close(linger=0)

    def receive(self, kind, timeout=5.0):
        """The next message of ``kind`` as ``(peer, fields, body)``; PINGs are answered."""
        deadline = time.monotonic() + timeout
        while self.sock.poll(max(0, deadline - time.monotonic()) * 1000):
            peer, *frames = self.sock.recv_multipart()
            got, fields, body = self.wire.unpack(frames)
            self.log.append((time.monotonic() - self.started, peer, got))
            if got is Kind.PING and self.answer_pings:
                self.sock.send_multipart([peer, *self.wire.pack(
                    Kind.PONG, 1, fields[0], 1, 0, True, 0)])
            if got is kind:
                return peer, fields, body
        raise AssertionError(f"no {getattr(kind, 'name', 'message')} within {timeout} s")

    def pump(self, seconds):
        """Take in (and answer) whatever comes for ``seconds``."""
        with contextlib.suppress(AssertionError):
            self.receive(None, seconds)

    def send_job(self, worker_id, spec, body=(), payload=()):
        self.sock.send_multipart([worker_id, *self.wire.pack(Kind.JOB, *spec, body=body,
                                                             payload=payload)])


@pytest.fixture(name="fake_broker")
def fake_broker_fixture():
    fake = FakeBroker()
    try:
        yield fake
    finally:
        fake.close()


def outcomes_of(body):
    """The decoded outcomes of a DONE body (task id, payload frames)."""
    return PickleSerializer().decode(body[1:]) if len(body) > 1 else None


def requests_payload(*requests):
    return PickleSerializer().encode(list(requests))


def test_worker_answers_every_job_it_cannot_read(fake_broker):
    worker = pfmq.Worker(lambda r: 2 * r, fake_broker.address, heartbeat_interval=HEARTBEAT)
    with serving_in_a_thread(worker):
        worker_id, _, _ = fake_broker.receive(Kind.READY)
        task = b"t" * 16
        jobs = {  # job id: (spec, body frames before the payload, payload frames)
            1: ((1, 0, 1, False, 0, 0), [], []),  # no task id
            2: ((2, 0, 1, False, 0, 0), [task], []),  # no payload
            3: ((3, 0, 1, False, 0, 0), [task], [b"not a pickle"]),
            4: ((4, 0, 2, False, 0, 0), [task], requests_payload(1)),  # one request, not two
            5: ((5, 0, 0, False, 0, 0), [task], requests_payload()),  # a job of no requests
            6: ((6, 0, 1, True, -1, 0), [task], requests_payload(1)),  # a negative seed
            7: ((7, 0, 1, False, 0, 0), [task], requests_payload(21)),  # a good one after all
        }
        for spec, body, payload in jobs.values():
            fake_broker.send_job(worker_id, spec, body, payload)
        answers = {}
        while len(answers) < len(jobs):
            peer, fields, body = fake_broker.receive(Kind.DONE)
            assert peer == worker_id and fields[1] == COMPLETED
            answers[fields[0]] = (body[0], outcomes_of(body))
        assert worker.is_alive
    assert answers[1][0] == b"" and answers[7] == (task, [(OK, 42)])
    for job_id, reason in [(1, "without a task id"), (2, "no payload"), (3, "cannot unpickle"),
                           (4, "decoded to"), (6, "negative seed")]:
        task_id, outcomes = answers[job_id]
        assert [code for code, _ in outcomes] == [SERIALIZATION_ERROR] * jobs[job_id][0][2]
        assert "cannot read the request" in outcomes[0][1] and reason in outcomes[0][1]
    assert answers[5] == (task, [])  # a count that cannot be: the task fails all its requests


def test_keyed_worker_answers_a_job_without_payload_or_with_a_broken_seal():
    key = b"shared"
    fake = FakeBroker(key)
    try:
        worker = pfmq.Worker(lambda r: r, fake.address, key=key, heartbeat_interval=HEARTBEAT)
        with serving_in_a_thread(worker):
            worker_id, _, _ = fake.receive(Kind.READY)
            task = b"k" * 16
            fake.send_job(worker_id, (1, 0, 1, False, 0, 0), [task],
                          fake.wire.seal([], 1, protocol.REQUESTS))
            sealed = fake.wire.seal(requests_payload("x"), 2, protocol.REQUESTS)
            fake.send_job(worker_id, (2, 0, 1, False, 0, 0), [task], [b"tampered", sealed[-1]])
            for expected in ("no payload", "seal mismatch"):
                _, fields, body = fake.receive(Kind.DONE)
                outcomes = PickleSerializer().decode(Wire(key).open(body[1:], fields[0],
                                                                    protocol.OUTCOMES))
                assert outcomes[0][0] == SERIALIZATION_ERROR and expected in outcomes[0][1]
    finally:
        fake.close()


class PickyLoads(PickleSerializer):
    """Pickle, except that loading a request list holding ``'poison'`` raises ``ValueError``."""

    def decode(self, frames):
        value = super().decode(frames)
        if isinstance(value, list) and "poison" in value:
            raise ValueError("this serializer refuses poison")
        return value


def test_a_serializer_raising_anything_fails_the_request_only(broker):
    worker = pfmq.Worker(lambda r: r, broker.backend_address, serializer=PickyLoads(),
                         heartbeat_interval=HEARTBEAT)
    with serving_in_a_thread(worker):
        task = broker.imap(["a", "poison", "b"], errors="return", max_batch=1)
        results = list(task.iter_results(timeout=20))
        assert results[0] == "a" and results[2] == "b"
        assert isinstance(results[1], pfmq.SerializationError)
        assert "refuses poison" in str(results[1])
        assert worker.is_alive


# -- fault 7: a signal handler that takes no lock -----------------------------------------------


def locks_reachable_from(worker):
    """The locks of the worker and of the pfmq objects it holds (threads left out: a running
    thread holds a lock of its own until it ends)."""
    lock_types = (type(threading.Lock()), type(threading.RLock()), threading.Condition)
    found, objects = [], [worker]
    for obj in objects:
        for value in getattr(obj, "__dict__", {}).values():
            if isinstance(value, lock_types):
                found.append(value)
            elif type(value).__module__.startswith("pythonflow.pfmq") and value not in objects:
                objects.append(value)
    return found


class SilentHandler(logging.Handler):
    """A logging handler whose lock a test can hold, as a thread writing a record would."""

    def emit(self, record):
        pass


def test_signal_handler_and_cancel_without_waiting_take_no_lock(broker):
    worker = pfmq.Worker(lambda r: r, broker.backend_address, heartbeat_interval=HEARTBEAT)
    handler = SilentHandler(logging.DEBUG)
    logger = logging.getLogger("pythonflow.pfmq")
    logger.addHandler(handler)
    try:
        with serving_in_a_thread(worker):
            assert broker.apply(1) == 1
            locks = [*locks_reachable_from(worker), handler.lock]
            assert len(locks) >= 3  # the two wake-ups and the log handler, at least
            for lock in locks:  # as if the interrupted code held every one of them
                lock.acquire()
            try:
                calls = threading.Thread(target=lambda: (
                    worker.cancel(timeout=0), worker.handle_signal(signal.SIGTERM, None)),
                    daemon=True)
                calls.start()
                calls.join(2)
                assert not calls.is_alive(), "the signal path waited for a lock"
            finally:
                for lock in reversed(locks):
                    lock.release()
            wait_until(lambda: not worker.is_alive, message="the worker to stop")
    finally:
        logger.removeHandler(handler)


def test_signal_before_the_worker_starts_stops_its_run(broker):
    worker = pfmq.Worker(lambda r: r, broker.backend_address, heartbeat_interval=HEARTBEAT)
    worker.handle_signal(signal.SIGTERM, None)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and worker.error is None
    worker.cancel()  # a stopped worker is left alone: the next run serves
    with worker:
        assert broker.apply(7) == 7


# -- fault 11: heartbeat_liveness ----------------------------------------------------------------


def test_worker_reconnects_after_liveness_silent_heartbeats(fake_broker):
    interval, liveness = 0.1, 4
    worker = pfmq.Worker(lambda r: r, fake_broker.address, heartbeat_interval=interval,
                         heartbeat_liveness=liveness, timeout=30)
    with serving_in_a_thread(worker):
        first, _, _ = fake_broker.receive(Kind.READY)
        fake_broker.pump(2.5 * liveness * interval)  # pings answered: no reconnection
        assert worker.routing_id == first
        assert [entry[2] for entry in fake_broker.log].count(Kind.READY) == 1
        fake_broker.answer_pings = False
        silent_since = time.monotonic()
        bye = fake_broker.receive(Kind.BYE, timeout=10)
        second, _, _ = fake_broker.receive(Kind.READY, timeout=10)
        waited = time.monotonic() - silent_since
        assert bye[0] == first and second != first and worker.routing_id == second
        # The last answer came up to one interval before the silence began.
        assert (liveness - 1) * interval * 0.9 < waited < 10
        fake_broker.answer_pings = True
        pings_for = fake_broker.receive(Kind.PING)[2][0]
        while pings_for != second:  # a ping sent before the reconnection may still come in
            pings_for = fake_broker.receive(Kind.PING)[2][0]
