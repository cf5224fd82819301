"""Watching a pool: the per-worker and per-task figures of broker.stats(), pfmq status --watch."""
import io
import json
import os
import pty
import queue
import select
import signal
import subprocess
import threading

import pytest
from pfmq_helpers import (  # noqa: F401 (broker_fixture provides the ``broker`` fixture)
    broker_fixture,
    pfmq_cli,
    running_broker,
    thread_workers,
    wait_until,
)

from pythonflow.pfmq import cli
from pythonflow.pfmq.status import CLEAR_SCREEN, HOME, format_status, watch, window_rates

pytestmark = pytest.mark.timeout(90)


def status_command(frontend, *options):
    return pfmq_cli("status", "--frontend", frontend, *options)


def end(process):
    """End a process started by a test, by its PID, however the test went."""
    if process.poll() is None:
        process.kill()
    process.wait(10)


@pytest.fixture(name="pool")
def pool_fixture():
    """A broker with a tcp:// frontend, one thread worker taking 5 ms a request, and an endless
    ``imap`` consumed in a thread, so that the figures keep changing."""
    stop = threading.Event()
    with running_broker(frontend_address="tcp://127.0.0.1:*") as broker:
        with thread_workers(broker.backend_address, 1,
                            target=lambda request: stop.wait(0.005) or request):
            def consume():
                task = broker.imap(iter(int, 1), max_batch=1)  # zeros without end
                for _ in task:
                    if stop.is_set():
                        break
                task.cancel()

            consumer = threading.Thread(target=consume, daemon=True)
            consumer.start()
            try:
                yield broker
            finally:
                stop.set()
                consumer.join(20)
                assert not consumer.is_alive()


def test_stats_break_the_figures_down_by_worker_and_task(broker):
    gate = threading.Event()

    def evaluate(request):
        if request >= 3:  # the first three are answered, then the worker holds two jobs
            gate.wait(30)
        return request

    outcome = []
    with thread_workers(broker.backend_address, 1, target=evaluate, prefetch=1):
        consumer = threading.Thread(
            target=lambda: outcome.extend(broker.imap(range(8), max_batch=1)), daemon=True)
        consumer.start()
        try:
            # Capacity 2 (one running, one prefetched): 3 answered, 2 held, 3 queued.
            stats = wait_until(lambda: (lambda s: s if [
                (t["completed"], t["in_flight"], t["queued"]) for t in s["per_task"].values()
            ] == [(3, 2, 3)] else None)(broker.stats()), 20, message="the worker to hold two")
            (worker,) = stats["per_worker"].values()
            assert (worker["completed"], worker["in_flight"]) == (3, 2)
            assert (stats["completed"], stats["in_flight"], stats["queued"]) == (3, 2, 3)
            assert worker["age"] > 0
            # Three results since it joined; the age is rounded to milliseconds, the rate too.
            low, high = 3 / (worker["age"] + 0.0005), 3 / max(worker["age"] - 0.0005, 1e-9)
            assert low - 0.001 <= worker["per_second"] <= high + 0.001
        finally:
            gate.set()
            consumer.join(20)
        assert outcome == list(range(8))
        stats = broker.stats()
    (worker,) = stats["per_worker"].values()
    assert worker["completed"] == stats["completed"] == 8


def test_window_rates_come_from_two_snapshots_of_one_broker():
    before = {"incarnation": 7, "completed": 10,
              "per_worker": {"aa": {"completed": 4}, "bb": {"completed": 6}}}
    after = {"incarnation": 7, "completed": 30,
             "per_worker": {"aa": {"completed": 9}, "bb": {"completed": 6},
                            "cc": {"completed": 15}}}
    assert window_rates(before, after, 2.0) == {"": 10.0, "aa": 2.5, "bb": 0.0}
    assert window_rates(None, after, 2.0) == {}
    assert window_rates({**before, "incarnation": 8}, after, 2.0) == {}  # the broker restarted


SNAPSHOT = {
    "incarnation": 1, "workers": 1, "capacity": 2, "tasks": 1, "queued": 3, "in_flight": 2,
    "completed": 40, "requeued": 1, "failed": 0, "cancelled": 0, "workers_lost": 1,
    "restarts": 2,
    "per_worker": {"0123456789abcdef": {"capacity": 2, "credit": 0, "in_flight": 2,
                                        "completed": 40, "age": 125.0, "per_second": 0.32}},
    "per_task": {"fedcba9876543210": {"queued": 3, "in_flight": 2, "completed": 40}},
    "supervisors": {"00112233aabbccdd": {"slots": 2, "running": 1, "restarts": 2}},
}


def test_format_status_shows_workers_tasks_and_supervisors():
    lines = [line.split() for line in format_status(SNAPSHOT, "tcp://here:1").splitlines()]
    assert lines[0] == ["broker", "at", "tcp://here:1"]
    assert ["requeued", "1"] in lines and ["restarts", "2"] in lines
    assert ["01234567", "completed", "40", "in", "flight", "2/2", "results/s", "0.3", "age",
            "2m05s"] in lines
    assert ["task", "fedcba98", "queued", "3", "in", "flight", "2", "completed", "40"] in lines
    assert ["supervisor", "00112233", "slots", "2", "running", "1", "restarts", "2"] in lines


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class _Done(Exception):
    pass


