"""Per-worker memory limits: sizes, the resident-memory check, and workers that pass their limit
(in a thread, in LocalCluster and pfmq worker processes) being replaced with nothing lost or
evaluated twice."""
import collections
import itertools
import math
import os
import re
import signal
import subprocess
import threading

import pytest
from pfmq_helpers import (
    HEARTBEAT,
    end_process,
    end_worker_pool,
    pfmq_worker,
    running_broker,
    wait_until,
)

from pythonflow import pfmq
from pythonflow.pfmq import cli, launch, memory
from pythonflow.pfmq.lifecycle import State
from pythonflow.pfmq.memory import MemoryLimit, format_size, parse_size, resident_memory
from pythonflow.pfmq.supervisor import SlotState

pytestmark = pytest.mark.timeout(120)

#: Where ``hoard`` records its evaluations (a directory, set per test).
EVALUATIONS = "PFMQ_TEST_EVALUATIONS"
CHUNK = 20 << 20  # bytes each request keeps
#: Well above the resident memory of a fresh worker process (some 40-60 MiB), so that each
#: process serves a few requests before it passes the limit.
PROCESS_LIMIT = "150MiB"
#: Heartbeats of the tests that count workers lost, so that a loaded machine loses none.
SLOW_HEARTBEAT = 0.5
_HOARD = []
_EVALUATED = itertools.count()


def record(request):
    """Record this evaluation in a file of its own; return the request and this process's PID."""
    name = f"{request}-{os.getpid()}-{next(_EVALUATED)}"
    with open(os.path.join(os.environ[EVALUATIONS], name), "x"):
        pass
    return request, os.getpid()


def hoard(request):
    """Keep 20 MiB (touched, so resident) for good, then :func:`record`."""
    _HOARD.append(b"\x01" * CHUNK)
    return record(request)


def evaluations(directory):
    """How many times each request was evaluated, from the files ``hoard`` wrote."""
    return collections.Counter(int(name.split("-")[0]) for name in os.listdir(directory))


def check_served_once(results, directory, count):
    """Every request's result came once, in order, and each request was evaluated once."""
    assert [request for request, _ in results] == list(range(count))
    assert evaluations(directory) == collections.Counter(range(count))


# -- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, size", [
    (1, 1), (2 ** 40, 2 ** 40), (1e9, 10 ** 9), (2.7, 2), ("10", 10), ("3 B", 3), ("3b", 3),
    ("2GiB", 2 << 30), ("2 gib", 2 << 30), ("2GIB", 2 << 30), ("1.5GB", 1_500_000_000),
    ("500 MB", 500_000_000), ("500mb", 500_000_000), (".5KiB", 512), ("4 kb", 4000),
    (" 7TB ", 7 * 10 ** 12), ("1TiB", 1 << 40), ("1.25 MiB", 1310720), ("+2MiB", 2 << 20),
    ("0.3333333333GB", 333333333),
])
def test_sizes(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value, error, message", [
    ("2 GB?", ValueError, "max_memory='2 GB?' is not a size such as '2GiB' or '500 MB'"),
    ("", ValueError, "max_memory='' is not a size such as '2GiB' or '500 MB'"),
    ("GB", ValueError, "max_memory='GB' is not a size such as '2GiB' or '500 MB'"),
    ("1e9", ValueError, "max_memory='1e9' is not a size such as '2GiB' or '500 MB'"),
    ("1..2MB", ValueError, "max_memory='1..2MB' is not a size such as '2GiB' or '500 MB'"),
    ("12XB", ValueError, "max_memory='12XB' has an unknown unit 'XB' (use B, KB, MB, GB, TB: "
                         "powers of 1000, or KiB, MiB, GiB, TiB: powers of 1024)"),
    ("2G", ValueError, "max_memory='2G' has an unknown unit 'G' (use B, KB, MB, GB, TB: "
                       "powers of 1000, or KiB, MiB, GiB, TiB: powers of 1024)"),
    ("-1", ValueError, "max_memory must be at least one byte, not '-1'"),
    ("0.1B", ValueError, "max_memory must be at least one byte, not '0.1B'"),
    (0, ValueError, "max_memory must be at least one byte, not 0"),
    (-5, ValueError, "max_memory must be at least one byte, not -5"),
    (0.5, ValueError, "max_memory must be at least one byte, not 0.5"),
    (math.nan, ValueError, "max_memory must be a finite number of bytes, not nan"),
    (math.inf, ValueError, "max_memory must be a finite number of bytes, not inf"),
    (True, TypeError, "max_memory must be a number of bytes or a size such as '2GiB', not bool "
                      "True"),
    (None, TypeError, "max_memory must be a number of bytes or a size such as '2GiB', not "
                      "NoneType None"),
    ([1], TypeError, "max_memory must be a number of bytes or a size such as '2GiB', not list "
                     "[1]"),
])
def test_bad_sizes_are_one_line_errors_naming_the_value(value, error, message):
    with pytest.raises(error) as caught:
        parse_size(value)
    assert str(caught.value) == message


