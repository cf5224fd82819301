"""The parts of :mod:`pythonflow.pfmq.integrations.torch` that need no broker: numpy arrays to
tensors without copies, and the share of an epoch's requests that each data-parallel rank gets."""
import hashlib
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

__all__ = ["to_tensors", "rank_share", "map_leaves", "pinned", "stream_seed"]


def map_leaves(function: Callable, obj: Any) -> Any:
    """``obj`` with ``function`` applied to everything nested in its tuples, lists and dicts."""
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple keeps its type
        return type(obj)(*(map_leaves(function, item) for item in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_leaves(function, item) for item in obj)
    if isinstance(obj, dict):
        return {key: map_leaves(function, value) for key, value in obj.items()}
    return function(obj)


def _as_tensor(obj: Any) -> Any:
    if not isinstance(obj, np.ndarray) or obj.dtype.hasobject or obj.dtype.kind in "USV":
        return obj
    if not obj.flags.writeable or not obj.dtype.isnative:
        obj = obj.astype(obj.dtype.newbyteorder("="))  # a copy, writable, in native order
    try:
        return torch.from_numpy(obj)
    except TypeError:  # a dtype torch does not have
        return obj


def pinned(obj: Any) -> Any:
    """A tensor copied to page-locked memory; anything else as it is."""
    return obj.pin_memory() if isinstance(obj, torch.Tensor) else obj


def to_tensors(obj: Any) -> Any:
    """Turn the numpy arrays in ``obj`` (nested in tuples, lists and dicts) into tensors.

    A writable array becomes a tensor sharing its memory (``torch.from_numpy``): nothing is
    copied. A read-only array or one in foreign byte order is copied, since a tensor is always
    writable and in native order; arrays of a dtype that torch lacks (strings, objects) stay
    as they are.
    """
    return map_leaves(_as_tensor, obj)


def rank_share(requests: Iterable, rank: int, world_size: int,
               drop_last: bool = False) -> Iterator:
    """Yield the requests of ``rank``: request ``i`` goes to rank ``i % world_size``.

    Every rank gets the same number of requests: with ``drop_last`` the last round that does not
    reach every rank is dropped (each rank holds back one request until its round is complete);
    otherwise the ranks short of one repeat requests from the start, as ``DistributedSampler``
    pads. Reads ``requests`` lazily, keeping at most ``world_size`` of them.
    """
    head = []  # the first round, for padding
    held = None  # drop_last: this rank's request of the current round, until it is complete
    count = 0
    for index, request in enumerate(requests):
        count = index + 1
        if index < world_size and not drop_last:
            head.append(request)
        if index % world_size == rank:
            if not drop_last:
                yield request
                continue
            held = request
        if drop_last and index % world_size == world_size - 1 and held is not None:
            yield held
            held = None
    short = count % world_size
    if short and not drop_last and rank >= short:
        yield head[(rank - short) % count]


def stream_seed(seed: int, epoch: int, rank: int, worker: int) -> int:
    """The task seed of one loader worker of one rank in one epoch, from the dataset's seed."""
    digest = hashlib.sha256(f"pfmq-torch:{seed}:{epoch}:{rank}:{worker}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # a Task seed is below 2**63
