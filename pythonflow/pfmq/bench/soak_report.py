"""The report of the soak (:mod:`.soak`) as a table, and its command line
(``python benchmarks/soak.py``)."""
import argparse
import dataclasses
import json
import logging
import signal
import sys
from typing import List, Optional, Sequence, Tuple

from .soak import Fault, Settings, passed, run


def report_rows(report: dict) -> List[Tuple[str, str]]:
    """(measure, value) of every line of the table."""
    consumer, faults = report["consumer"], report["faults"]
    seconds = consumer["seconds"] or float("nan")
    rows = [("seconds of faults (then settling)",
             f"{report['seconds']:.0f} (+{report['settled']:.1f})"),
            ("requests done", str(consumer["done"])),
            ("rate, requests/s", f"{consumer['done'] / seconds:.0f}"),
            ("faults injected", str(sum(faults.values())))]
    rows += [(f"fault: {name}", str(count)) for name, count in faults.items()]
    rows += [(f"fault: {name}", "off") for name in report["unavailable"]]
    rows += [("lost", str(consumer["lost"])), ("duplicated", str(consumer["duplicated"])),
             ("timed out (of requests made to hang)",
              f"{consumer['timed_out']} (of {consumer['hung']})"),
             ("other errors", str(consumer["failed"])),
             ("worker processes restarted", str(report["restarts"])),
             ("workers at the end / pool", f"{report['workers_end']} / {report['workers_full']}")]
    return rows


def format_report(report: dict) -> str:
    """The report as a reStructuredText table, the reasons of the faults that were off, and the
    verdict."""
    rows = [("measure", "value"), *report_rows(report)]
    widths = [max(len(row[column]) for row in rows) for column in (0, 1)]
    rule = "  ".join("=" * width for width in widths)
    lines = [rule, *(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}" for row in rows[:1]), rule]
    lines += [f"{measure:<{widths[0]}}  {value:>{widths[1]}}" for measure, value in rows[1:]]
    lines.append(rule)
    for reason, names in _by_reason(report["unavailable"]).items():
        lines.append(f"off ({', '.join(names)}): {reason}")
    for error in report["consumer"]["errors"]:
        lines.append(f"unexpected error: {error}")
    if report["consumer"]["stalled"]:
        lines.append("the stream stalled: no result came after the stop")
    for problem in (report["consumer"]["error"], report["chaos_error"]):
        if problem:
            lines.append(f"the run broke: {problem}")
    lines.append("PASSED" if passed(report) else "FAILED")
    return "\n".join(lines)


def _by_reason(unavailable: dict) -> dict:
    """Reason -> the names of the faults it switched off."""
    grouped: dict = {}
    for name, reason in unavailable.items():
        grouped.setdefault(reason, []).append(name)
    return grouped


def _fault_names(text: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        for name in names:
            Fault.named(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not names:
        raise argparse.ArgumentTypeError(f"expected fault kinds such as worker-kill,hang, not "
                                         f"{text!r}")
    return names


def _positive(kind):
    def parse(text: str):  # argparse names the option in its message
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The soak's command line; the defaults are those of :class:`.soak.Settings`."""
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="soak.py", description="Soak pfmq: an endless ordered stream over TCP while worker "
        "processes and the broker are killed, links are cut, requests hang and workers grow; "
        "exits with status 1 unless nothing was lost or duplicated and the pool is full again.")
    for name, kind, text in (
            ("duration", float, "seconds of faults"),
            ("hosts", int, "worker hosts, each with a pool of its own"),
            ("processes", int, "worker processes per pool"),
            ("interval", float, "mean seconds between faults"),
            ("heartbeat", float, "heartbeat interval of every process"),
            ("request-timeout", float, "deadline of each request (hung requests need it)"),
            ("leak", int, "bytes a leaking worker keeps per request"),
            ("settle", float, "seconds the pool has to be full again at the end")):
        parser.add_argument(f"--{name}", type=_positive(kind),
                            default=getattr(defaults, name.replace("-", "_")),
                            help=f"{text} (default: %(default)s)")
    parser.add_argument("--rounds", type=_positive(int), default=None,
                        help="end after this many rounds of the schedule (each fault kind once, "
                        "worker kills twice) if that comes before --duration")
    parser.add_argument("--faults", dest="only", type=_fault_names, default=None,
                        metavar="KIND,...", help="inject only these kinds: "
                        f"{', '.join(fault.option for fault in Fault)} (default: all)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the schedule (default: %(default)s)")
    parser.add_argument("--max-memory", default=defaults.max_memory,
                        help="memory limit of each worker process (default: %(default)s)")
    parser.add_argument("--no-cuts", dest="cuts", action="store_false",
                        help="no network namespaces, no link cuts: every host on loopback")
    parser.add_argument("--json", metavar="PATH", help="also write the report there as JSON")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the soak from the command line; the exit status says whether it passed."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = {field.name: getattr(args, field.name) for field in dataclasses.fields(Settings)}

    def stop(signum, frame):  # a signal handler
        raise SystemExit(f"soak: stopped by {signal.Signals(signum).name}")

    # SIGTERM (and SIGINT, which a background job ignores) end the run through its cleanup:
    # every process ended, every namespace removed.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    report = run(Settings(**options))
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
