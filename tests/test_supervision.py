"""Supervised worker pools: LocalCluster and ``pfmq worker --processes N`` replace dead workers,
back off, and give up on crash loops with the worker's own last words."""
import ctypes
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import zmq
from pfmq_helpers import (
    PACKAGE_PARENT,
    end_process,
    end_worker_pool,
    pfmq_worker,
    running_broker,
    wait_until,
    worker_children,
)

from pythonflow import pfmq
from pythonflow.pfmq import launch, protocol
from pythonflow.pfmq.protocol import Kind
from pythonflow.pfmq.supervisor import CrashLoopError, SlotState, Supervisor, describe_exit

pytestmark = pytest.mark.timeout(90)

HEARTBEAT = 0.1
#: Where crash_when_marked looks for the file that makes it crash (set per test).
MARKER_VARIABLE = "PFMQ_TEST_CRASH_MARKER"
LAST_WORDS = "loading the weights from /nowhere/model.bin"


def slow_double(request):
    """Sleep a little, so that a stream is still running when a test kills a worker."""
    time.sleep(0.01)
    return 2 * request


def crash_exit():
    """A target factory that fails in every worker process: exit status 1 after its message."""
    print(LAST_WORDS, file=sys.stderr, flush=True)
    raise RuntimeError("no model here")


def crash_segfault():
    """A target factory that takes its worker process down with SIGSEGV."""
    print(LAST_WORDS, file=sys.stderr, flush=True)
    ctypes.string_at(0)


def restart_when_marked(request):
    """Double ``request``; but first, if the file named by ``MARKER_VARIABLE`` exists, remove it
    and end this worker process with ``EXIT_RESTART``, as a worker passing its memory limit does."""
    marker = os.environ[MARKER_VARIABLE]
    if os.path.exists(marker):
        os.remove(marker)
        os._exit(launch.EXIT_RESTART)
    return 2 * request


def crash_when_marked():
    """A target factory that works until the file named by ``MARKER_VARIABLE`` exists."""
    if os.path.exists(os.environ[MARKER_VARIABLE]):
        crash_exit()
    return slow_double


def fast_cluster(target, num_workers=2, **options):
    """A LocalCluster whose broker and workers notice a dead peer within a fraction of a second."""
    return pfmq.LocalCluster(target, num_workers, broker_options={"heartbeat_interval": HEARTBEAT},
                             heartbeat_interval=HEARTBEAT, **options)


def replaced(cluster, old_pids, count):
    """The cluster's worker PIDs once ``count`` processes run and none is one of ``old_pids``."""
    pids = cluster.pids
    return pids if len(pids) == count and not set(pids) & set(old_pids) else None


# -- LocalCluster ---------------------------------------------------------------------------------


def test_cluster_replaces_a_killed_worker_during_an_ordered_imap():
    with fast_cluster(slow_double) as cluster:
        first = cluster.pids
        assert len(first) == 2 and cluster.restarts == 0
        results = []
        for result in cluster.imap(range(300)):
            results.append(result)
            if len(results) == 30:
                os.kill(first[0], signal.SIGKILL)
        assert results == [2 * i for i in range(300)]  # each once, in order
        pids = wait_until(lambda: replaced(cluster, first[:1], 2), timeout=10,
                          message="a new worker process")
        assert first[1] in pids and cluster.restarts == 1
        stats = wait_until(lambda: (lambda s: s["workers"] == 2 and s["restarts"] == 1 and s)(
            cluster.stats()), timeout=10, message="the broker counting the restart")
        assert list(stats["supervisors"].values()) == [{"slots": 2, "running": 2, "restarts": 1}]
        assert cluster.supervisor.states == [SlotState.RUNNING] * 2
        assert list(cluster.imap(range(20))) == [2 * i for i in range(20)]


def test_deaths_while_serving_never_count_as_a_crash_loop():
    with fast_cluster(slow_double, num_workers=1, crash_limit=1) as cluster:
        for restarts in range(1, 4):
            (pid,) = cluster.pids
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda pid=pid: replaced(cluster, [pid], 1), timeout=15,
                       message="a new worker process")
            assert cluster.restarts == restarts
            assert cluster.apply(restarts) == 2 * restarts
        # Backoff: 0.1 s, then 0.2 s, then 0.4 s after deaths in a row.
        assert cluster.supervisor.slots[0].deaths == 3


@pytest.mark.parametrize("target, how", [("test_supervision:crash_exit", "exit status 1"),
                                         ("test_supervision:crash_segfault", "killed by SIGSEGV")])
