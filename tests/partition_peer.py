"""The pfmq peers of the partition tests that are not the ``pfmq`` command itself.

Run inside a network namespace (see :mod:`pythonflow.pfmq.bench.netns`)::

    python partition_peer.py consume FRONTEND COUNT [--timeout S] [--num-retries N]
        [--heartbeat-interval S]
    python partition_peer.py observe FRONTEND

``consume`` evaluates ``range(COUNT)`` with an ordered task and prints ``result INDEX VALUE`` for
each result as it arrives, then ``done`` (or ``error TYPE: MESSAGE``). ``observe`` answers each
line read from stdin with the broker's statistics as one line of JSON (``null`` when the broker
does not answer). Workers serve :func:`slow_double` (``pfmq worker partition_peer:slow_double``).
"""
import argparse
import json
import sys
import time

from pythonflow import pfmq

#: Seconds each request takes: long enough that a stream is still running when a link is cut.
REQUEST_SECONDS = 0.01


def slow_double(request: int) -> int:
    """Sleep :data:`REQUEST_SECONDS`, then return ``2 * request``."""
    time.sleep(REQUEST_SECONDS)
    return 2 * request


def consume(args) -> int:
    task = pfmq.Task(range(args.count), args.frontend, timeout=args.timeout,
                     num_retries=args.num_retries, heartbeat_interval=args.heartbeat_interval)
    try:
        for index, value in enumerate(task):
            print(f"result {index} {value}", flush=True)
    except Exception as exc:  # reported to the test, which decides
        print(f"error {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
        return 1
    finally:
        task.cancel(timeout=5)
    print("done", flush=True)
    return 0


def observe(args) -> int:
    for _ in sys.stdin:
        try:
            stats = pfmq.query_status(args.frontend, timeout=1.0)
        except TimeoutError:
            stats = None
        print(json.dumps(stats), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True)
    consumer = roles.add_parser("consume")
    consumer.add_argument("frontend")
    consumer.add_argument("count", type=int)
    consumer.add_argument("--timeout", type=float, default=1.0)
    consumer.add_argument("--num-retries", type=int, default=10)
    consumer.add_argument("--heartbeat-interval", type=float, default=0.2)
    observer = roles.add_parser("observe")
    observer.add_argument("frontend")
    args = parser.parse_args()
    return consume(args) if args.role == "consume" else observe(args)


if __name__ == "__main__":
    sys.exit(main())
