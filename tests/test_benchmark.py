"""The performance suites run end to end in their quick modes and report every figure; the
simulated peers of the scale benchmark speak to a real broker; W4's Pythonflow 0.3.0 baseline."""
import contextlib
import json
import os
import subprocess
import sys
import threading

import pytest
from pfmq_helpers import HEARTBEAT, running_broker, wait_for_workers, wait_until

from pythonflow.pfmq.bench import pf030
from pythonflow.pfmq.bench.harness import end
from pythonflow.pfmq.bench.results import compare, medians
from pythonflow.pfmq.bench.simulate import IdleTasks, SimulatedWorkers

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_pfmq.py")


def run_script(script, *args, timeout=45, **options):
    """Run a benchmark script; return its exit status, output and error output."""
    process = subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, **{"cwd": ROOT, **options})
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        end(process)
    return process.returncode, out, err


def run_suite(*args, timeout=45, **options):
    status, out, err = run_script(SCRIPT, *args, timeout=timeout, **options)
    assert status == 0, err
    return out, err


def test_quick_run_prints_a_row_for_every_workload(tmp_path):
    report = tmp_path / "bench.json"
    out, err = run_suite("--quick", "--json", str(report))
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("workload"))
    assert lines[header].split() == ["workload", "measure", "pfmq", "compared", "with", "other",
                                     "pfmq/other", "target"]
    table = [line.split() for line in lines[header + 2:]]
    assert {row[0] for row in table} == {"W1", "W2", "W3", "W4"}
    assert sum("raw" in row for row in table) >= 4  # each workload meets the raw pyzmq ceiling
    assert sum("Pool.imap" in " ".join(row) or "Pool.apply" in row for row in table) >= 4
    for workers in ("1", "2", "4", "8"):
        assert any(row[0] == "W3" and f"workers={workers}" in row for row in table)
    for name in ("W1", "W2", "W3", "W4"):
        assert f"{name} done in" in err

    data = json.loads(report.read_text())
    assert data["settings"]["mode"] == "quick"
    rows = data["rows"]
    assert len(rows) == len(table)
    for row in rows:
        assert row["pfmq"] > 0 and row["other"] > 0
        assert row["ratio"] == pytest.approx(row["pfmq"] / row["other"])
    targets = {row["workload"] for row in rows if row["target"]}
    assert targets == {"W1", "W2", "W3", "W4"}
    efficiencies = [row["pfmq"] for row in rows if row["workload"] == "W3"]
    assert all(0 < value <= 1.05 for value in efficiencies)


def test_workload_selection_and_bad_names():
    out, _ = run_suite("--quick", "--workloads", "w4")
    assert {line.split()[0] for line in out.splitlines() if line.startswith("W")} >= {"W4"}
    assert not any(line.startswith(("W1 ", "W2 ", "W3 ")) for line in out.splitlines())
    process = subprocess.run([sys.executable, SCRIPT, "--workloads", "W9"], capture_output=True,
                             text=True, timeout=30, cwd=ROOT)
    assert process.returncode == 2
    assert "unknown workloads" in process.stderr


def test_the_checkout_is_measured_whatever_pythonflow_is_installed(tmp_path):
    # Another pythonflow, found first on the path: it has pythonflow.pfmq but no benchmark.
    decoy = tmp_path / "decoy"
    (decoy / "pythonflow" / "pfmq").mkdir(parents=True)
    (decoy / "pythonflow" / "__init__.py").write_text("")
    (decoy / "pythonflow" / "pfmq" / "__init__.py").write_text("")
    environment = dict(os.environ, PYTHONPATH=str(decoy))
    environment.pop("PFMQ_KEY", None)
    out, _ = run_suite("--quick", "--workloads", "W4", cwd=tmp_path, env=environment)
    assert any(line.startswith("W4 ") and "p50 latency, ms" in line for line in out.splitlines())


