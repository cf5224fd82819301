"""Broker-side faults: a broker that is not running, jobs no worker could run, credit for jobs a
worker never held, replayed heartbeats, state whose size or lifetime a peer chooses, and binding
beyond loopback with nothing to check who connects."""
import contextlib
import logging
import re
import time
import warnings

import pytest
import zmq
from pfmq_helpers import running_broker, thread_workers, wait_for_workers, wait_until

from pythonflow import pfmq
from pythonflow.pfmq import protocol
from pythonflow.pfmq.integrations import ipyparallel as pfmq_ipyparallel
from pythonflow.pfmq.protocol import CANCELLED, COMPLETED, Kind, ProtocolError, Wire
from pythonflow.pfmq.records import JobState
from pythonflow.pfmq.scheduler import Scheduler
from pythonflow.pfmq.transport import RateLimitedLogger

pytestmark = pytest.mark.timeout(60)

KEY = b"a key for the broker fault tests"
TASK, OTHER_TASK = b"T" * 16, b"U" * 16
WORKER, OTHER_WORKER = b"W" * 16, b"X" * 16


@contextlib.contextmanager
def raw_dealer(address: str, routing_id: bytes = None):
    """A bare DEALER socket speaking to the broker on behalf of the test."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(address)
    try:
        yield sock
    finally:
        sock.close(linger=0)


def replies_until_pong(sock, wire: Wire, timeout: float = 5.0) -> list:
    """Ping the broker on ``sock`` and return the kinds of what it sent up to its ``PONG``.

    The broker reads one connection's messages in order, so once the ``PONG`` is in, everything
    sent before the ``PING`` has been handled.
    """
    sock.send_multipart(wire.pack(Kind.PING, 1, 1000))
    received = []
    deadline = time.monotonic() + timeout
    while not received or received[-1][0] is not Kind.PONG:
        remaining = deadline - time.monotonic()
        assert remaining > 0 and sock.poll(remaining * 1000), "no PONG from the broker"
        received.append(wire.unpack(sock.recv_multipart()))
    return received


# -- a broker that is not running ---------------------------------------------------------------


def refuses_at_once(broker):
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"not running.*run_async\(\).*with"):
        broker.apply(1, timeout=0.5, num_retries=1)
    with pytest.raises(RuntimeError, match=r"not running.*run_async\(\).*with"):
        broker.imap([1, 2], timeout=0.5, num_retries=1)
    return time.monotonic() - started < 0.4


def test_apply_and_imap_refuse_at_once_when_the_broker_is_not_running():
    broker = pfmq.Broker("tcp://127.0.0.1:*", heartbeat_interval=0.2)
    assert refuses_at_once(broker), "never started: the refusal must not wait"
    broker.run_async()
    try:
        assert broker.is_alive, "run_async returns once the broker serves"
    finally:
        broker.cancel(timeout=10)
    assert not broker.is_alive
    assert refuses_at_once(broker), "cancelled: the refusal must not wait"


# -- Fault 2: a job without a payload -----------------------------------------------------------


def test_a_submit_without_payload_is_refused_and_does_not_cost_a_worker_slot():
    with running_broker() as broker, thread_workers(broker.backend_address, prefetch=0):
        wait_for_workers(broker, 1)  # one worker, one slot: a slot lost for good stalls the pool
        wire = Wire()
        with raw_dealer(broker.frontend_address) as sock:
            sock.send_multipart(wire.pack(Kind.SUBMIT, 7, 0, 1, False, 0, 0))  # no payload frame
            received = replies_until_pong(sock, wire)
        task = broker.imap([21])
        assert list(task.iter_results(timeout=5)) == [42], "the worker's slot must still be free"
        # The sender is told, so a task would neither wait for the job nor send it again.
        kind, fields, body = received[0]
        assert kind is Kind.FAILED and fields[0] == 7
        assert "refused" in bytes(body[0]).decode() and "payload" in bytes(body[0]).decode()
        stats = broker.stats()
        assert stats["dropped"] == 1 and stats["queued"] == stats["in_flight"] == 0
        assert [w["credit"] for w in stats["per_worker"].values()] == [1]


def test_signed_submits_without_a_payload_never_reach_the_scheduler():
    """With a key, a payload always carries its seal: an empty one is refused as unsigned."""
    wire = Wire(KEY)
    with pytest.raises(ProtocolError, match="too short"):
        wire.unpack(wire.pack(Kind.SUBMIT, 7, 0, 1, False, 0, 0))


# -- scheduler fixtures for credit, heartbeats and lifetimes -----------------------------------


class Outbox:
    """Stands in for one of the broker's sockets: records what the scheduler sends."""

    def __init__(self):
        self.sent = []
        self.gone = set()  # peers the socket can no longer route to

    def __call__(self, peer, kind, *fields, body=(), payload=()):
        self.sent.append((peer, kind, fields))
        return peer not in self.gone

    def kinds(self, kind):
        return [entry for entry in self.sent if entry[1] is kind]


