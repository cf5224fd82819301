"""The two pfmq worker styles of Pythonflow: ``run_async()`` alone serving (0.3) and
``with worker: worker.process_requests()`` serving in the calling thread (the prefetch design),
with the life cycle around them: not running, giving up, restarting."""
import threading
import time

import pytest
from pfmq_helpers import HEARTBEAT, broker_fixture, running_broker, wait_until  # noqa: F401
from worker_process import make_graph

from pythonflow import pfmq
from pythonflow.pfmq.worker import State

pytestmark = pytest.mark.timeout(60)


def first_result(broker, request, timeout=10.0):
    """The result of one request, or ``TimeoutError`` if no worker answers within ``timeout``."""
    with broker.imap([request]) as task:
        return next(task.iter_results(timeout=timeout))


def thread_name_target(request):
    """Return the request with the name of the thread that evaluated it."""
    return request, threading.current_thread().name


def make(broker, target=thread_name_target, **options):
    options.setdefault("heartbeat_interval", HEARTBEAT)
    return pfmq.Worker(target, broker.backend_address, **options)


def start_thread(function, *args):
    thread = threading.Thread(target=function, args=args, daemon=True)
    thread.start()
    return thread


# -- Pythonflow 0.3: run_async() alone serves ---------------------------------------------------


@pytest.mark.skipif(make_graph() is None, reason="pythonflow.Graph not available")
def test_run_async_alone_serves_a_graph(broker):
    worker = pfmq.Worker.from_graph(make_graph(), broker.backend_address,
                                    heartbeat_interval=HEARTBEAT)
    assert not worker.is_alive and worker.state is State.STOPPED
    worker.run_async()
    try:
        assert worker.is_alive and worker.state is State.BACKGROUND
        assert first_result(broker, {"fetches": "double", "context": {"x": 4}}) == 8
        assert list(broker.imap({"fetches": "square", "context": {"x": i}} for i in range(20))) \
            == [i * i for i in range(20)]
    finally:
        worker.cancel(timeout=10)
    assert not worker.is_alive and worker.state is State.STOPPED
    worker.cancel()  # cancelling a stopped worker does nothing


def test_start_option_and_with_block_alone_serve(broker):
    worker = make(broker, start=True)
    try:
        assert first_result(broker, 1) == (1, "pfmq-worker")
    finally:
        worker.cancel(timeout=10)
    with make(broker) as worker:
        assert worker.is_alive
        assert first_result(broker, 2) == (2, "pfmq-worker")
    assert not worker.is_alive


# -- the prefetch design: process_requests() serves in the calling thread -----------------------


def test_process_requests_takes_over_in_the_calling_thread(broker):
    worker = make(broker).run_async()
    serving = threading.Thread(target=worker.process_requests, name="caller", daemon=True)
    try:
        serving.start()
        wait_until(lambda: worker.state is State.FOREGROUND, message="the hand-over")
        assert worker.is_alive
        results = list(broker.imap(range(30)))
        assert results == [(i, "caller") for i in range(30)]
        with pytest.raises(RuntimeError, match="already serves in thread 'caller'"):
            worker.process_requests()
        with pytest.raises(RuntimeError, match="already running"):
            worker.run_async()
    finally:
        worker.cancel(timeout=10)
    serving.join(5)
    assert not serving.is_alive() and not worker.is_alive


def test_hand_over_waits_for_the_request_being_evaluated(broker):
    release = threading.Event()

    def target(request):
        if request == "hold":
            release.wait(10)
        return thread_name_target(request)

    with make(broker, target) as worker:
        held = broker.imap(["hold"])
        wait_until(lambda: worker.busy, message="the background thread evaluating")
        serving = threading.Thread(target=worker.process_requests, name="caller", daemon=True)
        serving.start()
        wait_until(lambda: worker.state is State.HANDOVER, message="the hand-over asked for")
        release.set()
        assert list(held) == [("hold", "pfmq-worker")]
        wait_until(lambda: worker.state is State.FOREGROUND, message="the hand-over")
        assert first_result(broker, "next") == ("next", "caller")
        assert worker.executed == 2
    serving.join(5)
    assert not serving.is_alive()


