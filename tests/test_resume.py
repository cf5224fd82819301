"""Resumable tasks: ``task.state_dict()`` and ``resume=``.

A stream stopped after some results and resumed with a different number of worker processes
must give, bit for bit, what one uninterrupted run gives at every position, deliver each request
once, evaluate none of the delivered ones again, and refuse states that do not fit.
"""
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from pfmq_helpers import (  # noqa: F401 (broker_fixture provides the ``broker`` fixture)
    CountingIterator,
    broker_fixture,
    thread_workers,
    wait_until,
)

from pythonflow import pfmq
from pythonflow.pfmq.protocol import OK

pytestmark = pytest.mark.timeout(90)

FORMAT = "pfmq.task/1"  # what a saved state says it is; a change must not go unnoticed
BENCHMARK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "benchmarks", "bench_resume.py")
COUNT = 48
SEED = 1234
REQUESTS = list(range(COUNT))


def augment(x: int) -> tuple:
    """The worker processes' target: ``x`` with seeded noise, a draw of ``random`` and the pid."""
    time.sleep(0.002)  # long enough a request that every worker gets a share of a stream
    return x, x + np.random.standard_normal(16), random.random(), os.getpid()


def same(results, expected) -> bool:
    """Whether two lists of :func:`augment` results agree bit for bit (the pids aside)."""
    return len(results) == len(expected) and all(
        a[0] == b[0] and a[1].tobytes() == b[1].tobytes() and a[2] == b[2]
        for a, b in zip(results, expected))


@pytest.fixture(name="clusters", scope="module")
def clusters_fixture():
    """Local clusters of 1, 2 and 3 worker processes serving :func:`augment`."""
    with pfmq.LocalCluster("test_resume:augment", num_workers=1) as one, \
            pfmq.LocalCluster("test_resume:augment", num_workers=2) as two, \
            pfmq.LocalCluster("test_resume:augment", num_workers=3) as three:
        yield {1: one, 2: two, 3: three}


@pytest.fixture(name="reference", scope="module")
def reference_fixture(clusters):
    """The results of one uninterrupted seeded run on one worker."""
    results = list(clusters[1].imap(REQUESTS, seed=SEED))
    assert [r[0] for r in results] == REQUESTS
    assert len({r[1].tobytes() for r in results}) == COUNT  # every request draws its own noise
    return results


def runs_of(indices) -> list:
    """The runs ``[start, end)`` of consecutive numbers in ``indices``."""
    runs = []
    for index in sorted(indices):
        if runs and runs[-1][1] == index:
            runs[-1][1] += 1
        else:
            runs.append([index, index + 1])
    return runs


def delivered_count(state: dict) -> int:
    return state["position"] + sum(end - start for start, end in state.get("delivered", []))


def stop_after(task: pfmq.Task, count: int) -> tuple:
    """Take ``count`` results, then the state (through JSON, as a checkpoint file would), and
    cancel the task."""
    results = list(itertools.islice(task, count))
    state = json.loads(json.dumps(task.state_dict()))
    task.cancel()
    return results, state


@pytest.mark.parametrize("before, after, stop", [(2, 3, 13), (3, 1, 30), (1, 2, 5), (3, 3, 1)])
def test_ordered_resume_is_bitwise_exact_whatever_the_workers(clusters, reference, before, after,
                                                              stop):
    first, state = stop_after(clusters[before].imap(REQUESTS, seed=SEED), stop)
    assert state == {"format": FORMAT, "ordered": True, "seed": SEED, "position": stop}
    rest = list(clusters[after].imap(REQUESTS, seed=SEED, resume=state))
    assert [r[0] for r in rest] == REQUESTS[stop:]
    assert same(first + rest, reference)
    pids = {r[3] for r in rest}
    assert pids <= set(clusters[after].pids)
    if after > 1:
        assert len(pids) > 1, "the resumed stream should have been spread over the workers"


@pytest.mark.parametrize("before, after, stop", [(2, 3, 17), (3, 1, 40)])
def test_unordered_resume_delivers_each_request_once_and_exactly(clusters, reference, before,
                                                                 after, stop):
    first, state = stop_after(clusters[before].imap(REQUESTS, seed=SEED, ordered=False), stop)
    assert delivered_count(state) == stop
    rest = list(clusters[after].imap(REQUESTS, seed=SEED, ordered=False, resume=state))
    together = sorted(first + rest, key=lambda r: r[0])
    assert [r[0] for r in together] == REQUESTS  # each request exactly once
    assert same(together, reference)