def make_scheduler(heartbeat_interval=1.0, max_attempts=3):
    to_tasks, to_workers = Outbox(), Outbox()
    scheduler = Scheduler(to_tasks, to_workers, incarnation=1,
                          heartbeat_interval=heartbeat_interval, heartbeat_liveness=3,
                          max_attempts=max_attempts)
    return scheduler, to_tasks, to_workers


def ready(scheduler, worker_id=WORKER, slots=1):
    scheduler.on_worker_message(worker_id, Kind.READY, (slots, slots), [])


def submit(scheduler, job_id, task_id=TASK):
    scheduler.on_task_message(task_id, Kind.SUBMIT, (job_id, job_id, 1, False, 0, 0),
                              [zmq.Frame(b"serialised requests")])


def done(scheduler, job_id, worker_id=WORKER, task_id=TASK, status=COMPLETED):
    scheduler.on_worker_message(worker_id, Kind.DONE, (job_id, status, 0.01),
                                [zmq.Frame(task_id), zmq.Frame(b"serialised outcomes")])


def credit(scheduler, worker_id=WORKER):
    return scheduler.workers[worker_id].credit


# -- Fault 6: credit only for jobs the worker held ----------------------------------------------


def test_credit_comes_back_only_for_a_job_the_worker_held():
    scheduler, to_tasks, to_workers = make_scheduler()
    ready(scheduler)
    submit(scheduler, 1)
    scheduler.dispatch()
    assert credit(scheduler) == 0 and len(to_workers.kinds(Kind.JOB)) == 1
    done(scheduler, 1)
    assert credit(scheduler) == 1 and len(to_tasks.kinds(Kind.RESULT)) == 1
    done(scheduler, 1)  # a duplicate
    done(scheduler, 99)  # a job it was never sent
    done(scheduler, 5, task_id=OTHER_TASK)  # of a task the broker does not know
    assert credit(scheduler) == 1, "credit beyond the worker's slots"
    assert len(to_tasks.kinds(Kind.RESULT)) == 1
    for job_id in (2, 3, 4):
        submit(scheduler, job_id)
    scheduler.dispatch()
    assert len(to_workers.kinds(Kind.JOB)) == 2, "a one-slot worker holds one job at a time"
    assert scheduler.stats()["queued"] == 2


def test_a_revoked_job_frees_its_slot_once():
    scheduler, to_tasks, to_workers = make_scheduler()
    ready(scheduler)
    submit(scheduler, 1)
    scheduler.dispatch()
    scheduler.on_task_message(TASK, Kind.CANCEL, (), [])
    assert to_workers.kinds(Kind.REVOKE) and scheduler.stats()["in_flight"] == 0
    assert credit(scheduler) == 0, "the worker still holds the job until it says otherwise"
    done(scheduler, 1, status=CANCELLED)  # it skipped the job: the slot is free again
    assert credit(scheduler) == 1
    done(scheduler, 1, status=CANCELLED)
    done(scheduler, 1)
    assert credit(scheduler) == 1 and not to_tasks.kinds(Kind.RESULT)


def test_a_job_answered_elsewhere_still_frees_its_holders_slot():
    """A worker presumed dead comes back and answers a job another worker now holds."""
    scheduler, to_tasks, _ = make_scheduler()
    ready(scheduler, WORKER)
    submit(scheduler, 1)
    scheduler.dispatch()
    scheduler.now = 10.0  # WORKER fell silent: presumed dead, its job goes to OTHER_WORKER
    scheduler.on_task_message(TASK, Kind.PING, (1, 1000), [])
    scheduler.expire_silent_peers()
    ready(scheduler, OTHER_WORKER)
    scheduler.dispatch()
    assert credit(scheduler, OTHER_WORKER) == 0
    ready(scheduler, WORKER)  # back, signs up again, and delivers the old job first
    done(scheduler, 1, WORKER)
    assert len(to_tasks.kinds(Kind.RESULT)) == 1
    done(scheduler, 1, OTHER_WORKER)  # too late for the task, but its slot is free again
    assert len(to_tasks.kinds(Kind.RESULT)) == 1
    assert credit(scheduler, OTHER_WORKER) == 1 and credit(scheduler, WORKER) == 1


