"""Request deadlines (``request_timeout``): a request that runs too long is given up, retried
elsewhere and, after ``max_attempts`` deadlines hit, fails with a ``TimeoutError``; the stream
goes on and every other result arrives once, in order."""
import math
import threading
import time

import pytest
import zmq
from pfmq_helpers import HEARTBEAT, running_broker, thread_workers, wait_until
from test_broker_faults import TASK, WORKER, make_scheduler, ready
from test_stream_steps import make_stream, submitted

from pythonflow import pfmq
from pythonflow.pfmq import status
from pythonflow.pfmq.integrations import prometheus
from pythonflow.pfmq.protocol import FAILED_DEADLINE, FAILED_JOB, Kind, exception_for

pytestmark = pytest.mark.timeout(120)

DEADLINE = 0.4
HUNG = 7  # the index of the request that never returns
COUNT = 20
OTHER_WORKER = b"w" * 15 + b"2"


def hang_at_seven(request):
    """Double ``request``; request 7 sleeps for ever (until its process is ended)."""
    if request == HUNG:
        while True:
            time.sleep(60)
    return 2 * request


def hold_the_gil_at_seven(request):
    """Double ``request``; request 7 runs one C call for hours, never letting go of the GIL."""
    if request == HUNG:
        return sum(range(10 ** 14))
    return 2 * request


def sleep_then_double(request):
    """``request`` is ``(value, seconds)``: sleep that long, then double the value."""
    value, seconds = request
    time.sleep(seconds)
    return 2 * value


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture():
    """Two worker processes whose broker and workers notice a dead peer within a second."""
    cluster = pfmq.LocalCluster(hang_at_seven, 2, request_timeout=DEADLINE,
                                broker_options={"heartbeat_interval": HEARTBEAT,
                                                "max_attempts": 2},
                                heartbeat_interval=HEARTBEAT)
    with cluster:
        yield cluster


def outcomes(task):
    """Every item of ``task``, exceptions raised by ``next`` included, in order."""
    items = []
    while True:
        try:
            items.append(next(task))
        except StopIteration:
            return items
        except Exception as exc:  # noqa: BLE001 - errors='raise' raises the failed request's
            items.append(exc)


def check_timeout(error):
    assert isinstance(error, pfmq.RequestTimeoutError) and isinstance(error, TimeoutError)
    assert f"request {HUNG} " in str(error) and f"{DEADLINE:g} s" in str(error), str(error)
    assert error.index == HUNG and error.deadline == DEADLINE


def hung_and_replaced(cluster, run):
    """Run ``run()``; check that 2 deadlines were hit and 2 processes replaced meanwhile."""
    pids, restarts = set(cluster.pids), cluster.restarts
    hits = cluster.stats()["deadlines_hit"]
    result = run()
    wait_until(lambda: cluster.restarts >= restarts + 2 and len(cluster.pids) == 2,
               message="two hung worker processes replaced")
    assert cluster.stats()["deadlines_hit"] == hits + 2
    assert set(cluster.pids) != pids
    return result


@pytest.mark.parametrize("errors", ["raise", "return"])
def test_a_hung_request_times_out_and_the_stream_goes_on(cluster, errors):
    results = hung_and_replaced(cluster, lambda: outcomes(cluster.imap(
        range(COUNT), errors=errors, timeout=5)))
    assert len(results) == COUNT
    check_timeout(results[HUNG])
    assert results[:HUNG] + results[HUNG + 1:] == [2 * i for i in range(COUNT) if i != HUNG]


def test_a_hung_request_is_skipped(cluster):
    results = hung_and_replaced(cluster, lambda: list(cluster.imap(
        range(COUNT), errors="skip", timeout=5)))
    assert results == [2 * i for i in range(COUNT) if i != HUNG]


def test_apply_raises_the_timeout(cluster):
    with pytest.raises(pfmq.RequestTimeoutError) as caught:
        hung_and_replaced(cluster, lambda: cluster.apply(HUNG))
    assert "request 0 " in str(caught.value) and f"{DEADLINE:g} s" in str(caught.value)
    assert cluster.apply(3) == 6


