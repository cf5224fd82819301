"""The Prometheus endpoint: serve_metrics() and pfmq broker --metrics-port, scraped over HTTP."""
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from pfmq_helpers import pfmq_cli, running_broker, thread_workers, wait_until

from pythonflow.pfmq.integrations.prometheus import (
    INSTALL_HINT,
    BrokerCollector,
    serve_metrics,
)

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

pytestmark = pytest.mark.timeout(90)


def scrape(url):
    """The samples at ``url`` as {(name, labels as a sorted tuple): value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_a_scrape_shows_the_figures_of_broker_stats():
    with running_broker() as broker, thread_workers(broker.backend_address, 2):
        wait_until(lambda: broker.stats()["workers"] == 2, 20, message="two workers")
        assert list(broker.imap(range(20))) == [2 * i for i in range(20)]
        with serve_metrics(broker, port=0) as metrics:
            assert metrics.url == f"http://127.0.0.1:{metrics.port}/metrics"
            samples = scrape(metrics.url)
            stats = broker.stats()
    assert samples[("pfmq_up", ())] == 1
    assert samples[("pfmq_workers", ())] == 2
    assert samples[("pfmq_capacity", ())] == stats["capacity"]
    assert samples[("pfmq_completed_requests_total", ())] == 20
    assert samples[("pfmq_queued_jobs", ())] == samples[("pfmq_in_flight_jobs", ())] == 0
    assert samples[("pfmq_requeued_jobs_total", ())] == 0
    assert samples[("pfmq_restarts_total", ())] == 0
    per_worker = {dict(labels)["worker"]: value for (name, labels), value in samples.items()
                  if name == "pfmq_worker_completed_requests_total"}
    assert per_worker == {worker_id: figures["completed"]
                          for worker_id, figures in stats["per_worker"].items()}
    assert sum(per_worker.values()) == 20


def test_a_broker_elsewhere_is_asked_over_its_frontend_and_down_is_pfmq_up_0():
    with running_broker(frontend_address="tcp://127.0.0.1:*") as broker:
        with thread_workers(broker.backend_address, 1):
            assert broker.apply(21) == 42
            metrics = serve_metrics(broker.frontend_address, port=0, timeout=0.5)
            try:
                samples = scrape(metrics.url)
                assert samples[("pfmq_up", ())] == 1
                assert samples[("pfmq_workers", ())] == 1
                assert samples[("pfmq_completed_requests_total", ())] == 1
                broker.cancel(timeout=10)
                samples = scrape(metrics.url)  # no answer within 0.5 s
                assert samples[("pfmq_up", ())] == 0
                assert ("pfmq_workers", ()) not in samples
            finally:
                metrics.stop()
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(("127.0.0.1", metrics.port), timeout=5).close()


def test_restarts_reported_by_supervisors_are_a_counter():
    stats = {"workers": 3, "completed": 7, "requeued": 2, "restarts": 5,
             "per_worker": {"ab": {"completed": 7, "in_flight": 1, "capacity": 2}}}
    registry = prometheus_client.CollectorRegistry()
    registry.register(BrokerCollector(lambda: stats))
    families = {family.name: family
                for family in text_string_to_metric_families(
                    prometheus_client.generate_latest(registry).decode())}
    assert families["pfmq_restarts"].type == "counter"
    assert families["pfmq_restarts"].samples[0].value == 5
    assert families["pfmq_requeued_jobs"].samples[0].value == 2
    assert families["pfmq_workers"].type == "gauge"
    (held,) = families["pfmq_worker_in_flight_jobs"].samples
    assert held.labels == {"worker": "ab"} and held.value == 1
    assert families["pfmq_failed_jobs"].samples == []  # not in these figures: no sample


def test_pfmq_broker_serves_metrics_until_sigterm(tmp_path):
    command, env = pfmq_cli("broker", "--frontend", "tcp://127.0.0.1:*", "--backend",
                            "tcp://127.0.0.1:*", "--heartbeat-interval", "0.2",
                            "--metrics-port", "0")  # free ports, read back from the log
    with open(tmp_path / "broker.log", "w+") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            def logged(pattern):
                log.seek(0)
                found = re.search(pattern, log.read())
                return found and found.group(1)

            url = wait_until(lambda: logged(r"metrics for Prometheus at (http://\S+)"), 30,
                             message="the metrics address in the log")
            backend = logged(r"and workers on (tcp://\S+)")
            assert scrape(url)[("pfmq_workers", ())] == 0
            with thread_workers(backend, 1):
                wait_until(lambda: scrape(url)[("pfmq_workers", ())] == 1, 20,
                           message="the worker in the metrics")
            os.kill(process.pid, signal.SIGTERM)
            assert process.wait(15) == 0
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        log.seek(0)
        assert "Traceback" not in log.read()


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_bad_metrics_port_is_a_one_line_error(port):
    command, env = pfmq_cli("broker", "--metrics-port", port)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr == ("pfmq broker: error: the metrics port must be an integer from 0 to "
                           f"65535, not {port}\n")


def test_without_prometheus_client_the_error_says_what_to_install():
    # A fresh interpreter in which prometheus_client cannot be imported.
    program = ("import sys; sys.modules['prometheus_client'] = None\n"
               "from pythonflow.pfmq.cli import main\n"
               "sys.exit(main(sys.argv[1:]))")
    command, env = pfmq_cli("broker", "--metrics-port", "0")
    command[1:3] = ["-c", program]  # instead of -m pythonflow.pfmq
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr == ("pfmq broker: error: pfmq metrics need prometheus_client: "
                           f"{INSTALL_HINT}\n")
    assert INSTALL_HINT == "pip install 'pythonflow[prometheus]'"


def test_serve_metrics_refuses_bad_arguments(monkeypatch):
    with pytest.raises(ValueError, match="the metrics port must be an integer from 0 to 65535"):
        serve_metrics("tcp://127.0.0.1:5556", port="9464")
    with pytest.raises(ValueError, match="needs a Broker or a frontend address, not 42"):
        serve_metrics(42, port=0)
    with pytest.raises(ValueError, match="is not a ZeroMQ address"):
        serve_metrics("localhost:5556", port=0)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=re.escape(INSTALL_HINT)):
        serve_metrics("tcp://127.0.0.1:5556", port=0)


def test_a_metrics_port_in_use_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}: "):
            serve_metrics("tcp://127.0.0.1:5556", port=port)
        command, env = pfmq_cli("broker", "--frontend", "tcp://127.0.0.1:*", "--backend",
                                "tcp://127.0.0.1:*", "--metrics-port", str(port))
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    (line,) = [line for line in done.stderr.splitlines() if "error" in line]
    assert line.startswith(f"pfmq broker: error: cannot serve metrics on 127.0.0.1:{port}: ")
    assert "Traceback" not in done.stderr