# -- Fault 7: blame for a worker's death -------------------------------------------------------


class Pool:
    """Workers that run what the scheduler sends them, in order; the poison kills its worker.

    A worker that dies takes with it the DONE of every job it finished in the same step: ZeroMQ
    sends in the background, and a process killed right after a send may not have sent it. A
    supervisor replaces every dead worker, as a process manager would.
    """

    def __init__(self, scheduler, to_workers, size, slots, poison):
        self.scheduler, self.to_workers = scheduler, to_workers
        self.size, self.slots, self.poison = size, slots, poison
        self.held = {}  # worker id -> job ids received, not yet answered
        self.seen = 0  # messages of to_workers already handed to the workers
        self.started = 0
        self.pings = 0

    def step(self):
        while len(self.held) < self.size:
            self.started += 1
            worker_id = b"%015d" % self.started + b"w"
            self.held[worker_id] = []
            ready(self.scheduler, worker_id, slots=self.slots)
        self.scheduler.dispatch()
        for peer, kind, fields in self.to_workers.sent[self.seen:]:
            if kind is Kind.JOB:
                self.held[peer].append(fields[0])
        self.seen = len(self.to_workers.sent)
        for worker_id, jobs in list(self.held.items()):
            if self.poison in jobs:  # it dies, and the DONEs of the jobs before it die with it
                del self.held[worker_id]
                continue
            for job_id in jobs:
                done(self.scheduler, job_id, worker_id)
            jobs.clear()
        self.scheduler.now += 10.0  # the dead are noticed; the living and the task speak
        self.pings += 1
        self.scheduler.on_task_message(TASK, Kind.PING, (self.pings, 1000), [])
        for worker_id in self.held:
            self.scheduler.on_worker_message(b"H" * 16, Kind.PING, (self.pings, 1000),
                                             [zmq.Frame(worker_id)])
        self.scheduler.expire_silent_peers()


@pytest.mark.parametrize("workers, slots, poison", [(1, 2, 1), (1, 3, 2), (2, 2, 2), (3, 2, 0)])
def test_only_the_poison_job_is_blamed_for_the_deaths_it_causes(workers, slots, poison):
    max_attempts = 2
    scheduler, to_tasks, to_workers = make_scheduler(max_attempts=max_attempts)
    for job_id in range(4):
        submit(scheduler, job_id)
    pool = Pool(scheduler, to_workers, workers, slots, poison)
    for _ in range(12):
        pool.step()
    answered = sorted(fields[0] for _, _, fields in to_tasks.kinds(Kind.RESULT))
    failed = [fields[0] for _, _, fields in to_tasks.kinds(Kind.FAILED)]
    assert failed == [poison], "an innocent job was blamed for the poison's deaths"
    assert answered == [job_id for job_id in range(4) if job_id != poison]
    # Each death is counted only where it is certain; one uncertain death may come first.
    assert max_attempts <= scheduler.counters["workers_lost"] <= max_attempts + 1
    assert not scheduler.tasks[TASK].pending


