"""The pfmq benchmark harness: pfmq against ``multiprocessing.Pool`` and raw pyzmq.

Not part of the library: nothing in :mod:`pythonflow.pfmq` imports it. ``pfmq bench`` and
``python benchmarks/bench_pfmq.py`` call :func:`main`.

* :mod:`~pythonflow.pfmq.bench.suite`: the workloads W1 to W4 as pfmq runs them, the results
  table and the command line;
* :mod:`~pythonflow.pfmq.bench.baselines`: the same work written directly with pyzmq and with
  ``multiprocessing.Pool``;
* :mod:`~pythonflow.pfmq.bench.work`: what the workers compute;
* :mod:`~pythonflow.pfmq.bench.harness`: how every system is timed and checked.
"""
from .suite import WORKLOADS, Row, format_table, main, run

__all__ = ["WORKLOADS", "Row", "format_table", "main", "run"]