def test_a_bad_size_is_refused_where_it_is_given():
    with pytest.raises(ValueError, match=r"^max_memory='2 GB\?' is not a size"):
        pfmq.Worker(hoard, "tcp://127.0.0.1:1", max_memory="2 GB?")
    with pytest.raises(ValueError, match="^max_memory must be at least one byte, not 0$"):
        pfmq.LocalCluster(hoard, 1, max_memory=0)  # in this process, not in each worker's
    with pytest.raises(ValueError, match="^--max-memory='12XB' has an unknown unit 'XB'"):
        parse_size("12XB", "--max-memory")


def test_format_size():
    assert [format_size(size) for size in (8, 1536, 312 << 20, 3 << 29, 2 << 40)] == [
        "8 B", "1.5 KiB", "312.0 MiB", "1.5 GiB", "2.0 TiB"]


# -- the resident memory and its check ------------------------------------------------------------


def test_resident_memory_follows_what_the_process_holds():
    before = resident_memory()
    held = b"\x01" * (64 << 20)
    try:
        assert resident_memory() - before >= 60 << 20
    finally:
        del held
    psutil = pytest.importorskip("psutil")
    assert abs(resident_memory() - psutil.Process().memory_info().rss) < 16 << 20


def test_the_check_reads_at_most_once_per_interval():
    limit = MemoryLimit(resident_memory() + (32 << 20), interval=3600)
    assert limit.check() is None  # the first check reads
    held = b"\x01" * (64 << 20)
    try:
        assert limit.check() is None  # within the interval: not read again
        limit.interval, limit._next = 0, 0.0  # as if the interval had passed
        over = limit.check(held=2)
        assert isinstance(over, pfmq.MemoryLimitError) and over.limit == limit.limit
        assert over.resident > over.limit
        assert re.fullmatch(r"the worker process held [\d.]+ MiB of resident memory, above its "
                            r"max_memory of [\d.]+ MiB", str(over))
    finally:
        del held


def test_a_limit_below_what_the_process_holds_already_is_refused():
    with pytest.raises(ValueError, match=r"^max_memory=1.0 KiB is below what this process holds "
                                         r"already \([\d.]+ MiB resident\): give a larger limit$"):
        pfmq.Worker(hoard, "tcp://127.0.0.1:1", max_memory="1KiB")


def test_a_worker_process_whose_limit_is_too_low_cannot_start():
    with pytest.raises(pfmq.CrashLoopError, match="max_memory=1.0 MiB is below what this "
                                                  "process holds already"):
        pfmq.LocalCluster(hoard, 1, max_memory="1MiB", crash_limit=1).start()


# -- a worker in a thread -------------------------------------------------------------------------


def test_a_thread_worker_over_its_limit_stops_and_hands_its_jobs_back(tmp_path, monkeypatch):
    monkeypatch.setenv(EVALUATIONS, str(tmp_path))
    monkeypatch.setattr(memory, "CHECK_INTERVAL", 0)  # every job checked: it stops on time
    count = 40
    # Heartbeats slow enough that a loaded machine does not get the limited worker presumed dead
    # (its jobs would go to the other worker while it still evaluated one).
    with running_broker(heartbeat_interval=SLOW_HEARTBEAT) as broker:
        limited = pfmq.Worker(hoard, broker.backend_address, prefetch=3,
                              heartbeat_interval=SLOW_HEARTBEAT,
                              max_memory=resident_memory() + 3 * CHUNK + (CHUNK >> 1))
        unlimited = pfmq.Worker(lambda request: (request, "unlimited"), broker.backend_address,
                                prefetch=3, heartbeat_interval=SLOW_HEARTBEAT)
        try:
            limited.run_async()
            wait_until(lambda: broker.stats()["workers"] == 1, message="the limited worker")
            task = broker.imap(range(count), max_batch=1)  # one request per job, checked each
            wait_until(lambda: limited.state is State.STOPPED,
                       message="the limited worker stopping")
            unlimited.run_async()  # serves what the limited one handed back, and the rest
            results = list(task)
        finally:
            for worker in (limited, unlimited):
                worker.cancel()
            hoarded, _HOARD[:] = len(_HOARD), []
    assert [request for request, _ in results] == list(range(count))
    evaluated_here = evaluations(tmp_path)
    assert sum(evaluated_here.values()) == hoarded and set(evaluated_here.values()) == {1}
    assert 1 <= hoarded < count  # about the fourth request passed the limit
    assert sorted(r for r, by in results if by != "unlimited") == sorted(evaluated_here)
    assert isinstance(limited.error, pfmq.MemoryLimitError) and limited.executed == hoarded
    assert unlimited.error is None


