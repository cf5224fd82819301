"""Run the pfmq performance suite from a source checkout: ``python benchmarks/bench_pfmq.py``.

The same as ``pfmq bench``; see ``--help`` and :mod:`pythonflow.pfmq.bench`.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measure the checkout this script belongs to, not whichever copy happens to be installed: here,
# and in the fork server of the worker processes, a new interpreter that (before Python 3.13)
# sees PYTHONPATH but not this process's sys.path.
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

from pythonflow.pfmq.bench import main  # noqa: E402

if __name__ == "__main__":  # worker processes import this file too, as __mp_main__
    sys.exit(main())
