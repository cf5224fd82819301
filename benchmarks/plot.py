"""Draw the pfmq benchmark figures as a bar chart (PNG, with Pillow only).

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

from PIL import Image, ImageDraw, ImageFont

WORKLOAD_NAMES = {"W1": "W1 tiny requests", "W2": "W2 8 MiB arrays", "W3": "W3 scaling, 10 ms",
                  "W4": "W4 apply latency"}
COLOURS = {"pfmq": (31, 95, 168), "pfmq (function)": (127, 176, 224),
           "raw pyzmq": (140, 140, 140), "Pool": (224, 138, 30),
           "Pool (tuned chunks)": (243, 194, 122)}
LEGEND = {"pfmq": "pfmq (pythonflow graph in W1)", "pfmq (function)": "pfmq, plain function",
          "raw pyzmq": "raw pyzmq = 1.0", "Pool": "multiprocessing.Pool",
          "Pool (tuned chunks)": "Pool, tuned chunk size"}
TARGET_COLOUR = (200, 30, 30)
SCALE = 2  # drawn at twice the size, so that the text stays sharp when the page shrinks it

Bar = Tuple[str, float]  # series, value relative to raw pyzmq


def _font(size: int):
    try:
        return ImageFont.load_default(size=size * SCALE)
    except TypeError:  # Pillow < 10.1 has one small bitmap font
        return ImageFont.load_default()


def _series(baseline: str) -> str:
    if baseline.startswith("raw"):
        return "raw pyzmq"
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
    return measure


def draw_chart(groups: Sequence[dict], title: str, subtitle: str = "") -> Image.Image:
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
    picture : PIL.Image.Image
        The chart, an RGB image.
    """
    s = SCALE
    bar, group_gap, group_min = 30 * s, 34 * s, 96 * s
    left, right, top, bottom, plot_height = 70 * s, 24 * s, 96 * s, 74 * s, 340 * s
    widths = [max(bar * len(group["bars"]), group_min) for group in groups]
    width = left + right + sum(widths) + group_gap * (len(groups) + 1)
    picture = Image.new("RGB", (width, top + plot_height + bottom), "white")
    draw = ImageDraw.Draw(picture)
    big, medium, small = _font(17), _font(13), _font(11)

    values = [value for group in groups for _, value in group["bars"]]
    values += [group["target"] for group in groups if group["target"] is not None]
    y_max = min(2.0, math.ceil(max(values) * 4) / 4) if values else 2.0
    y_max = max(y_max, 1.25)

    def y_of(value):
        return top + plot_height - plot_height * min(value, y_max) / y_max

    draw.text((left, 12 * s), title, fill="black", font=big)
    draw.text((left, 36 * s), subtitle, fill=(80, 80, 80), font=small)
    # Grid and axis.
    step = 0.25 if y_max <= 2 else 0.5
    for index in range(int(round(y_max / step)) + 1):
        value = index * step
        y = y_of(value)
        colour = (120, 120, 120) if value == 1.0 else (225, 225, 225)
        draw.line([(left, y), (width - right, y)], fill=colour, width=s if value != 1.0 else 2 * s)
        draw.text((left - 8 * s, y), f"{value:.2f}", fill="black", font=small, anchor="rm")
    _vertical_label(picture, "relative to raw pyzmq (higher is better)", (14 * s, top),
                    plot_height, medium)

    x = left + group_gap
    spans: Dict[str, List[float]] = {}
    for group, group_width in zip(groups, widths):
        start = x + (group_width - bar * len(group["bars"])) / 2
        # Behind the bars and their values, which stay readable where they cross it.
        if group["target"] is not None:
            y = y_of(group["target"])
            for dash in range(int(x - 6 * s), int(x + group_width + 6 * s), 10 * s):
                draw.line([(dash, y), (min(dash + 6 * s, x + group_width + 6 * s), y)],
                          fill=TARGET_COLOUR, width=2 * s)
        for index, (series, value) in enumerate(group["bars"]):
            x0, x1 = start + index * bar + 2 * s, start + (index + 1) * bar - 2 * s
            draw.rectangle([x0, y_of(value), x1, y_of(0)], fill=COLOURS[series])
            label_y = y_of(value) - 3 * s
            if value > y_max:  # clipped: break the bar and write its value on top
                cut = y_of(y_max) + 10 * s
                draw.polygon([(x0 - s, cut), (x1 + s, cut - 6 * s), (x1 + s, cut - 2 * s),
                              (x0 - s, cut + 4 * s)], fill="white")
                label_y = y_of(y_max) - 3 * s
            text = f"{value:.2f}"
            draw.rectangle(draw.textbbox(((x0 + x1) / 2, label_y), text, font=small, anchor="md"),
                           fill="white")
            draw.text(((x0 + x1) / 2, label_y), text, fill="black", font=small, anchor="md")
        centre = x + group_width / 2
        draw.text((centre, y_of(0) + 8 * s), group["label"], fill="black", font=medium,
                  anchor="ma")
        if group["met"] is not None:
            verdict = "target met" if group["met"] else "target missed"
            draw.text((centre, y_of(0) + 26 * s), verdict, font=small, anchor="ma",
                      fill=(30, 120, 40) if group["met"] else TARGET_COLOUR)
        spans.setdefault(group["workload"], []).extend([x, x + group_width])
        x += group_width + group_gap
    for workload, span in spans.items():
        y = y_of(0) + 46 * s
        draw.line([(min(span), y), (max(span), y)], fill=(120, 120, 120), width=s)
        draw.text(((min(span) + max(span)) / 2, y + 4 * s), WORKLOAD_NAMES.get(workload, workload),
                  fill="black", font=medium, anchor="ma")
    _legend(draw, [series for series in COLOURS
                   if any(series == name for group in groups for name, _ in group["bars"])],
            (left, 58 * s), small)
    return picture


def _vertical_label(picture, text, position, length, font):
    draw = ImageDraw.Draw(picture)
    box = draw.textbbox((0, 0), text, font=font)
    label = Image.new("RGB", (box[2] + 4, box[3] + 4), "white")
    ImageDraw.Draw(label).text((2, 2), text, fill="black", font=font)
    label = label.rotate(90, expand=True)
    x, y = position
    picture.paste(label, (int(x), int(y + (length - label.height) / 2)))


def _legend(draw, series, position, font):
    x, y = position
    s = SCALE
    for name in series:
        draw.rectangle([x, y, x + 14 * s, y + 14 * s], fill=COLOURS[name])
        draw.text((x + 20 * s, y + 7 * s), LEGEND[name], fill="black", font=font, anchor="lm")
        x += 20 * s + draw.textlength(LEGEND[name], font=font) + 22 * s
    draw.line([(x, y + 7 * s), (x + 24 * s, y + 7 * s)], fill=TARGET_COLOUR, width=2 * s)
    draw.text((x + 30 * s, y + 7 * s), "target", fill="black", font=font, anchor="lm")


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
        # Measure the checkout this script belongs to, not whichever copy is installed.
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from pythonflow.pfmq import bench

        measured = bench.run(quick=args.quick,
                             progress=lambda message: print(message, file=sys.stderr))
        results = {"settings": measured["settings"],
                   "rows": [row.as_dict() for row in measured["rows"]]}
    chart = draw_chart(make_groups(results["rows"]),
                       "pfmq, raw pyzmq and multiprocessing.Pool, relative to raw pyzmq",
                       subtitle_of(results["settings"]))
    chart.save(args.output, format="PNG", optimize=True)
    path = os.path.abspath(args.output)
    print(path)
    return path


if __name__ == "__main__":  # the suite's worker processes import this file as __mp_main__
    main()
