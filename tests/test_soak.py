"""A short soak run: workers and the broker killed on a schedule, nothing lost or duplicated."""
import importlib.util
import os

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_short_soak_loses_and_duplicates_nothing():
    spec = importlib.util.spec_from_file_location(
        "soak", os.path.join(ROOT, "benchmarks", "soak.py"))
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    report = soak.soak(duration=8, workers=2, interval=0.8, heartbeat=0.1, seed=3)
    assert report["lost"] == 0
    assert report["duplicated"] == 0
    assert report["done"] > 100
    assert sum(report["faults"].values()) >= 4
    assert report["faults"]["broker SIGKILL"] >= 1
