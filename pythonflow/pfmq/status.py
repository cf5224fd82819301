"""What ``pfmq status`` prints: a broker's figures once, or refreshed in place with ``--watch``.

:func:`format_status` turns the dictionary of :meth:`Broker.stats()
<pythonflow.pfmq.Broker.stats>` into text; :func:`watch` asks for that dictionary every few
seconds and redraws it. The redraw needs no curses: on a terminal each frame moves the cursor home
and overwrites the previous one with ANSI escapes; to a pipe or a file each frame is printed after
the last, and ``--json`` prints one line of JSON per refresh. Rates over the last refresh come
from the difference of two snapshots, so the broker only counts.
"""
import json
import logging
import os
import sys
import time
from typing import Callable, Dict, List, Optional, TextIO

LOGGER = logging.getLogger(__name__)

#: Cursor home, clear to the end of the line, clear to the end of the screen, clear the screen.
HOME, CLEAR_LINE, CLEAR_BELOW, CLEAR_SCREEN = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[2J"

#: (label, key) of the totals, in the order shown.
TOTALS = [("workers", "workers"), ("capacity", "capacity"), ("tasks", "tasks"),
          ("queued", "queued"), ("in flight", "in_flight"), ("completed", "completed"),
          ("requeued", "requeued"), ("failed", "failed"), ("cancelled", "cancelled"),
          ("workers lost", "workers_lost"), ("restarts", "restarts"),
          ("deadlines hit", "deadlines_hit")]


def format_duration(seconds: float) -> str:
    """``seconds`` as ``"42s"``, ``"3m20s"`` or ``"5h07m"``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def window_rates(previous: Optional[dict], current: dict, seconds: float) -> Dict[str, float]:
    """Results per second between two snapshots of the same broker.

    Parameters
    ----------
    previous, current : dict
        Statistics of :meth:`Broker.stats`, ``seconds`` apart.
    seconds : float
        The time between the two snapshots.

    Returns
    -------
    rates : dict
        Worker id (hex) to its results per second, for the workers in both snapshots, and ``""``
        to the broker's; empty when there is no earlier snapshot of the same broker run.
    """
    if (not previous or seconds <= 0
            or previous.get("incarnation") != current.get("incarnation")):
        return {}  # a restarted broker counts from zero again
    before = previous.get("per_worker") or {}
    rates = {"": max(current.get("completed", 0) - previous.get("completed", 0), 0) / seconds}
    for worker_id, figures in (current.get("per_worker") or {}).items():
        if worker_id in before:
            done = figures.get("completed", 0) - before[worker_id].get("completed", 0)
            rates[worker_id] = max(done, 0) / seconds
    return rates


def _worker_line(worker_id: str, figures: dict, rates: Dict[str, float]) -> str:
    # Short enough for 80 columns: the rate is over the last refresh when there is one, else
    # since the worker joined (both are in the JSON).
    line = (f"    {worker_id[:8]}  completed {figures.get('completed', 0)}  "
            f"in flight {figures.get('in_flight', 0)}/{figures.get('capacity', 0)}")
    rate = rates.get(worker_id, figures.get("per_second"))
    if rate is not None:
        line += f"  results/s {rate:.1f}"
    if figures.get("age") is not None:
        line += f"  age {format_duration(figures['age'])}"
    if figures.get("deadlines_hit"):  # shown only when there are some, to keep 80 columns
        line += f"  deadlines hit {figures['deadlines_hit']}"
    return line


def status_lines(stats: dict, rates: Optional[Dict[str, float]] = None) -> List[str]:
    """The lines of :func:`format_status` below its heading; ``rates`` as of :func:`window_rates`.

    Figures missing from ``stats`` (a broker of an older version) are left out.
    """
    rates = rates or {}
    lines = [f"  {label:<12} {stats[name]}" for label, name in TOTALS if name in stats]
    if "" in rates:
        lines.append(f"  {'results/s':<13}{rates['']:.1f}")
    per_worker = stats.get("per_worker") or {}
    if per_worker:
        lines.append("  per worker:")
    for worker_id, figures in sorted(per_worker.items()):
        lines.append(_worker_line(worker_id, figures, rates))
    per_task = stats.get("per_task") or {}
    if per_task:
        lines.append("  per task:")
    for task_id, figures in sorted(per_task.items()):
        lines.append(f"    task {task_id[:8]}  queued {figures.get('queued', 0)}  "
                     f"in flight {figures.get('in_flight', 0)}  "
                     f"completed {figures.get('completed', 0)}"
                     + (f"  deadlines hit {figures['deadlines_hit']}"
                        if figures.get("deadlines_hit") else ""))
    supervisors = stats.get("supervisors") or {}
    if supervisors:
        lines.append("  supervisors:")
    for peer_id, figures in sorted(supervisors.items()):
        lines.append(f"    supervisor {peer_id[:8]}  slots {figures.get('slots', 0)}  "
                     f"running {figures.get('running', 0)}  restarts {figures.get('restarts', 0)}")
    return lines


def format_status(stats: dict, address: str) -> str:
    """Human-readable broker statistics, as printed by ``pfmq status``.

    Parameters
    ----------
    stats : dict
        The figures of :meth:`Broker.stats`.
    address : str
        The broker's frontend address, for the heading.

    Returns
    -------
    text : str
        Totals, then a line per worker (requests answered, jobs held out of its capacity, results
        per second since it joined, time since it joined), per task and per supervisor of worker
        processes.
    """
    return "\n".join([f"broker at {address}", *status_lines(stats)])


class _Screen:
    """Writes frames: over the last one on a terminal, after it elsewhere."""

    def __init__(self, out: TextIO):
        self.out = out
        try:
            self.redraw = out.isatty()
        except (AttributeError, ValueError):  # a stream without a file behind it
            self.redraw = False
        self.drawn = False

    def _fit(self, lines: List[str]) -> List[str]:
        """Cut the frame to the terminal, so that moving home really reaches its first line."""
        try:
            columns, rows = os.get_terminal_size(self.out.fileno())
        except (AttributeError, ValueError, OSError):
            columns, rows = 0, 0
        if columns < 20 or rows < 4:  # a terminal that does not say its size (0 x 0)
            columns, rows = 80, 24
        if len(lines) > rows - 1:
            hidden = len(lines) - (rows - 2)
            lines = lines[:rows - 2] + [f"  ... {hidden} more lines (a taller window shows them)"]
        return [line[:columns] for line in lines]

    def show(self, lines: List[str]) -> None:
        if self.redraw:
            start = HOME if self.drawn else CLEAR_SCREEN + HOME
            text = start + "".join(line + CLEAR_LINE + "\n" for line in self._fit(lines))
            self.out.write(text + CLEAR_BELOW)
        else:
            self.out.write("\n".join(lines) + "\n\n")
        self.out.flush()
        self.drawn = True


def watch(query: Callable[[], dict], address: str, interval: float, *, as_json: bool = False,
          out: Optional[TextIO] = None, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Show a broker's figures every ``interval`` seconds, until an exception stops it.

    Parameters
    ----------
    query : callable
        Returns the broker's statistics (see :meth:`Broker.stats`); a ``TimeoutError`` is shown
        as "no answer" and the next refresh asks again (the broker may be restarting).
    address : str
        The broker's frontend address, for the heading.
    interval : float
        Seconds between refreshes (positive).
    as_json : bool
        Print each snapshot as one line of JSON instead (no answer: a line on stderr).
    out : file, optional
        Where to write; defaults to standard output.
    clock, sleep : callable
        The time and the waiting between refreshes.

    Raises
    ------
    ValueError
        If ``interval`` is not a positive number.
    """
    if not interval > 0 or interval == float("inf"):
        raise ValueError(f"the interval must be a positive number of seconds, not {interval!r}")
    screen = _Screen(out or sys.stdout)
    previous, previous_time = None, 0.0
    due = clock()
    while True:
        try:
            stats = query()
        except TimeoutError as exc:
            stats = None
            if as_json:
                print(f"pfmq status: {exc}", file=sys.stderr, flush=True)
            else:
                screen.show([_heading(address, interval), f"  no answer: {exc}"])
        if stats is not None:
            now = clock()
            if as_json:
                screen.out.write(json.dumps(stats, separators=(",", ":")) + "\n")
                screen.out.flush()
            else:
                rates = window_rates(previous, stats, now - previous_time)
                screen.show([_heading(address, interval), *status_lines(stats, rates)])
            previous, previous_time = stats, now
        # A fixed schedule, not a pause after each query; a slow answer skips ticks, not piles up.
        due = max(due + interval, clock())
        sleep(max(0.0, due - clock()))


def _heading(address: str, interval: float) -> str:
    return f"broker at {address}  {time.strftime('%H:%M:%S')}, every {interval:g} s"