def test_a_request_that_holds_the_gil_is_ended_by_the_process_timer():
    # The watchdog thread cannot run: the timer (SIGALRM) ends the process, and the broker
    # handles it as any dead worker (a WorkerDiedError after max_attempts deaths).
    with pfmq.LocalCluster(hold_the_gil_at_seven, 2, request_timeout=0.2,
                           broker_options={"heartbeat_interval": HEARTBEAT, "max_attempts": 2},
                           heartbeat_interval=HEARTBEAT) as cluster:
        pids = set(cluster.pids)
        results = list(cluster.imap(range(COUNT), errors="return", timeout=5))
        assert isinstance(results[HUNG], pfmq.WorkerDiedError), results[HUNG]
        assert results[:HUNG] + results[HUNG + 1:] == [2 * i for i in range(COUNT) if i != HUNG]
        wait_until(lambda: len(cluster.pids) == 2 and not set(cluster.pids) & pids,
                   timeout=30, message="both stuck processes replaced")
        assert cluster.stats()["deadlines_hit"] == 0  # nobody could report one


def test_without_a_deadline_nothing_is_given_up():
    # request_timeout=None (the default) on a task of a cluster that sets none.
    with pfmq.LocalCluster(sleep_then_double, 1, heartbeat_interval=HEARTBEAT,
                           broker_options={"heartbeat_interval": HEARTBEAT}) as cluster:
        pids = cluster.pids
        assert list(cluster.imap([(1, 0.6), (2, 0)])) == [2, 4]
        assert cluster.pids == pids and cluster.stats()["deadlines_hit"] == 0


def test_a_slow_request_within_its_deadline_is_untouched():
    with running_broker() as broker, thread_workers(broker.backend_address, 1,
                                                    sleep_then_double) as workers:
        task = broker.imap([(1, 0.3), (2, 0), (3, 0.3)], request_timeout=1.0)
        assert list(task) == [2, 4, 6]
        stats = broker.stats()
        assert stats["deadlines_hit"] == 0 and stats["requeued"] == 0
        assert workers[0].is_alive and workers[0].executed == 3


def test_an_embedded_worker_rejoins_once_the_hung_request_returns():
    release = threading.Event()

    def hang_until_released(request):
        if request == "hang":
            release.wait(60)
            return "late"
        return request

    with running_broker(max_attempts=2) as broker, \
            thread_workers(broker.backend_address, 3, hang_until_released) as workers:
        wait_until(lambda: broker.stats()["workers"] == 3, message="three workers")
        task = broker.imap(["a", "hang", "b", "c"], errors="return", request_timeout=0.3,
                           max_batch=1)
        results = list(task.iter_results(timeout=20))
        assert results[0] == "a" and results[2:] == ["b", "c"]
        assert isinstance(results[1], pfmq.RequestTimeoutError) and "request 1 " in str(
            results[1])
        stats = broker.stats()
        assert stats["deadlines_hit"] == 2
        assert sorted(w["deadlines_hit"] for w in stats["per_worker"].values()) == [0, 1, 1]
        assert all(worker.is_alive for worker in workers)  # no process or thread ended
        release.set()  # the two stuck workers drop "late" and sign up again
        wait_until(lambda: broker.stats()["capacity"] == 6, message="every slot back")
        assert list(broker.imap(range(12), request_timeout=5)) == list(range(12))
        assert "late" not in results


# -- the broker's verdict --------------------------------------------------------------------------


def deadline(scheduler, job_id, index, worker_id=WORKER):
    scheduler.on_worker_message(worker_id, Kind.DEADLINE, (job_id, index, 0.5),
                                [zmq.Frame(TASK)])


def submit(scheduler, job_id, first, count):
    scheduler.on_task_message(TASK, Kind.SUBMIT, (job_id, first, count, False, 0, 300),
                              [zmq.Frame(b"serialised requests")])


def test_a_hung_job_of_several_requests_is_split_then_its_request_fails():
    scheduler, to_tasks, to_workers = make_scheduler(max_attempts=2)
    ready(scheduler, slots=2)
    submit(scheduler, 0, 0, 3)  # requests 0-2, of which 1 hangs
    submit(scheduler, 1, 3, 1)  # held by the same worker, innocent
    scheduler.dispatch()
    deadline(scheduler, 0, 1)
    (_, _, fields), = to_tasks.kinds(Kind.FAILED)
    assert fields[:2] == (0, FAILED_JOB), "split: the task retries each request alone"
    assert credit(scheduler) == 0 and not scheduler.workers[WORKER].jobs
    ready(scheduler, OTHER_WORKER, slots=2)
    scheduler.dispatch()  # the innocent job goes to the other worker, unblamed
    assert [f[0] for peer, _, f in to_workers.kinds(Kind.JOB) if peer == OTHER_WORKER] == [1]
    submit(scheduler, 2, 1, 1)  # the task's retry of request 1 alone
    scheduler.dispatch()
    deadline(scheduler, 2, 1, OTHER_WORKER)
    failed = to_tasks.kinds(Kind.FAILED)[-1][2]
    assert failed == (2, FAILED_DEADLINE, 1)
    stats = scheduler.stats()
    assert stats["deadlines_hit"] == 2 and stats["per_task"][TASK.hex()]["deadlines_hit"] == 2
    assert stats["failed"] == 1