def test_crash_loop_at_start_up_names_the_worker_and_shows_its_log(target, how):
    cluster = pfmq.LocalCluster(target, num_workers=1, crash_limit=2)
    started = time.monotonic()
    with pytest.raises(CrashLoopError) as caught:
        cluster.start()
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert message.startswith("worker 0 exited during start-up 2 times in a row "
                              f"(the last time: {how}); the last lines of its log:\n")
    assert f"\n    {LAST_WORDS}\n" in message
    assert cluster.supervisor.states == [SlotState.FAILED]
    assert all(process.exitcode is not None for process in cluster.processes)
    assert cluster.broker is None  # closed on the way out


def test_crash_loop_after_start_ends_the_cluster(tmp_path, monkeypatch):
    marker = tmp_path / "broken"
    monkeypatch.setenv(MARKER_VARIABLE, str(marker))
    with fast_cluster("test_supervision:crash_when_marked", num_workers=2,
                      crash_limit=2) as cluster:
        task = cluster.imap(range(10 ** 6), timeout=0.5, num_retries=2)
        assert next(task) == 0
        marker.touch()  # from now on, a new worker process cannot load its target
        os.kill(cluster.pids[0], signal.SIGKILL)
        wait_until(lambda: cluster.supervisor.error is not None and not cluster.broker.is_alive,
                   timeout=30, message="the supervisor to give up")
        with pytest.raises(CrashLoopError, match="worker 0 exited during start-up 2 times"):
            cluster.apply(1)
        assert cluster.pids == []  # the other worker was stopped as well
        # The broker has stopped too, so that the running task ends instead of waiting.
        with pytest.raises(TimeoutError, match="no answer from the broker"):
            for _ in task:
                pass


def test_a_worker_that_gives_up_on_the_broker_is_not_restarted():
    with socket.socket() as unused:  # a loopback port nobody listens on
        unused.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{unused.getsockname()[1]}"
    supervisor = Supervisor(launch.pack_target(slow_double), address, 1,
                            {"timeout": 0.2, "num_retries": 2}, report=False)
    started = time.monotonic()
    supervisor.run()  # returns once every slot has stopped for good
    assert time.monotonic() - started < 30
    assert supervisor.states == [SlotState.STOPPED] and supervisor.restarts == 0
    assert supervisor.processes[0].exitcode == launch.EXIT_NO_BROKER


def test_a_worker_exiting_to_be_replaced_starts_again_at_once(tmp_path, monkeypatch):
    marker = tmp_path / "restart"
    monkeypatch.setenv(MARKER_VARIABLE, str(marker))
    with running_broker() as broker:
        # A death would wait a minute for its replacement, and one more would end the pool.
        supervisor = Supervisor(launch.pack_target(restart_when_marked), broker.backend_address,
                                1, {"heartbeat_interval": 0.2}, crash_limit=1, backoff=60.0,
                                max_backoff=60.0, stable_after=60.0)
        supervisor.run_async()
        try:
            wait_until(lambda: supervisor.states == [SlotState.RUNNING], timeout=30,
                       message="the first process serving")
            (first,) = supervisor.pids
            marker.touch()
            with ThreadPoolExecutor(1) as pool:
                result = pool.submit(broker.apply, 21)  # ends the first process
                wait_until(lambda: (lambda p: p and p != [first] and p)(supervisor.pids),
                           timeout=20, message="a process in place of the first")
                assert result.result(timeout=30) == 42  # the request the first one left undone
            slot = supervisor.slots[0]
            assert (supervisor.restarts, supervisor.recycles, slot.deaths) == (1, 1, 0)
            assert slot.startup_deaths == 0 and supervisor.error is None
            assert supervisor.processes[0].pid != first and not marker.exists()
        finally:
            supervisor.stop(timeout=30)
    assert supervisor.states == [SlotState.STOPPED]


def test_waiting_for_workers_tells_the_pool_failure_that_stopped_the_broker():
    asked = []

    class StoppingBroker:
        backend_address = "ipc://nowhere"

        def stats(self):  # the pool failed meanwhile and cancelled the broker
            asked.append(True)
            raise TimeoutError("no answer from the broker at inproc://frontend in 5.0 s")

    def check():
        if asked:
            raise CrashLoopError("worker 0 exited during start-up 1 times in a row")

    with pytest.raises(CrashLoopError, match="worker 0 exited during start-up"):
        launch.wait_for_workers(StoppingBroker(), 1, timeout=10, check=check)


