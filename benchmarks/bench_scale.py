"""Run the broker-scale benchmark from a source checkout: ``python benchmarks/bench_scale.py``.

Up to a thousand simulated workers and a hundred tasks on one broker; see ``--help`` and
:mod:`pythonflow.pfmq.bench.scale`.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measure this checkout, here and in the fork server of the peer processes (a new interpreter
# that sees PYTHONPATH, not this process's sys.path).
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

from pythonflow.pfmq.bench.scale_report import main  # noqa: E402

if __name__ == "__main__":  # the fork server may import this file too, as __mp_main__
    sys.exit(main())