def test_an_isolated_job_does_not_wait_behind_a_stream_of_other_jobs():
    """With every worker busy, one is reserved: it takes no new jobs until it has answered."""
    scheduler, to_tasks, to_workers = make_scheduler()
    ready(scheduler, WORKER, slots=2)
    ready(scheduler, OTHER_WORKER, slots=2)
    for job_id in range(40):
        submit(scheduler, job_id)
    scheduler.dispatch()
    held_by_worker = [fields[0] for peer, kind, fields in to_workers.sent
                      if kind is Kind.JOB and peer == WORKER]
    assert len(held_by_worker) == 2
    scheduler.now = 10.0  # WORKER dies holding two jobs: either may have killed it
    scheduler.on_task_message(TASK, Kind.PING, (1, 1000), [])
    scheduler.on_worker_message(b"H" * 16, Kind.PING, (1, 1000), [zmq.Frame(OTHER_WORKER)])
    scheduler.expire_silent_peers()
    assert WORKER not in scheduler.workers
    first, second = held_by_worker
    sent_before = len(to_workers.sent)
    busy = [fields[0] for peer, kind, fields in to_workers.sent
            if kind is Kind.JOB and peer == OTHER_WORKER]
    for job_id in busy:  # the survivor answers; it is reserved, so it gets nothing new
        done(scheduler, job_id, OTHER_WORKER)
        scheduler.dispatch()
    jobs_after = [(peer, fields[0]) for peer, kind, fields in to_workers.sent[sent_before:]
                  if kind is Kind.JOB]
    assert jobs_after == [(OTHER_WORKER, first)], "the isolated job goes first, and alone"
    done(scheduler, first, OTHER_WORKER)
    scheduler.dispatch()
    jobs_after = [(peer, fields[0]) for peer, kind, fields in to_workers.sent[sent_before:]
                  if kind is Kind.JOB]
    assert jobs_after == [(OTHER_WORKER, first), (OTHER_WORKER, second)]
    done(scheduler, second, OTHER_WORKER)
    scheduler.dispatch()  # nothing left to isolate: the stream flows again, two at a time
    assert len([1 for peer, kind, _ in to_workers.sent[sent_before:] if kind is Kind.JOB]) == 4
    answered = {fields[0] for _, _, fields in to_tasks.kinds(Kind.RESULT)}
    assert answered == {first, second, *busy}


# -- the scheduler's state: named job states, a running total of capacity ---------------------


def job_state(scheduler, job_id, task_id=TASK):
    return scheduler.tasks[task_id].pending[job_id].state


def test_a_job_is_queued_then_held_then_settled_and_queued_again_when_its_worker_leaves():
    scheduler, to_tasks, to_workers = make_scheduler()
    submit(scheduler, 1)
    submit(scheduler, 2)
    assert job_state(scheduler, 1) is JobState.QUEUED and list(scheduler.ready_tasks) == [TASK]
    ready(scheduler, WORKER, slots=2)
    scheduler.dispatch()
    assert job_state(scheduler, 1) is JobState.HELD and not scheduler.ready_tasks
    scheduler.on_worker_message(WORKER, Kind.RETURN, (), [zmq.Frame(TASK),
                                                          zmq.Frame(protocol.pack_job_id(2))])
    assert job_state(scheduler, 2) is JobState.QUEUED and list(scheduler.ready_tasks) == [TASK]
    job = scheduler.tasks[TASK].pending[1]
    done(scheduler, 1)
    assert job.state is JobState.SETTLED and 1 not in scheduler.tasks[TASK].pending
    scheduler.on_task_message(TASK, Kind.CANCEL, (), [])
    assert not scheduler.ready_tasks, "a forgotten task leaves the round robin at once"
    assert scheduler.stats()["queued"] == 0 and scheduler.counters["cancelled"] == 1


def test_messages_of_the_wrong_side_are_refused_by_kind():
    scheduler, _, _ = make_scheduler()
    for kind in (Kind.JOB, Kind.RESULT, Kind.SUBMIT, Kind.STATUS):
        with pytest.raises(ProtocolError, match=f"{kind.name} is not a worker message"):
            scheduler.on_worker_message(WORKER, kind, (), [])
    for kind in (Kind.READY, Kind.DONE, Kind.JOB):
        with pytest.raises(ProtocolError, match=f"{kind.name} is not a task message"):
            scheduler.on_task_message(TASK, kind, (), [])
    assert not scheduler.tasks and not scheduler.workers


class CountingDict(dict):
    """A dict that counts how often its values are walked."""

    walks = 0

    def values(self):
        CountingDict.walks += 1
        return super().values()


def test_capacity_is_kept_as_workers_come_and_go_without_walking_them_per_message():
    scheduler, to_tasks, to_workers = make_scheduler()
    scheduler.workers = CountingDict()
    for number in range(200):
        ready(scheduler, b"%016d" % number, slots=1 + number % 3)
    ready(scheduler, b"%016d" % 7, slots=5)  # signs up again with more slots
    expected = sum(1 + number % 3 for number in range(200)) - 2 + 5
    CountingDict.walks = 0
    for number in range(200):  # a heartbeat from every worker, and a task's
        scheduler.on_worker_message(b"H" * 16, Kind.PING, (1, 1000),
                                    [zmq.Frame(b"%016d" % number)])
    scheduler.on_task_message(TASK, Kind.PING, (1, 1000), [])
    assert CountingDict.walks == 0, "the broker's idle work must not grow with workers squared"
    capacities = {fields[2] for _, kind, fields in to_workers.sent + to_tasks.sent
                  if kind is Kind.PONG}
    assert capacities == {expected}
    scheduler.on_worker_message(b"%016d" % 7, Kind.BYE, (), [])
    scheduler.now = 100.0  # everyone else falls silent
    scheduler.expire_silent_peers()
    assert scheduler.capacity == 0 and scheduler.stats()["capacity"] == 0


