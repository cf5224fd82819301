"""LocalCluster: results, start-up errors and clean-up of every worker process."""
import operator
import os
import pickle
import time

import pytest

import pythonflow as pf
from pythonflow import pfmq
from pythonflow.pfmq import launch
from pythonflow.pfmq.cluster import LocalCluster

pytestmark = pytest.mark.timeout(60)


def build_graph():
    with pf.Graph() as graph:
        x = pf.placeholder("x")
        (x * x + 1).set_name("y")
        pf.func_op(os.getpid).set_name("pid")
    return graph


def pid_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_gone(pids, timeout=5.0):
    # A killed child is reaped by multiprocessing's join, so it vanishes from the process table.
    deadline = time.monotonic() + timeout
    while any(pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [pid for pid in pids if pid_exists(pid)] == []


def test_exported():
    assert pfmq.LocalCluster is LocalCluster


def test_graph_results_and_cleanup():
    with LocalCluster(build_graph(), num_workers=2) as cluster:
        pids = cluster.pids
        assert len(set(pids)) == 2
        assert cluster.apply({"fetches": "y", "context": {"x": 3}}) == 10
        requests = [{"fetches": ["y", "pid"], "context": {"x": i}} for i in range(40)]
        results = list(cluster.imap(requests))
        assert [y for y, _ in results] == [i * i + 1 for i in range(40)]
        assert {pid for _, pid in results} <= set(pids)  # evaluated in the worker processes
        stats = cluster.stats()
        assert stats["workers"] == 2
        # The broker counts jobs, and a task may batch several requests into one job.
        assert 2 <= stats["completed"] <= 41
        assert sum(w["completed"] for w in stats["per_worker"].values()) == stats["completed"]
        assert cluster.broker is not None
    assert cluster.broker is None
    assert_gone(pids)


def test_cleanup_after_exception_in_body():
    pids = []
    with pytest.raises(ValueError, match="boom"):
        with LocalCluster(build_graph(), num_workers=2) as cluster:
            pids.extend(cluster.pids)
            assert all(pid_exists(pid) for pid in pids)
            raise ValueError("boom")
    assert len(pids) == 2
    assert_gone(pids)
    assert all(process.exitcode == 0 for process in cluster.processes)  # stopped, not killed


def test_cleanup_after_keyboard_interrupt():
    pids = []
    with pytest.raises(KeyboardInterrupt):
        with LocalCluster(operator.neg, num_workers=1) as cluster:
            pids.extend(cluster.pids)
            raise KeyboardInterrupt
    assert_gone(pids)


def test_reference_and_worker_options():
    with LocalCluster("operator:neg", num_workers=1, prefetch=3) as cluster:
        assert list(cluster.imap(range(5))) == [0, -1, -2, -3, -4]
        (figures,) = cluster.stats()["per_worker"].values()
        assert figures["capacity"] == 4  # prefetch + the one being evaluated


def test_tcp_address():
    with LocalCluster(operator.neg, num_workers=1, address="tcp://127.0.0.1:*") as cluster:
        assert cluster.broker.backend_address.startswith("tcp://127.0.0.1:")
        assert cluster.apply(5) == -5


def test_default_num_workers():
    assert LocalCluster(operator.neg).num_workers == launch.default_num_workers() >= 1


def test_worker_that_cannot_start_is_reported():
    # The graph's module imports in this process but the factory fails in the workers.
    with pytest.raises(RuntimeError, match="exited during start-up"):
        with LocalCluster("pythonflow.pfmq.launch:default_num_workers", num_workers=1):
            pass  # pragma: no cover


def test_startup_timeout(tmp_path):
    # Nothing can register within no time at all; the processes must still be gone afterwards.
    cluster = LocalCluster(operator.neg, num_workers=1, startup_timeout=0.0)
    with pytest.raises(TimeoutError, match="0 of 1 workers registered"):
        cluster.start()
    assert_gone([p.pid for p in cluster.processes])


@pytest.mark.parametrize("target, message", [
    ("nosuchmodule_xyz:graph", "cannot import"),
    ("operator:nosuchname", "has no attribute"),
    ("operator", "package.module:graph"),
    ("pythonflow.pfmq.cli:DEFAULT_BACKEND", "not a pythonflow graph"),
    (42, "not int"),
    (lambda request: request, "cannot be pickled"),
])
def test_bad_targets(target, message):
    with pytest.raises((ImportError, ValueError, TypeError), match=message):
        LocalCluster(target, num_workers=1)


def test_target_kinds():
    graph = build_graph()
    assert launch.make_target(graph)({"fetches": "y", "context": {"x": 2}}) == 5
    assert launch.make_target(build_graph)({"fetches": "y", "context": {"x": 1}}) == 2
    assert launch.make_target(operator.neg)(1) == -1
    spec = launch.pack_target(graph)
    assert spec[0] == "pickle" and isinstance(pickle.loads(spec[1]), pf.Graph)
    assert launch.unpack_target(spec)({"fetches": "y", "context": {"x": 0}}) == 1
    with pytest.raises(ValueError, match="at least 1"):
        LocalCluster(graph, num_workers=0)
    with pytest.raises(RuntimeError, match="not running"):
        LocalCluster(graph, num_workers=1).apply({})