def test_with_worker_process_requests_in_a_thread_and_cancel(broker):
    worker = make(broker)
    failures = []

    def serve():
        try:
            with worker:
                worker.process_requests()
        except BaseException as exc:  # noqa: B036 - reported to the test
            failures.append(exc)

    thread = start_thread(serve)
    wait_until(lambda: worker.state is State.FOREGROUND, message="serving in the thread")
    assert list(broker.imap(range(5))) == [(i, thread.name) for i in range(5)]
    worker.cancel(timeout=10)
    thread.join(5)
    assert not thread.is_alive() and not failures and not worker.is_alive


def test_process_requests_on_a_worker_not_running_fails_at_once():
    worker = pfmq.Worker(None, None, start=False)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="not running"):
        worker.process_requests()
    assert time.monotonic() - started < 1
    with pytest.raises(TypeError, match="callable target"):
        worker.run_async()
    worker.target = abs
    with pytest.raises(ValueError, match="not a ZeroMQ address"):
        worker.run()
    assert not worker.is_alive


# -- options ------------------------------------------------------------------------------------


def test_max_retries_is_the_old_name_of_num_retries():
    assert pfmq.Worker(abs, "inproc://nobody", max_retries=3).num_retries == 3
    assert pfmq.Worker(abs, "inproc://nobody", num_retries=2).max_retries == 2
    assert pfmq.Worker(abs, "inproc://nobody", num_retries=4, max_retries=4).num_retries == 4
    assert pfmq.Worker(abs, "inproc://nobody", max_retries=None).num_retries is None
    with pytest.raises(TypeError, match="num_retries=2 and max_retries=3 disagree"):
        pfmq.Worker(abs, "inproc://nobody", num_retries=2, max_retries=3)


@pytest.mark.parametrize("options, message", [
    ({"num_retries": 0}, "num_retries"), ({"timeout": 0}, "timeout"),
    ({"prefetch": -1}, "prefetch"), ({"heartbeat_interval": 0}, "heartbeat_interval"),
    ({"heartbeat_liveness": 0}, "heartbeat_liveness"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        pfmq.Worker(abs, "inproc://nobody", **options)


# -- no broker: giving up ----------------------------------------------------------------------


def test_run_without_a_broker_returns_after_its_retries(tmp_path):
    worker = pfmq.Worker(abs, f"ipc://{tmp_path}/nobody", timeout=0.1, max_retries=3)
    started = time.monotonic()
    worker.run()  # returns, as Pythonflow 0.3's did
    assert 0.3 < time.monotonic() - started < 5
    assert isinstance(worker.error, TimeoutError) and "no answer" in str(worker.error)
    assert not worker.is_alive
    with pytest.raises(RuntimeError, match="gave up"):
        worker.process_requests()


def test_process_requests_without_a_broker_raises_timeout_error(tmp_path):
    worker = pfmq.Worker(abs, f"ipc://{tmp_path}/nobody", timeout=0.1, num_retries=2)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer"):
        with worker:
            worker.process_requests()
    assert 0.2 < time.monotonic() - started < 5
    assert not worker.is_alive


# -- restarting ---------------------------------------------------------------------------------


def test_cancelled_worker_starts_again(broker):
    worker = make(broker).run_async()
    try:
        assert first_result(broker, 1) == (1, "pfmq-worker")
    finally:
        worker.cancel(timeout=10)
    assert not worker.is_alive
    thread = start_thread(worker.run)
    try:
        wait_until(lambda: worker.state is State.FOREGROUND, message="running again")
        assert first_result(broker, 2) == (2, thread.name)
        assert worker.executed == 2
    finally:
        worker.cancel(timeout=10)
    thread.join(5)
    assert not thread.is_alive()


def test_worker_that_gave_up_starts_again_and_forgets_the_error(tmp_path):
    address = f"ipc://{tmp_path}/backend"
    worker = pfmq.Worker(thread_name_target, address, timeout=0.1, num_retries=1,
                         heartbeat_interval=HEARTBEAT)
    worker.run()
    assert isinstance(worker.error, TimeoutError)
    with running_broker(address) as broker:
        worker.run_async()
        try:
            assert worker.error is None
            assert first_result(broker, 3) == (3, "pfmq-worker")
        finally:
            worker.cancel(timeout=10)
    assert worker.error is None and not worker.is_alive
