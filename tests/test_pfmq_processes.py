"""The pfmq API with workers in real subprocesses, over ``tcp://127.0.0.1`` and ``ipc://``."""
import os
import signal

import numpy as np
import pytest
from pfmq_helpers import (
    end_process,
    ipc_address,
    running_broker,
    wait_for_workers,
    wait_until,
    worker_processes,
)
from worker_process import json_dumps, json_loads, make_graph

from pythonflow import pfmq

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["tcp", "ipc"])
def backend_address(request, tmp_path):
    """A backend address to bind, of each transport that crosses processes."""
    if request.param == "tcp":
        return "tcp://127.0.0.1:*"
    return ipc_address(tmp_path, "backend")


def test_apply_and_imap_with_worker_processes(backend_address):
    with running_broker(backend_address) as broker, \
            worker_processes(broker.backend_address, 2, "sleep-random", prefetch=2):
        assert broker.backend_address.split("://")[0] == backend_address.split("://")[0]
        wait_for_workers(broker, 2)
        assert broker.apply(5) == 10
        assert list(broker.imap(range(80))) == [2 * i for i in range(80)]
        unordered = list(broker.imap(range(80), ordered=False))
        assert sorted(unordered) == [2 * i for i in range(80)]
        per_worker = broker.stats()["per_worker"].values()
        assert len(per_worker) == 2 and all(w["completed"] > 0 for w in per_worker)


def test_large_array_round_trip_over_tcp():
    array = np.random.default_rng(0).standard_normal(2 << 20).astype(np.float32)
    assert array.nbytes == 8 << 20
    with running_broker() as broker, worker_processes(broker.backend_address, 1, "array+1"):
        wait_for_workers(broker, 1)
        result = broker.apply(array)
        assert result.dtype == np.float32 and result.shape == array.shape
        np.testing.assert_array_equal(result, array + 1)
        results = list(broker.imap([array[:10], array, array[::2]]))
        for expected, got in zip([array[:10], array, array[::2]], results):
            np.testing.assert_array_equal(got, expected + 1)


def test_custom_dumps_and_loads_on_both_sides():
    with running_broker() as broker, \
            worker_processes(broker.backend_address, 1, "double", serializer="json"):
        wait_for_workers(broker, 1)
        results = list(broker.imap([1, (1, 2), "ab"], dumps=json_dumps, loads=json_loads))
        assert results == [2, [1, 2, 1, 2], "abab"]  # JSON made the tuple a list, both ways
        assert broker.apply(4, dumps=json_dumps, loads=json_loads) == 8
        # A task that speaks pickle is not understood by this worker, but fails cleanly.
        with pytest.raises(pfmq.SerializationError):
            broker.apply(4)
        assert broker.apply(5, dumps=json_dumps, loads=json_loads) == 10


def test_seeded_imap_is_reproducible_whatever_the_number_of_workers():
    requests = list(range(40))
    with running_broker() as broker, \
            worker_processes(broker.backend_address, 3, "random") as processes:
        wait_for_workers(broker, 3)
        with_three = list(broker.imap(requests, seed=7))
        busy = [w for w in broker.stats()["per_worker"].values() if w["completed"]]
        assert len(busy) >= 2, "the seeded run should have been spread over several workers"
        for process in processes[1:]:
            assert end_process(process) == 0
        wait_for_workers(broker, 1)
        with_one = list(broker.imap(requests, seed=7))
        again = list(broker.imap(requests, seed=7))
        other_seed = list(broker.imap(requests, seed=8))
        unseeded = list(broker.imap(requests))
    assert [r[0] for r in with_one] == requests
    assert with_three == with_one == again
    assert len({r[1] for r in with_one}) == len({r[2] for r in with_one}) == len(requests)
    assert all(a[1] != b[1] and a[2] != b[2] for a, b in zip(with_one, other_seed))
    assert unseeded != with_one


def test_errors_from_a_worker_process(tmp_path):
    with running_broker(ipc_address(tmp_path, "backend")) as broker, \
            worker_processes(broker.backend_address, 1, "raise"):
        wait_for_workers(broker, 1)
        with pytest.raises(ValueError, match="negative request -3") as info:
            broker.apply(-3)
        cause = info.value.__cause__
        assert isinstance(cause, pfmq.RemoteError)
        assert "failing_target" in cause.traceback and "worker_process.py" in cause.traceback
        assert broker.apply(3) == 6
        results = list(broker.imap([1, -1, 2], errors="return"))
        assert results[0] == 2 and results[2] == 4 and isinstance(results[1], ValueError)
        assert list(broker.imap([-1, 4, -2, 5], errors="skip")) == [8, 10]


def test_unpicklable_result_from_a_worker_process():
    with running_broker() as broker, \
            worker_processes(broker.backend_address, 1, "unpicklable-result"):
        wait_for_workers(broker, 1)
        results = list(broker.imap(["a", "lock", "b"], errors="return"))
        assert results[0] == "a" and results[2] == "b"
        assert isinstance(results[1], pfmq.SerializationError)
        assert "request 1" in str(results[1])
        assert broker.apply("c") == "c"


@pytest.mark.skipif(make_graph() is None, reason="pythonflow.Graph not available")
def test_graph_worker_process():
    with running_broker() as broker, worker_processes(broker.backend_address, 2, "graph"):
        wait_for_workers(broker, 2)
        assert broker.apply({"fetches": "double", "context": {"x": 21}}) == 42
        batches = [{"fetches": "square", "contexts": [{"x": i}, {"x": -i}]} for i in range(20)]
        assert list(broker.imap(batches)) == [[i * i, i * i] for i in range(20)]
        with pytest.raises(KeyError, match="context"):
            broker.apply({"fetches": "double"})
        with pytest.raises(KeyError, match="nonexistent") as info:
            broker.apply({"fetches": "nonexistent", "context": {"x": 1}})
        assert isinstance(info.value.__cause__, pfmq.RemoteError)
        assert broker.apply({"fetches": ["double", "square"], "context": {"x": 3}}) == (6, 9)


def test_idle_worker_processes_leave_cleanly_on_sigterm_and_sigint():
    with running_broker() as broker, worker_processes(broker.backend_address, 2) as processes:
        wait_for_workers(broker, 2)
        assert broker.apply(1) == 2
        os.kill(processes[0].pid, signal.SIGTERM)
        os.kill(processes[1].pid, signal.SIGINT)
        assert [process.wait(10) for process in processes] == [0, 0]
        stats = wait_for_workers(broker, 0, timeout=5)
        assert stats["workers_lost"] == 0, "the workers should have said goodbye"


def test_worker_process_stopped_mid_request_delivers_it(tmp_path):
    marker = str(tmp_path / "running")
    with running_broker() as broker, \
            worker_processes(broker.backend_address, 1, "mark-and-sleep") as processes:
        wait_for_workers(broker, 1)
        task = broker.imap([(marker, 1.0)])
        wait_until(lambda: os.path.exists(marker), message="the request running")
        os.kill(processes[0].pid, signal.SIGTERM)
        assert list(task) == [marker]
        assert processes[0].wait(10) == 0
        stats = wait_for_workers(broker, 0, timeout=5)
        assert stats["completed"] == 1
        assert stats["workers_lost"] == stats["requeued"] == 0
