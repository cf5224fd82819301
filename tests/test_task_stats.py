"""``task.stats()``: what the consumer of a stream sees, above all how long it waited."""
import itertools
import threading
import time

import pytest
from pfmq_helpers import (  # noqa: F401 (broker_fixture provides the ``broker`` fixture)
    broker_fixture,
    thread_workers,
    wait_until,
)

from pythonflow import pfmq

pytestmark = pytest.mark.timeout(60)

KEYS = {"delivered", "failed", "results_per_second", "in_flight", "cached", "requests_read",
        "waiting_seconds", "elapsed_seconds"}


def test_a_slow_worker_keeps_the_consumer_waiting(broker):
    nap = 0.05

    def slow(request):
        time.sleep(nap)
        return request

    with thread_workers(broker.backend_address, 1, slow):
        task = broker.imap(range(6), max_batch=1)
        assert list(task) == list(range(6))
        stats = task.stats()
    assert set(stats) == KEYS
    assert stats["delivered"] == stats["requests_read"] == 6 and stats["failed"] == 0
    # The six results cannot come in before six naps, and the consumer did nothing but wait.
    assert stats["elapsed_seconds"] >= 6 * nap
    assert 5 * nap <= stats["waiting_seconds"] <= stats["elapsed_seconds"]
    assert stats["results_per_second"] <= 1 / nap
    assert stats["results_per_second"] == pytest.approx(6 / stats["elapsed_seconds"])
    # Once the consumer reached the end, the figures stay those of the stream.
    assert task.stats()["elapsed_seconds"] == stats["elapsed_seconds"]


def test_a_consumer_with_everything_at_hand_waits_for_nothing(broker):
    with thread_workers(broker.backend_address, 1):
        task = broker.imap(range(20), cache_size=32)
        # A consumer busy elsewhere until the stream is done: each result is ready when asked.
        wait_until(lambda: not task.is_alive, message="the stream done")
        stats = task.stats()
        assert stats["cached"] == 20 and stats["delivered"] == 0 and stats["in_flight"] == 0
        assert list(task) == [2 * i for i in range(20)]
        stats = task.stats()
    assert stats["delivered"] == 20 and stats["cached"] == 0
    assert stats["waiting_seconds"] == 0.0


def test_requests_in_flight_and_read(broker):
    release = threading.Event()

    def held(request):
        release.wait(30)
        return request

    with thread_workers(broker.backend_address, 1, held):
        task = broker.imap(range(100), max_batch=1, cache_size=4)
        try:
            stats = wait_until(lambda: (lambda s: s if s["in_flight"] else None)(task.stats()),
                               message="a request in flight")
            assert 1 <= stats["in_flight"] <= stats["requests_read"] < 100
            assert stats["delivered"] == 0
            assert stats["elapsed_seconds"] > 0 and stats["results_per_second"] == 0
        finally:
            release.set()
        assert list(itertools.islice(task, 10)) == list(range(10))
        stats = task.stats()
        assert stats["delivered"] == 10 and stats["requests_read"] >= 10
        task.cancel()


def test_failures_are_counted(broker):
    with thread_workers(broker.backend_address, 1, "raise"):
        task = broker.imap([1, -1, 2, -2, 3], errors="return")
        results = list(task)
    assert [r for r in results if not isinstance(r, Exception)] == [2, 4, 6]
    stats = task.stats()
    assert stats["delivered"] == 5 and stats["failed"] == 2


def test_a_resumed_task_counts_only_its_own_results(broker):
    with thread_workers(broker.backend_address, 1):
        task = broker.imap(range(10))
        assert list(itertools.islice(task, 4)) == [0, 2, 4, 6]
        state = task.state_dict()
        task.cancel()
        resumed = broker.imap(range(10), resume=state)
        assert list(resumed) == [2 * i for i in range(4, 10)]
        unordered = broker.imap(range(10), ordered=False, resume={
            "format": "pfmq.task/1", "ordered": False, "seed": None, "position": 2,
            "delivered": [[4, 6]]})
        assert sorted(unordered) == [2 * i for i in (2, 3, 6, 7, 8, 9)]
    assert resumed.stats()["delivered"] == resumed.stats()["requests_read"] == 6
    assert unordered.stats()["delivered"] == unordered.stats()["requests_read"] == 6


def test_stats_of_a_task_not_started():
    task = pfmq.Task(range(3), "inproc://never-used", start=False)
    stats = task.stats()
    assert stats["delivered"] == stats["requests_read"] == stats["in_flight"] == 0
    assert stats["elapsed_seconds"] == stats["results_per_second"] == 0


def test_the_demo_says_how_long_the_consumer_waited():
    pytest.importorskip("tqdm", reason="the demo needs the demo extra")
    from pythonflow.pfmq.demo import describe_waiting

    line = describe_waiting({"waiting_seconds": 1.5, "elapsed_seconds": 6.0})
    assert line == "consumer waited 1.50 s of 6.00 s (25%)"
    assert describe_waiting({"waiting_seconds": 0.0, "elapsed_seconds": 0.0}).endswith("(0%)")
