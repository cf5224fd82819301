"""benchmarks/plot.py turns the JSON of ``pfmq bench --json`` into a matplotlib bar chart."""
import importlib.util
import json
import os
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install "
                    "'pythonflow[docs]')")
from matplotlib.colors import to_hex, to_rgb  # noqa: E402
from matplotlib.image import imread  # noqa: E402

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


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
        row("W4", "p50 latency, ms", 0.4, "Pythonflow 0.3.0 apply", 0.8),
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
    assert dict(p50["bars"]) == pytest.approx({"pfmq": 0.25, "raw pyzmq": 1.0, "Pool": 0.5,
                                               "Pythonflow 0.3.0": 0.125})
    assert p50["target"] == pytest.approx(1 / 1.2)
    assert (p99["target"], p99["met"]) == (None, None)


def test_a_measure_without_raw_figure_is_refused(plot):
    with pytest.raises(ValueError, match="no raw pyzmq figure"):
        plot.make_groups([row("W2", "MB/s", 900.0, "Pool.imap chunksize=1", 300.0)])


def test_the_figure_plots_every_bar_and_target(plot):
    groups = plot.make_groups(RESULTS["rows"])
    figure = plot.draw_chart(groups, "a title", plot.subtitle_of(RESULTS["settings"]))
    axes, = figure.axes
    # One container per series, its bars where bar_positions puts them, as high as the values.
    drawn = {}
    for container in axes.containers:
        series = next(name for name, text in plot.LEGEND.items()
                      if text == container.get_label())
        for bar in container:
            assert to_hex(bar.get_facecolor()) == plot.COLOURS[series]
            drawn[round(bar.get_x() + bar.get_width() / 2, 6)] = (series, bar.get_height())
    expected = {round(x, 6): bar for group, xs in zip(groups, plot.bar_positions(groups))
                for x, bar in zip(xs, group["bars"])}
    assert sorted(drawn) == sorted(expected)
    for x, (series, value) in expected.items():
        assert drawn[x][0] == series and drawn[x][1] == pytest.approx(value)
    # The 6.0 bar is cut at the top of the axis, which leaves room for every target.
    assert axes.get_ylim() == (0, plot.y_limit(groups)) and plot.y_limit(groups) == 2.0
    assert "6.00" in [text.get_text() for text in axes.texts]
    # One dashed segment per target, at its height, across its group's bars.
    targets, = [c for c in axes.collections if c.get_label() == "target"]
    segments = sorted((y0, x0, x1) for (x0, y0), (x1, _) in targets.get_segments())
    wanted = sorted((group["target"], xs[0], xs[-1]) for group, xs
                    in zip(groups, plot.bar_positions(groups)) if group["target"] is not None)
    assert len(segments) == len(wanted) == 5
    for (y, x0, x1), (target, first, last) in zip(segments, wanted):
        assert y == pytest.approx(target) and x0 < first and x1 > last
    labels = [text.get_text() for text in axes.texts]
    assert labels.count("target missed") == 3 and labels.count("target met") == 2
    assert {"W1 tiny requests", "W2 8 MiB arrays", "W3 scaling, 10 ms",
            "W4 apply latency"} <= set(labels)
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == [*plot.LEGEND.values(), "target"]
    assert [tick.get_text() for tick in axes.get_xticklabels()] == [g["label"] for g in groups]
    assert "Python 3.11.0" in figure.get_suptitle()


def test_main_writes_the_chart_as_png(plot, tmp_path, capsys):
    source, output = tmp_path / "results.json", tmp_path / "chart.png"
    source.write_text(json.dumps(RESULTS))
    path = plot.main([str(source), "--output", str(output)])
    assert path == str(output)
    assert capsys.readouterr().out.strip() == str(output)
    assert output.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    pixels = imread(output)[..., :3]
    assert pixels.shape[1] > 1.5 * pixels.shape[0] > 600
    # Every series and the targets show up in the picture in their own colours.
    for colour in [*plot.COLOURS.values(), plot.TARGET_COLOUR]:
        assert (np.abs(pixels - to_rgb(colour)) < 2 / 255).all(axis=-1).sum() > 50, colour


def table_rows(text):
    """The body rows of the results ``list-table`` of docs/performance.rst, as lists of cells."""
    table = text[text.index(".. list-table::"):]
    table = table[:table.index("\n\n", table.index("* - "))]
    rows = []
    for line in table.splitlines():
        match = re.match(r"\s+(\* )?- ?(.*)$", line)
        if match:
            if match.group(1):
                rows.append([])
            rows[-1].append(match.group(2).strip())
    return rows[1:]  # without the header


def test_the_chart_data_are_the_figures_of_the_performance_page():
    with open(os.path.join(DOCS, "performance.rst"), encoding="utf-8") as stream:
        rows = table_rows(stream.read())
    with open(os.path.join(DOCS, "performance.json"), encoding="utf-8") as stream:
        data = json.load(stream)
    assert len(rows) == len(data["rows"]) >= 18
    for cells, entry in zip(rows, data["rows"]):
        workload, measure, pfmq, baseline, other, ratio, target = cells
        assert (entry["workload"], entry["measure"], entry["baseline"]) == (workload, measure,
                                                                            baseline)
        assert entry["pfmq"] == float(pfmq.replace(",", ""))
        assert entry["other"] == float(other.replace(",", ""))
        assert f"{entry['ratio']:.2f}x" == ratio
        verdict = {None: "", True: ": met", False: ": missed"}[entry["met"]]
        assert entry["target"] + verdict == target
    assert os.path.getsize(os.path.join(DOCS, "performance.png")) > 10_000
