"""Fault injection: workers and brokers killed, poison requests, cancellation, fairness, garbage."""
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import zmq
from pfmq_helpers import wait_for_workers, wait_until

from pythonflow import pfmq
from pythonflow.pfmq import protocol
from pythonflow.pfmq.lifecycle import State

pytestmark = pytest.mark.timeout(90)

HERE = os.path.dirname(os.path.abspath(__file__))
HEARTBEAT = 0.1  # fast failure detection keeps these tests short


class Pool:
    """Worker subprocesses that a test can start, kill and reap; all ended by PID at exit."""

    def __init__(self, address, target, **options):
        self.address = address
        self.target = target
        self.options = options
        self.processes = []

    def start(self, count=1):
        for _ in range(count):
            command = [sys.executable, os.path.join(HERE, "fault_worker.py"), self.address,
                       self.target, "--heartbeat", str(HEARTBEAT)]
            for name, value in self.options.items():
                command += [f"--{name}", str(value)]
            self.processes.append(subprocess.Popen(command))

    @property
    def alive(self):
        return [p for p in self.processes if p.poll() is None]

    def kill(self, process, sig=signal.SIGKILL):
        os.kill(process.pid, sig)
        process.wait(10)

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait(10)


@contextlib.contextmanager
def cluster(target, workers=0, broker_options=None, **worker_options):
    broker = pfmq.Broker("tcp://127.0.0.1:*", heartbeat_interval=HEARTBEAT,
                         **(broker_options or {}))
    broker.run_async()
    pool = Pool(broker.backend_address, target, **worker_options)
    try:
        pool.start(workers)
        wait_for_workers(broker, workers)
        yield broker, pool
    finally:
        pool.close()
        broker.cancel()


def sleepy_requests(count, seed=0, longest=0.01):
    rng = random.Random(seed)
    return [{"value": i, "sleep": rng.uniform(0, longest)} for i in range(count)]


def test_sigkill_workers_every_result_exactly_once_in_order():
    rng = random.Random(1)
    kill_at = set(rng.sample(range(20, 380), 5))
    with cluster("sleepy", workers=3) as (broker, pool):
        task = broker.imap(sleepy_requests(400), heartbeat_interval=HEARTBEAT)
        results = []
        for result in task:
            results.append(result)
            if len(results) in kill_at:  # crash the oldest worker mid-stream; a newcomer joins
                pool.kill(pool.alive[0])
                pool.start()
        requeued = broker.stats()["requeued"]
        # The dead are forgotten (by their missed heartbeats, or when a job could not reach
        # them; only the former count as workers_lost) and their replacements serve.
        assert len(pool.alive) == 3
        wait_for_workers(broker, 3)
    assert results == list(range(400))
    assert requeued >= 1  # the first crash, with the stream in full flow, took requests along


def test_poison_request_fails_after_bounded_attempts():
    # Without prefetch a worker gets its next request once its last result reached the broker.
    # With prefetch, the result of the request before the poison could still be in the dying
    # process's send buffer: that request, the oldest unanswered, would be charged the crash.
    with cluster("poison", workers=2, broker_options={"max_attempts": 2},
                 prefetch=0) as (broker, pool):
        supervisor_done = threading.Event()

        def supervise():  # restart crashed workers, as a process manager would
            while not supervisor_done.is_set():
                for process in list(pool.processes):
                    if process.poll() is not None and process.returncode == -signal.SIGKILL:
                        pool.processes.remove(process)
                        pool.start()
                supervisor_done.wait(0.05)

        supervisor = threading.Thread(target=supervise)
        supervisor.start()
        try:
            requests = ["a", "b", "poison", "c"]
            results = list(broker.imap(requests, errors="return", heartbeat_interval=HEARTBEAT))
            assert broker.apply("still serving") == "still serving"
        finally:
            supervisor_done.set()
            supervisor.join()
    assert results[:2] == ["a", "b"] and results[3] == "c"
    error = results[2]
    assert isinstance(error, pfmq.WorkerDiedError)
    assert "request 2" in str(error) and "died 2 times" in str(error)


