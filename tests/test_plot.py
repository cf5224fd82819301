"""benchmarks/plot.py turns the JSON of ``pfmq bench --json`` into a bar chart."""
import importlib.util
import json
import os

import pytest
from PIL import Image

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def plot():
    spec = importlib.util.spec_from_file_location(
        "plot", os.path.join(ROOT, "benchmarks", "plot.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(workload, measure, pfmq, baseline, other, target="", met=None):
    """A row as ``Row.as_dict`` writes it."""
    return {"workload": workload, "measure": measure, "pfmq": pfmq, "baseline": baseline,
            "other": other, "ratio": pfmq / other, "target": target, "met": met}


RESULTS = {
    "settings": {"mode": "quick", "sizes": {"W1": 10}, "w1_target": "pythonflow graph",
                 "python": "3.11.0", "pyzmq": "27.0", "libzmq": "4.3.5", "numpy": "2.0",
                 "cpus": 2, "platform": "test"},
    "rows": [
        row("W1", "results/s (graph)", 1000.0, "raw pyzmq pipeline", 2000.0, ">= 1.0x", False),
        row("W1", "results/s (graph)", 1000.0, "Pool.imap chunksize=1", 500.0),
        row("W1", "results/s (graph)", 1000.0, "Pool.imap chunksize=125", 12000.0),
        row("W1", "results/s (function)", 1600.0, "raw pyzmq pipeline", 2000.0),
        row("W2", "MB/s", 900.0, "raw pyzmq zero-copy", 1000.0, ">= 0.8x", True),
        row("W2", "MB/s", 900.0, "Pool.imap chunksize=1", 300.0),
        row("W3", "efficiency, workers=1", 0.96, "raw pyzmq pipeline", 0.98, "pfmq >= 0.97",
            False),
        row("W3", "efficiency, workers=1", 0.96, "Pool.imap chunksize=1", 0.96),
        row("W3", "efficiency, workers=2", 0.97, "raw pyzmq pipeline", 0.97, "pfmq >= 0.97",
            True),
        row("W3", "efficiency, workers=2", 0.97, "Pool.imap chunksize=1", 0.94),
        row("W4", "p50 latency, ms", 0.4, "raw pyzmq ROUTER/DEALER proxy", 0.1, "<= 1.2x", False),
        row("W4", "p50 latency, ms", 0.4, "Pool.apply", 0.2),
        row("W4", "p99 latency, ms", 2.0, "raw pyzmq ROUTER/DEALER proxy", 0.5),
        row("W4", "p99 latency, ms", 2.0, "Pool.apply", 4.0),
    ],
}


def test_groups_are_relative_to_raw_pyzmq(plot):
    groups = plot.make_groups(RESULTS["rows"])
    assert [(group["workload"], group["label"]) for group in groups] == [
        ("W1", "results/s"), ("W2", "MB/s"), ("W3", "1 worker"), ("W3", "2 workers"),
        ("W4", "p50"), ("W4", "p99")]
    w1, w2, w3_1, _, p50, p99 = groups
    assert w1["bars"] == [("pfmq", 0.5), ("pfmq (function)", 0.8), ("raw pyzmq", 1.0),
                          ("Pool", 0.25), ("Pool (tuned chunks)", 6.0)]
    assert (w1["target"], w1["met"]) == (1.0, False)
    assert dict(w2["bars"])["Pool"] == pytest.approx(0.3)
    assert w3_1["target"] == pytest.approx(0.97 / 0.98)  # an absolute figure of pfmq
    # Latencies are turned around so that higher is better: raw latency / latency.
    assert dict(p50["bars"]) == pytest.approx({"pfmq": 0.25, "raw pyzmq": 1.0, "Pool": 0.5})
    assert p50["target"] == pytest.approx(1 / 1.2)
    assert (p99["target"], p99["met"]) == (None, None)


def test_a_measure_without_raw_figure_is_refused(plot):
    with pytest.raises(ValueError, match="no raw pyzmq figure"):
        plot.make_groups([row("W2", "MB/s", 900.0, "Pool.imap chunksize=1", 300.0)])


def bar_runs(picture, colours, y):
    """The colours of the runs of bar pixels, left to right, along row ``y``."""
    runs, previous = [], None
    for x in range(picture.width):
        pixel = picture.getpixel((x, y))
        if pixel in colours and pixel != previous:
            runs.append(pixel)
        previous = pixel
    return runs


def test_writes_a_png_with_the_bars_of_every_group(plot, tmp_path, capsys):
    source, output = tmp_path / "results.json", tmp_path / "chart.png"
    source.write_text(json.dumps(RESULTS))
    path = plot.main([str(source), "--output", str(output)])
    assert path == str(output)
    assert capsys.readouterr().out.strip() == str(output)
    assert 10_000 < output.stat().st_size < 2_000_000

    with Image.open(output) as picture:
        assert picture.format == "PNG"
        picture = picture.convert("RGB")
    groups = plot.make_groups(RESULTS["rows"])
    assert picture.width > 400 * plot.SCALE and picture.height > 300 * plot.SCALE
    # Just above the x axis every bar shows, however short: find the row that crosses most.
    colours = set(plot.COLOURS.values())
    rows = [bar_runs(picture, colours, y) for y in range(picture.height // 2, picture.height)]
    crossing = max(rows, key=len)
    assert crossing == [plot.COLOURS[series] for group in groups for series, _ in group["bars"]]
    # Some groups have targets: their dashed lines are drawn.
    assert plot.TARGET_COLOUR in {colour for _, colour in picture.getcolors(1 << 20)}
