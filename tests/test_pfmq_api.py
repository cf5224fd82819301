"""The pfmq API (SPEC 2.2) with workers in threads: broker life cycle, apply/imap, tasks, errors."""
import gc
import inspect
import itertools
import threading
import time
import types

import pytest
import zmq
from pfmq_helpers import (  # noqa: F401 (broker_fixture provides the ``broker`` fixture)
    HEARTBEAT,
    CountingIterator,
    broker_fixture,
    running_broker,
    thread_workers,
    wait_for_workers,
    wait_until,
    wait_until_steady,
    workers_idle,
)
from worker_process import make_graph

from pythonflow import pfmq
from pythonflow.pfmq import protocol
from pythonflow.pfmq.jobs import Evaluator, read_job
from pythonflow.pfmq.protocol import OK
from pythonflow.pfmq.serialization import make_serializer

pytestmark = pytest.mark.timeout(60)

needs_graph = pytest.mark.skipif(make_graph() is None, reason="pythonflow.Graph not available")


# -- the broker ---------------------------------------------------------------------------------


def test_broker_options_inproc_frontend_and_wildcard_port():
    broker = pfmq.Broker("tcp://127.0.0.1:*", heartbeat_interval=0.25, heartbeat_liveness=4,
                         max_attempts=5)
    assert broker.frontend_address.startswith("inproc://")
    assert pfmq.Broker("tcp://127.0.0.1:*").frontend_address != broker.frontend_address
    assert (broker.heartbeat_interval, broker.heartbeat_liveness, broker.max_attempts) == (
        0.25, 4, 5)
    assert not broker.is_alive
    assert broker.run_async() is broker
    try:
        assert broker.is_alive
        host, port = broker.backend_address.rsplit(":", 1)
        assert host == "tcp://127.0.0.1" and int(port) > 0
        with pytest.raises(RuntimeError, match="already running"):
            broker.run_async()
    finally:
        broker.cancel(timeout=10)
    assert not broker.is_alive


@pytest.mark.parametrize("address", ["127.0.0.1:5555", "udp://127.0.0.1:5555", None])
def test_broker_rejects_bad_addresses(address):
    with pytest.raises(ValueError, match="address|transport"):
        pfmq.Broker(address)


def test_broker_run_in_a_thread_and_cancel():
    broker = pfmq.Broker("tcp://127.0.0.1:*", heartbeat_interval=HEARTBEAT)
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: broker.is_alive, message="broker running")
        with thread_workers(broker.backend_address):
            assert wait_for_workers(broker, 1)["capacity"] == 2
            assert broker.apply(21) == 42
            assert broker.stats()["completed"] == 1
    finally:
        broker.cancel(timeout=10)
    thread.join(10)
    assert not thread.is_alive() and not broker.is_alive


def test_broker_context_manager_and_start_option():
    with pfmq.Broker("tcp://127.0.0.1:*", heartbeat_interval=HEARTBEAT) as broker:
        assert broker.is_alive
        with thread_workers(broker.backend_address):
            assert broker.apply(2) == 4
    assert not broker.is_alive
    broker = pfmq.Broker("tcp://127.0.0.1:*", start=True)
    try:
        assert broker.is_alive
    finally:
        broker.cancel(timeout=10)
    assert not broker.is_alive


def test_bind_error_on_a_port_in_use(broker):
    other = pfmq.Broker(broker.backend_address)
    with pytest.raises(OSError, match="cannot bind") as info:
        other.run_async()
    assert broker.backend_address in str(info.value)
    assert not other.is_alive
    sock = zmq.Context.instance().socket(zmq.PULL)
    try:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        frontend = f"tcp://127.0.0.1:{port}"
        with pytest.raises(OSError, match=f"cannot bind {frontend}"):
            pfmq.Broker("tcp://127.0.0.1:*", frontend).run_async()
    finally:
        sock.close(linger=0)
    with thread_workers(broker.backend_address):  # the first broker is not disturbed
        assert broker.apply(5) == 10


