"""The PyTorch benchmark runs end to end in its quick mode and reports both loaders."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="the PyTorch benchmark needs torch: pip install torch==2.13.0")

pytestmark = pytest.mark.timeout(110)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_torch.py")


def test_quick_run_reports_rates_waits_and_ratios(tmp_path):
    report = tmp_path / "bench.json"
    process = subprocess.Popen([sys.executable, SCRIPT, "--quick", "--json", str(report)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=ROOT)
    try:
        out, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert process.returncode == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("workers"))
    table = [line.split() for line in lines[header + 1:] if line.strip()]
    assert [row[0] for row in table] == ["1", "2"]
    rows = json.loads(report.read_text())["rows"]
    assert [row["workers"] for row in rows] == [1, 2]
    for row in rows:
        assert row["pfmq_images_per_s"] > 0 and row["torch_images_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["pfmq_images_per_s"] / row["torch_images_per_s"])
        assert 0 <= row["pfmq_waited"] <= 1 and 0 <= row["torch_waited"] <= 1


def test_bad_sizes_are_refused():
    process = subprocess.run([sys.executable, SCRIPT, "--images", "0"], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
    assert process.returncode == 2
    assert "must be at least 1" in process.stderr