def test_watch_redraws_in_place_with_rates_over_the_last_refresh():
    snapshots = iter([SNAPSHOT, {**SNAPSHOT, "completed": 60, "per_worker": {
        "0123456789abcdef": {**SNAPSHOT["per_worker"]["0123456789abcdef"], "completed": 60}}}])
    now = [100.0]  # a clock that moves only while watch() sleeps
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise _Done
        now[0] += seconds

    out = _Terminal()
    with pytest.raises(_Done):
        watch(lambda: next(snapshots), "tcp://here:1", 5.0, out=out, clock=lambda: now[0],
              sleep=sleep)
    assert sleeps == [5.0, 5.0]
    first, second = out.getvalue().split(HOME)[1:]
    assert out.getvalue().startswith(CLEAR_SCREEN + HOME)  # the screen is cleared once
    assert "01234567  completed 40  in flight 2/2  results/s 0.3  age" in first  # since it joined
    assert "results/s    " not in first  # no window yet for the broker's total
    # 20 results in the 5 s between the two answers, for the broker and for its one worker.
    assert "  results/s    4.0\x1b[K\n" in second
    assert "01234567  completed 60  in flight 2/2  results/s 4.0  age" in second


def test_watch_prints_one_json_line_per_refresh_and_stops_on_sigint(pool):
    command, env = status_command(pool.frontend_address, "--watch", "--interval", "0.2",
                                  "--json")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout],
                              daemon=True)
    reader.start()
    try:
        seen = []
        while len(set(s["completed"] for s in seen)) < 3:  # the figures move between refreshes
            seen.append(json.loads(lines.get(timeout=20)))
        assert all(s["workers"] == 1 and s["tasks"] == 1 for s in seen)
        assert [s["completed"] for s in seen] == sorted(s["completed"] for s in seen)
        (task,) = seen[-1]["per_task"].values()
        assert task["completed"] == seen[-1]["completed"] > 0
        os.kill(process.pid, signal.SIGINT)
        assert process.wait(10) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        end(process)
        reader.join(10)


def test_watch_on_a_terminal_redraws_until_sigterm(pool):
    command, env = status_command(pool.frontend_address, "--watch", "--interval", "0.2")
    primary, secondary = pty.openpty()
    process = subprocess.Popen(command, env=env, stdout=secondary, stderr=subprocess.PIPE)
    os.close(secondary)
    try:
        shown = b""
        while shown.count(HOME.encode()) < 3 or b"per task:" not in shown:
            ready, _, _ = select.select([primary], [], [], 20)
            assert ready, f"no refresh within 20 s; shown so far: {shown!r}"
            shown += os.read(primary, 65536)
        frames = shown.decode().split(HOME)
        assert frames[0] == CLEAR_SCREEN  # cleared once, then each frame overwrites the last
        assert "results/s    " in frames[-2] and "per worker:" in frames[-2]
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        end(process)
        os.close(primary)


def test_watch_ends_quietly_when_its_reader_goes_away(pool):
    command, env = status_command(pool.frontend_address, "--watch", "--interval", "0.05",
                                  "--json")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        json.loads(process.stdout.readline())
        process.stdout.close()  # as `| head -1` does
        assert process.wait(20) == 0
        assert process.stderr.read() == b""
    finally:
        end(process)


@pytest.mark.parametrize("options, message", [
    (["--watch", "--interval", "0"], "--interval must be a positive number of seconds, not 0"),
    (["--watch", "--interval", "-2"], "--interval must be a positive number of seconds, not -2"),
    (["--watch", "--interval", "nan"], "--interval must be a positive number of seconds, not nan"),
    (["--interval", "1"], "--interval applies only with --watch"),
])
def test_a_bad_interval_is_a_one_line_error(capsys, options, message):
    assert cli.main(["status", "--frontend", "tcp://127.0.0.1:9", *options]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"pfmq status: error: {message}\n"


def test_an_interval_that_is_not_a_number_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["status", "--watch", "--interval", "often"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--interval: invalid float value: 'often'" in line


def test_watch_shows_a_broker_that_does_not_answer_and_asks_again(capsys):
    answers = iter([TimeoutError("no answer from the broker at tcp://here:1 in 0.5 s"), SNAPSHOT,
                    TimeoutError("no answer again")])

    def query():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(seconds):
        if len(calls) == 2:
            raise _Done
        calls.append(seconds)

    calls = []
    out = io.StringIO()  # not a terminal: each frame after the last
    with pytest.raises(_Done):
        watch(query, "tcp://here:1", 0.5, out=out, sleep=sleep)
    frames = out.getvalue().split("\n\n")
    assert "  no answer: no answer from the broker at tcp://here:1 in 0.5 s" in frames[0]
    assert "per worker:" in frames[1] and "no answer again" in frames[2]
    assert HOME not in out.getvalue()

    answers = iter([TimeoutError("no answer from the broker"), SNAPSHOT, SNAPSHOT])
    calls = []
    out = io.StringIO()
    with pytest.raises(_Done):
        watch(query, "tcp://here:1", 0.5, as_json=True, out=out, sleep=sleep)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [SNAPSHOT, SNAPSHOT]
    assert capsys.readouterr().err == "pfmq status: no answer from the broker\n"