def test_stats_and_query_status_over_tcp():
    with running_broker(frontend_address="tcp://127.0.0.1:*") as broker, \
            thread_workers(broker.backend_address, 2, prefetch=2):
        assert broker.frontend_address.startswith("tcp://127.0.0.1:")
        stats = wait_for_workers(broker, 2)
        assert stats["capacity"] == 6 and stats["completed"] == 0
        assert [broker.apply(i) for i in range(5)] == [0, 2, 4, 6, 8]
        stats = broker.stats()
        assert stats["completed"] == 5
        assert (stats["workers"], stats["queued"], stats["in_flight"]) == (2, 0, 0)
        assert len(stats["per_worker"]) == 2
        assert all(w["capacity"] == 3 for w in stats["per_worker"].values())
        assert sum(w["completed"] for w in stats["per_worker"].values()) == 5
        remote = pfmq.query_status(broker.frontend_address)
        assert remote["incarnation"] == stats["incarnation"]
        assert (remote["completed"], remote["workers"]) == (5, 2)
        assert sum(broker.imap(range(50))) == 2 * sum(range(50))
        stats = broker.stats()
        assert stats["completed"] == 55, "completed counts requests, however they were batched"
        assert sum(w["completed"] for w in stats["per_worker"].values()) == 55
    # Once stopped, the broker reports its own figures.
    assert broker.stats()["completed"] == 55


# -- apply and imap -----------------------------------------------------------------------------


def test_apply_and_imap_equal_the_local_computation(broker):
    with thread_workers(broker.backend_address, 2):
        assert broker.apply(4) == 8
        assert pfmq.apply("ab", broker.frontend_address) == "abab"
        assert list(broker.imap(range(300))) == [2 * i for i in range(300)]
        task = pfmq.Task(iter(range(10)), broker.frontend_address)
        assert list(task) == [2 * i for i in range(10)]


def test_ordered_imap_with_random_durations(broker):
    with thread_workers(broker.backend_address, 3, target="sleep-random", prefetch=2):
        wait_for_workers(broker, 3)
        assert list(broker.imap(range(60))) == [2 * i for i in range(60)]


def test_unordered_imap_yields_as_completed(broker):
    release = threading.Event()

    def zero_when_released(request):
        if request == 0:
            assert release.wait(10), "request 0 was never released"
        return request

    with thread_workers(broker.backend_address, 2, target=zero_when_released, prefetch=0):
        wait_for_workers(broker, 2)
        task = broker.imap(range(30), ordered=False)
        first = next(task)  # request 0 is held: another one must come first
        release.set()
        results = [first, *task]
        assert first != 0 and sorted(results) == list(range(30))
        # In order, the results after a request that is held wait for it.
        release.clear()
        with broker.imap(range(5)) as task:
            wait_until(lambda: broker.stats()["completed"] == 30 + 4, message="1 to 4 done")
            release.set()
            assert list(task) == [0, 1, 2, 3, 4]


def test_len_of_a_task(broker):
    task = broker.imap([1, 2, 3], start=False)
    assert len(task) == 3
    with broker.imap(x for x in range(3)) as task:
        with pytest.raises(TypeError, match="no length"):
            len(task)


def task_default(option: str):
    """The default of a :class:`pfmq.Task` option."""
    return inspect.signature(pfmq.Task).parameters[option].default


def read_ahead_bound(consumed: int, cache_size: int, capacity: int) -> int:
    """The most requests a task may have taken from its iterator: those consumed, a full cache
    (room for two batches' results at least), the jobs it keeps in flight (two per worker slot,
    plus one) and one batch read ahead, each job a batch of at most ``max_batch`` requests."""
    max_batch = task_default("max_batch")
    return consumed + max(cache_size, 2 * max_batch) + (2 * capacity + 2) * max_batch


@pytest.mark.parametrize("how", ["cancel", "del"])
def test_abandoned_infinite_task_is_forgotten(broker, how):
    requests = CountingIterator(itertools.count())
    with thread_workers(broker.backend_address, 2) as workers:
        capacity = wait_for_workers(broker, 2)["capacity"]
        task = broker.imap(requests)
        for result in task:
            if result >= 100:
                break
        if how == "cancel":
            task.cancel()
        else:
            del task
            gc.collect()
        wait_until(lambda: (lambda s: s["tasks"] == s["queued"] == s["in_flight"] == 0)(
            broker.stats()), timeout=5, message="the abandoned task forgotten")
        # A job already running may finish and prefetched ones are skipped. Once the workers
        # hold nothing, nothing of the task is left anywhere: the next request is the only one
        # evaluated.
        wait_until(lambda: workers_idle(workers), message="the workers idle")
        executed = sum(worker.executed for worker in workers)
        read = requests.count
        assert broker.apply(1) == 2
        assert sum(worker.executed for worker in workers) == executed + 1
        assert requests.count == read, "the abandoned task still reads its requests"
        # The results 0, 2, ..., 100 were taken.
        assert read <= read_ahead_bound(51, task_default("cache_size"), capacity)


