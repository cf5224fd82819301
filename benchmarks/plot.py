"""Draw the pfmq benchmark figures as a bar chart with matplotlib.

Each group of bars is one measure of one workload: pfmq, raw pyzmq and ``multiprocessing.Pool``,
normalised so that raw pyzmq is 1.0 and higher is better (latencies are shown as raw latency
divided by the system's latency). Dashed red lines mark the targets of the benchmark suite.

.. code-block:: console

    $ python benchmarks/bench_pfmq.py --json results.json   # about a minute
    $ python benchmarks/plot.py results.json --output docs/performance.png
    $ python benchmarks/plot.py --quick --output quick.png  # run the suite here, small sizes
"""
import argparse
import json
import math
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

WORKLOAD_NAMES = {"W1": "W1 tiny requests", "W2": "W2 8 MiB arrays", "W3": "W3 scaling, 10 ms",
                  "W4": "W4 apply latency"}
COLOURS = {"pfmq": "#1f5fa8", "pfmq (function)": "#7fb0e0", "raw pyzmq": "#8c8c8c",
           "Pool": "#e08a1e", "Pool (tuned chunks)": "#f3c27a", "Pythonflow 0.3.0": "#6b3fa0"}
LEGEND = {"pfmq": "pfmq (pythonflow graph in W1)", "pfmq (function)": "pfmq, plain function",
          "raw pyzmq": "raw pyzmq = 1.0", "Pool": "multiprocessing.Pool",
          "Pool (tuned chunks)": "Pool, tuned chunk size", "Pythonflow 0.3.0": "Pythonflow 0.3.0"}
TARGET_COLOUR = "#c81e1e"
MET_COLOUR = "#1e7828"
TITLE = "pfmq, raw pyzmq and multiprocessing.Pool, relative to raw pyzmq"

Bar = Tuple[str, float]  # series, value relative to raw pyzmq


def _series(baseline: str) -> str:
    if baseline.startswith("raw"):
        return "raw pyzmq"
    if baseline.startswith("Pythonflow"):  # W4's "Pythonflow 0.3.0 apply"
        return "Pythonflow 0.3.0"
    chunks = re.search(r"chunksize=(\d+)", baseline)
    return "Pool (tuned chunks)" if chunks and int(chunks.group(1)) > 1 else "Pool"


def _target(text: str, raw: float, latency: bool) -> Optional[float]:
    """The target as a value relative to raw pyzmq, or None if ``text`` has none.

    ``">= 0.8x"`` is a ratio to the raw figure, ``"pfmq >= 0.97"`` a figure of pfmq itself.
    """
    match = re.fullmatch(r"(?:pfmq\s*)?(>=|<=)\s*([0-9.]+)(x?)", text.strip())
    if not match:
        return None
    value = float(match.group(2))
    if not match.group(3):  # an absolute figure: relative to this group's raw figure
        value = value / raw
    return 1 / value if latency else value


def make_groups(rows: Sequence[dict]) -> List[dict]:
    """
    Turn the rows of ``pfmq bench --json`` into groups of normalised bars.

    Parameters
    ----------
    rows : sequence of dict
        Rows with ``workload``, ``measure``, ``pfmq``, ``baseline``, ``other``, ``target`` and
        ``met``; every measure needs a row whose baseline is raw pyzmq.

    Returns
    -------
    groups : list of dict
        In the order of the rows: ``workload``, ``label``, ``bars`` (list of ``(series,
        value)``), ``target`` (relative value or None) and ``met`` (bool or None).
    """
    groups: Dict[Tuple[str, str], dict] = {}
    for row in rows:
        # "results/s (graph)" and "results/s (function)" share one raw figure and one group.
        match = re.fullmatch(r"(.*?)\s*\((graph|function)\)", row["measure"])
        measure, variant = (match.group(1), match.group(2)) if match else (row["measure"], None)
        group = groups.setdefault((row["workload"], measure), {
            "workload": row["workload"], "measure": measure, "pfmq": {}, "others": {},
            "target": "", "met": None})
        group["pfmq"].setdefault("pfmq (function)" if variant == "function" else "pfmq",
                                 row["pfmq"])
        group["others"].setdefault(row["baseline"], row["other"])
        if row.get("target"):
            group["target"], group["met"] = row["target"], row.get("met")
    result = []
    for group in groups.values():
        raws = [value for name, value in group["others"].items() if name.startswith("raw")]
        if not raws:
            raise ValueError(f"{group['workload']} {group['measure']}: no raw pyzmq figure")
        raw, latency = raws[0], "latency" in group["measure"]

        def relative(value, raw=raw, latency=latency):
            return raw / value if latency else value / raw

        bars = [(series, relative(value)) for series, value in group["pfmq"].items()]
        bars += [(_series(name), relative(value)) for name, value in group["others"].items()]
        bars.sort(key=lambda bar: list(COLOURS).index(bar[0]))
        result.append({"workload": group["workload"], "label": _short_label(group["measure"]),
                       "bars": bars, "target": _target(group["target"], raw, latency),
                       "met": group["met"]})
    return result


