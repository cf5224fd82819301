"""The msgpack serializer: round trips, zero-copy arrays, safe exceptions, refusal of bad input."""
import builtins
import os
import pickle
import sys
import threading

import msgpack
import numpy as np
import pytest
from pfmq_helpers import running_broker

from pythonflow import pfmq
from pythonflow.pfmq import serializers
from pythonflow.pfmq.serialization import SerializationError, make_serializer
from pythonflow.pfmq.serializers import MsgpackSerializer

pytestmark = pytest.mark.timeout(60)


def round_trip(obj, **options):
    serializer = MsgpackSerializer(**options)
    return serializer.decode(serializer.encode(obj))


def test_nested_structures_keep_their_types():
    obj = {"a": [1, 2.5, "x", b"raw", None, True, (3, (4, [5, (6,)]))], 7: {"k": ()},
           ("tuple", "key"): [[], {}], "big": 2 ** 63 - 1, "neg": -2 ** 63}
    result = round_trip(obj)
    assert result == obj
    assert isinstance(result["a"][6], tuple) and isinstance(result["a"][6][1][1], list)
    assert isinstance(result["a"][6][1][1][1], tuple)
    assert type(result["a"][5]) is bool


def test_outcome_lists_as_workers_and_tasks_exchange_them():
    outcomes = [(0, {"image": np.ones((2, 2))}), (1, ValueError("bad value", 3), "Traceback..."),
                (2, "the result cannot be serialised")]
    result = round_trip(outcomes)
    assert isinstance(result, list) and all(isinstance(item, tuple) for item in result)
    assert result[0][0] == 0 and np.array_equal(result[0][1]["image"], np.ones((2, 2)))
    assert type(result[1][1]) is ValueError and result[1][1].args == ("bad value", 3)
    assert result[1][2] == "Traceback..." and result[2] == outcomes[2]


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.int16).reshape(3, 4),
    np.linspace(0, 1, 7, dtype=np.float32),
    np.array(3.5),
    np.zeros((0, 5)),
    np.array([1 + 2j, 3j]),
    np.array([True, False]),
    np.array(["ab", "c"]),
    np.array([b"xy", b"z"]),
    np.array(["2020-01-01", "2021-06-30"], dtype="datetime64[D]"),
    np.arange(20.0).reshape(4, 5)[:, ::2],  # not contiguous
    np.arange(6, dtype=">i4"),  # big-endian
])
@pytest.mark.parametrize("threshold", [0, float("inf")])
def test_arrays(array, threshold):
    result = round_trip({"value": array}, threshold=threshold)["value"]
    assert result.dtype == array.dtype and result.shape == array.shape
    assert np.array_equal(result, array)


def test_large_arrays_travel_as_frames_without_copies():
    array = np.arange(1 << 16, dtype=np.float64).reshape(256, 256)
    serializer = MsgpackSerializer()
    frames = serializer.encode([array, array[:2]])
    assert len(frames) == 2  # the small slice stays inline
    assert np.shares_memory(np.asarray(frames[1]), array)  # sent from the array itself
    received = bytearray(frames[1])  # as a receiver holds a frame
    decoded = serializer.decode([frames[0], received])
    assert np.array_equal(decoded[0], array) and np.array_equal(decoded[1], array[:2])
    assert np.shares_memory(decoded[0], np.frombuffer(received, np.uint8))  # a view, no copy


def test_numpy_scalars():
    values = [np.float32(1.5), np.int64(-3), np.bool_(True), np.complex128(1j),
              np.datetime64("2020-01-02")]
    result = round_trip(values)
    for got, expected in zip(result, values):
        assert type(got) is type(expected) and got == expected


