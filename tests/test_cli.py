"""The pfmq command end to end: broker, worker and status in subprocesses, bad input, the demo."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from pfmq_helpers import PACKAGE_PARENT, wait_until

import pythonflow as pf
from pythonflow import pfmq

pytestmark = pytest.mark.timeout(90)

HERE = os.path.dirname(os.path.abspath(__file__))

# Served by `pfmq worker test_cli:GRAPH` in the tests below.
with pf.Graph() as GRAPH:
    _x = pf.placeholder("x")
    (_x * 10).set_name("y")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment():
    env = dict(os.environ)
    # The subprocesses import the pythonflow under test, and this module for its graph.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, HERE,
                                                      env.get("PYTHONPATH")]))
    env.pop("PFMQ_KEY", None)
    return env


def pfmq_command(*args, timeout=30):
    """Run ``pfmq ARGS`` to completion; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "pythonflow.pfmq", *args], env=environment(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def spawn(tmp_path):
    """Start ``pfmq ARGS`` in the background; every process is ended by its PID afterwards."""
    started = []

    def start(*args):
        log = open(tmp_path / f"log{len(started)}.txt", "w+")
        process = subprocess.Popen([sys.executable, "-m", "pythonflow.pfmq", *args],
                                   env=environment(), stdout=log, stderr=subprocess.STDOUT)
        process.log = log
        started.append(process)
        return process

    yield start
    for process in started:
        try:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        finally:
            process.log.close()


def output(process):
    process.log.flush()
    process.log.seek(0)
    return process.log.read()


def stop(process):
    process.send_signal(signal.SIGTERM)
    return process.wait(15)


def status_of(frontend):
    try:
        return pfmq.query_status(frontend, timeout=0.5)
    except TimeoutError:
        return None


def test_broker_worker_status_end_to_end(spawn):
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    broker = spawn("broker", "--frontend", frontend, "--backend", backend)
    wait_until(lambda: status_of(frontend), 30, message="the broker")
    worker = spawn("worker", "test_cli:GRAPH", "--address", backend, "--processes", "2",
                   "--prefetch", "2")
    wait_until(lambda: status_of(frontend)["workers"] == 2, 30, message="two workers")

    requests = [{"fetches": "y", "context": {"x": i}} for i in range(30)]
    assert list(pfmq.Task(requests, frontend)) == [10 * i for i in range(30)]
    assert pfmq.apply({"fetches": "y", "context": {"x": 7}}, frontend) == 70

    as_json = json.loads(pfmq_command("status", "--frontend", frontend, "--json").stdout)
    assert as_json["workers"] == 2 and as_json["queued"] == as_json["in_flight"] == 0
    completed = as_json["completed"]  # jobs: a task may batch several requests into one
    assert 2 <= completed <= 31

    shown = pfmq_command("status", "--frontend", frontend)
    assert shown.returncode == 0, shown.stderr
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert ["workers", "2"] in lines
    assert ["completed", str(completed)] in lines
    assert ["in", "flight", "0"] in lines and ["queued", "0"] in lines
    assert ["capacity", "6"] in lines  # two workers holding prefetch + 1 requests each
    per_worker = [line for line in lines if line[1:2] == ["completed"]]
    assert len(per_worker) == 2 and sum(int(line[2]) for line in per_worker) == completed

    assert stop(worker) == 0
    wait_until(lambda: status_of(frontend)["workers"] == 0, 30, message="the workers to leave")
    assert stop(broker) == 0
    log = output(broker)
    assert log.count("joined") == 2 and log.count("left") == 2, log
    assert "Traceback" not in log + output(worker)


def test_single_process_worker_stops_on_sigint(spawn):
    frontend = f"tcp://127.0.0.1:{free_port()}"
    backend = f"tcp://127.0.0.1:{free_port()}"
    broker = spawn("broker", "--frontend", frontend, "--backend", backend)
    wait_until(lambda: status_of(frontend), 30, message="the broker")
    worker = spawn("worker", "test_cli:GRAPH", "--address", backend)
    wait_until(lambda: status_of(frontend)["workers"] == 1, 30, message="the worker")
    assert pfmq.apply({"fetches": "y", "context": {"x": 2}}, frontend) == 20
    worker.send_signal(signal.SIGINT)
    assert worker.wait(15) == 0
    broker.send_signal(signal.SIGINT)
    assert broker.wait(15) == 0


def assert_one_line_error(result, *fragments, code=None):
    assert result.returncode != 0
    if code is not None:
        assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], result.stderr


