"""Bridges between pfmq and other distributed-computing tools.

Each module here imports its tool only when it is used, so that the library itself does not
depend on it: :mod:`pythonflow.pfmq.integrations.ipyparallel` starts pfmq workers on the
engines of an ipyparallel cluster (``pip install 'pythonflow[ipyparallel]'``), and
:mod:`pythonflow.pfmq.integrations.torch` (also ``pythonflow.pfmq.torch``) is a PyTorch
``IterableDataset`` over pfmq results (``pip install torch==2.13.0``).
:mod:`pythonflow.pfmq.integrations.prometheus` serves a broker's figures to Prometheus
(``pip install 'pythonflow[prometheus]'``).
"""
