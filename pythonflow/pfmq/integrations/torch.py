"""A PyTorch ``IterableDataset`` whose items are evaluated by pfmq workers.

.. code-block:: python

    from torch.utils.data import DataLoader
    from pythonflow import pfmq
    from pythonflow.pfmq.torch import IterableDataset

    def requests(epoch):
        return [{'fetches': ['rotated_image', 'label'], 'context': {'filename': f, 'label': y}}
                for f, y in samples]

    with pfmq.LocalCluster(graph, num_workers=8) as cluster:
        dataset = IterableDataset(cluster, requests, seed=0, batch_size=32)
        for epoch in range(10):
            dataset.set_epoch(epoch)
            for images, labels in DataLoader(dataset, batch_size=None):
                ...  # a checkpoint may hold dataset.state_dict()

Each epoch is one :class:`~pythonflow.pfmq.Task` over that epoch's requests: the workers
evaluate them while the loop trains, and numpy arrays in the results become tensors that share
their memory (``torch.from_numpy``). With ``seed=`` the random numbers of request ``i`` of an
epoch depend only on ``(seed, epoch, rank, loader worker, i)``, so an epoch is reproducible and
differs from the others. :meth:`IterableDataset.state_dict` says where the consumer is; a dataset
given that state with :meth:`~IterableDataset.load_state_dict` continues exactly there, which is
what torchdata's ``StatefulDataLoader`` and ``torchdata.nodes.IterableWrapper`` call.

Under ``torch.distributed`` (or with ``rank=``/``world_size=``), request ``i`` of an epoch goes to
rank ``i % world_size``, and every rank yields the same number of items: ``drop_last=True`` drops
the last incomplete round of requests, otherwise the ranks short of one item repeat requests from
the start of the epoch, as ``DistributedSampler`` does. Loader worker processes of a
``DataLoader(num_workers=n)`` split their rank's share again, item ``j`` to worker ``j % n``; they
reach the broker through its frontend address, which must then be ``ipc://`` or ``tcp://``.
"""
import inspect
import logging
import os
import weakref
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Tuple, Union

import torch
import torch.distributed
import torch.utils.data

from ..broker import Broker
from ..cluster import LocalCluster
from ..task import Task
from ..transport import check_address
from .torch_helpers import map_leaves, pinned, rank_share, stream_seed, to_tensors

LOGGER = logging.getLogger(__name__)

__all__ = ["IterableDataset", "rank_share", "to_tensors"]

#: Marks the states this module writes, so that a foreign dict is refused.
STATE_FORMAT = "pythonflow.pfmq.torch/1"
# Task options the dataset sets itself.
_OWN_OPTIONS = {"requests", "frontend_address", "seed", "resume", "start", "context"}
_TASK_OPTIONS = set(inspect.signature(Task.__init__).parameters) - {"self"} - _OWN_OPTIONS


class _Remote(NamedTuple):
    """How a copy of the dataset in another process reaches the broker."""

    address: str
    options: dict


def _frontend(source) -> Tuple[str, dict]:
    """The frontend address of ``source`` and the options a Task needs to talk to it."""
    if isinstance(source, _Remote):
        return source.address, source.options
    if isinstance(source, str):
        return source, {}
    broker = source.broker if isinstance(source, LocalCluster) else source
    if broker is None:
        raise RuntimeError("the LocalCluster is not running: iterate inside its with block")
    options = {"key": broker.key, "heartbeat_interval": broker.heartbeat_interval,
               "max_message_size": broker.max_message_size}
    if broker.curve is not None:
        options["curve"] = broker.curve.client()
    return broker.frontend_address, options