def test_unordered_state_lists_what_was_delivered_above_a_late_request(broker):
    """Request 0 is held up on a worker while the others are delivered: the state names them,
    and the resumed task sends request 0 and those after the delivered ones, nothing else."""
    release, evaluated = threading.Event(), []

    def target(request):
        evaluated.append(request)
        if request == 0 and not release.is_set():
            release.wait(30)
        return request

    with thread_workers(broker.backend_address, 2, target):
        task = broker.imap(range(12), ordered=False, max_batch=1)
        first = list(itertools.islice(task, 5))
        state = task.state_dict()
        task.cancel()
        assert state == {"format": FORMAT, "ordered": False, "seed": None,
                         "position": 0, "delivered": runs_of(first)}
        assert 0 not in first
        release.set()
        wait_until(lambda: broker.stats()["in_flight"] == 0, message="the held request done")
        del evaluated[:]
        rest = list(broker.imap(range(12), ordered=False, max_batch=1, resume=state))
    assert sorted(first + rest) == list(range(12))
    # None delivered before ran again. (A job of the cancelled task that a worker had in hand
    # may still be evaluated meanwhile: never one whose result was delivered.)
    assert set(rest) <= set(evaluated) and not set(first) & set(evaluated)


@pytest.mark.parametrize("generator", [False, True], ids=["list", "generator"])
def test_resume_advances_the_source_without_evaluating_what_it_skips(broker, generator):
    evaluated = []

    def target(request):
        evaluated.append(request)
        return 2 * request

    source = CountingIterator(range(40)) if generator else list(range(40))
    state = {"format": FORMAT, "ordered": True, "seed": None, "position": 30}
    with thread_workers(broker.backend_address, 1, target):
        results = list(broker.imap(source, resume=state))
    assert results == [2 * i for i in range(30, 40)]
    assert sorted(evaluated) == list(range(30, 40))
    if generator:
        assert source.count == 40


def test_a_failed_request_counts_as_delivered(broker):
    requests = [0, 1, -2, 3, -4, 5, 6]
    evaluated = []

    def target(request):
        evaluated.append(request)
        if request < 0:
            raise ValueError(f"negative request {request}")
        return request

    with thread_workers(broker.backend_address, 1, target):
        task = broker.imap(requests, errors="skip", max_batch=1)
        first = list(itertools.islice(task, 3))  # 0, 1, then -2 skipped, then 3
        state = task.state_dict()
        task.cancel()
        assert first == [0, 1, 3] and state["position"] == 4
        task = broker.imap(requests, resume=state, max_batch=1)  # errors='raise' this time
        with pytest.raises(ValueError, match="negative request -4"):
            next(task)
        assert task.state_dict()["position"] == 5  # the raised failure was delivered too
        assert list(task) == [5, 6]
        del evaluated[:]
        assert list(broker.imap(requests, resume=task.state_dict())) == []
    assert evaluated == []


def test_states_from_the_start_and_the_end(broker):
    with thread_workers(broker.backend_address, 1):
        task = broker.imap(range(5), seed=3)
        assert task.state_dict() == {"format": FORMAT, "ordered": True, "seed": 3,
                                     "position": 0}
        assert list(task) == [0, 2, 4, 6, 8]
        final = task.state_dict()
        assert final["position"] == 5
        # A source that ends where the state is gives an empty stream.
        assert list(broker.imap(range(5), seed=3, resume=final)) == []
        assert list(broker.imap(iter(range(5)), seed=3, resume=final)) == []
        # A state from the start is a task from the start.
        assert list(broker.imap(range(3), resume={"format": FORMAT, "ordered": True,
                                                  "seed": None, "position": 0})) == [0, 2, 4]


def test_a_state_beyond_the_end_of_the_requests_fails_clearly(broker):
    state = {"format": FORMAT, "ordered": True, "seed": None, "position": 8}
    # A source with a length is checked at once ...
    with pytest.raises(ValueError, match="at least 8 requests, these are 5"):
        broker.imap(range(5), resume=state)
    unordered = {"format": FORMAT, "ordered": False, "seed": None, "position": 2,
                 "delivered": [[9, 10]]}
    with pytest.raises(ValueError, match="at least 10 requests, these are 6"):
        broker.imap(list(range(6)), ordered=False, resume=unordered)
    # ... an iterator when it ends, at the consumer, whatever errors= says.
    with thread_workers(broker.backend_address, 1):
        task = broker.imap(iter(range(5)), resume=state, errors="skip")
        with pytest.raises(ValueError, match="ended before request 7") as info:
            next(task)
        assert "\n" not in str(info.value)
        # Unordered, the error comes as soon as the source ends; the results still follow.
        task = broker.imap((i for i in range(6)), ordered=False, resume=unordered)
        results, errors = [], []
        while True:
            try:
                results.append(next(task))
            except StopIteration:
                break
            except ValueError as exc:
                errors.append(str(exc))
        assert sorted(results) == [4, 6, 8, 10]
        assert len(errors) == 1 and "ended before request 9" in errors[0]