def test_bad_input():
    with socket.socket() as busy:  # a port in use
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(pfmq_command("broker", "--frontend", f"tcp://127.0.0.1:{port}",
                                           "--backend", f"tcp://127.0.0.1:{free_port()}"),
                              "pfmq broker: error:", "in use")
    unused = f"tcp://127.0.0.1:{free_port()}"
    assert_one_line_error(pfmq_command("frobnicate"), "invalid choice", code=2)
    assert_one_line_error(pfmq_command("broker", "--bogus"), "unrecognized", code=2)
    assert_one_line_error(pfmq_command("worker", "test_cli:GRAPH", "--processes", "two"),
                          "invalid int value", code=2)
    assert_one_line_error(pfmq_command("broker", "--frontend", "localhost:5556"),
                          "not a ZeroMQ address")
    assert_one_line_error(pfmq_command("broker", "--backend", "tcp://127.0.0.1:port"),
                          "cannot bind")
    assert_one_line_error(pfmq_command("worker", "no_such_module_xyz:graph"),
                          "pfmq worker: error:", "no_such_module_xyz")
    assert_one_line_error(pfmq_command("worker", "test_cli:NO_GRAPH"), "has no attribute")
    assert_one_line_error(pfmq_command("worker", "test_cli"), "package.module:graph")
    assert_one_line_error(pfmq_command("worker", "test_cli:GRAPH", "--address", "tcp://:x:y"),
                          "invalid address")
    assert_one_line_error(pfmq_command("worker", "test_cli:GRAPH", "--address", unused,
                                       "--timeout", "0.2", "--num-retries", "1",
                                       "--log-level", "error"),
                          "no answer from the broker")
    assert_one_line_error(pfmq_command("status", "--frontend", unused, "--timeout", "0.2"),
                          "pfmq status: error:", "no answer")


@pytest.mark.parametrize("command", ["broker", "worker", "status", "demo"])
def test_help(command):
    result = pfmq_command(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: pfmq {command}")


def test_top_level_help_lists_commands():
    result = pfmq_command("--help")
    assert result.returncode == 0
    for command in ("broker", "worker", "status", "demo", "bench"):
        assert command in result.stdout


def test_bench_is_handed_its_arguments():
    result = pfmq_command("bench", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


def test_demo_writes_png(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    path = tmp_path / "demo.png"
    result = pfmq_command("demo", "--images", "8", "--workers", "2", "--output", str(path),
                          timeout=80)
    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout
    assert "1 worker" in result.stdout and "2 workers" in result.stdout
    assert result.stdout.count("consumer waited ") == 2  # task.stats() of each run
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width > 2 * height  # original, noisy and rotated side by side


def test_demo_without_its_sample_image(tmp_path, monkeypatch, capsys):
    import pythonflow.data
    from pythonflow.pfmq import cli

    # sample_image_path looks next to the package's __init__.py: make that an empty folder.
    monkeypatch.setattr(pythonflow.data, "__file__", str(tmp_path / "__init__.py"))
    output = tmp_path / "demo.png"
    assert cli.main(["demo", "--images", "1", "--workers", "1", "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pfmq demo: error: ")
    assert str(tmp_path / "sample.png") in err and "without its data files" in err
    assert not output.exists()


# Runs the pfmq command as `python -m pythonflow.pfmq` does, in an interpreter where the module
# named by argv[1] cannot be found, as if the package providing it were not installed.
HIDE_AND_RUN = """
import importlib.abc, runpy, sys
hidden = sys.argv.pop(1)

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
sys.argv[0] = "pfmq"
runpy.run_module("pythonflow.pfmq", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("hidden", ["PIL", "scipy", "tqdm"])
def test_demo_without_its_extra_says_what_to_install(tmp_path, hidden):
    output = tmp_path / "demo.png"
    result = subprocess.run([sys.executable, "-c", HIDE_AND_RUN, hidden, "demo", "--images", "1",
                             "--workers", "1", "--output", str(output)], env=environment(),
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("pfmq demo: error: the demo needs the 'demo' extra")
    assert f"no module {hidden!r}" in result.stderr
    assert "pip install 'pythonflow[demo]'" in result.stderr
    assert result.stdout == "" and not output.exists()


def test_other_commands_do_not_need_the_demo_extra():
    # The hook hides Pillow from the whole command, which still parses and answers.
    result = subprocess.run([sys.executable, "-c", HIDE_AND_RUN, "PIL", "bench", "--workloads",
                             "W9"], env=environment(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown workloads" in result.stderr, result.stderr
    result = subprocess.run([sys.executable, "-c", HIDE_AND_RUN, "PIL", "keygen", "--help"],
                            env=environment(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("usage: pfmq keygen")


def test_example_worker_and_consumer():
    examples = os.path.join(os.path.dirname(HERE), "examples")
    backend = f"tcp://127.0.0.1:{free_port()}"
    command = [sys.executable, os.path.join(examples, "worker.py"), "--address", backend]
    worker = subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        consumer = subprocess.run([sys.executable, os.path.join(examples, "consumer.py"),
                                   "--backend", backend, "--images", "8"], env=environment(),
                                  capture_output=True, text=True, timeout=60)
        assert consumer.returncode == 0, consumer.stderr
        assert "one image: shape (" in consumer.stdout and "8 images in" in consumer.stdout
        worker.send_signal(signal.SIGINT)
        out, err = worker.communicate(timeout=15)
        assert worker.returncode == 0, err
        assert "worker stopped after 9 requests" in out
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
