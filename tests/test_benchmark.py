"""The performance suite runs end to end in its quick mode and reports every workload."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_pfmq.py")


def run_suite(*args, timeout=45, **options):
    process = subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, **{"cwd": ROOT, **options})
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
    assert process.returncode == 0, err
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
