"""The processes of the soak (:mod:`.soak`) that are not ``pfmq`` itself, and what workers run.

Workers serve :func:`build_graph` (``pfmq worker pythonflow.pfmq.bench.soak_peer:build_graph``):
each request is ``{"index": i, "hang": bool, "leak": bytes}`` and gives back ``i``. A request
marked ``hang`` never ends (the broker's deadline must give it up); one with ``leak`` > 0 turns
its worker process into one that keeps that many more bytes with every request it evaluates
from then on, until its memory limit ends it.

The consumer and the observer run on hosts of their own (network namespaces, see
:mod:`.netns`), so they are processes that talk over stdin and stdout::

    python -m pythonflow.pfmq.bench.soak_peer consume FRONTEND [options]
    python -m pythonflow.pfmq.bench.soak_peer observe FRONTEND

``consume`` evaluates an endless ordered stream and keeps its :class:`Ledger`. It reads commands
from stdin: ``hang`` and ``leak BYTES`` mark the next request so, ``stop`` (or the end of stdin)
ends the stream. It prints one JSON object per line: ``{"event": "serving"}`` at the first
result, ``{"event": "progress", "done": n}`` about every second, and at the end
``{"event": "report", ...}`` with the ledger's figures (``stalled`` if no outcome came within
``--grace`` seconds of the stop, and the stream was ended without one). ``observe`` answers each
line of stdin with the broker's statistics as one line of JSON (``null`` when the broker does not
answer).
"""
import argparse
import collections
import itertools
import json
import random
import sys
import threading
import time
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple

import pythonflow as pf

from ..task import Task, query_status

#: Longest sleep of an ordinary request, in seconds: a little waiting, as for I/O.
WORK_SECONDS = 0.004
#: What a leaking worker process keeps (module state: it lives as long as the process).
_KEPT: List[bytes] = []
_LEAK_STEP = [0]


def work(index: int, hang: bool, leak: int) -> int:
    """The soak's transformation: ``index`` after a short sleep (see the module docstring)."""
    if hang:
        while True:  # "forever": only the end of the process stops it
            time.sleep(3600)
    if leak:
        _LEAK_STEP[0] = leak
    if _LEAK_STEP[0]:
        _KEPT.append(b"\x01" * _LEAK_STEP[0])  # written to, so resident, not just reserved
    time.sleep(random.uniform(0, WORK_SECONDS))
    return index


def build_graph() -> pf.Graph:
    """The soak graph: ``result`` is :func:`work` of the placeholders ``index``, ``hang`` and
    ``leak``."""
    with pf.Graph() as graph:
        pf.func_op(work, pf.placeholder("index"), pf.placeholder("hang"),
                   pf.placeholder("leak")).set_name("result")
    return graph


class Ledger:
    """Accounts for the outcomes of an ordered stream whose results are their request's index.

    Every index must come back exactly once and in order. A request marked to hang must come
    back as a ``TimeoutError`` (it is *timed out*); any other exception is a *failure*. An index
    skipped is *lost*, one seen again *duplicated*.
    """

    def __init__(self):
        self.expected = 0  # the index the next outcome should be
        self.done = self.lost = self.duplicated = self.timed_out = self.failed = 0
        self.hung = set()  # indices of the requests marked to hang
        self.errors: List[str] = []  # the first few unexpected exceptions, for the report

    def record(self, outcome: Any) -> None:
        """Account for the next outcome of the stream (a result, or an exception in its place)."""
        if isinstance(outcome, BaseException):
            # The stream is ordered: an exception stands in the place of the expected index.
            if self.expected in self.hung and isinstance(outcome, TimeoutError):
                self.timed_out += 1
            else:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(f"{self.expected}: {type(outcome).__name__}: {outcome}")
            self.expected += 1
            return
        if outcome < self.expected:
            self.duplicated += 1
            return
        self.lost += outcome - self.expected
        self.expected = outcome + 1
        self.done += 1

    def figures(self) -> Dict[str, Any]:
        """The counts, as the consumer reports them."""
        return {"done": self.done, "lost": self.lost, "duplicated": self.duplicated,
                "timed_out": self.timed_out, "failed": self.failed, "hung": len(self.hung),
                "errors": list(self.errors)}


