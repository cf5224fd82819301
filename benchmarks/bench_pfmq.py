"""Run the pfmq performance suite from a source checkout: ``python benchmarks/bench_pfmq.py``.

The same as ``pfmq bench``; see ``--help`` and :mod:`pythonflow.pfmq.bench`.
"""
import os
import sys

# Measure the checkout this script belongs to, not whichever copy happens to be installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pythonflow.pfmq.bench import main  # noqa: E402

if __name__ == "__main__":  # worker processes import this file too, as __mp_main__
    sys.exit(main())
