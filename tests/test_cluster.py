"""LocalCluster: results, start-up errors and clean-up of every worker process."""
import operator
import os
import pickle

import pytest
from pfmq_helpers import wait_until

import pythonflow as pf
from pythonflow import pfmq
from pythonflow.pfmq import launch

# Every test goes through the public name, so that it also checks that pfmq exports it.
LocalCluster = pfmq.LocalCluster

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
    wait_until(lambda: not any(pid_exists(pid) for pid in pids), timeout,
               message=f"processes {pids} gone")


def test_local_cluster_is_public():
    assert "LocalCluster" in pfmq.__all__
    assert pfmq.LocalCluster.__module__ == "pythonflow.pfmq.cluster"


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
        # The broker counts requests, however a task batched them: one apply and 40 in the imap.
        assert stats["completed"] == 41
        assert sum(w["completed"] for w in stats["per_worker"].values()) == 41
        assert (stats["queued"], stats["in_flight"]) == (0, 0)
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


@pytest.mark.parametrize("target, error, message", [
    ("nosuchmodule_xyz:graph", ImportError, "cannot import"),
    ("operator:nosuchname", ImportError, "has no attribute"),
    ("operator", ValueError, "package.module:graph"),
    ("pythonflow.pfmq.cli:DEFAULT_BACKEND", TypeError, "not a pythonflow graph"),
    (42, TypeError, "not int"),
    (lambda request: request, TypeError, "cannot be pickled"),
])
def test_bad_targets(target, error, message):
    with pytest.raises(error, match=message):
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
