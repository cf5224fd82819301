"""The broker at scale: placing a job without a scan of every worker, the running count of open
jobs, and a quiet broker that reads its workers' heartbeats in batches instead of one by one."""
import threading
import time

import pytest
import zmq
from pfmq_helpers import running_broker, thread_workers, wait_for_workers, wait_until
from test_broker_faults import done, make_scheduler, ready, submit

from pythonflow.pfmq import protocol
from pythonflow.pfmq.liveness import QUIET_SHARE, BrokerClocks, Liveness
from pythonflow.pfmq.protocol import Kind
from pythonflow.pfmq.records import CreditIndex, WorkerRecord
from pythonflow.pfmq.serialization import make_serializer
from pythonflow.pfmq.stream import Stream
from pythonflow.pfmq.transport import dealer, waiting_messages

pytestmark = pytest.mark.timeout(60)

TASK, OTHER_TASK = b"T" * 16, b"U" * 16
A, B, C = b"A" * 16, b"B" * 16, b"C" * 16


def worker(worker_id, credit=0):
    return WorkerRecord(worker_id, capacity=4, credit=credit, now=0.0, lapse=3.0)


def test_the_credit_index_finds_the_most_credit_and_skips_the_ineligible():
    index = CreditIndex()
    a, b, c = worker(A), worker(B), worker(C)
    for record, credit in ((a, 1), (b, 3), (c, 2)):
        index.set(record, credit)
    assert index.most(lambda w: True) is b
    assert index.most(lambda w: w is not b) is c, "the next most credit when the best may not"
    assert index.most(lambda w: False) is None
    index.set(b, 0)
    assert b.credit == 0 and index.most(lambda w: True) is c
    index.discard(c)
    assert index.most(lambda w: True) is a
    index.discard(a)
    index.discard(a)  # forgetting twice is harmless
    assert index.most(lambda w: True) is None


def test_the_credit_index_lets_workers_of_equal_credit_take_turns():
    index = CreditIndex()
    a, b = worker(A), worker(B)
    index.set(a, 2)
    index.set(b, 2)
    assert index.most(lambda w: True) is a
    index.set(a, 1)  # it took a job ...
    index.set(a, 2)  # ... and answered it: now behind b
    assert index.most(lambda w: True) is b


def test_workers_with_equal_free_credit_take_turns_for_jobs():
    """One job at a time on two idle workers alternates between them."""
    scheduler, _, to_workers = make_scheduler()
    ready(scheduler, A, slots=2)
    ready(scheduler, B, slots=2)
    for job_id in range(1, 5):
        submit(scheduler, job_id)
        scheduler.dispatch()
        peer = to_workers.kinds(Kind.JOB)[-1][0]
        done(scheduler, job_id, peer)
    assert [entry[0] for entry in to_workers.kinds(Kind.JOB)] == [A, B, A, B]


def test_the_worker_with_the_most_free_credit_gets_the_job_among_many():
    scheduler, _, to_workers = make_scheduler()
    for number in range(500):
        ready(scheduler, b"%016d" % number, slots=1)
    ready(scheduler, A, slots=3)
    for job_id in range(1, 4):
        submit(scheduler, job_id)
    scheduler.dispatch()
    assert [entry[0] for entry in to_workers.kinds(Kind.JOB)][:2] == [A, A]
    assert scheduler.workers[A].credit == 1


def open_jobs_counted(scheduler):
    return sum(len(task.pending) for task in scheduler.tasks.values())


def test_the_open_jobs_are_counted_as_jobs_come_and_go():
    scheduler, _, _ = make_scheduler(max_attempts=1)
    ready(scheduler, A, slots=2)
    steps = [lambda: submit(scheduler, 1), lambda: submit(scheduler, 1),  # a resend
             lambda: submit(scheduler, 2), lambda: submit(scheduler, 3, OTHER_TASK),
             scheduler.dispatch, lambda: done(scheduler, 1, A), lambda: done(scheduler, 1, A),
             lambda: scheduler.on_task_message(OTHER_TASK, Kind.CANCEL, (), [])]
    expected = [1, 1, 2, 3, 3, 2, 2, 1]
    for step, count in zip(steps, expected):
        step()
        assert scheduler.open_jobs == open_jobs_counted(scheduler) == count
    ready(scheduler, B, slots=2)
    scheduler.dispatch()  # job 2 (still queued: A held jobs 1 and 3) goes to B, the most free
    scheduler.now = 10.0  # both fall silent; B held job 2 alone: with max_attempts=1 it fails
    scheduler.on_task_message(TASK, Kind.PING, (1, 1000), [])
    scheduler.expire_silent_peers()
    assert scheduler.counters["failed"] == 1
    assert scheduler.open_jobs == open_jobs_counted(scheduler) == 0


def test_the_broker_clocks_wait_for_the_quiet_read_only_while_quiet():
    clocks = BrokerClocks(interval=1.0, now=100.0)
    assert clocks.read_due(100.0) and clocks.wait(100.0, quiet=True) == 0.0
    clocks.read(100.0, emptied=True)
    assert not clocks.read_due(100.05)
    assert clocks.wait(100.0, quiet=True) == pytest.approx(QUIET_SHARE)
    assert clocks.wait(100.0, quiet=False) == pytest.approx(1.0), "working: only the check"
    clocks.read(100.2, emptied=False)  # messages were left: read again at once
    assert clocks.read_due(100.2)
    assert not clocks.check_due(100.5) and clocks.check_due(101.0)
    assert not clocks.check_due(101.5), "the next check is an interval later"