def test_long_transformation_is_not_resent_while_its_worker_lives():
    with cluster("sleepy", workers=1) as (broker, pool):
        started = time.monotonic()
        result = broker.apply({"value": 7, "sleep": 2.0}, timeout=0.3, num_retries=2)
        assert result == 7
        assert time.monotonic() - started >= 2.0
        stats = broker.stats()
    assert stats["requeued"] == 0 and stats["workers_lost"] == 0 and stats["completed"] == 1


def quiet_loopback_addresses(count):
    """Free loopback TCP addresses below the kernel's ephemeral port range.

    While a broker restarts, its ports are free for a moment; an ephemeral port could be handed to
    another process then, or become the source port of a peer reconnecting to it (TCP connects to
    itself), and the new broker could not bind. The kernel hands out no port below that range.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            low = int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    addresses = []
    while len(addresses) < count:
        port = rng.randrange(max(1024, low - 10000), max(1025, low))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        address = f"tcp://127.0.0.1:{port}"
        if address not in addresses:
            addresses.append(address)
    return addresses


def test_broker_restart_on_same_address():
    context = zmq.Context.instance()
    backend, frontend = quiet_loopback_addresses(2)
    code = ("import sys; sys.path.insert(0, sys.argv[3]); from pythonflow import pfmq; "
            f"pfmq.Broker(sys.argv[1], sys.argv[2], heartbeat_interval={HEARTBEAT}).run()")

    def start_broker():
        return subprocess.Popen([sys.executable, "-c", code, backend, frontend,
                                 os.path.dirname(HERE)])

    brokers = [start_broker()]
    pool = Pool(backend, "sleepy")
    try:
        pool.start(2)
        task = pfmq.Task(sleepy_requests(300, longest=0.01), frontend, timeout=10,
                         heartbeat_interval=HEARTBEAT, context=context)
        results = []
        for result in task:
            results.append(result)
            if len(results) in (60, 180):  # crash the broker and bring up a new one
                brokers[-1].kill()
                brokers[-1].wait(10)
                brokers.append(start_broker())
        assert results == list(range(300))
    finally:
        pool.close()
        for broker in brokers:
            if broker.poll() is None:
                broker.kill()
            broker.wait(10)


def test_workers_join_and_leave_during_imap():
    with cluster("sleepy", workers=1) as (broker, pool):
        results = []
        for result in broker.imap(sleepy_requests(300, longest=0.01),
                                  heartbeat_interval=HEARTBEAT):
            results.append(result)
            if len(results) == 50:
                pool.start(2)
            if len(results) == 150:  # leave gracefully: prefetched requests go back
                pool.kill(pool.alive[0], signal.SIGTERM)
        stats = broker.stats()
    assert results == list(range(300))
    assert stats["workers_lost"] == 0


def test_cancelled_worker_hands_back_prefetched_requests():
    release = threading.Event()

    def held_until_released(request):
        release.wait(10)
        return request

    broker = pfmq.Broker("tcp://127.0.0.1:*", heartbeat_interval=HEARTBEAT, start=True)
    first = pfmq.Worker(held_until_released, broker.backend_address, prefetch=4,
                        heartbeat_interval=HEARTBEAT)
    second = pfmq.Worker(lambda r: r, broker.backend_address, heartbeat_interval=HEARTBEAT)
    threads = [threading.Thread(target=first.run)]
    try:
        threads[0].start()
        task = broker.imap(range(5), heartbeat_interval=HEARTBEAT)
        # The first request runs until released; the other four went to the same worker
        # (prefetch=4), as jobs of one request each: the task knows no timings to batch by yet.
        wait_until(lambda: first.busy and first.executed == 0
                   and broker.stats()["in_flight"] == 5, message="one running, four prefetched")
        first.cancel(timeout=0)  # only asks: the running request is still held
        wait_until(lambda: first.state is State.CANCELLING, message="the cancel noticed")
        release.set()
        threads[0].join(10)
        assert not threads[0].is_alive() and not first.is_alive
        threads.append(threading.Thread(target=second.run))
        threads[1].start()
        assert list(task) == list(range(5))
        assert (first.executed, second.executed) == (1, 4)
        assert broker.stats()["requeued"] == 4
    finally:
        release.set()
        first.cancel()
        second.cancel()
        broker.cancel()
        for thread in threads:
            thread.join(10)


def test_cancelled_task_is_dropped_at_the_broker_and_workers():
    broker = pfmq.Broker("tcp://127.0.0.1:*", heartbeat_interval=HEARTBEAT, start=True)
    worker = pfmq.Worker(lambda r: time.sleep(0.02) or r, broker.backend_address,
                         heartbeat_interval=HEARTBEAT, prefetch=2)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        task = broker.imap(range(1000), heartbeat_interval=HEARTBEAT)
        assert [next(task) for _ in range(3)] == [0, 1, 2]
        task.cancel()
        wait_until(lambda: broker.stats()["tasks"] == 0, message="the task to be forgotten")
        stats = broker.stats()
        assert stats["queued"] == 0 and stats["in_flight"] == 0
        # The request running when the task was cancelled finishes; the prefetched ones do not.
        wait_until(lambda: not worker.busy and not worker.held, message="the worker to be idle")
        executed = worker.executed
        # What ran: the three consumed, the jobs the task keeps in flight (two per worker slot,
        # plus one; a slow request travels alone) and a worker's worth sent while the cancel
        # was on its way; never the other requests of the thousand.
        capacity = 3  # prefetch=2 and the one being evaluated
        assert executed <= 3 + (2 * capacity + 1) + capacity
        assert broker.apply(5) == 5  # served promptly: nothing of the old task is left to do
        assert worker.executed == executed + 1
    finally:
        worker.cancel()
        broker.cancel()
        thread.join(10)


def test_task_whose_process_died_is_forgotten():
    broker = pfmq.Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", heartbeat_interval=HEARTBEAT,
                         start=True)
    code = ("import sys, itertools; sys.path.insert(0, sys.argv[2]); from pythonflow import pfmq; "
            "task = pfmq.Task(itertools.count(), sys.argv[1]); print('started', flush=True); "
            "import time; time.sleep(60)")
    consumer = subprocess.Popen([sys.executable, "-c", code, broker.frontend_address,
                                 os.path.dirname(HERE)], stdout=subprocess.PIPE, text=True)
    try:
        assert consumer.stdout.readline().strip() == "started"
        wait_until(lambda: broker.stats()["queued"] > 0, message="requests queued")
        consumer.kill()
        consumer.wait(10)
        wait_until(lambda: broker.stats()["tasks"] == 0, timeout=10, message="task forgotten")
        assert broker.stats()["queued"] == 0
    finally:
        if consumer.poll() is None:
            consumer.kill()
        consumer.wait(10)
        broker.cancel()


def test_long_imap_does_not_starve_apply():
    with cluster("sleepy", workers=2) as (broker, pool):
        task = broker.imap([{"value": i, "sleep": 0.005} for i in range(600)],
                           heartbeat_interval=HEARTBEAT)
        assert next(task) == 0
        started = time.monotonic()
        assert broker.apply({"value": "urgent"}) == "urgent"
        waited = time.monotonic() - started
        rest = list(task)
        total = time.monotonic() - started
    assert rest == list(range(1, 600))
    assert waited < 0.25 * total, (waited, total)


def test_seeded_results_do_not_depend_on_workers_or_crashes():
    requests = [{"sleep": 0.002} for _ in range(120)]
    with cluster("seeded", workers=1) as (broker, pool):
        alone = list(broker.imap(requests, seed=11, heartbeat_interval=HEARTBEAT))
        pool.start(3)
        wait_for_workers(broker, 4)
        crowd = []
        for result in broker.imap(requests, seed=11, heartbeat_interval=HEARTBEAT):
            crowd.append(result)
            if len(crowd) == 30:
                pool.kill(pool.alive[1])
        other_seed = list(broker.imap(requests[:5], seed=12, heartbeat_interval=HEARTBEAT))
    assert crowd == alone
    assert len(set(alone)) == len(alone)
    assert other_seed != alone[:5]


def test_garbage_on_both_sockets_is_dropped_and_service_continues():
    rng = random.Random(5)
    kinds = list(protocol.Kind)
    context = zmq.Context.instance()
    with cluster("sleepy", workers=1) as (broker, pool):
        attackers = []
        for address in (broker.frontend_address, broker.backend_address):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(address)
            attackers.append(sock)
        for _ in range(3000):
            sock = rng.choice(attackers)
            kind = rng.choice(kinds)
            header = bytes([rng.choice([1, 1, 1, 0, 2]), kind])
            header += rng.randbytes(rng.choice([0, 4, 8, 13, 17, 21, 25, 29]))
            frames = [header] + [rng.randbytes(rng.randrange(0, 40))
                                 for _ in range(rng.randrange(0, 4))]
            if rng.random() < 0.1:
                frames = [rng.randbytes(rng.randrange(0, 8))]
            sock.send_multipart(frames)
        for sock in attackers:
            sock.close()
        results = list(broker.imap(sleepy_requests(100, longest=0.001),
                                   heartbeat_interval=HEARTBEAT))
        stats = broker.stats()
    assert results == list(range(100))
    assert stats["dropped"] > 1000


def test_image_pipeline_is_bitwise_reproducible_with_more_workers_and_a_crash():
    """The seeded image demo gives identical pixels on 1 worker and on 3 with one killed."""
    import numpy as np

    from pythonflow.data import sample_image_path

    requests = [{"fetches": "rotated_image", "context": {"filename": sample_image_path()}}
                for _ in range(12)]
    options = dict(broker_options={"heartbeat_interval": HEARTBEAT},
                   heartbeat_interval=HEARTBEAT)
    with pfmq.LocalCluster("pythonflow.pfmq.demo:build_graph", num_workers=1,
                           **options) as cluster:
        alone = list(cluster.imap(requests, seed=5, heartbeat_interval=HEARTBEAT))
    with pfmq.LocalCluster("pythonflow.pfmq.demo:build_graph", num_workers=3,
                           **options) as cluster:
        crowd = []
        for image in cluster.imap(requests, seed=5, heartbeat_interval=HEARTBEAT):
            crowd.append(image)
            if len(crowd) == 4:
                os.kill(cluster.pids[0], signal.SIGKILL)
        wait_until(lambda: cluster.stats()["workers_lost"] == 1, message="the crash noticed")
    assert len(alone) == len(crowd) == 12
    assert all(np.array_equal(a, b) for a, b in zip(alone, crowd))
    assert not np.array_equal(alone[0], alone[1])  # each request draws its own noise and angle


def test_oversized_messages_fail_cleanly_and_attackers_are_cut_off():
    limit = 1 << 16
    broker = pfmq.Broker("tcp://127.0.0.1:*", heartbeat_interval=HEARTBEAT,
                         max_message_size=limit, start=True)
    worker = pfmq.Worker(lambda r: b"x" * r, broker.backend_address,
                         heartbeat_interval=HEARTBEAT)
    thread = threading.Thread(target=worker.run)
    thread.start()
    wait_until(lambda: worker.max_message_size == limit, message="the limit learned")
    attacker = zmq.Context.instance().socket(zmq.DEALER)
    attacker.setsockopt(zmq.LINGER, 0)
    try:
        attacker.connect(broker.backend_address)
        attacker.send_multipart([bytes(4 * limit)])  # cut off before anything is read
        results = list(broker.imap([10, b"y" * (2 * limit), 4 * limit, 20], errors="return",
                                   heartbeat_interval=HEARTBEAT))
        assert results[0] == b"x" * 10 and results[3] == b"x" * 20
        assert isinstance(results[1], pfmq.SerializationError)  # request too large to send
        assert "max_message_size" in str(results[1])
        assert isinstance(results[2], pfmq.SerializationError)  # result too large to return
        assert "result needs a frame" in str(results[2])
        assert broker.apply(5) == b"x" * 5
    finally:
        attacker.close()
        worker.cancel()
        broker.cancel()
        thread.join(10)