def _is_count(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_arguments(source, requests, seed, rank, world_size, batch_size, task_options):
    """Raise a one-line ``TypeError`` or ``ValueError`` for the first bad argument."""
    if isinstance(source, str):
        check_address(source)
    elif not isinstance(source, (Broker, LocalCluster)):
        raise TypeError(f"source must be a pfmq Broker, a LocalCluster or a frontend address, "
                        f"not {type(source).__name__}")
    if not callable(requests):
        if not isinstance(requests, Iterable):
            raise TypeError(f"requests must be a callable requests(epoch) or an iterable, "
                            f"not {type(requests).__name__}")
        if iter(requests) is requests:
            raise TypeError("requests is a one-shot iterator that the second epoch would find "
                            "empty: pass a list or a function requests(epoch) instead")
    if seed is not None and not _is_count(seed, 0):
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if world_size is not None:
        if not _is_count(world_size, 1):
            raise ValueError(f"world_size must be an integer of at least 1, not {world_size!r}")
        if not (_is_count(rank, 0) and rank < world_size):
            raise ValueError(f"rank must be an integer in [0, {world_size}), not {rank!r}")
    if batch_size is not None and not _is_count(batch_size, 1):
        raise ValueError(f"batch_size must be an integer of at least 1, not {batch_size!r}")
    if "resume" in task_options:
        raise TypeError("resume is not a task option here: give the saved state to "
                        "load_state_dict()")
    unknown = sorted(set(task_options) - _TASK_OPTIONS)
    if unknown:
        raise TypeError(f"unknown task options {unknown}: see pythonflow.pfmq.Task")


class IterableDataset(torch.utils.data.IterableDataset):
    """The results of pfmq requests as a ``torch.utils.data.IterableDataset``.

    Parameters
    ----------
    source : Broker, LocalCluster or str
        Where the requests are evaluated: a running broker or local cluster of this process, or
        a broker's frontend address.
    requests : callable or iterable
        ``requests(epoch)`` returning the requests of an epoch, or an iterable (a list, say) used
        for every epoch. A one-shot iterator is refused: it would be empty from the second epoch.
    seed : int, optional
        Makes the workers' random numbers reproducible: request ``i`` of an epoch is seeded from
        ``(seed, epoch, rank, loader worker, i)``. Without it they are not seeded.
    rank, world_size : int, optional
        This process's place among the data-parallel processes; by default taken from
        ``torch.distributed`` when it is initialised, else rank 0 of 1.
    drop_last : bool
        Every rank yields the same number of items: drop the requests of the last incomplete
        round of ranks (and a last incomplete batch), instead of repeating requests from the
        start of the epoch for the ranks short of one.
    batch_size : int, optional
        Group this many results into a batch with ``collate_fn``.
    collate_fn : callable, optional
        Makes a batch of a list of results; by default ``torch.utils.data.default_collate``.
        Without ``batch_size`` it is applied to each result (say, the list that a request with
        ``contexts`` gives).
    pin_memory : bool
        Pin the tensors in page-locked memory for faster copies to a GPU; without CUDA it does
        nothing.
    **task_options
        Keyword arguments for :class:`~pythonflow.pfmq.Task` such as ``timeout``,
        ``cache_size`` or ``errors`` (with ``errors='skip'``, ranks may yield different counts).

    Notes
    -----
    :meth:`state_dict` is the position of the consumer in the current epoch (items yielded, and
    the task's :meth:`~pythonflow.pfmq.Task.state_dict`), cheap to take at every step in the
    thread that iterates. A dataset given it with :meth:`load_state_dict` yields, at its next
    iteration, exactly the items that the saved one would have yielded next, whatever the
    number of pfmq workers; for that, ``requests(epoch)`` must give the same requests each time
    it is called for an epoch. The state of an epoch that was iterated to its end resumes as an
    empty iteration; the iteration after it goes over the epoch again, so call
    :meth:`set_epoch` between epochs.
    """

    def __init__(self, source: Union[Broker, LocalCluster, str],
                 requests: Union[Callable[[int], Iterable], Iterable], *,
                 seed: Optional[int] = None, rank: Optional[int] = None,
                 world_size: Optional[int] = None, drop_last: bool = False,
                 batch_size: Optional[int] = None, collate_fn: Optional[Callable] = None,
                 pin_memory: bool = False, **task_options):
        super().__init__()
        _check_arguments(source, requests, seed, rank, world_size, batch_size, task_options)
        if pin_memory and not torch.cuda.is_available():
            LOGGER.debug("pin_memory=True does nothing here: CUDA is not available")
            pin_memory = False
        self.source = source
        self.requests = requests
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.pin_memory = pin_memory
        self.task_options = task_options
        self.epoch = 0
        self._pid = os.getpid()  # the process whose broker objects this dataset may use
        self._pending = None  # a loaded state, until the next iteration takes it
        # The latest iteration, weakly: the loop that iterates owns it, and when the loop lets
        # go of it its task is cancelled at once. What it left at its end is kept in _last.
        self._current = lambda: None
        self._last = None

    # -- epochs and placement --------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration go over epoch ``epoch`` (its requests and its seeds).

        A state loaded for another epoch is dropped; one for this epoch is kept.
        """
        if not _is_count(epoch, 0):
            raise ValueError(f"epoch must be a non-negative integer, not {epoch!r}")
        self.epoch = epoch
        if self._pending is not None and self._pending["epoch"] != epoch:
            self._pending = None

    def placement(self) -> dict:
        """This copy's share: ``rank`` of ``world_size``, loader ``worker`` of ``num_workers``."""
        rank, world_size = self.rank, self.world_size
        if rank is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
            else:
                rank, world_size = 0, 1
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return {"rank": rank, "world_size": world_size, "worker": worker,
                "num_workers": num_workers}

    def epoch_requests(self, epoch: int, placement: Optional[dict] = None) -> Iterator:
        """The requests this copy evaluates in ``epoch`` (by default at its :meth:`placement`)."""
        placement = placement or self.placement()
        requests = self.requests(epoch) if callable(self.requests) else self.requests
        if not isinstance(requests, Iterable):
            raise TypeError(f"requests({epoch}) returned {type(requests).__name__}, not an "
                            "iterable of requests")
        share = rank_share(requests, placement["rank"], placement["world_size"], self.drop_last)
        workers = placement["num_workers"]
        if workers == 1:
            return share
        return (request for index, request in enumerate(share)
                if index % workers == placement["worker"])

    # -- iteration -------------------------------------------------------------------------------

    def __iter__(self) -> "_Iteration":
        current = self._current()
        if current is not None:
            current.close()  # one iteration at a time: its task's work is not needed
        state, self._pending = self._pending, None
        placement = self.placement()
        if state is not None:
            self._check_state(state, placement)
        iteration = _Iteration(self, self.epoch, placement, state)
        self._current = weakref.ref(iteration)
        return iteration

    def _open_task(self, requests: Iterator, seed: Optional[int], resume: Optional[dict]) -> Task:
        options = dict(self.task_options, seed=seed)
        if resume is not None:
            options["resume"] = resume
        source = self.source
        if isinstance(source, (Broker, LocalCluster)) and os.getpid() == self._pid:
            return source.imap(requests, **options)
        address, connection = _frontend(source)
        if address.startswith("inproc://") and os.getpid() != self._pid:
            raise ValueError(f"a DataLoader worker process cannot reach the frontend {address}: "
                             "give the Broker or LocalCluster an ipc:// or tcp:// "
                             "frontend_address, or use num_workers=0")
        return Task(requests, address, **connection, **options)

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Where the consumer is: a small JSON-serialisable dict for :meth:`load_state_dict`."""
        if self._pending is not None:
            return dict(self._pending)
        current = self._current()
        if current is not None and current.epoch == self.epoch:
            return current.state_dict()
        if self._last is not None and self._last["epoch"] == self.epoch:
            return dict(self._last)  # where the latest iteration ended
        return self._state(self.epoch, self.placement(), 0, False, None)

    def load_state_dict(self, state: dict) -> None:
        """Continue, at the next iteration, where the dataset that saved ``state`` stopped.

        The epoch becomes the state's. The placement (rank, world size, loader worker), seed,
        ``drop_last`` and ``batch_size`` must be those of the dataset that saved it; the number
        of pfmq workers may differ.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("not a state of a pfmq torch IterableDataset: pass what its "
                             "state_dict() returned")
        if not _is_count(state.get("epoch"), 0) or not _is_count(state.get("yielded"), 0):
            raise ValueError("the state's epoch and yielded must be non-negative integers")
        self.epoch = state["epoch"]
        self._pending = dict(state)

    def _state(self, epoch, placement, yielded, finished, task_state) -> dict:
        return {"format": STATE_FORMAT, "epoch": epoch, **placement, "seed": self.seed,
                "drop_last": self.drop_last, "batch_size": self.batch_size,
                "yielded": yielded, "finished": finished, "task": task_state}

    def _check_state(self, state: dict, placement: dict) -> None:
        expected = self._state(state["epoch"], placement, 0, False, None)
        for name in ("rank", "world_size", "worker", "num_workers", "seed", "drop_last",
                     "batch_size"):
            if state.get(name) != expected[name]:
                raise ValueError(f"the state was saved with {name}={state.get(name)!r}, this "
                                 f"dataset has {name}={expected[name]!r}: resume with the "
                                 "settings that saved it")

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _current=lambda: None)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_current"]  # its task belongs to this process
        if not isinstance(self.source, (str, _Remote)):
            state["source"] = _Remote(*_frontend(self.source))
        return state


