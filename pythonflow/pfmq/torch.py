"""PyTorch data loading from pfmq workers: :class:`IterableDataset` (needs ``torch``).

The implementation lives in :mod:`pythonflow.pfmq.integrations.torch`; this module gives it the
short name ``pythonflow.pfmq.torch.IterableDataset``. Importing it imports torch, which
``pythonflow.pfmq`` itself never does.
"""
from .integrations.torch import IterableDataset, rank_share, to_tensors

__all__ = ["IterableDataset", "rank_share", "to_tensors"]
