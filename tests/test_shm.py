"""Shared memory for large arrays (pythonflow.pfmq.shm): the courier, its lifetime rules, and
real clusters with it, including SIGKILLed workers, consumers and brokers."""
import gc
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from pfmq_helpers import PACKAGE_PARENT, ipc_address, running_broker, thread_workers, wait_until
from shm_peer import ITEMS, mapped, memfds, plus_one

from pythonflow import pfmq
from pythonflow.pfmq import shm
from pythonflow.pfmq.errors import ProtocolError
from pythonflow.pfmq.protocol import OUTCOMES, SHM_MAGIC, SHM_MANIFEST, Wire
from pythonflow.pfmq.serialization import MsgpackSerializer, PickleSerializer

pytestmark = pytest.mark.skipif(not shm.available(), reason="needs memfd_create and /proc")

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shm_peer.py")
SHORT = shm.SharedMemory(linger=0.5)


def ours_in_dev_shm():
    return {name for name in os.listdir("/dev/shm") if "pfmq" in name}


def own_memfds():
    return memfds(os.getpid())


def peer(*arguments, **options):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, PEER, *arguments], env=env, **options)


def end(process):
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


# -- the courier ---------------------------------------------------------------------------------

@pytest.mark.parametrize("serializer", [PickleSerializer(), MsgpackSerializer()])
@pytest.mark.parametrize("key", [None, b"secret"])
def test_round_trip_is_zero_copy_and_sealed_over_the_bytes(serializer, key):
    wire = Wire(key, courier=shm.Courier(shm.SharedMemory(threshold=4096)))
    array = np.arange(1 << 18, dtype=np.float32)
    sealed = wire.seal(serializer.encode([array, "small"]), 7, OUTCOMES)
    assert bytes(sealed[0]).startswith(SHM_MAGIC)
    assert sum(memoryview(frame).nbytes for frame in sealed) < 4096  # the array is not there
    frames = wire.open(sealed, 7, OUTCOMES)
    decoded = serializer.decode(frames)
    np.testing.assert_array_equal(decoded[0], array)
    assert decoded[1] == "small" and mapped(decoded[0])
    assert np.shares_memory(decoded[0], np.frombuffer(frames[1], np.uint8))  # a view, no copy
    decoded[0][0] = 99  # writable, as a received frame: the write stays the receiver's own
    assert serializer.decode(wire.open(sealed, 7, OUTCOMES))[0][0] == 0


def test_a_changed_array_breaks_the_seal():
    wire = Wire(b"secret", courier=shm.Courier(shm.SharedMemory(threshold=4096)))
    sealed = wire.seal(PickleSerializer().encode([np.ones(1 << 14)]), 1, OUTCOMES)
    _, pid, number, *_ = SHM_MANIFEST.unpack_from(bytes(sealed[0]), len(SHM_MAGIC))
    fd = os.open(f"/proc/{pid}/fd/{number}", os.O_RDWR)
    try:
        os.pwrite(fd, b"\x01", 4096 + 100)  # into the array's bytes, behind the sender's back
    finally:
        os.close(fd)
    with pytest.raises(ProtocolError, match="seal mismatch"):
        wire.open(sealed, 1, OUTCOMES)


def test_another_host_is_an_error_not_a_loss():
    courier = shm.Courier(shm.SharedMemory(threshold=4096))
    sealed = courier.pack([b"x", bytes(8192)])
    manifest = bytearray(sealed[0])
    manifest[len(SHM_MAGIC)] ^= 0xFF  # another host's digest
    with pytest.raises(shm.SharedMemoryError, match="another host") as raised:
        courier.unpack([bytes(manifest), *sealed[1:]])
    assert not isinstance(raised.value, shm.SegmentLost)


def test_a_segment_of_a_process_that_ended_is_lost():
    script = ("import numpy as np, sys; from pythonflow.pfmq import shm; "
              "courier = shm.Courier(shm.SharedMemory(), handoff=True); "
              "frames = courier.pack([b'x', np.ones(1 << 20)]); "
              "sys.stdout.write(bytes(frames[0]).hex())")
    env = {**os.environ, "PYTHONPATH": PACKAGE_PARENT}
    manifest = bytes.fromhex(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                            capture_output=True, text=True, timeout=60).stdout)
    with pytest.raises(shm.SegmentLost):
        shm.Courier().unpack([manifest, b"x"])


def test_a_segment_is_used_again_only_when_nobody_views_it():
    courier = shm.Courier(shm.SharedMemory(threshold=4096))
    first = courier.pack([b"x", bytes(8192)])
    inode = SHM_MANIFEST.unpack_from(bytes(first[0]), len(SHM_MAGIC))[3]
    view = courier.unpack(first)[1]
    del first  # returned to the pool, but still viewed
    second = courier.pack([b"x", bytes(8192)])
    assert SHM_MANIFEST.unpack_from(bytes(second[0]), len(SHM_MAGIC))[3] != inode
    del view, second
    third = courier.pack([b"x", b"c" * 8192])
    assert SHM_MANIFEST.unpack_from(bytes(third[0]), len(SHM_MAGIC))[3] == inode  # the oldest
    assert bytes(courier.unpack(third)[1]) == b"c" * 8192


