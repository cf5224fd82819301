"""The PyTorch IterableDataset: tensors without copies, epochs, ranks, loader workers, resume."""
import itertools
import json
import logging
import pickle

import numpy as np
import pytest

import pythonflow as pf
from pythonflow import pfmq
from pythonflow.pfmq.serialization import PickleSerializer

torch = pytest.importorskip("torch", reason="the PyTorch tests need torch: "
                                            "pip install torch==2.13.0")
from torch.utils.data import DataLoader  # noqa: E402

from pythonflow.pfmq.integrations import torch as pftorch  # noqa: E402
from pythonflow.pfmq.torch import IterableDataset, rank_share, to_tensors  # noqa: E402

pytestmark = pytest.mark.timeout(90)

TORCHDATA_MISSING = "torchdata is not installed (pip install --no-deps torchdata==0.11.0)"


def build_graph():
    """``x`` is request ``i`` plus three uniform random numbers, ``big`` a 192 KiB array."""
    with pf.Graph() as graph:
        i = pf.placeholder("i")
        np_ = pf.import_("numpy")
        (np_.random.uniform(0, 1, 3).astype("float32") + i).set_name("x")
        np_.full((128, 128, 3), i, dtype="float32").set_name("big")
    return graph


def make_requests(count, fetches=("i", "x")):
    return [{"fetches": list(fetches), "context": {"i": i}} for i in range(count)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # An ipc:// frontend, so that DataLoader worker processes reach the broker too.
    frontend = f"ipc://{tmp_path_factory.mktemp('torch')}/frontend"
    with pfmq.LocalCluster(build_graph(), num_workers=2, frontend_address=frontend) as cluster:
        yield cluster


def indices(items):
    return [int(i) for i, _ in items]


def as_arrays(items):
    return [x.numpy().copy() for _, x in items]


# -- conversion ------------------------------------------------------------------------------


class RecordingSerializer(PickleSerializer):
    """Pickle, keeping the arrays it decodes, to compare their memory with the tensors."""

    def __init__(self):
        super().__init__()
        self.arrays = []

    def decode(self, frames):
        outcomes = super().decode(frames)
        if isinstance(outcomes, list):
            self.arrays.extend(value for outcome in outcomes for value in outcome[1:]
                               if isinstance(value, np.ndarray))
        return outcomes


def test_arrays_arrive_as_tensors_sharing_the_received_memory(cluster):
    serializer = RecordingSerializer()
    dataset = IterableDataset(cluster, [{"fetches": "big", "context": {"i": i}} for i in range(4)],
                              serializer=serializer)
    tensors = list(DataLoader(dataset, batch_size=None))
    assert [float(t[0, 0, 0]) for t in tensors] == [0, 1, 2, 3]
    assert all(isinstance(t, torch.Tensor) and t.shape == (128, 128, 3) for t in tensors)
    received = {array.ctypes.data for array in serializer.arrays}
    assert len(received) == 4
    assert {t.data_ptr() for t in tensors} == received  # from_numpy: no copy


def test_to_tensors_keeps_structure_and_copies_only_read_only_arrays():
    writable = np.arange(6, dtype=np.int64)
    frozen = np.arange(3, dtype=np.float32)
    frozen.flags.writeable = False
    foreign = np.arange(3, dtype=np.dtype(np.float64).newbyteorder())
    converted = to_tensors({"a": (writable, [frozen, "text"]), "b": np.array(["s"]), "c": 4,
                            "d": foreign})
    assert converted["d"].tolist() == [0, 1, 2]  # converted to native order
    assert converted["a"][0].data_ptr() == writable.ctypes.data
    assert converted["a"][1][0].data_ptr() != frozen.ctypes.data
    assert converted["a"][1][0].tolist() == [0, 1, 2]
    assert converted["a"][1][1] == "text" and converted["c"] == 4
    assert isinstance(converted["b"], np.ndarray)  # torch has no string tensors


def test_batches_with_collate_and_drop_last(cluster):
    batches = list(IterableDataset(cluster, make_requests(10), batch_size=4))
    assert [b[0].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches[0][1].shape == (4, 3)
    dropped = list(IterableDataset(cluster, make_requests(10), batch_size=4, drop_last=True))
    assert [b[0].tolist() for b in dropped] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    sums = list(IterableDataset(cluster, make_requests(5), batch_size=2,
                                collate_fn=lambda items: sum(int(i) for i, _ in items)))
    assert sums == [1, 5, 4]
    # Without batch_size, collate_fn sees each result.
    firsts = list(IterableDataset(cluster, make_requests(3), collate_fn=lambda item: item[0]))
    assert firsts == [0, 1, 2]


def test_pin_memory_without_cuda_does_nothing(cluster, caplog):
    assert not torch.cuda.is_available()
    with caplog.at_level(logging.DEBUG, logger=pftorch.__name__):
        dataset = IterableDataset(cluster, make_requests(2), pin_memory=True)
    assert "CUDA is not available" in caplog.text
    assert indices(dataset) == [0, 1]


# -- epochs and seeds ------------------------------------------------------------------------


def test_epochs_are_reproducible_and_differ(cluster):
    dataset = IterableDataset(cluster, make_requests(6), seed=7)
    first = as_arrays(dataset)
    again = as_arrays(dataset)
    other = IterableDataset(cluster, make_requests(6), seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(np.array_equal(a, b) for a, b in zip(first, as_arrays(other)))
    dataset.set_epoch(1)
    second = as_arrays(dataset)
    assert not any(np.array_equal(a, b) for a, b in zip(first, second))
    dataset.set_epoch(0)
    assert all(np.array_equal(a, b) for a, b in zip(first, as_arrays(dataset)))


def test_requests_function_is_called_with_the_epoch(cluster):
    calls = []

    def requests(epoch):
        calls.append(epoch)
        return ({"fetches": ["i", "x"], "context": {"i": 10 * epoch + k}} for k in range(3))

    dataset = IterableDataset(cluster, requests)
    dataset.set_epoch(2)
    assert indices(dataset) == [20, 21, 22]
    assert calls == [2]


def test_bad_arguments_give_one_line_errors(cluster):
    requests = make_requests(2)
    cases = [
        (TypeError, "one-shot iterator", dict(requests=iter(requests))),
        (TypeError, "callable requests", dict(requests=42)),
        (TypeError, "source must be", dict(source=object())),
        (ValueError, "not a ZeroMQ address", dict(source="localhost:5555")),
        (ValueError, "both rank and world_size", dict(rank=0)),
        (ValueError, "world_size must be", dict(rank=0, world_size=0)),
        (ValueError, r"rank must be an integer in \[0, 3\)", dict(rank=3, world_size=3)),
        (ValueError, "batch_size must be", dict(batch_size=0)),
        (ValueError, "seed must be", dict(seed=-1)),
        (TypeError, "load_state_dict", dict(resume={})),
        (TypeError, "unknown task options", dict(num_retires=3)),
    ]
    for error, message, arguments in cases:
        arguments = {"source": cluster, "requests": requests, **arguments}
        with pytest.raises(error, match=message) as caught:
            IterableDataset(arguments.pop("source"), arguments.pop("requests"), **arguments)
        assert "\n" not in str(caught.value)
    dataset = IterableDataset(cluster, lambda epoch: None)
    with pytest.raises(TypeError, match=r"requests\(0\) returned NoneType"):
        next(iter(dataset))
    with pytest.raises(ValueError, match="epoch must be"):
        dataset.set_epoch(-1)
    with pytest.raises(ValueError, match="not a state"):
        dataset.load_state_dict({"epoch": 0})


# -- ranks and loader workers ----------------------------------------------------------------


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_rank_gets_its_share_and_the_same_count(cluster, world_size, drop_last):
    total = 11
    shares = [indices(IterableDataset(cluster, make_requests(total), rank=rank,
                                      world_size=world_size, drop_last=drop_last))
              for rank in range(world_size)]
    per_rank = total // world_size if drop_last else -(-total // world_size)
    assert [len(share) for share in shares] == [per_rank] * world_size
    for rank, share in enumerate(shares):
        own = [i for i in share if i % world_size == rank]
        assert own == list(range(rank, total, world_size))[:per_rank]
    union = set(itertools.chain(*shares))
    if drop_last:
        assert union == set(range(per_rank * world_size))
    else:
        assert union == set(range(total))
        padding = [i for rank, share in enumerate(shares) for i in share if i % world_size != rank]
        assert padding == list(range(per_rank * world_size - total))  # repeated from the start


def test_rank_share_reads_lazily_and_pads_short_sources():
    taken = []

    def source():
        for index in itertools.count():
            taken.append(index)
            yield index

    share = rank_share(source(), 1, 3, drop_last=True)
    assert list(itertools.islice(share, 3)) == [1, 4, 7]
    assert len(taken) == 9  # rank 1's request of a round waits for the round's last request
    assert [list(rank_share(range(2), rank, 5)) for rank in range(5)] == [[0], [1], [0], [1], [0]]
    assert list(rank_share([], 0, 2)) == []


def test_ranks_come_from_torch_distributed_when_initialised(cluster):
    # torch's in-process "fake" backend: a real process group of rank 1 of 2, without a network.
    fake_pg = pytest.importorskip("torch.testing._internal.distributed.fake_pg",
                                  reason="this torch has no fake process group backend")
    dataset = IterableDataset(cluster, make_requests(5))
    explicit = IterableDataset(cluster, make_requests(5), rank=0, world_size=1)
    torch.distributed.init_process_group("fake", store=fake_pg.FakeStore(), rank=1, world_size=2)
    try:
        assert dataset.placement() == {"rank": 1, "world_size": 2, "worker": 0,
                                       "num_workers": 1}
        assert indices(dataset) == [1, 3, 0]
        assert indices(explicit) == [0, 1, 2, 3, 4]  # given ranks win
    finally:
        torch.distributed.destroy_process_group()
    assert indices(dataset) == [0, 1, 2, 3, 4]


def test_loader_workers_split_their_rank_share(cluster):
    dataset = IterableDataset(cluster, make_requests(21), rank=1, world_size=2, seed=1)
    items = list(DataLoader(dataset, batch_size=None, num_workers=2))
    assert sorted(indices(items)) == [0] + list(range(1, 21, 2))  # no duplicates, padded
    batched = list(DataLoader(dataset, batch_size=3, num_workers=2))
    assert sorted(int(i) for batch in batched for i in batch[0]) == sorted(indices(items))


def test_loader_workers_refuse_an_inproc_frontend(tmp_path):
    with pfmq.Broker(f"ipc://{tmp_path}/backend") as broker:
        assert broker.frontend_address.startswith("inproc://")
        dataset = IterableDataset(broker, make_requests(4))
        with pytest.raises(ValueError, match="cannot reach the frontend inproc://"):
            list(DataLoader(dataset, batch_size=None, num_workers=1))


def test_a_pickled_dataset_reaches_the_broker_by_its_address(cluster):
    dataset = IterableDataset(cluster, make_requests(4), seed=2)
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.source.address == cluster.broker.frontend_address
    assert [x.tolist() for x in as_arrays(copy)] == [x.tolist() for x in as_arrays(dataset)]


# -- checkpoints -----------------------------------------------------------------------------


def drain(iterator):
    return [(int(i), x.numpy().copy()) for i, x in iterator]


def same(left, right):
    return len(left) == len(right) and all(
        a == b and np.array_equal(x, y) for (a, x), (b, y) in zip(left, right))


@pytest.mark.parametrize("batch_size", [None, 3])
def test_a_restored_dataset_continues_where_the_saved_one_stopped(cluster, batch_size):
    def flat(items):
        if batch_size is None:
            return items
        return [(i, x) for batch in items for i, x in zip(batch[0], batch[1])]

    def run(dataset):
        return drain(flat(list(dataset)))

    options = dict(seed=5, rank=0, world_size=2, batch_size=batch_size)
    dataset = IterableDataset(cluster, make_requests(30), **options)
    dataset.set_epoch(1)
    reference = run(dataset)
    iterator = iter(dataset)
    head = drain(flat([next(iterator) for _ in range(4)]))
    state = json.loads(json.dumps(dataset.state_dict()))
    iterator.close()  # a crash: what is left is the state
    assert state["epoch"] == 1 and state["yielded"] == 4

    restored = IterableDataset(cluster, make_requests(30), **options)
    restored.load_state_dict(state)
    assert restored.epoch == 1 and restored.state_dict() == state
    assert same(head + run(restored), reference)
    final = restored.state_dict()
    assert final["finished"] and final["yielded"] == -(-len(reference) // (batch_size or 1))
    finished = IterableDataset(cluster, make_requests(30), **options)
    finished.load_state_dict(final)
    assert run(finished) == []  # nothing is left of the saved epoch
    assert same(run(finished), reference)  # the next iteration goes over the epoch again


def test_an_abandoned_iteration_cancels_its_task_and_leaves_its_position(cluster):
    # One request per job and a small cache: the task cannot have read all 40 results ahead.
    dataset = IterableDataset(cluster, make_requests(40), seed=1, max_batch=1, cache_size=4)
    iterator = iter(dataset)
    next(iterator)
    next(iterator)
    task = iterator.task
    assert task.is_alive
    del iterator  # nothing else holds it: the task stops now, not at some garbage collection
    assert not task.is_alive
    state = dataset.state_dict()
    assert state["yielded"] == 2 and not state["finished"]
    assert state["task"]["position"] == 2


def test_a_state_is_refused_by_a_dataset_of_other_settings(cluster):
    dataset = IterableDataset(cluster, make_requests(6), seed=1, rank=0, world_size=2)
    iterator = iter(dataset)
    next(iterator)
    state = dataset.state_dict()
    other = IterableDataset(cluster, make_requests(6), seed=1, rank=1, world_size=2)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="saved with rank=0, this dataset has rank=1"):
        iter(other)
    reseeded = IterableDataset(cluster, make_requests(6), seed=2, rank=0, world_size=2)
    reseeded.load_state_dict(state)
    reseeded.set_epoch(3)  # another epoch: the loaded position is dropped
    assert len(list(reseeded)) == 3


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")  # torchdata's, not ours
def test_stateful_dataloader_resumes_mid_epoch(cluster):
    stateful = pytest.importorskip("torchdata.stateful_dataloader", reason=TORCHDATA_MISSING)

    def loader(num_workers):
        dataset = IterableDataset(cluster, make_requests(24), seed=9)
        return stateful.StatefulDataLoader(dataset, batch_size=2, num_workers=num_workers)

    for num_workers in (0, 2):
        reference = [batch[0].tolist() for batch in loader(num_workers)]
        first = loader(num_workers)
        iterator = iter(first)
        head = [next(iterator)[0].tolist() for _ in range(3)]
        state = first.state_dict()
        del iterator, first
        second = loader(num_workers)
        second.load_state_dict(state)
        assert head + [batch[0].tolist() for batch in second] == reference, num_workers
        assert sorted(itertools.chain(*reference)) == list(range(24))


def test_torchdata_nodes_checkpoint_and_reset(cluster):
    nodes = pytest.importorskip("torchdata.nodes", reason=TORCHDATA_MISSING)

    def loader():
        return nodes.Loader(nodes.IterableWrapper(IterableDataset(cluster, make_requests(10),
                                                                  seed=4)))

    reference = drain(loader())
    first = loader()
    iterator = iter(first)
    head = drain(next(iterator) for _ in range(4))
    state = first.state_dict()
    second = loader()
    second.load_state_dict(state)
    assert same(head + drain(second), reference)
