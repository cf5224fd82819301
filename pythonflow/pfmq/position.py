"""The consumer's position in a task's requests: what ``state_dict()`` records, ``resume=`` reads.

A state is a small dict of JSON types, so that it can be saved with a model checkpoint::

    {"format": "pfmq.task/1", "ordered": True, "seed": 7, "position": 1200}
    {"format": "pfmq.task/1", "ordered": False, "seed": 7, "position": 1180,
     "delivered": [[1184, 1200], [1210, 1213]]}

``position`` is the number of requests from the start of the request source whose results the
consumer had when the state was taken: in ordered tasks exactly those before it. Unordered tasks
deliver as results complete, so ``position`` is the low-water mark (every request below it was
delivered) and ``delivered`` lists the runs ``[start, end)`` of requests above it that were.
Results come job by job, each job a run of consecutive requests, so there are at most about as
many runs as the jobs a task keeps in flight and in its cache, however many requests they hold.
A request that failed counts as delivered once the consumer was told of it (raised, returned or
skipped with ``errors=``), so it is not evaluated again on resume.
"""
import bisect
from typing import List, Optional, Tuple

#: The format of the states this module writes; a state of another format is refused.
FORMAT = "pfmq.task/1"
_KEYS = frozenset({"format", "ordered", "seed", "position"})  # and "delivered" if unordered


class Unordered:
    """The requests an unordered task delivered.

    Those below ``low``, the closed runs of ``runs`` (start -> end), all above ``low``, and the
    open run ``[start, end)``, the one the consumer is in. A result that continues the open run
    only moves ``end`` (the caller does that itself, on its hot path); any other closes the open
    run and opens a new one (:meth:`jump`), which happens about once per job.
    """

    __slots__ = ("low", "runs", "start", "end", "_closed", "_counted")

    def __init__(self, low: int, delivered=()):
        self.low = low
        self.runs = dict(delivered)
        self.start = self.end = low  # an empty run at the mark: extending it raises the mark
        self._closed = None  # the closed runs, merged and sorted, until the next jump
        self._counted = low + sum(end - start for start, end in self.runs.items())  # all closed

    def jump(self, index: int) -> None:
        """Count request ``index``, which does not continue the open run, as delivered."""
        if self.start == self.low:  # the open run was at the mark: raise the mark past it
            low, runs = self.end, self.runs
            while low in runs:  # each run is absorbed once
                low = runs.pop(low)
            self.low = low
        else:
            self.runs[self.start] = self.end
        self._counted += self.end - self.start
        self.start, self.end = index, index + 1
        self._closed = None

    def spans(self) -> Tuple[int, List[list]]:
        """The low-water mark and the runs above it, each ``[start, end)``, merged and sorted."""
        closed = self._closed
        if closed is None:
            closed = self._closed = _merged(sorted(self.runs.items()))
        start, end = self.start, self.end
        if start == self.low:  # the open run raises the mark, maybe up to the first closed run
            if closed and closed[0][0] == end:
                return closed[0][1], list(map(list, closed[1:]))
            return end, list(map(list, closed))
        below = above = bisect.bisect(closed, (start,))
        if below and closed[below - 1][1] == start:  # the open run continues the one before it
            below -= 1
            start = closed[below][0]
        if above < len(closed) and closed[above][0] == end:  # and the one after continues it
            end = closed[above][1]
            above += 1
        spans = list(map(list, closed[:below]))
        spans.append([start, end])
        spans.extend(map(list, closed[above:]))
        return self.low, spans

    def count(self) -> int:
        """How many requests were delivered.

        It reads no container, so another thread may ask (and get a moment's figure).
        """
        return self._counted + self.end - self.start


def _merged(runs: List[tuple]) -> List[tuple]:
    """Sorted runs with those that touch joined."""
    merged = []
    for start, end in runs:
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def state(seed: Optional[int], unordered: Unordered) -> dict:
    """The state of an unordered task (an ordered task's is built where it is taken, faster)."""
    low, spans = unordered.spans()
    return {"format": FORMAT, "ordered": False, "seed": seed, "position": low,
            "delivered": spans}


def parse(resume, ordered: bool, seed: Optional[int], requests=()) -> Tuple[int, list]:
    """The position and the delivered runs above it of a state that a task with these
    ``ordered`` and ``seed`` may resume from; ``ValueError`` for any other ``resume``, or for
    ``requests`` whose length shows they are not those the state was taken of."""
    if not isinstance(resume, dict) or resume.get("format") != FORMAT:
        got = f"format {resume.get('format')!r}" if isinstance(resume, dict) else (
            type(resume).__name__)
        raise ValueError(f"resume must be a state from task.state_dict() (format {FORMAT!r}), "
                         f"not {got}")
    missing, unknown = _KEYS - set(resume), set(resume) - _KEYS - {"delivered"}
    if missing:
        raise ValueError(f"resume is not a whole task state: it lacks {sorted(missing)}")
    if unknown:
        raise ValueError(f"resume is not a task state: it has keys {sorted(unknown)}")
    if not isinstance(resume["ordered"], bool):
        raise ValueError(f"resume['ordered'] must be true or false, not {resume['ordered']!r}")
    position, delivered = resume.get("position"), resume.get("delivered", [])
    if not _is_index(position):
        raise ValueError(f"resume['position'] must be a whole number of at least 0, not "
                         f"{position!r}")
    if not _are_runs(delivered, position):
        raise ValueError("resume['delivered'] must be a list of sorted, disjoint runs [start, "
                         "end) of request indices above resume['position']")
    if resume["ordered"] is not ordered:
        was = "an ordered" if resume["ordered"] else "an unordered"
        raise ValueError(f"resume is the state of {was} task: pass ordered={resume['ordered']} "
                         f"as that task had")
    if ordered and delivered:
        raise ValueError("resume is the state of an ordered task yet lists requests delivered "
                         "out of order")
    if resume["seed"] != seed or type(resume["seed"]) is not type(seed):
        raise ValueError(f"resume is the state of a task with seed={resume['seed']!r}, this "
                         f"one has seed={seed!r}: pass the seed of that task, or its results "
                         f"would differ")
    _check_length(requests, max([position, *(end for _, end in delivered)]))
    return position, [tuple(run) for run in delivered]


def _check_length(requests, needed: int) -> None:
    """Refuse requests with a length below the ``needed`` requests a resume state counts on."""
    try:
        length = len(requests)
    except TypeError:
        return  # an iterator: found out when it ends
    if length < needed:
        raise ValueError(f"resume is the state of a task over at least {needed} requests, these "
                         f"are {length}: pass the same requests as that task")


def _are_runs(runs, position: int) -> bool:
    if not isinstance(runs, list):
        return False
    last = position
    for run in runs:
        if not isinstance(run, (list, tuple)) or len(run) != 2 or not all(map(_is_index, run)):
            return False
        if not last < run[0] < run[1]:  # as spans() makes them: apart, above the mark
            return False
        last = run[1]
    return True


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