# -- Fault 8: replayed heartbeats ---------------------------------------------------------------


def worker_ping(scheduler, number, connection=b"H" * 16, interval_ms=1000):
    scheduler.on_worker_message(connection, Kind.PING, (number, interval_ms), [zmq.Frame(WORKER)])


def test_worker_pings_must_increase_to_count_as_a_sign_of_life():
    scheduler, _, to_workers = make_scheduler()
    ready(scheduler)
    for number in (1, 2, 5):  # numbers may skip (a ping lost on the way), never go back
        scheduler.now += 2.0
        worker_ping(scheduler, number)
        assert scheduler.workers[WORKER].last_seen == scheduler.now
    answered = len(to_workers.kinds(Kind.PONG))
    for replayed in (5, 2):
        scheduler.now += 2.0
        with pytest.raises(ProtocolError, match="does not increase"):
            worker_ping(scheduler, replayed, connection=b"A" * 16)
    assert len(to_workers.kinds(Kind.PONG)) == answered, "a replay gets no answer"
    scheduler.now += 0.1
    scheduler.expire_silent_peers()
    assert WORKER not in scheduler.workers, "replays must not keep a silent worker alive"


def test_a_replayed_signed_ping_does_not_keep_a_dead_worker_alive():
    wire = Wire(KEY)
    with running_broker(key=KEY, heartbeat_interval=0.1) as broker:
        worker_id = protocol.new_id()
        with raw_dealer(broker.backend_address, worker_id) as work, \
                raw_dealer(broker.backend_address) as heartbeat:
            work.send_multipart(wire.pack(Kind.READY, 1, 1))
            wait_for_workers(broker, 1)
            captured = wire.pack(Kind.PING, 1, 100, body=[worker_id])
            heartbeat.send_multipart(captured)
            assert heartbeat.poll(5000), "no PONG"
            assert wire.unpack(heartbeat.recv_multipart())[1][4], "the worker is registered"
        # The worker is gone; someone who captured its PING sends it again and again.
        with raw_dealer(broker.backend_address) as attacker:
            def replay_and_check():
                attacker.send_multipart(captured)
                if attacker.poll(50):  # paces the replays; an answer means it was believed
                    attacker.recv_multipart()
                return broker.stats()["workers"] == 0

            wait_until(replay_and_check, timeout=5, interval=0,
                       message="the dead worker presumed dead despite replayed pings")
        stats = broker.stats()
        assert stats["workers_lost"] == 1 and stats["dropped"] >= 1


# -- Fault 9: state a peer controls -------------------------------------------------------------


def test_peers_cannot_choose_to_be_remembered_for_weeks():
    scheduler, _, _ = make_scheduler()
    longest = 2**32 - 1  # milliseconds: about 50 days, times the liveness
    scheduler.on_task_message(TASK, Kind.PING, (1, longest), [])
    scheduler.on_task_message(OTHER_TASK, Kind.PING, (1, 30_000), [])
    ready(scheduler)
    worker_ping(scheduler, 1, interval_ms=longest)
    scheduler.now = 60.0  # a 30 s interval, honestly kept, is still believed
    scheduler.expire_silent_peers()
    assert OTHER_TASK in scheduler.tasks
    scheduler.now = 3600.0
    scheduler.expire_silent_peers()
    assert not scheduler.tasks and not scheduler.workers


def test_rate_limited_logger_keys_by_template_and_stays_small(caplog):
    logger = logging.getLogger("pfmq-test-rate-limit")
    log = RateLimitedLogger(logger, interval=60, max_keys=8)
    with caplog.at_level(logging.WARNING, logger.name):
        for number in range(5000):  # one kind of message, with a number that varies
            log.log(logging.WARNING, f"unknown message kind {number} from {number:016x}",
                    "dropped: kind %d", number)
        assert len(caplog.records) == 1
        for length in range(100):  # many kinds of message: past max_keys they share one entry
            log.log(logging.WARNING, "kind " + "x" * length, "dropped: %s", length)
        assert len(caplog.records) == 1 + 7 + 1
    # White-box: the tables it keeps stay within max_keys plus the shared entry.
    assert len(log._last) <= 9 and len(log._suppressed) <= 9


