"""The report of the broker-scale benchmark (:mod:`.scale`) and its command line."""
import argparse
import json
import logging
import sys
from typing import List, Optional, Sequence

from .results import number
from .scale import MODE_NAMES, MODES, RAW_WINDOW, SIZES, run


def format_report(results: dict) -> str:
    """The results as plain text: a table by number of workers, the other figures, the ratios."""
    settings, medians = results["settings"], results["medians"]
    counts, reference, tasks = settings["workers"], settings["reference"], settings["tasks"]
    lines = [["connected workers", *map(str, counts)]]
    for label, name, scale in (
            ("requests/s, batched", "batched", 1),
            ("requests/s, one request per job", "single", 1),
            ("broker CPU per request, batched, us", "batched cpu_us", 1),
            ("broker CPU per request, one per job, us", "single cpu_us", 1),
            ("workers' CPU per request, one per job, us", "single workers cpu_us", 1),
            ("task's CPU per request, one per job, us", "single task cpu_us", 1),
            ("broker CPU idle, % of a core", "idle", 100),
            ("broker CPU per heartbeat (idle), us", "ping cpu_us", 1),
            ("broker memory per idle worker, KiB", "memory per worker", 1 / 1024),
            ("workers presumed dead meanwhile", "workers lost", 1)):
        lines.append([label, *(number(scale * medians[f"{name} workers={count}"])
                               for count in counts)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join([line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in
                                                     zip(line[1:], widths[1:])]) for line in lines]
    text.insert(1, "-" * len(text[0]))
    at_reference = {name: medians[f"{name} workers={reference}"] for name in (
        *(f"{mode} tasks={count}" for mode in MODES for count in (1, tasks)),)}
    text += ["", f"raw C-proxy pipeline (zmq.proxy, {reference} REP workers, window "
                 f"{RAW_WINDOW}), one request per message: {number(medians['raw'])} requests/s",
             f"broker memory per idle task: {medians['memory per task'] / 1024:.1f} KiB "
             f"({settings['sizes']['idle_peers']} tasks pinging, no worker)"]
    for mode in MODES:
        text.append(f"{tasks} tasks vs 1 on {reference} workers, {MODE_NAMES[mode]}: "
                    f"{number(at_reference[f'{mode} tasks={tasks}'])} vs "
                    f"{number(at_reference[f'{mode} tasks=1'])} requests/s")
    text += ["", "ratio (of medians)".ljust(52) + "value".rjust(8) + "  target"]
    for row in results["ratios"]:
        verdict = "met" if row["met"] else "MISSED"
        text.append(f"{row['measure']:<52}{number(row['value']):>8}  {row['target']} {verdict}")
    return "\n".join(text)


def _counts(text: str) -> List[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive worker counts such as 1,10,100, "
                                         f"not {text!r}")
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the scale benchmark from the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="bench_scale.py", description="Measure the pfmq broker with many workers and tasks.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--workers", type=_counts, help="comma-separated numbers of connected "
                        "workers (default: 1,10,100,500,1000; quick: 1,2,8)")
    parser.add_argument("--rounds", type=int, help="times everything is measured (default 3; "
                        "quick: 1); medians are printed")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    counts = args.workers or SIZES["quick" if args.quick else "full"]["workers"]
    results = run(counts, args.quick, args.rounds,
                  lambda line: print(line, file=sys.stderr, flush=True))
    settings = results["settings"]
    print(f"pfmq broker scale ({settings['mode']}): {settings['cpus']} CPUs, Python "
          f"{settings['python']}, pyzmq {settings['pyzmq']}, libzmq {settings['libzmq']}; "
          f"medians of {settings['rounds']} rounds")
    print(format_report(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(results, stream, indent=2)
    return 0