def _short_label(measure: str) -> str:
    workers = re.search(r"workers=(\d+)", measure)
    if workers:
        count = int(workers.group(1))
        return f"{count} worker{'s' if count > 1 else ''}"
    if "latency" in measure:
        return measure.split()[0]  # p50, p99
    if measure.endswith(")") and " (" in measure:  # "MB/s (LocalCluster, sockets)": "sockets"
        return measure[measure.index(" (") + 2:-1].split(", ")[-1].replace("pfmq ", "")
    return measure


def y_limit(groups: Sequence[dict]) -> float:
    """The top of the value axis: room for every target, at most 2.0 (taller bars are cut)."""
    values = [value for group in groups for _, value in group["bars"]]
    values += [group["target"] for group in groups if group["target"] is not None]
    return max(1.25, min(2.0, math.ceil(max(values, default=2.0) * 4) / 4))


GAP = 1.5  # bar widths between neighbouring groups


def bar_positions(groups: Sequence[dict]) -> List[List[float]]:
    """The x position of every bar, group by group: one unit per bar, :data:`GAP` between."""
    positions, x = [], 0.0
    for group in groups:
        positions.append([x + index for index in range(len(group["bars"]))])
        x += len(group["bars"]) + GAP
    return positions


def draw_chart(groups: Sequence[dict], title: str = TITLE, subtitle: str = ""):
    """
    Draw the groups as a bar chart.

    Parameters
    ----------
    groups : sequence of dict
        As returned by :func:`make_groups`.
    title, subtitle : str
        Text above the chart.

    Returns
    -------
    figure : matplotlib.figure.Figure
        One axes holding a bar container per series (labelled as in :data:`LEGEND`), at the
        positions of :func:`bar_positions`, and one dashed line collection of the targets
        (labelled ``"target"``); save it with ``figure.savefig(path)``.
    """
    # Imported here: the suite's worker processes import this file, and need no matplotlib.
    from matplotlib.figure import Figure

    positions = bar_positions(groups)
    figure = Figure(figsize=(2.0 + 0.27 * positions[-1][-1], 5.0), layout="constrained")
    axes = figure.subplots()
    top = y_limit(groups)
    for series in COLOURS:  # one container per series, in the order of the legend
        bars = [(x, value) for group, xs in zip(groups, positions)
                for x, (name, value) in zip(xs, group["bars"]) if name == series]
        if bars:
            axes.bar(*zip(*bars), width=0.85, color=COLOURS[series], label=LEGEND[series])
            # A bar taller than the axis is cut at its top, with its value written inside.
            for x, value in bars:
                axes.annotate(f"{value:.2f}", (x, min(value, top)), ha="center", fontsize=7,
                              xytext=(0, -2 if value > top else 1), textcoords="offset points",
                              va="top" if value > top else "bottom",
                              bbox={"color": "white", "pad": 0.5} if value > top else None)
    targets = [(group["target"], xs[0] - 0.6, xs[-1] + 0.6)
               for group, xs in zip(groups, positions) if group["target"] is not None]
    if targets:
        axes.hlines(*zip(*targets), colors=TARGET_COLOUR, linestyles="dashed", label="target",
                    zorder=3)
    axes.axhline(1.0, color="0.45", linewidth=1, zorder=0)
    axes.set_xlim(-GAP / 2 - 0.5, positions[-1][-1] + GAP / 2 + 0.5)
    axes.set_ylim(0, top)
    axes.set_ylabel("relative to raw pyzmq (higher is better)")
    _label_groups(axes, groups, positions)
    axes.grid(axis="y", color="0.9")
    axes.set_axisbelow(True)
    handles = sorted(axes.get_legend_handles_labels()[0],  # the series, then the target
                     key=lambda handle: handle.get_label() == "target")
    axes.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=6, fontsize=7,
                frameon=False, handlelength=1.5, columnspacing=1.2)
    figure.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=10)
    return figure