# -- the broker-scale benchmark --------------------------------------------------------------------

SCALE = os.path.join(ROOT, "benchmarks", "bench_scale.py")


@contextlib.contextmanager
def serving(peers):
    """Run simulated ``peers`` in a thread until the block ends, then close them."""
    stop = threading.Event()
    thread = threading.Thread(target=peers.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield peers
    finally:
        stop.set()
        thread.join(10)
        peers.close()
        assert not thread.is_alive()


def test_simulated_workers_serve_jobs_and_keep_signed_up_by_their_heartbeats():
    with running_broker() as broker, \
            serving(SimulatedWorkers(broker.backend_address, 3, HEARTBEAT)) as workers:
        wait_for_workers(broker, 3)
        requests = [{"fetches": "z", "context": {"x": i, "y": 2}} for i in range(60)]
        assert list(broker.imap(requests, max_batch=1)) == [i / 2 for i in range(60)]
        stats = broker.stats()
        assert sum(w["completed"] for w in stats["per_worker"].values()) == 60
        assert all(w["capacity"] == 2 for w in stats["per_worker"].values())
        # Alive well past the broker's liveness (3 intervals) on their heartbeats alone.
        wait_until(lambda: min(workers.pings) >= 6, message="six heartbeats of every worker")
        stats = broker.stats()
        assert stats["workers"] == 3 and stats["workers_lost"] == 0


def test_idle_tasks_are_known_to_the_broker_while_they_ping():
    # The broker's inproc:// frontend is reached through its own context.
    with running_broker() as broker, \
            serving(IdleTasks(broker.frontend_address, 4, HEARTBEAT, broker.context)) as tasks:
        wait_until(lambda: broker.stats()["tasks"] == 4, message="four idle tasks")
        wait_until(lambda: min(tasks.pings) >= 6, message="six pings of every task")
        assert broker.stats()["tasks"] == 4


def test_scale_quick_run_reports_every_figure(tmp_path):
    report = tmp_path / "scale.json"
    status, out, err = run_script(SCALE, "--quick", "--workers", "1,2", "--json", str(report),
                                  timeout=55)
    assert status == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("connected workers"))
    assert lines[header].split()[2:] == ["1", "2"]
    for label in ("requests/s, batched", "requests/s, one request per job",
                  "broker CPU idle, % of a core", "broker memory per idle worker, KiB"):
        assert any(line.startswith(label) for line in lines), label
    assert any(line.startswith("raw C-proxy pipeline") for line in lines)
    assert "round 1 of 1 done" in err

    data = json.loads(report.read_text())
    medians, samples = data["medians"], data["samples"]
    for workers in (1, 2):
        for name in ("batched", "single", "batched cpu_us", "single cpu_us",
                     "memory per worker"):
            assert medians[f"{name} workers={workers}"] > 0, (name, workers)
        assert 0 <= medians[f"idle workers={workers}"] < 1
        assert medians[f"workers lost workers={workers}"] == 0
    assert medians["raw"] > 0 and medians["memory per task"] > 0
    # Several tasks against one, on the reference workers (2 here: the smallest above 1).
    assert data["settings"]["reference"] == 2
    assert medians[f"single tasks={data['settings']['tasks']} workers=2"] > 0
    assert all(len(values) == 1 for values in samples.values())
    assert [row["target"] for row in data["ratios"]] == [">= 0.5", ">= 0.8", ">= 0.8", "< 3",
                                                         ">= 0.8", ">= 0.8"]
    assert all(row["value"] > 0 or "idle" in row["measure"] for row in data["ratios"])


def test_scale_refuses_bad_worker_counts():
    status, _, err = run_script(SCALE, "--workers", "0,10", timeout=30)
    assert status == 2
    assert "expected positive worker counts" in err


# -- Pythonflow 0.3.0 in W4, and medians of rounds ------------------------------------------------

