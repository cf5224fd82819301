"""The consumer's position in a task's requests: what ``state_dict()`` records, ``resume=`` reads.

A state is a small dict of JSON types, so that it can be saved with a model checkpoint::

    {"format": "pfmq.task/1", "ordered": True, "seed": 7, "position": 1200}
    {"format": "pfmq.task/1", "ordered": False, "seed": 7, "position": 1180,
     "delivered": [1181, 1183, 1190]}

``position`` is the number of requests from the start of the request source whose results the
consumer had when the state was taken: in ordered tasks exactly those before it. Unordered tasks
deliver as results complete, so ``position`` is the low-water mark (every request below it was
delivered) and ``delivered`` lists the requests above it that were; it holds at most about as
many as the task keeps in flight and in its cache. A request that failed counts as delivered once
the consumer was told of it (raised, returned or skipped with ``errors=``), so it is not evaluated
again on resume.
"""
from typing import Optional, Tuple

#: The format of the states this module writes; a state of another format is refused.
FORMAT = "pfmq.task/1"
_KEYS = frozenset({"format", "ordered", "seed", "position"})  # and "delivered" if unordered


class Unordered:
    """The requests an unordered task delivered: all below ``low``, and those in ``above``."""

    __slots__ = ("low", "above")

    def __init__(self, low: int, above=()):
        self.low = low
        self.above = set(above)

    def mark(self, index: int) -> None:
        """Count request ``index`` as delivered."""
        if index != self.low:
            self.above.add(index)
            return
        low, above = index + 1, self.above
        while low in above:  # each index leaves the set once: constant time per result on average
            above.remove(low)
            low += 1
        self.low = low

    def count(self) -> int:
        """How many requests were delivered."""
        return self.low + len(self.above)


def state(ordered: bool, seed: Optional[int], position: int,
          unordered: Optional[Unordered] = None) -> dict:
    """A state in :data:`FORMAT`; ``unordered`` gives the position of an unordered task."""
    if unordered is None:
        return {"format": FORMAT, "ordered": ordered, "seed": seed, "position": position}
    return {"format": FORMAT, "ordered": ordered, "seed": seed, "position": unordered.low,
            "delivered": sorted(unordered.above)}


def parse(resume, ordered: bool, seed: Optional[int], requests=()) -> Tuple[int, list]:
    """The position and the delivered requests above it of a state that a task with these
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
    if not isinstance(delivered, list) or not all(
            _is_index(index) and index > position for index in delivered):
        raise ValueError("resume['delivered'] must be a list of request indices above "
                         "resume['position']")
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
    _check_length(requests, max([position - 1, *delivered]) + 1)
    return position, delivered


def _check_length(requests, needed: int) -> None:
    """Refuse requests with a length below the ``needed`` requests a resume state counts on."""
    try:
        length = len(requests)
    except TypeError:
        return  # an iterator: found out when it ends
    if length < needed:
        raise ValueError(f"resume is the state of a task over at least {needed} requests, these "
                         f"are {length}: pass the same requests as that task")


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
