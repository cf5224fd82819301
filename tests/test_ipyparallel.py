"""Launching pfmq workers on a real local ipyparallel cluster."""
import pytest

import pythonflow as pf
from pythonflow import pfmq

ipp = pytest.importorskip("ipyparallel", reason="ipyparallel is not installed (pip install "
                          "'pythonflow[ipyparallel]')")
from pythonflow.pfmq.integrations.ipyparallel import start_workers  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def test_workers_on_every_engine():
    # Built from pythonflow's own operations only, so the engines can unpickle it.
    with pf.Graph() as graph:
        x = pf.placeholder("x")
        (x * 3 - 1).set_name("y")

    cluster = ipp.Cluster(n=2, log_level=40)
    try:
        client = cluster.start_and_connect_sync()
        view = client[:]
        engine_pids = set(view.apply_sync(__import__("os").getpid))
        with pfmq.Broker("tcp://127.0.0.1:*", heartbeat_interval=0.5) as broker:
            workers = start_workers(view, graph, broker.backend_address, prefetch=2)
            try:
                assert set(workers.pids) == engine_pids and len(workers) == 2
                requests = [{"fetches": "y", "context": {"x": i}} for i in range(50)]
                assert list(broker.imap(requests)) == [3 * i - 1 for i in range(50)]
                assert broker.stats()["workers"] == 2
                status = workers.status()
                assert all(engine["running"] and engine["error"] is None for engine in status)
                assert sum(engine["executed"] for engine in status) == 50
            finally:
                report = workers.stop()
            assert [engine["running"] for engine in report] == [False, False]
            with pytest.raises(ValueError, match="cannot connect"):
                start_workers(view, graph, "tcp://127.0.0.1:*")
    finally:
        cluster.stop_cluster_sync()