def test_a_quiet_broker_answers_many_heartbeats_in_few_wake_ups():
    """With no job open, heartbeats are read in batches: the loop does not wake for each."""
    pings_per_connection, connections = 20, 20
    with running_broker(heartbeat_interval=1.0) as broker:
        wake_ups = []
        dispatch = broker.scheduler.dispatch
        broker.scheduler.dispatch = lambda: (wake_ups.append(1), dispatch())  # once a loop
        wire = protocol.Wire()
        context = zmq.Context.instance()
        socks = [dealer(context, broker.backend_address, protocol.new_id())
                 for _ in range(connections)]
        try:
            before = len(wake_ups)
            for number in range(1, pings_per_connection + 1):
                for sock in socks:  # one at a time, a millisecond or more apart, as they come
                    sock.send_multipart(wire.pack(Kind.PING, number, 1000, body=[b"W" * 16]))
                    threading.Event().wait(0.001)
            pongs = [0]

            def all_answered():
                for sock in socks:
                    pongs[0] += sum(1 for _ in waiting_messages(sock))
                return pongs[0] == connections * pings_per_connection

            wait_until(all_answered, timeout=10)
            woken = len(wake_ups) - before
        finally:
            for sock in socks:
                sock.close(linger=0)
    # 400 heartbeats over half a second or more: a read every tenth of a second, where a broker
    # woken by each would loop hundreds of times.
    assert woken <= 40, f"{woken} wake-ups for {connections * pings_per_connection} heartbeats"


def test_a_quiet_broker_still_serves_a_job_at_once():
    """A job arriving at a quiet broker opens it: the worker's answer is read as it comes."""
    with running_broker(heartbeat_interval=30.0) as broker:  # quiet reads 3 s apart at most
        with thread_workers(broker.backend_address, 1):
            wait_for_workers(broker, 1)
            started = time.monotonic()
            for value in range(20):
                assert broker.apply(value) == 2 * value
            # Twenty round trips take milliseconds; a DONE read on the quiet clock, 20 ms (a
            # tenth of the worker's heartbeat interval) at the least.
            assert time.monotonic() - started < 0.4
            assert broker.stats()["workers_lost"] == 0


def test_quiet_reads_come_often_enough_for_the_workers_with_the_shortest_heartbeats():
    clocks = BrokerClocks(interval=30.0, now=0.0)
    clocks.read(0.0, emptied=True, shortest=0.2)
    assert clocks.wait(0.0, quiet=True) == pytest.approx(0.2 * QUIET_SHARE)
    scheduler, _, _ = make_scheduler(heartbeat_interval=30.0)
    assert scheduler.shortest_interval == 30.0
    ready(scheduler, A)
    scheduler.on_worker_message(b"H" * 16, Kind.PING, (1, 200), [zmq.Frame(A)])
    assert scheduler.shortest_interval == pytest.approx(0.2)
    scheduler.on_worker_message(A, Kind.BYE, (), [])
    scheduler.expire_silent_peers()
    assert scheduler.shortest_interval == 30.0, "recounted once that worker is gone"


class AnsweringSocket:
    """Stands in for a task's DEALER: records what is sent, and has an answer waiting as soon as
    the first job is out, as a broker with idle workers would."""

    def __init__(self):
        self.sent = []

    def send_multipart(self, frames, flags=0, copy=True):
        self.sent.append(frames)

    def getsockopt(self, option):
        assert option == zmq.EVENTS
        return zmq.POLLIN if self.sent else 0


def test_a_task_reads_its_first_result_before_filling_a_thousand_slots_with_single_jobs():
    """Until a result sizes its batches a task sends one request per job; with a thousand slots
    the window holds 2,001 of them, so the first answer must be read as soon as it waits."""
    stream = Stream(range(100_000), "inproc://nobody", make_serializer(), protocol.Wire(None),
                    zmq.Context.instance(), 1.0, 2, cache_size=100_000, ordered=False, seed=None,
                    heartbeat_interval=1.0, max_batch=256, target_job_seconds=0.005)
    stream.sock = AnsweringSocket()
    stream.liveness = Liveness(stream.ping_interval, 1.0, 2)
    stream.capacity = 1000  # as the broker's first PONG said
    stream._submit_new_jobs()
    assert len(stream.sock.sent) == 1, "one-request jobs sent with an answer waiting"
    stream.seconds_per_request = 1e-5  # once read, the answer sizes the batches
    stream._submit_new_jobs()
    counts = [stream.wire.unpack(frames)[1][2] for frames in stream.sock.sent]
    assert counts[0] == 1 and set(counts[1:-1]) == {256} and sum(counts) == 100_000


def test_a_quiet_broker_counts_a_worker_that_has_just_signed_up():
    """Statistics read what waits from the workers first, whatever the quiet clock says."""
    with running_broker(heartbeat_interval=30.0) as broker:  # quiet reads 3 s apart
        assert broker.stats()["workers"] == 0  # the first quiet read is behind us
        wire = protocol.Wire()
        sock = dealer(zmq.Context.instance(), broker.backend_address, protocol.new_id())
        try:
            sock.send_multipart(wire.pack(Kind.READY, 2, 2))
            # Arrived, not yet read: a quiet broker leaves it to its clock, stats() does not.
            wait_until(lambda: broker.stats()["workers"] == 1, timeout=2.0)
        finally:
            sock.close(linger=0)
