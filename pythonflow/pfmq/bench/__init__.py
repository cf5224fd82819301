"""The pfmq benchmark harness: pfmq against ``multiprocessing.Pool`` and raw pyzmq.

Not part of the library: nothing in :mod:`pythonflow.pfmq` imports it. ``pfmq bench`` and
``python benchmarks/bench_pfmq.py`` call :func:`main`.

* :mod:`~pythonflow.pfmq.bench.suite`: the workloads W1 to W4 as pfmq runs them, the results
  table and the command line;
* :mod:`~pythonflow.pfmq.bench.baselines`: the same work written directly with pyzmq and with
  ``multiprocessing.Pool``;
* :mod:`~pythonflow.pfmq.bench.work`: what the workers compute;
* :mod:`~pythonflow.pfmq.bench.harness`: how every system is timed and checked;
* :mod:`~pythonflow.pfmq.bench.results`: the rows of the table, and their medians over rounds;
* :mod:`~pythonflow.pfmq.bench.pf030`: Pythonflow 0.3.0 as a baseline of W4, in processes of its
  own (:mod:`~pythonflow.pfmq.bench.pf030_peer`).

The broker-scale benchmark (``python benchmarks/bench_scale.py``) is
:mod:`~pythonflow.pfmq.bench.scale`: one broker with up to a thousand workers, simulated many to
a process by :mod:`~pythonflow.pfmq.bench.simulate`; its report and command line are in
:mod:`~pythonflow.pfmq.bench.scale_report`.

:mod:`~pythonflow.pfmq.bench.netns` puts processes on hosts of their own (network namespaces on
a bridge) whose links can be cut, for the partition tests and the soak
(``python benchmarks/soak.py``): :mod:`~pythonflow.pfmq.bench.soak` runs it, with its fault kinds
and settings in :mod:`~pythonflow.pfmq.bench.soak_settings`, its processes and hosts in
:mod:`~pythonflow.pfmq.bench.soak_hosts` and :mod:`~pythonflow.pfmq.bench.soak_peer`, its table
and command line in :mod:`~pythonflow.pfmq.bench.soak_report`.
"""
from .results import Row, format_table
from .suite import WORKLOADS, main, run

__all__ = ["WORKLOADS", "Row", "format_table", "main", "run"]