def test_a_thread_worker_that_passed_its_limit_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(EVALUATIONS, str(tmp_path))
    monkeypatch.setattr(memory, "CHECK_INTERVAL", 0)
    with running_broker() as broker:
        worker = pfmq.Worker(hoard, broker.backend_address, heartbeat_interval=HEARTBEAT,
                             max_memory=resident_memory() + (CHUNK >> 1))
        try:
            with worker:
                task = broker.imap(range(3), max_batch=1)
                with pytest.raises(pfmq.MemoryLimitError):
                    worker.process_requests()  # asked to serve until cancelled: an error
                # It may have stopped before the hand-over: then it may be leaving still.
                wait_until(lambda: worker.state is State.STOPPED, message="the worker stopped")
                assert worker.executed == 1
                with pytest.raises(ValueError, match="is below what this process holds"):
                    worker.run_async()  # it would stop after every request
                task.cancel()
        finally:
            worker.cancel()
            _HOARD.clear()


# -- worker processes -----------------------------------------------------------------------------


def test_cluster_replaces_workers_over_their_limit_during_an_ordered_imap(tmp_path, monkeypatch):
    monkeypatch.setenv(EVALUATIONS, str(tmp_path))  # the worker processes inherit it
    count = 40
    with pfmq.LocalCluster(hoard, 2, max_memory=PROCESS_LIMIT, heartbeat_interval=SLOW_HEARTBEAT,
                           broker_options={"heartbeat_interval": SLOW_HEARTBEAT}) as cluster:
        first = cluster.pids
        results = list(cluster.imap(range(count), max_batch=1))
        check_served_once(results, tmp_path, count)
        pids = {pid for _, pid in results}
        assert len(pids) > 2 and set(cluster.pids).isdisjoint(first)  # all replaced
        assert cluster.recycles >= len(pids) - 2 and cluster.restarts == cluster.recycles
        assert all(slot.deaths == 0 for slot in cluster.supervisor.slots)
        stats = wait_until(lambda: (lambda s: s["restarts"] == cluster.restarts and s)(
            cluster.stats()), message="the broker counting the restarts")
        assert stats["workers_lost"] == 0 and stats["failed"] == 0
        wait_until(lambda: cluster.supervisor.states == [SlotState.RUNNING] * 2,
                   message="both slots serving")  # the last replacement may be loading still


def test_cli_worker_pool_replaces_workers_over_their_limit(tmp_path, monkeypatch):
    directory = tmp_path / "evaluations"
    directory.mkdir()
    monkeypatch.setenv(EVALUATIONS, str(directory))
    count = 40
    with running_broker() as broker, open(tmp_path / "worker.log", "w+") as log:
        pool = pfmq_worker("test_memory:hoard", "--address", broker.backend_address,
                           "--processes", "2", "--max-memory", PROCESS_LIMIT,
                           "--heartbeat-interval", str(HEARTBEAT), stdout=log,
                           stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: broker.stats()["workers"] == 2, timeout=30, message="2 workers")
            results = list(broker.imap(range(count), max_batch=1))
            check_served_once(results, directory, count)
            assert len({pid for _, pid in results}) > 2
            wait_until(lambda: broker.stats()["restarts"] >= 1, message="restarts counted")
            pool.send_signal(signal.SIGTERM)
            assert pool.wait(30) == 0
        finally:
            output = end_worker_pool(pool, log)
    assert "Traceback" not in output and "error:" not in output, output
    assert re.search(r"worker \d: process \d+ asked to be replaced", output), output


def test_a_single_cli_worker_over_its_limit_exits_to_be_restarted(tmp_path, monkeypatch):
    monkeypatch.setenv(EVALUATIONS, str(tmp_path))
    with running_broker() as broker:
        worker = pfmq_worker("test_memory:hoard", "--address", broker.backend_address,
                             "--max-memory", PROCESS_LIMIT, "--prefetch", "0",
                             "--heartbeat-interval", str(HEARTBEAT), stderr=subprocess.PIPE,
                             text=True)
        try:
            wait_until(lambda: broker.stats()["workers"] == 1, timeout=30, message="a worker")
            results = []
            served = threading.Thread(
                target=lambda: results.extend(broker.imap(range(20), max_batch=1)), daemon=True)
            served.start()
            _, stderr = worker.communicate(timeout=60)  # it exits with requests left
            assert worker.returncode == launch.EXIT_RESTART, stderr
            assert "error:" not in stderr and "above its max_memory" in stderr, stderr
        finally:
            end_process(worker)
        done = sum(evaluations(tmp_path).values())
        assert 1 <= done < 20 and set(evaluations(tmp_path).values()) == {1}
        with pfmq.Worker(record, broker.backend_address, heartbeat_interval=HEARTBEAT):
            served.join(60)  # the next worker serves the rest: nothing was lost
    check_served_once(results, tmp_path, 20)


def test_cli_refuses_a_bad_max_memory(capsys):
    assert cli.main(["worker", "test_memory:hoard", "--max-memory", "2 GB?"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "pfmq worker: error: --max-memory='2 GB?' is not a size such as '2GiB' or '500 MB'"]


def test_cli_help_names_max_memory():
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["worker"].format_help()
    assert "--max-memory SIZE" in help_text and "2GiB" in help_text