def test_a_pool_that_cannot_start_processes_fails_at_once(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(launch, "start_process", refuse)
    cluster = pfmq.LocalCluster(slow_double, 1, startup_timeout=60)
    started = time.monotonic()
    with pytest.raises(OSError, match="temporarily unavailable"):
        cluster.start()  # not after the start-up timeout
    assert time.monotonic() - started < 10 and cluster.broker is None


@pytest.mark.parametrize("num_workers, error, message", [
    (0, ValueError, "num_workers must be at least 1, not 0"),
    (-3, ValueError, "num_workers must be at least 1, not -3"),
    (2.5, TypeError, "num_workers must be a whole number, not float"),
    (True, TypeError, "num_workers must be a whole number, not bool"),
])
def test_bad_worker_counts(num_workers, error, message):
    with pytest.raises(error) as caught:
        pfmq.LocalCluster(slow_double, num_workers)
    assert str(caught.value) == message
    with pytest.raises(error):
        Supervisor(launch.pack_target(slow_double), "tcp://127.0.0.1:1", num_workers)


def test_bad_supervisor_options():
    spec = launch.pack_target(slow_double)
    with pytest.raises(ValueError, match="crash_limit must be at least 1, not 0"):
        pfmq.LocalCluster(slow_double, 1, crash_limit=0)
    with pytest.raises(ValueError, match="backoff <= max_backoff"):
        Supervisor(spec, "tcp://127.0.0.1:1", 1, backoff=2.0, max_backoff=1.0)


def test_broker_shows_reports_until_their_supervisor_falls_silent():
    with running_broker() as broker:  # heartbeats every 0.2 s
        sock = zmq.Context.instance().socket(zmq.DEALER)
        try:
            sock.connect(broker.backend_address)
            sock.send_multipart(protocol.Wire(broker.key).pack(Kind.REPORT, 4, 3, 7, 200))
            stats = wait_until(lambda: (lambda s: s["restarts"] == 7 and s)(broker.stats()),
                               message="the report")
            assert list(stats["supervisors"].values()) == [
                {"slots": 4, "running": 3, "restarts": 7}]
            # Silent for three of its 0.2 s intervals, the supervisor is forgotten.
            wait_until(lambda: broker.stats()["supervisors"] == {}, message="report dropped")
            assert broker.stats()["restarts"] == 0
        finally:
            sock.close(linger=0)


def test_crash_loop_error_is_exported():
    assert pfmq.CrashLoopError is CrashLoopError and issubclass(CrashLoopError, RuntimeError)


def test_describe_exit():
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"


# -- pfmq worker --processes N --------------------------------------------------------------------


def test_cli_worker_pool_replaces_a_killed_child(tmp_path):
    with running_broker(frontend_address="tcp://127.0.0.1:*") as broker:
        log = open(tmp_path / "worker.log", "w+")
        cli = pfmq_worker("test_supervision:slow_double", "--address", broker.backend_address,
                          "--processes", "2", "--heartbeat-interval", str(HEARTBEAT),
                          stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: broker.stats()["workers"] == 2, timeout=30, message="2 workers")
            first = wait_until(lambda: (lambda c: len(c) == 2 and c)(worker_children(cli.pid)))
            os.kill(first[0], signal.SIGKILL)
            now = wait_until(lambda: (lambda c: len(c) == 2 and first[0] not in c and c)(
                worker_children(cli.pid)), timeout=10, message="a new worker process")
            assert first[1] in now
            wait_until(lambda: (lambda s: s["restarts"] == 1 and s["workers"] == 2)(
                broker.stats()), timeout=10, message="the broker counting the restart")
            assert list(broker.imap(range(40))) == [2 * i for i in range(40)]
            status = subprocess.run(
                [sys.executable, "-m", "pythonflow.pfmq", "status", "--frontend",
                 broker.frontend_address], capture_output=True, text=True, timeout=30,
                env={**os.environ, "PYTHONPATH": PACKAGE_PARENT})
            assert ["restarts", "1"] in [line.split() for line in status.stdout.splitlines()]
            cli.send_signal(signal.SIGTERM)
            assert cli.wait(20) == 0
            assert worker_children(cli.pid) == []
        finally:
            output = end_worker_pool(cli, log)
            log.close()
    assert re.search(rf"worker \d: process {first[0]} killed by SIGKILL while serving", output)
    assert "Traceback" not in output, output


def test_cli_worker_pool_ends_on_a_crash_loop():
    cli = pfmq_worker("test_supervision:crash_exit", "--address", "tcp://127.0.0.1:9",
                      "--processes", "2", "--log-level", "error", stderr=subprocess.PIPE,
                      text=True)
    try:
        _, stderr = cli.communicate(timeout=60)
    finally:
        end_process(cli)
    assert cli.returncode == 1
    errors = [line for line in stderr.splitlines() if line.startswith("pfmq worker: error: ")]
    assert any("exited during start-up 3 times in a row (the last time: exit status 1); the last "
               "lines of its log:" in line for line in errors), stderr
    assert f"    {LAST_WORDS}" in stderr.splitlines()


@pytest.mark.parametrize("value", ["0", "-2"])
def test_cli_refuses_no_processes(value):
    cli = pfmq_worker("test_supervision:slow_double", "--processes", value,
                      stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = cli.communicate(timeout=30)
    finally:
        end_process(cli)
    assert cli.returncode == 1
    assert stderr.strip().splitlines() == [
        f"pfmq worker: error: --processes must be at least 1, not {value}"]