def test_a_result_is_used_again_only_once_taken_and_an_untaken_one_is_let_go():
    courier = shm.Courier(shm.SharedMemory(threshold=4096, linger=0.3), handoff=True)
    before = own_memfds()
    manifest = bytes(courier.pack([b"x", b"a" * 8192])[0])  # the frames are dropped: returned
    again = bytes(courier.pack([b"x", b"b" * 8192])[0])
    assert manifest[len(SHM_MAGIC) + 20:] != again[len(SHM_MAGIC) + 20:]  # not taken: not reused
    assert bytes(courier.unpack([manifest, b"x"])[1]) == b"a" * 8192

    def lost():
        try:
            courier.unpack([again, b"x"])
        except shm.SegmentLost:
            return True
        return False

    wait_until(lost, 10, message="the untaken segment let go")
    wait_until(lambda: own_memfds() <= before, 10, message="every segment let go")


def test_msgpack_lets_go_of_what_it_decoded_without_the_garbage_collector():
    courier, serializer = shm.Courier(shm.SharedMemory(threshold=4096)), MsgpackSerializer()
    packed = courier.pack(serializer.encode([np.ones(1 << 14)]))
    assert bytes(packed[0]).startswith(SHM_MAGIC)
    inode = SHM_MANIFEST.unpack_from(bytes(packed[0]), len(SHM_MAGIC))[3]
    gc.disable()
    try:
        decoded = serializer.decode(courier.unpack(packed))
        assert decoded[0][0] == 1
        del decoded, packed
        again = courier.pack(serializer.encode([np.ones(1 << 14)]))
    finally:
        gc.enable()
    assert SHM_MANIFEST.unpack_from(bytes(again[0]), len(SHM_MAGIC))[3] == inode  # let go


def test_without_shared_memory_to_be_had_frames_go_over_the_socket(monkeypatch):
    def refuse(*args):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(shm._POOL, "acquire", refuse)
    frames = [b"x", bytes(8192)]
    assert shm.Courier(shm.SharedMemory(threshold=4096)).pack(frames) == frames


@pytest.mark.parametrize("option, address, on", [
    (None, "ipc:///tmp/x", True), (None, "tcp://127.0.0.1:5555", False),
    (None, "inproc://x", False), (True, "tcp://10.0.0.1:5555", True), (False, "ipc://x", False),
])
def test_where_it_is_on(option, address, on):
    assert (shm.resolve(option, address) is not None) is on


@pytest.mark.parametrize("make, error, message", [
    (lambda: shm.SharedMemory(threshold=100), ValueError, "at least 4096"),
    (lambda: shm.SharedMemory(linger=0), ValueError, "linger"),
    (lambda: shm.resolve("yes", None), TypeError, "'yes'"),
    (lambda: pfmq.Task([], "ipc://x", shared_memory=1), TypeError, "shared_memory"),
])
def test_bad_options(make, error, message):
    with pytest.raises(error, match=message):
        make()


# -- a task and its workers ----------------------------------------------------------------------

def lose_results(worker, count):
    """Let the first ``count`` results of a thread ``worker`` go right after packing them, as a
    worker that dies before its task maps them."""
    courier, pack, lost = worker._wire.courier, worker._wire.courier.pack, []

    def pack_and_lose(frames):
        packed = pack(frames)
        if len(lost) < count and bytes(packed[0]).startswith(SHM_MAGIC):
            segment = packed[0].loan.segment
            shm._POOL.lent.discard(segment)
            segment.close()
            lost.append(segment)
        return packed

    courier.pack = pack_and_lose
    return lost


@pytest.mark.parametrize("losses, expected", [(2, "all"), (100, "errors")])
def test_a_lost_result_is_sent_again(tmp_path, losses, expected):
    with running_broker(ipc_address(tmp_path, "back")) as broker, \
            thread_workers(broker.backend_address, 1, plus_one,
                           shared_memory=SHORT) as (worker,):
        lost = lose_results(worker, losses)
        task = broker.imap([np.zeros(1 << 17)] * 3, shared_memory=SHORT, errors="return",
                           num_retries=2)
        results = list(task)
    if expected == "all":
        assert len(lost) == 2 and all(mapped(r) and r[0] == 1 for r in results)
        assert worker.executed == 5  # two of them twice: each delivered once
    else:  # always lost: bounded, and not a silent loss
        assert all(isinstance(r, pfmq.SerializationError) for r in results)
        assert "shared memory" in str(results[0])