FAKE_030 = {  # just enough of Pythonflow 0.3.0's API for W4, answering in the client's process
    "pythonflow/__init__.py": "import collections\nMapping = collections.Mapping  # restored\n",
    "pythonflow/pfmq/__init__.py": """
import time


class Broker:
    def __init__(self, backend_address):
        self.backend_address = backend_address

    def run_async(self):
        pass

    def apply(self, request):
        return request["context"]["x"] / request["context"]["y"]


class Worker:
    def __init__(self, target, address):
        self.target = target

    def run(self):
        while True:
            time.sleep(1)
""",
    "pythonflow-0.3.0.dist-info/METADATA": "Name: pythonflow\nVersion: 0.3.0\n",
}


def make_package(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


def test_pythonflow_030_is_found_only_where_it_is():
    with pytest.raises(FileNotFoundError, match="no Pythonflow 0.3.0 in"):
        pf030.locate(os.path.join(ROOT, "no-such-directory"))


def test_pythonflow_030_of_another_version_is_refused(tmp_path):
    files = {name.replace("0.3.0", "0.2.1"): text for name, text in FAKE_030.items()}
    with pytest.raises(ValueError, match="holds Pythonflow 0.2.1, not 0.3.0"):
        pf030.locate(make_package(tmp_path, files))


def test_w4_compares_with_pythonflow_030_in_processes_of_its_own(tmp_path):
    directory = make_package(tmp_path / "pf030", FAKE_030)
    report = tmp_path / "bench.json"
    status, out, err = run_script(SCRIPT, "--quick", "--workloads", "W4", "--rounds", "2",
                                  "--pythonflow-030", directory, "--json", str(report))
    assert status == 0, err
    assert f"Pythonflow 0.3.0 baseline of W4: {directory}" in out
    assert "medians of 2 rounds" in out
    rows = [line for line in out.splitlines() if "Pythonflow 0.3.0 apply" in line]
    assert [row.split()[1] for row in rows] == ["p50", "p99"]
    data = json.loads(report.read_text())
    assert len(data["rounds"]) == 2
    for index, row in enumerate(data["rows"]):
        pair = [rows_of_round[index] for rows_of_round in data["rounds"]]
        assert all(entry["measure"] == row["measure"] for entry in pair)
        assert row["pfmq"] == pytest.approx(sum(entry["pfmq"] for entry in pair) / 2)
        assert row["other"] == pytest.approx(sum(entry["other"] for entry in pair) / 2)
    p50 = next(row for row in data["rows"] if row["baseline"].startswith("raw"))
    assert p50["target"] == "<= 1.5x" and p50["met"] == (p50["ratio"] <= 1.5)


def test_w4_says_when_the_pythonflow_030_baseline_is_absent_or_wrong():
    environment = {k: v for k, v in os.environ.items() if k != pf030.ENVIRONMENT_VARIABLE}
    status, out, err = run_script(SCRIPT, "--quick", "--workloads", "W4", env=environment)
    assert status == 0, err
    assert "Pythonflow 0.3.0 baseline of W4: absent" in out
    assert "Pythonflow 0.3.0 apply" not in out
    status, _, err = run_script(SCRIPT, "--workloads", "W4", "--pythonflow-030",
                                os.path.join(ROOT, "no-such-directory"), env=environment)
    assert status == 2
    assert "no Pythonflow 0.3.0 in" in err.splitlines()[-1]


def test_medians_of_rounds_are_judged_against_the_target_again():
    def round_of(pfmq):
        return compare("W9", "speed", pfmq, [("raw", 1.0)], (">= 1.0x",
                                                              lambda row: row.ratio >= 1.0))
    rounds = [round_of(0.5), round_of(1.5), round_of(1.2)]
    assert [rows[0].met for rows in rounds] == [False, True, True]
    merged, = medians(rounds)
    assert (merged.pfmq, merged.other, merged.target, merged.met) == (1.2, 1.0, ">= 1.0x", True)