def test_a_hung_single_request_is_retried_alone():
    scheduler, to_tasks, to_workers = make_scheduler(max_attempts=3)
    ready(scheduler)
    ready(scheduler, OTHER_WORKER)
    submit(scheduler, 0, 0, 1)
    scheduler.dispatch()
    holder = next(peer for peer, _, _ in to_workers.kinds(Kind.JOB))
    deadline(scheduler, 0, 0, holder)
    scheduler.dispatch()
    assert not to_tasks.kinds(Kind.FAILED)
    retried_on = [peer for peer, _, _ in to_workers.kinds(Kind.JOB)][-1]
    assert retried_on != holder and scheduler.workers[retried_on].alone
    assert scheduler.stats()["per_worker"][holder.hex()]["deadlines_hit"] == 1


def test_a_worker_that_gave_up_a_request_gets_no_job_before_it_signs_up_again():
    scheduler, _, to_workers = make_scheduler(max_attempts=3)
    ready(scheduler, slots=3)
    submit(scheduler, 0, 0, 1)
    scheduler.dispatch()
    deadline(scheduler, 0, 0)
    sent = len(to_workers.kinds(Kind.JOB))
    submit(scheduler, 1, 1, 1)
    scheduler.dispatch()
    assert len(to_workers.kinds(Kind.JOB)) == sent, "it is out of service until its READY"
    assert credit(scheduler) == 0
    ready(scheduler, slots=3)
    scheduler.dispatch()
    jobs = [fields[0] for _, _, fields in to_workers.kinds(Kind.JOB)[sent:]]
    assert jobs == [0], "the retry first, alone on the worker"


def credit(scheduler, worker_id=WORKER):
    return scheduler.workers[worker_id].credit


# -- options and figures -----------------------------------------------------------------------


@pytest.mark.parametrize("value, error", [
    (-1, ValueError), (0, ValueError), (math.nan, ValueError), (math.inf, ValueError),
    (1e-6, ValueError), ("1", TypeError), (True, TypeError), ([1], TypeError)])
def test_bad_request_timeouts_are_refused(value, error):
    with pytest.raises(error, match="request_timeout") as caught:
        pfmq.Task([1], "tcp://127.0.0.1:5555", start=False, request_timeout=value)
    assert repr(value) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(error, match="request_timeout"):
        pfmq.LocalCluster(double, 1, request_timeout=value)


def test_a_bad_on_deadline_is_refused():
    with pytest.raises(ValueError, match="on_deadline.*'later'"):
        pfmq.Worker(double, "tcp://127.0.0.1:5555", on_deadline="later")


def double(request):
    return 2 * request


def test_deadlines_hit_are_shown_by_status_and_prometheus():
    stats = {"workers": 1, "deadlines_hit": 4,
             "per_worker": {"ab" * 8: {"completed": 1, "deadlines_hit": 3}},
             "per_task": {"cd" * 8: {"completed": 1, "deadlines_hit": 2}}}
    text = status.format_status(stats, "tcp://127.0.0.1:1")
    assert "deadlines hit 4" in " ".join(text.split())
    assert "deadlines hit 3" in text and "deadlines hit 2" in text
    assert ("deadlines_hit", "pfmq_deadlines_hit") in [entry[:2] for entry in prometheus.TOTALS]
    assert "deadlines_hit" in [entry[0] for entry in prometheus.PER_WORKER]


def test_the_task_fails_the_timed_out_request_of_a_batch_and_retries_the_others():
    stream = make_stream()
    stream.request_timeout, stream.deadline_ms = 0.25, 250
    stream._submit(5, ["a", "b", "c"])
    [job_id] = stream.pending
    stream._on_failed(job_id, "ran past its deadline", FAILED_DEADLINE, 6)
    assert submitted(stream) == [(5, 3), (5, 1), (7, 1)] and stream.in_flight == 2
    deadlines = {stream.wire.unpack(frames)[1][5] for frames in stream.sock.sent}
    assert deadlines == {250}, "every job carries the deadline"
    [(index, outcome)] = stream.outbox.items
    error = exception_for(index, outcome)
    assert isinstance(error, pfmq.RequestTimeoutError) and (error.index, error.deadline) == (
        6, 0.25)
    assert str(error) == "request 6 ran past its deadline"