def test_cluster_round_trip_both_ways_with_key_and_msgpack():
    array = np.arange(ITEMS, dtype=np.float32)
    before = own_memfds()
    with pfmq.LocalCluster("shm_peer:plus_one_where", num_workers=2, key="secret",
                           serializer="msgpack", shared_memory=SHORT) as cluster:
        baseline = fds = len(os.listdir("/proc/self/fd"))
        for result, request_mapped in cluster.imap([array] * 20, serializer="msgpack",
                                                   cache_size=4):
            np.testing.assert_array_equal(result, array + 1)
            assert request_mapped and mapped(result)  # zero-copy at both receivers
            fds = max(fds, len(os.listdir("/proc/self/fd")))
        pids = cluster.pids
        # Two for each segment in the pool (its own and its mapping's), one for each result
        # viewed: about as many as jobs in flight (9) and results cached (4).
        assert fds - baseline <= 32
        assert all(memfds(pid) <= 40 for pid in pids)
        wait_until(lambda: not any(memfds(pid) for pid in pids), 10,
                   message="the workers' segments let go")
    wait_until(lambda: own_memfds() <= before, 10, message="the task's segments let go")


@pytest.mark.parametrize("option, on", [(None, True), (False, False)])
def test_a_local_cluster_uses_shared_memory_unless_told_not_to(option, on):
    with pfmq.LocalCluster("shm_peer:plus_one_where", num_workers=1,
                           shared_memory=option) as cluster:
        result, request_mapped = cluster.apply(np.zeros(ITEMS, np.float32))
    assert result[0] == 1 and mapped(result) is on and request_mapped is on


def test_descriptors_stay_bounded_over_many_requests():
    array = np.ones(1 << 18, np.float32)  # 1 MiB: at the default threshold
    with pfmq.LocalCluster("shm_peer:plus_one", num_workers=2, shared_memory=SHORT) as cluster:
        pids, peak = cluster.pids, 0
        for index, result in enumerate(cluster.imap([array] * 300, cache_size=4)):
            assert result[0] == 2 and mapped(result)
            if index % 20 == 0:
                peak = max(peak, own_memfds(), *(memfds(pid) for pid in pids))
        # Descriptors and a mapping for each segment lent, pooled or viewed: as many as the
        # results cached and the jobs in flight, whatever the number of requests.
        assert peak <= 64


# -- SIGKILL -------------------------------------------------------------------------------------

def test_sigkilled_worker(tmp_path):
    array, before, shm_before = np.zeros(ITEMS, np.float32), own_memfds(), ours_in_dev_shm()
    with pfmq.LocalCluster("shm_peer:plus_one", num_workers=2, shared_memory=SHORT) as cluster:
        victim = cluster.pids[0]
        results = []
        for result in cluster.imap([array + i for i in range(30)]):
            results.append(result)
            if len(results) == 5:
                os.kill(victim, signal.SIGKILL)
        assert [r[0] for r in results] == list(range(1, 31))
        wait_until(lambda: not any(memfds(pid) for pid in cluster.pids), 20,
                   message="the workers' segments let go")
    del results, result
    wait_until(lambda: own_memfds() <= before, 10, message="the task's segments let go")
    assert ours_in_dev_shm() <= shm_before


def test_sigkilled_consumer(tmp_path):
    before, shm_before = own_memfds(), ours_in_dev_shm()
    with running_broker(ipc_address(tmp_path, "back"),
                        frontend_address=ipc_address(tmp_path, "front")) as broker:
        workers = [peer("worker", broker.backend_address, "0.5") for _ in range(2)]
        consumer = peer("consumer", broker.frontend_address, "1000", stdout=subprocess.PIPE,
                        text=True)
        try:
            for _ in range(5):
                assert consumer.stdout.readline().strip(), "the consumer ended early"
            os.kill(consumer.pid, signal.SIGKILL)
            consumer.wait(10)
            wait_until(lambda: not any(memfds(w.pid) for w in workers), 20,
                       message="the workers' segments let go")
            assert all(w.poll() is None for w in workers)
        finally:
            for process in (consumer, *workers):
                end(process)
    assert own_memfds() <= before and ours_in_dev_shm() <= shm_before


def test_sigkilled_broker(tmp_path):
    front, back = ipc_address(tmp_path, "front"), ipc_address(tmp_path, "back")
    array, before, shm_before = np.zeros(ITEMS, np.float32), own_memfds(), ours_in_dev_shm()
    brokers = [peer("broker", front, back)]
    workers = [peer("worker", back, "0.5") for _ in range(2)]
    try:
        results = []
        for result in pfmq.Task([array + i for i in range(20)], front, heartbeat_interval=0.2,
                                timeout=5, shared_memory=SHORT):
            results.append(result[0])
            if len(results) == 5:
                os.kill(brokers[0].pid, signal.SIGKILL)
                brokers[0].wait(10)
                brokers.append(peer("broker", front, back))
        assert results == list(range(1, 21))
        del result
        wait_until(lambda: not any(memfds(w.pid) for w in workers), 20,
                   message="the workers' segments let go")
        wait_until(lambda: own_memfds() <= before, 10, message="the task's segments let go")
    finally:
        for process in (*brokers, *workers):
            end(process)
    assert ours_in_dev_shm() <= shm_before


def test_the_host_is_read_once_per_process(monkeypatch):
    # Every Task makes a courier, and apply makes a Task per call: reading /proc each time cost
    # about 40 µs of a 350 µs round trip.
    first = shm._host_id()
    assert shm._host_id() is first
    monkeypatch.setattr(shm.os, "getpid", lambda: -1)  # as in a forked child: read it again
    assert shm._host_id() == first and shm._host[0] == -1