def _label_groups(axes, groups: Sequence[dict], positions: List[List[float]]) -> None:
    """Name each group under its bars (with its verdict), and each workload under its groups."""
    centres = [(xs[0] + xs[-1]) / 2 for xs in positions]
    axes.set_xticks(centres, [group["label"] for group in groups], fontsize=8)
    axes.tick_params(axis="x", length=0)
    spans: Dict[str, List[float]] = {}
    for group, xs, centre in zip(groups, positions, centres):
        if group["met"] is not None:
            axes.annotate(f"target {'met' if group['met'] else 'missed'}", (centre, 0),
                          xycoords=("data", "axes fraction"), xytext=(0, -16),
                          textcoords="offset points", ha="center", va="top", fontsize=7,
                          color=MET_COLOUR if group["met"] else TARGET_COLOUR)
        spans.setdefault(group["workload"], []).extend([xs[0] - 0.5, xs[-1] + 0.5])
    for workload, span in spans.items():
        axes.annotate(WORKLOAD_NAMES.get(workload, workload), ((min(span) + max(span)) / 2, 0),
                      xycoords=("data", "axes fraction"), xytext=(0, -30),
                      textcoords="offset points", ha="center", va="top", fontsize=8)


def subtitle_of(settings: dict) -> str:
    """One line on the machine and versions of a benchmark run."""
    return (f"{settings.get('mode', '?')} run, {settings.get('cpus', '?')} CPUs, "
            f"Python {settings.get('python', '?')}, pyzmq {settings.get('pyzmq', '?')}, "
            f"libzmq {settings.get('libzmq', '?')}, numpy {settings.get('numpy', '?')}; "
            "latency bars are raw latency / latency")


def main(argv: Optional[Sequence[str]] = None) -> str:
    """
    Read (or produce) benchmark results and write the chart; prints and returns its path.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``); see ``--help``.
    """
    parser = argparse.ArgumentParser(description="Plot the pfmq benchmark as a bar chart.")
    parser.add_argument("results", nargs="?",
                        help="JSON written by `pfmq bench --json` (default: run the suite now)")
    parser.add_argument("--output", default="performance.png", help="PNG to write")
    parser.add_argument("--quick", action="store_true",
                        help="when running the suite, use its tiny sizes")
    args = parser.parse_args(argv)
    if args.results:
        with open(args.results, encoding="utf-8") as stream:
            results = json.load(stream)
    else:
        # Measure the checkout this script belongs to, not whichever copy is installed, here and
        # in the fork server of the workers (see bench_pfmq.py).
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sys.path.insert(0, root)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root,
                                                                 os.environ.get("PYTHONPATH")]))
        from pythonflow.pfmq import bench

        measured = bench.run(quick=args.quick,
                             progress=lambda message: print(message, file=sys.stderr))
        results = {"settings": measured["settings"],
                   "rows": [row.as_dict() for row in measured["rows"]]}
    figure = draw_chart(make_groups(results["rows"]), TITLE, subtitle_of(results["settings"]))
    # Fixed metadata keeps the PNG byte-identical for identical figures.
    figure.savefig(args.output, format="png", dpi=200, metadata={"Software": None})
    path = os.path.abspath(args.output)
    print(path)
    return path


if __name__ == "__main__":  # the suite's worker processes import this file as __mp_main__
    main()
