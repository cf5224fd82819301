"""Run the soak from a source checkout: ``python benchmarks/soak.py --duration 600``.

An endless ordered stream over TCP while worker processes and the broker are killed, links are
cut (in network namespaces, where this machine allows them), requests hang and workers keep
allocating; see ``--help`` and :mod:`pythonflow.pfmq.bench.soak`. Prints a table and exits with
status 1 unless nothing was lost or duplicated and the pool is full again at the end.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # soak this checkout; its processes get it through PYTHONPATH

from pythonflow.pfmq.bench.soak_report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
