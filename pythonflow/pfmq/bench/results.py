"""The rows of the pfmq benchmark's results table, and the medians of several rounds of them."""
import math
import statistics
from typing import Callable, List, Optional, Sequence, Tuple

#: A target: its text (``">= 1.0x"``, ``"pfmq >= 0.97"``) and a test of a :class:`Row`.
Target = Tuple[str, Callable[["Row"], bool]]


class Row:
    """One line of the results table: a pfmq figure, a figure to compare it with, a target.

    Parameters
    ----------
    workload, measure : str
        E.g. ``"W1"`` and ``"results/s"``.
    pfmq, other : float
        The figures of pfmq and of ``baseline``.
    baseline : str
        What pfmq is compared with.
    target : str
        The goal, e.g. ``">= 1.0x"``; empty if none.
    met : bool, optional
        Whether pfmq meets ``target``.
    test : callable, optional
        Tells whether a row meets ``target``; :func:`medians` judges the median row with it.
    """

    def __init__(self, workload: str, measure: str, pfmq: float, baseline: str, other: float,
                 target: str = "", met: Optional[bool] = None,
                 test: Optional[Callable[["Row"], bool]] = None):
        self.workload, self.measure, self.baseline = workload, measure, baseline
        self.pfmq, self.other, self.target, self.met = pfmq, other, target, met
        self.test = test
        if test is not None and met is None:
            self.met = bool(test(self))

    @property
    def ratio(self) -> float:
        """``pfmq / other``."""
        return self.pfmq / self.other if self.other else math.inf

    @property
    def key(self) -> tuple:
        """What a row of one round shares with the same row of another."""
        return self.workload, self.measure, self.baseline

    def as_dict(self) -> dict:
        """The row as plain data for JSON."""
        return {"workload": self.workload, "measure": self.measure, "pfmq": self.pfmq,
                "baseline": self.baseline, "other": self.other, "ratio": self.ratio,
                "target": self.target, "met": self.met}


def compare(workload: str, measure: str, pfmq_value: float, others: Sequence[tuple],
            target: Optional[Target] = None) -> List[Row]:
    """Rows comparing ``pfmq_value`` with each ``(baseline, value)``; the first gets ``target``."""
    rows = [Row(workload, measure, pfmq_value, baseline, value) for baseline, value in others]
    if target is not None:
        rows[0].target, rows[0].test = target
        rows[0].met = bool(rows[0].test(rows[0]))
    return rows


def medians(rounds: Sequence[Sequence[Row]]) -> List[Row]:
    """One row per row of the first round: the medians of both figures over ``rounds``, judged
    against the row's target again (a round may lack a row: its measurement failed)."""
    merged = []
    for first in rounds[0]:
        same = [row for rows in rounds for row in rows if row.key == first.key]
        merged.append(Row(first.workload, first.measure,
                          statistics.median(row.pfmq for row in same), first.baseline,
                          statistics.median(row.other for row in same), first.target,
                          test=first.test))
    return merged


def number(value: float) -> str:
    """A figure as the tables print it: thousands grouped, or three significant places."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def format_table(rows: Sequence[Row]) -> str:
    """Return the results as a plain-text table."""
    lines = [("workload", "measure", "pfmq", "compared with", "other", "pfmq/other", "target")]
    for row in rows:
        verdict = "" if row.met is None else (" met" if row.met else " MISSED")
        lines.append((row.workload, row.measure, number(row.pfmq), row.baseline,
                      number(row.other), f"{row.ratio:.2f}x", row.target + verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
            for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)