def test_exceptions_never_import_anything():
    class Custom(Exception):
        pass

    result = round_trip([KeyError("missing"), OSError(2, "no such file"), Custom("mine", 1),
                         SystemExit(3), ValueError(object())])
    assert type(result[0]) is KeyError and result[0].args == ("missing",)
    assert type(result[1]) is FileNotFoundError and result[1].errno == 2
    assert type(result[2]) is pfmq.RemoteError and result[2].remote_type.endswith("Custom")
    assert "mine" in str(result[2])
    assert type(result[3]) is pfmq.RemoteError and result[3].remote_type == "SystemExit"
    assert type(result[4]) is ValueError and result[4].args[0].startswith("<object object")


def test_crafted_extension_payloads_are_refused_or_harmless(tmp_path, monkeypatch):
    def ext(code, payload):
        return msgpack.packb(msgpack.ExtType(code, msgpack.packb(payload, use_bin_type=True)),
                             use_bin_type=True)

    serializer = MsgpackSerializer()
    imported = []
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **k: imported.append(name) or real_import(name, *a, **k))
    named = serializer.decode([ext(5, ["os.system", [f"touch {tmp_path}/x"], "x"])])
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert type(named) is pfmq.RemoteError and named.remote_type == "os.system"
    assert "os" not in imported and not os.listdir(tmp_path)
    for frames in [
        [ext(99, [])],  # unknown extension
        [ext(2, ["|O", [2], b"\0" * 16])],  # object array: pointers from the wire
        [ext(2, ["<f8", [4], b"\0" * 8])],  # data shorter than the shape claims
        [ext(2, ["<f8", [-1], b""])],  # negative dimension
        [ext(3, ["<f8", [1], 5]), b"\0" * 8],  # frame index beyond the message
        [ext(3, ["<f8", [1], 0])],  # the msgpack stream itself as array data
        [ext(4, ["<f8", b"\0"])],  # scalar of the wrong size
        [ext(2, ["not a dtype", [1], b"\0"])],
        [b"\xc1"],  # never used in msgpack
        [pickle.dumps([1, 2])],
        [],
    ]:
        with pytest.raises(SerializationError):
            serializer.decode(frames)


def test_unsupported_values_raise_serialization_error():
    serializer = MsgpackSerializer()
    for value in [{1, 2}, object(), np.array([object()]), np.zeros(2, dtype="i4,f4"), 2 ** 70]:
        with pytest.raises(SerializationError):
            serializer.encode([value])


def test_names_and_single_frame_functions():
    assert isinstance(make_serializer(serializer="msgpack"), MsgpackSerializer)
    assert isinstance(serializers.by_name("pickle"), pfmq.PickleSerializer)
    with pytest.raises(ValueError, match="unknown serializer"):
        serializers.by_name("yaml")
    data = serializers.dumps({"a": (1, np.arange(100000))})
    assert isinstance(data, bytes)
    result = serializers.loads(data)
    assert result["a"][0] == 1 and np.array_equal(result["a"][1], np.arange(100000))


def test_missing_msgpack_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(ImportError, match=r"pip install pythonflow\[msgpack\]"):
        MsgpackSerializer()


def test_through_a_broker_and_worker():
    def target(request):
        if request["n"] < 0:
            raise KeyError(request["n"])
        return {"image": np.full((128, 256), request["n"], dtype=np.uint8), "tag": (request["n"],)}

    with running_broker() as broker:
        worker = pfmq.Worker(target, broker.backend_address, serializer="msgpack",
                             heartbeat_interval=0.2)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            results = list(broker.imap([{"n": n} for n in range(10)], serializer="msgpack"))
            assert [r["tag"] for r in results] == [(n,) for n in range(10)]
            assert all(r["image"].shape == (128, 256) and (r["image"] == n).all()
                       for n, r in enumerate(results))
            with pytest.raises(KeyError) as info:
                broker.apply({"n": -1}, serializer="msgpack")
            assert isinstance(info.value.__cause__, pfmq.RemoteError)
            # A pickling peer's payload is refused by the msgpack worker, not loaded.
            with pytest.raises(pfmq.SerializationError):
                broker.apply({"n": 1})
        finally:
            worker.cancel(timeout=10)
            thread.join(10)