def test_cache_size_bounds_read_ahead(broker):
    requests = CountingIterator(itertools.count())
    cache_size = 16
    with thread_workers(broker.backend_address, 1, prefetch=1) as workers:
        capacity = wait_for_workers(broker, 1)["capacity"]
        with broker.imap(requests, cache_size=cache_size) as task:
            assert next(task) == 0

            def sample():  # while nobody consumes, the task must come to a halt
                stats = broker.stats()
                if stats["queued"] or stats["in_flight"] or not workers_idle(workers):
                    return None
                return requests.count, stats["completed"]

            taken, completed = wait_until_steady(sample, message="the task halted")
            # It halted because its cache is full (the one result consumed aside) ...
            assert completed >= 1 + cache_size
            # ... with every request it sent evaluated, and at most one batch read ahead.
            assert completed <= taken <= completed + task_default("max_batch")
            assert taken <= read_ahead_bound(1, cache_size, capacity)
            assert [next(task) for _ in range(1, 3000)] == [2 * i for i in range(1, 3000)]


def test_iter_results_timeout_without_workers(broker):
    with broker.imap([1, 2]) as task:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            next(task.iter_results(timeout=0.3))
        assert 0.25 < time.monotonic() - started < 3


def test_with_task_and_cancel(broker):
    with thread_workers(broker.backend_address):
        with broker.imap(itertools.count()) as task:
            assert next(task) == 0
            assert task.is_alive
        assert not task.is_alive
        task = broker.imap(itertools.count())
        assert [next(task) for _ in range(3)] == [0, 2, 4]
        task.cancel()
        assert not task.is_alive
        wait_until(lambda: broker.stats()["tasks"] == 0, message="cancelled tasks forgotten")
        assert broker.apply(3) == 6


# -- errors -------------------------------------------------------------------------------------


def test_remote_exception_keeps_its_type_and_traceback(broker):
    with thread_workers(broker.backend_address, target="raise"):
        with pytest.raises(ValueError, match="negative request -1") as info:
            broker.apply(-1)
        cause = info.value.__cause__
        assert isinstance(cause, pfmq.RemoteError)
        assert "failing_target" in cause.traceback and "failing_target" in str(cause)
        assert broker.apply(2) == 4
        assert list(broker.imap([1, -2, 3, -4, 5], errors="skip")) == [2, 6, 10]
        results = list(broker.imap([1, -2, 3], errors="return"))
        assert results[0] == 2 and results[2] == 6
        assert isinstance(results[1], ValueError)
        assert isinstance(results[1].__cause__, pfmq.RemoteError)
        with pytest.raises(ValueError, match="errors must be"):
            broker.imap([1], errors="ignore")
        assert list(broker.imap([7])) == [14]


def test_request_without_context_fails_clearly(broker):
    calls = []
    target = pfmq.GraphTarget(lambda fetches, context: calls.append(fetches))
    with thread_workers(broker.backend_address, target=target):
        with pytest.raises(KeyError, match="context") as info:
            broker.apply({"fetches": "y"})
        assert isinstance(info.value.__cause__, pfmq.RemoteError)
        assert calls == []
        assert broker.apply({"fetches": "y", "context": {}}) is None and calls == ["y"]


def test_unpicklable_request_fails_alone(broker):
    with thread_workers(broker.backend_address):
        results = list(broker.imap([1, lambda: 0, 3, threading.Lock(), 5], errors="return"))
        assert [results[i] for i in (0, 2, 4)] == [2, 6, 10]
        for i in (1, 3):
            assert isinstance(results[i], pfmq.SerializationError)
            assert f"request {i}" in str(results[i])
        with pytest.raises(pfmq.SerializationError, match="serialised"):
            broker.apply(threading.Lock())
        assert broker.apply(8) == 16


