"""A process of the Pythonflow 0.3.0 baseline: ``python -I pf030_peer.py DIR ADDRESS ROLE``.

Run as a script by :mod:`.pf030`, never imported by this package: it imports the ``pythonflow``
package in ``DIR`` (Pythonflow 0.3.0), so it must not import ours. It loads the benchmark's work
and timing (``work.py``, ``harness.py``, which import neither) from their files, so that pfmq and
the baseline time the same calls the same way.

``worker``
    Serves ``divide_request`` on ``ADDRESS`` (the broker's backend) until terminated.
``client COUNT``
    Runs a broker with its backend on ``ADDRESS`` and times ``COUNT`` sequential ``apply`` calls
    after a warm-up; prints ``[p50, p99]`` in milliseconds as JSON.
"""
import collections
import collections.abc
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REQUEST = {"fetches": "z", "context": {"x": 1, "y": 2}}  # as pfmq's W4


def load(name: str, filename: str):
    """Import one of the benchmark's self-contained modules from its file, as ``name``."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_pythonflow(directory: str):
    """Import the Pythonflow in ``directory``, with the aliases its 2019 code needs."""
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
        if not hasattr(collections, name):  # removed in Python 3.10
            setattr(collections, name, getattr(collections.abc, name))
    sys.path.insert(0, directory)
    import pythonflow
    from pythonflow import pfmq

    if not os.path.abspath(pythonflow.__file__).startswith(os.path.join(directory, "")):
        raise SystemExit(f"imported {pythonflow.__file__}, not the Pythonflow in {directory}")
    return pfmq


def main(argv) -> None:
    """Play the role ``argv`` names (see the module's docstring)."""
    directory, address, role, *rest = argv
    work = load("pf030_work", "work.py")
    pfmq = import_pythonflow(os.path.abspath(directory))
    if role == "worker":
        pfmq.Worker(work.divide_request, address).run()
        return
    harness = load("pf030_harness", "harness.py")
    # Each of its apply calls opens two sockets that only the garbage collector closes: past
    # ZeroMQ's default of 1023 sockets a run would fail with "Too many open files".
    import zmq

    zmq.Context.instance().set(zmq.MAX_SOCKETS, 1 << 16)
    broker = pfmq.Broker(address)
    broker.run_async()
    figures = harness.percentiles(lambda: work.check_half(broker.apply(REQUEST)), int(rest[0]))
    print(json.dumps([float(value) for value in figures]), flush=True)
    os._exit(0)  # its broker thread and sockets need no orderly end


if __name__ == "__main__":
    main(sys.argv[1:])