class Requests:
    """The endless requests of the consumer; :meth:`mark` makes the next one hang or leak.

    Iterated in the task's reader thread while the command thread marks: a deque takes both.
    """

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.marks: Deque[Tuple[str, int]] = collections.deque()
        self.leaks = 0

    def mark(self, fault: str, amount: int = 0) -> None:
        """Make the next request not yet read hang (``"hang"``) or leak ``amount`` bytes."""
        self.marks.append((fault, amount))

    def __iter__(self) -> Iterator[dict]:
        for index in itertools.count():
            hang, leak = False, 0
            if self.marks:
                fault, amount = self.marks.popleft()
                hang, leak = fault == "hang", amount if fault == "leak" else 0
                if hang:
                    self.ledger.hung.add(index)  # before it is sent, so before its outcome
                self.leaks += bool(leak)
            yield {"fetches": "result",
                   "context": {"index": index, "hang": hang, "leak": leak}}


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _read_commands(requests: Requests, stop: threading.Event, stopped: threading.Event,
                   task: Task, grace: float) -> None:
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["hang"]:
            requests.mark("hang")
        elif words[:1] == ["leak"] and len(words) == 2:
            requests.mark("leak", int(words[1]))
        elif words[:1] == ["stop"]:
            break
    stop.set()
    if not stopped.wait(grace):  # no outcome for that long: the stream stalled; end it anyway
        task.cancel(timeout=5)


def consume(args: argparse.Namespace) -> int:
    """Run the consumer until told to stop; print its report (see the module docstring)."""
    ledger, stop, stopped = Ledger(), threading.Event(), threading.Event()
    requests = Requests(ledger)
    options = {"request_timeout": args.request_timeout} if args.request_timeout else {}
    task = Task(iter(requests), args.frontend, timeout=args.timeout,
                num_retries=args.num_retries, heartbeat_interval=args.heartbeat_interval,
                errors="return", **options)
    threading.Thread(target=_read_commands, args=(requests, stop, stopped, task, args.grace),
                     daemon=True).start()
    started, error, next_progress, stalled = None, None, 0.0, True
    try:
        for outcome in task:
            ledger.record(outcome)
            now = time.monotonic()
            if started is None:
                started = now
                _emit(event="serving")
            if now >= next_progress:
                _emit(event="progress", done=ledger.done)
                next_progress = now + 1.0
            if stop.is_set():
                stalled = False  # an outcome came after the stop: the stream was flowing
                break
    except Exception as exc:  # the stream ended early: the report says how
        error = f"{type(exc).__name__}: {exc}"
    finally:
        stopped.set()
        task.cancel(timeout=5)
    seconds = time.monotonic() - started if started is not None else 0.0
    _emit(event="report", seconds=seconds, error=error, leaks=requests.leaks, stalled=stalled,
          **ledger.figures())
    return 0 if error is None else 1


def observe(args: argparse.Namespace) -> int:
    """Answer each line of stdin with the broker's statistics (JSON, ``null`` if silent)."""
    for _ in sys.stdin:
        try:
            stats: Optional[dict] = query_status(args.frontend, timeout=1.0)
        except TimeoutError:
            stats = None
        print(json.dumps(stats), flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The command line of the soak's peers (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    roles = parser.add_subparsers(dest="role", required=True)
    consumer = roles.add_parser("consume")
    consumer.add_argument("frontend")
    consumer.add_argument("--timeout", type=float, default=5.0)
    consumer.add_argument("--num-retries", type=int, default=12)
    consumer.add_argument("--heartbeat-interval", type=float, default=0.25)
    consumer.add_argument("--request-timeout", type=float, default=None)
    consumer.add_argument("--grace", type=float, default=10.0,
                          help="seconds a stream may stay silent after stop before it is ended")
    observer = roles.add_parser("observe")
    observer.add_argument("frontend")
    args = parser.parse_args(argv)
    return consume(args) if args.role == "consume" else observe(args)


if __name__ == "__main__":
    sys.exit(main())