def test_unpicklable_result_fails_alone(broker):
    with thread_workers(broker.backend_address, target="unpicklable-result"):
        results = list(broker.imap(["a", "lock", "b"], errors="return"))
        assert results[0] == "a" and results[2] == "b"
        assert isinstance(results[1], pfmq.SerializationError)
        with pytest.raises(pfmq.SerializationError, match="cannot be serialised"):
            broker.apply("lock")
        assert broker.apply("c") == "c"


def test_graph_target_reads_every_kind_of_request_as_before():
    target = pfmq.GraphTarget(lambda fetches, context: (fetches, context))
    assert target({"fetches": "y", "context": {"x": 1}}) == ("y", {"x": 1})
    # 'contexts' wins over 'context', in a dict as in any other mapping.
    both = {"fetches": "y", "context": {"x": 1}, "contexts": [{"x": 2}, {"x": 3}]}
    assert target(both) == [("y", {"x": 2}), ("y", {"x": 3})]
    assert target(types.MappingProxyType(both)) == [("y", {"x": 2}), ("y", {"x": 3})]
    assert target(types.MappingProxyType({"fetches": "z", "context": {}})) == ("z", {})
    with pytest.raises(KeyError, match="no 'fetches'"):
        target({"context": {"x": 1}})
    with pytest.raises(KeyError, match="needs 'context'"):
        target({"fetches": "y"})
    with pytest.raises(TypeError, match="must be a dict.*list"):
        target(["y", {}])


def test_evaluator_counts_every_request_evaluated_failed_or_not():
    wire = protocol.Wire(None)
    serializer = make_serializer()
    evaluator = Evaluator(serializer, wire)

    def target(request):
        if request == "bad":
            raise ValueError(request)
        return request

    requests = ["a", "bad", "c"]
    job = read_job((1, 0, 3, False, 0, 0), [b"task", *serializer.encode(requests)])
    kind, _, body = wire.unpack(evaluator.answer(target, job))
    assert kind is protocol.Kind.DONE and evaluator.executed == 3
    outcomes = serializer.decode(body[1:])
    assert [outcome[0] for outcome in outcomes] == [OK, protocol.ERROR, OK]


def test_non_callable_target(broker):
    with pytest.raises(TypeError, match="callable"):
        pfmq.Worker(42, broker.backend_address)


# -- graphs -------------------------------------------------------------------------------------


@needs_graph
def test_graph_worker_context_and_contexts(broker):
    with thread_workers(broker.backend_address, 2, target="graph"):
        context = {"x": 3}
        assert broker.apply({"fetches": "double", "context": context}) == 6
        assert context == {"x": 3}, "the caller's context must not change"
        assert broker.apply({"fetches": ["double", "square"], "context": {"x": 4}}) == (8, 16)
        batches = [{"fetches": "square", "contexts": [{"x": i}, {"x": i + 1}]} for i in range(5)]
        assert list(broker.imap(batches)) == [[i * i, (i + 1) ** 2] for i in range(5)]


@needs_graph
def test_graph_worker_unknown_fetch(broker):
    with thread_workers(broker.backend_address, target="graph"):
        with pytest.raises(KeyError, match="nonexistent") as info:
            broker.apply({"fetches": "nonexistent", "context": {"x": 1}})
        assert isinstance(info.value.__cause__, pfmq.RemoteError)
        assert broker.apply({"fetches": "double", "context": {"x": 1}}) == 2


# -- not running --------------------------------------------------------------------------------


def test_errors_when_not_running(broker):
    task = pfmq.Task([1], broker.frontend_address, start=False)
    with pytest.raises(RuntimeError, match="not started"):
        next(task)
    worker = pfmq.Worker(abs, broker.backend_address)
    with pytest.raises(RuntimeError, match="start the worker"):
        worker.process_requests()


def test_apply_without_a_broker_times_out(tmp_path):
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer"):
        pfmq.apply(1, f"ipc://{tmp_path}/nobody", timeout=0.5, num_retries=2)
    assert 0.8 < time.monotonic() - started < 5
