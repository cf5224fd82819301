"""A pfmq worker process for fault tests: ``python fault_worker.py ADDRESS TARGET [options]``.

SIGTERM cancels the worker gracefully (unstarted requests go back to the broker); SIGKILL is what
the tests use to simulate a crash.
"""
import argparse
import os
import random
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pythonflow import pfmq  # noqa: E402


def sleepy(request):
    """Sleep ``request['sleep']`` seconds and return ``request['value']``."""
    time.sleep(request.get("sleep", 0))
    return request["value"]


def poison(request):
    """Crash the whole process on a poisoned request, as a segfault in a C extension would."""
    if request == "poison":
        os.kill(os.getpid(), signal.SIGKILL)
    return request


def seeded(request):
    """Random numbers drawn on the worker; with a task seed they depend on the request only."""
    import numpy as np

    time.sleep(request.get("sleep", 0))
    return (random.random(), float(np.random.uniform()))


TARGETS = {"sleepy": sleepy, "poison": poison, "seeded": seeded}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--heartbeat", type=float, default=0.1)
    args = parser.parse_args()
    worker = pfmq.Worker(TARGETS[args.target], args.address, prefetch=args.prefetch,
                         heartbeat_interval=args.heartbeat)
    signal.signal(signal.SIGTERM, worker.handle_signal)  # takes no lock, unlike a new thread
    with worker:
        worker.process_requests()


if __name__ == "__main__":
    main()