def test_unordered_bookkeeping_follows_any_order_of_delivery():
    """Jobs of consecutive requests delivered in a shuffled order, run by run as a task does:
    at every step the state names exactly what was delivered, in as few runs as can be."""
    shuffle = random.Random(3)
    for _ in range(100):
        start = shuffle.randrange(5)
        jobs, first = [], start
        while first < 60:
            count = shuffle.randint(1, 6)
            jobs.append(range(first, first + count))
            first += count
        shuffle.shuffle(jobs)
        task = pfmq.Task(range(first), "inproc://never-used", start=False, ordered=False,
                         resume={"format": FORMAT, "ordered": False, "seed": None,
                                 "position": start, "delivered": []})
        # The consumer's side alone: results are put where the stream would put them.
        task._thread = threading.current_thread()
        seen = set(range(start))
        for job in jobs:
            task._io.outbox.put([(index, (OK, -index)) for index in job])
            for index in job:
                assert next(task) == -index
                seen.add(index)
                state = task.state_dict()
                low = next(i for i in itertools.count() if i not in seen)
                assert state["position"] == low
                assert state["delivered"] == runs_of(i for i in seen if i > low)
                assert task.stats()["delivered"] == len(seen) - start
        assert state["position"] == first and state["delivered"] == []


def test_the_state_is_small_and_survives_json(broker):
    with thread_workers(broker.backend_address, 2, "sleep-random"):
        task = broker.imap(range(200), seed=2**63 - 1, ordered=False, cache_size=16)
        for count, _ in enumerate(task, 1):
            state = task.state_dict()
            assert json.loads(json.dumps(state)) == state
            # Runs between jobs not yet delivered: bounded by the jobs in flight and cached.
            assert len(state["delivered"]) <= 32
            assert delivered_count(state) == count
    assert state == {"format": FORMAT, "ordered": False, "seed": 2**63 - 1,
                     "position": 200, "delivered": []}


GOOD = {"format": FORMAT, "ordered": True, "seed": 5, "position": 3}


@pytest.mark.parametrize("resume, options, message", [
    ([3], {}, r"resume must be a state from task.state_dict\(\) \(format 'pfmq.task/1'\), "
              "not list"),
    ("pfmq.task/1", {}, "not str"),
    ({**GOOD, "format": "pfmq.task/0"}, {}, "not format 'pfmq.task/0'"),
    ({"format": FORMAT, "ordered": True, "seed": 5}, {}, r"lacks \['position'\]"),
    ({**GOOD, "epoch": 2}, {}, r"has keys \['epoch'\]"),
    ({**GOOD, "position": -1}, {}, "position'] must be a whole number"),
    ({**GOOD, "position": True}, {}, "position'] must be a whole number"),
    ({**GOOD, "position": 2.0}, {}, "position'] must be a whole number"),
    ({**GOOD, "ordered": "yes"}, {}, "must be true or false"),
    ({**GOOD, "ordered": False, "delivered": [[3, 4]]}, {"ordered": False}, "runs"),
    ({**GOOD, "ordered": False, "delivered": [[5, 5]]}, {"ordered": False}, "runs"),
    ({**GOOD, "ordered": False, "delivered": [[5, 8], [7, 9]]}, {"ordered": False}, "disjoint"),
    ({**GOOD, "ordered": False, "delivered": [[7, 9], [4, 5]]}, {"ordered": False}, "sorted"),
    ({**GOOD, "ordered": False, "delivered": [5]}, {"ordered": False}, "runs"),
    ({**GOOD, "ordered": False, "delivered": "4"}, {"ordered": False}, "must be a list"),
    ({**GOOD, "delivered": [[4, 5]]}, {}, "delivered out of order"),
    (GOOD, {"ordered": False}, "state of an ordered task: pass ordered=True"),
    ({**GOOD, "ordered": False}, {}, "state of an unordered task: pass ordered=False"),
    (GOOD, {"seed": None}, "seed=5, this one has seed=None: pass the seed"),
    (GOOD, {"seed": 6}, "seed=5, this one has seed=6"),
    ({**GOOD, "seed": None}, {"seed": 5}, "seed=None, this one has seed=5"),
])
def test_a_state_that_does_not_fit_is_refused_in_one_line(resume, options, message):
    options = {"seed": 5, **options}
    with pytest.raises(ValueError, match=message) as info:
        pfmq.Task(range(10), "inproc://never-used", start=False, resume=resume, **options)
    assert "\n" not in str(info.value)


def test_a_fitting_state_is_taken(broker):
    with thread_workers(broker.backend_address, 1):
        assert list(broker.imap(range(6), seed=5, resume=GOOD)) == [6, 8, 10]


def test_the_benchmark_runs_and_prints_a_row_per_stream():
    process = subprocess.Popen([sys.executable, BENCHMARK, "--quick"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=75)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert process.returncode == 0, err
    rows = [line.split() for line in out.splitlines()
            if line.startswith(("function ", "graph ", "50us "))]
    assert [row[:2] for row in rows] == [[target, stream]
                                         for target in ("function", "graph", "50us")
                                         for stream in ("ordered", "unordered")]
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) > 0 and float(row[4]) > 0