class _Iteration:
    """One pass over an epoch's share of requests: the iterator that ``iter(dataset)`` returns."""

    def __init__(self, dataset: IterableDataset, epoch: int, placement: dict,
                 state: Optional[dict]):
        self.dataset = dataset
        self.epoch = epoch
        self.placement = placement
        self.yielded = state["yielded"] if state else 0
        self.finished = bool(state and state["finished"])
        self.task_state = state["task"] if state else None  # where the task resumes
        self.task = None  # opened at the first next(), so an unused iterator costs nothing
        self.closed = False

    def __iter__(self) -> "_Iteration":
        return self

    def __next__(self) -> Any:
        if self.finished or self.closed:
            raise StopIteration
        if self.task is None:
            self._open()
        dataset = self.dataset
        if dataset.batch_size is None:
            item = self._pull()
            if dataset.collate_fn is not None:
                item = dataset.collate_fn(item)
        else:
            items = []
            while len(items) < dataset.batch_size and not self.finished:
                items.append(self._pull())
            if items and self.finished and items[-1] is _END:
                items.pop()
            if not items or (dataset.drop_last and len(items) < dataset.batch_size):
                self.finished = True
                raise StopIteration
            item = (dataset.collate_fn or torch.utils.data.default_collate)(items)
        self.yielded += 1
        return map_leaves(pinned, item) if dataset.pin_memory else item

    def _open(self) -> None:
        dataset = self.dataset
        seed = None if dataset.seed is None else stream_seed(
            dataset.seed, self.epoch, self.placement["rank"], self.placement["worker"])
        self.task = dataset._open_task(dataset.epoch_requests(self.epoch, self.placement), seed,
                                       self.task_state)

    def _pull(self) -> Any:
        """The next result as tensors; at the end, ``_END`` in a batch or ``StopIteration``."""
        try:
            return to_tensors(next(self.task))
        except StopIteration:
            self.finished = True  # a finished epoch resumes as empty: no task state needed
            self.close()
            if self.dataset.batch_size is None:
                raise
            return _END

    def state_dict(self) -> dict:
        task_state = self.task_state if self.task is None else self.task.state_dict()
        return self.dataset._state(self.epoch, self.placement, self.yielded, self.finished,
                                   task_state)

    def close(self) -> None:
        """End this iteration and cancel its task: the broker drops its queued requests.

        Its state stays with the dataset until another iteration of the dataset begins.
        """
        if self.closed:
            return
        task, self.task, self.closed = self.task, None, True
        if task is not None:
            if not self.finished:
                self.task_state = task.state_dict()
            task.cancel()
        if self.dataset._current() in (self, None):  # not when a newer iteration runs
            self.dataset._last = self.state_dict()

    def __del__(self):
        try:
            self.close()
        except Exception:  # the broker may be gone at interpreter exit; nothing to keep then
            pass


_END = object()  # marks the end of the results inside a batch being gathered