def test_broker_log_table_stays_small_under_varied_garbage():
    with running_broker(frontend_address="tcp://127.0.0.1:*") as broker:
        with raw_dealer(broker.frontend_address) as sock:
            for kind in range(len(Kind) + 1, 256):  # "unknown message kind N", N varying
                sock.send_multipart([bytes([protocol.VERSION, kind])])
            for count in range(protocol.MAX_JOB_REQUESTS + 1, protocol.MAX_JOB_REQUESTS + 200):
                sock.send_multipart(Wire().pack(Kind.SUBMIT, count, 0, count, False, 0, 0))
            sent = 256 - len(Kind) - 1 + 199
            wait_until(lambda: broker.stats()["dropped"] >= sent, message="garbage dropped")
        assert len(broker._log._last) <= 2  # white-box: one entry per kind of complaint


# -- Fault 10: binding beyond loopback without a key -------------------------------------------


@pytest.mark.parametrize("backend, frontend", [
    ("tcp://0.0.0.0:5555", None),
    ("tcp://*:5555", None),
    ("tcp://127.0.0.1:5555", "tcp://0.0.0.0:5556"),
    ("tcp://eth0:5555", "ipc:///tmp/pfmq-frontend"),
])
def test_binding_beyond_loopback_without_a_key_warns(monkeypatch, backend, frontend):
    monkeypatch.delenv("PFMQ_KEY", raising=False)
    with pytest.warns(UserWarning, match=r"without a key.*set PFMQ_KEY or pass key=") as record:
        pfmq.Broker(backend, frontend)  # not started: the warning comes with the address
    # Only ours: a garbage collection may also report sockets of brokers of earlier tests.
    (warning,) = [r for r in record if r.category is UserWarning]
    message = str(warning.message)
    assert "\n" not in message and re.search(r"binds tcp://\S+ without", message)
    assert warning.filename == __file__, "the warning points at the caller's line"


def test_no_warning_when_a_key_or_a_curve_allow_list_guards_the_broker(monkeypatch):
    from pythonflow.pfmq.security import CurveServer

    if not zmq.has("curve"):
        pytest.skip("this libzmq has no CURVE support")
    monkeypatch.delenv("PFMQ_KEY", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pfmq.Broker("tcp://0.0.0.0:5555", "tcp://0.0.0.0:5556", key=KEY)
        pfmq.Broker("tcp://127.0.0.1:5555", "ipc:///tmp/pfmq-frontend")
        pfmq.Broker("tcp://[::1]:5555")
        pfmq.Broker("tcp://0.0.0.0:5555", curve=CurveServer.generate(allowed_clients=[]))
        monkeypatch.setenv("PFMQ_KEY", "from the environment")
        pfmq.Broker("tcp://0.0.0.0:5555")
    monkeypatch.delenv("PFMQ_KEY")
    with pytest.warns(UserWarning, match="without a key"):  # CURVE lets every client in
        pfmq.Broker("tcp://0.0.0.0:5555", curve=CurveServer.generate())


def test_the_ipyparallel_example_binds_with_a_key():
    calls = re.findall(r"pfmq\.Broker\(([^)]*)\)", pfmq_ipyparallel.__doc__)
    assert calls, "the module docstring shows a broker"
    for arguments in calls:
        assert "0.0.0.0" not in arguments or "key=" in arguments, arguments
    workers = re.findall(r"start_workers\(([^)]*)\)", pfmq_ipyparallel.__doc__)
    assert workers and all("key=key" in arguments for arguments in workers)


# -- A worker found gone by a failed send ------------------------------------------------------


def test_a_worker_found_gone_by_a_failed_send_counts_as_dead():
    """The router cannot reach a worker that holds one job: it died running it."""
    scheduler, to_tasks, to_workers = make_scheduler(max_attempts=1)
    ready(scheduler, slots=2)
    submit(scheduler, 1)
    scheduler.dispatch()  # WORKER holds job 1 alone
    to_workers.gone.add(WORKER)  # the broker's router now finds WORKER gone
    submit(scheduler, 2)
    scheduler.dispatch()
    stats = scheduler.stats()
    assert stats["workers"] == 0 and stats["workers_lost"] == 1
    failed = to_tasks.kinds(Kind.FAILED)
    assert [fields[0] for _, _, fields in failed] == [1], "job 1 was charged its one attempt"
