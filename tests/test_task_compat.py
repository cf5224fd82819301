"""Tasks: Pythonflow 0.3 spellings and life cycle, and faults on the task side (issue 9).

* the 0.3 option names ``max_retries``/``max_results``, ``with`` on a task created with
  ``start=False``, ``run()`` in the calling thread;
* a ``StopIteration`` raised by the transformation must not end the consumer's loop silently;
* a slow request iterator must not silence the task's heartbeats (its jobs would run twice);
* ``apply`` must not leave sockets behind in threads that ended, nor reuse a connection set up
  for another CURVE key pair.
"""
import collections
import gc
import itertools
import os
import threading
import time
import uuid
import warnings

import pytest
import zmq
from pfmq_helpers import (  # noqa: F401 (broker_fixture provides the ``broker`` fixture)
    CountingIterator,
    broker_fixture,
    context_terminates,
    running_broker,
    thread_workers,
    wait_for_workers,
    wait_until,
)

from pythonflow import pfmq
from pythonflow.pfmq.reader import reader_for
from pythonflow.pfmq.security import CurveClient, CurveServer

pytestmark = pytest.mark.timeout(60)


def missing_address() -> str:
    """An ``inproc://`` address nobody serves."""
    return f"inproc://nobody-{uuid.uuid4().hex}"


# -- Pythonflow 0.3 compatibility ---------------------------------------------------------------


def test_old_option_names_are_accepted():
    task = pfmq.Task([1], missing_address(), max_retries=2, max_results=5, start=False)
    assert (task._io.num_retries, task._io.cache_size) == (2, 5)
    # The same value under both names is no conflict.
    task = pfmq.Task([1], missing_address(), num_retries=4, max_retries=4, start=False)
    assert task._io.num_retries == 4
    with pytest.raises(ValueError, match="num_retries.*max_retries"):
        pfmq.Task([1], missing_address(), num_retries=2, max_retries=5, start=False)
    with pytest.raises(ValueError, match="cache_size.*max_results"):
        pfmq.Task([1], missing_address(), cache_size=8, max_results=16, start=False)


def test_old_max_retries_counts_the_timeouts():
    task = pfmq.Task([0, 1], missing_address(), timeout=0.1, max_retries=2, start=False)
    started = time.monotonic()
    task.run()
    assert 0.2 < time.monotonic() - started < 5
    with pytest.raises(TimeoutError):
        list(task)


@pytest.mark.parametrize("value", [0, -1, 1.5, "3"])
def test_bad_retry_counts_are_refused(value):
    with pytest.raises(ValueError, match="num_retries must be"):
        pfmq.Task([1], missing_address(), num_retries=value, start=False)


def test_with_starts_a_task_created_with_start_false(broker):
    with thread_workers(broker.backend_address):
        with broker.imap(range(5), start=False) as task:
            assert task.is_alive
            assert list(task) == [0, 2, 4, 6, 8]
        task._thread.join(1)
        assert not task._thread.is_alive()
        with broker.imap(range(3)) as task:  # started already: entering does not restart it
            assert list(task) == [0, 2, 4]


def test_run_in_the_calling_thread_without_a_broker():
    task = pfmq.Task([0, 1, 3], missing_address(), timeout=0.1, num_retries=3, start=False)
    started = time.monotonic()
    task.run()
    elapsed = time.monotonic() - started
    assert 0.3 < elapsed < 5
    assert task._thread is threading.current_thread()
    with pytest.raises(TimeoutError, match="no answer"):
        list(task)


def test_run_waits_for_a_task_running_in_the_background():
    # Pythonflow 0.3 style: the task started on creation, run() then blocks until it is done.
    task = pfmq.Task([0, 1, 3], missing_address(), timeout=0.1, num_retries=3)
    started = time.monotonic()
    task.run()
    assert 0.25 < time.monotonic() - started < 5
    assert not task._thread.is_alive()
    with pytest.raises(TimeoutError):
        list(task)
    task.run()  # done already: returns at once


def test_cancel_a_task_with_nothing_to_do():
    task = pfmq.Task([], missing_address())
    task.cancel()
    task._thread.join(5)
    assert not task._thread.is_alive() and not task.is_alive


def test_thread_ends_after_the_last_result(broker):
    with thread_workers(broker.backend_address, 2):
        task = broker.imap(range(50))
        assert list(task) == [2 * i for i in range(50)]
        task._thread.join(1)
        assert not task._thread.is_alive()


# -- fault 3: StopIteration raised on a worker --------------------------------------------------


def stop_at_two(request):
    """Double the request, but raise ``StopIteration`` for 2 (as a careless ``next()`` would)."""
    if request == 2:
        raise StopIteration("the transformation ran out of something")
    return 2 * request


def test_stop_iteration_on_a_worker_does_not_end_the_loop_silently(broker):
    with thread_workers(broker.backend_address, target=stop_at_two):
        seen = []
        with pytest.raises(RuntimeError, match="request 2 raised StopIteration") as info:
            for result in broker.imap(range(5)):
                seen.append(result)
        assert seen == [0, 2]
        original = info.value.__cause__
        assert isinstance(original, StopIteration)
        assert "ran out of something" in str(original)
        assert isinstance(original.__cause__, pfmq.RemoteError)
        assert "stop_at_two" in original.__cause__.traceback

        assert list(broker.imap(range(5), errors="skip")) == [0, 2, 6, 8]
        results = list(broker.imap(range(5), errors="return"))
        assert results[:2] == [0, 2] and results[3:] == [6, 8]
        assert type(results[2]) is RuntimeError
        assert isinstance(results[2].__cause__, StopIteration)
        with pytest.raises(RuntimeError, match="StopIteration"):
            broker.apply(2)
        assert list(broker.imap(range(5), errors="skip").iter_results()) == [0, 2, 6, 8]


# -- fault 4: a slow request iterator -----------------------------------------------------------


def test_slow_request_iterator_keeps_the_heartbeats_going():
    heartbeat = 0.05  # the broker forgets a task silent for 3 of its intervals
    executions = collections.Counter()
    lock = threading.Lock()

    def count_and_sleep(request):
        with lock:
            executions[request] += 1
        time.sleep(0.4)  # still running when the task would be forgotten
        return request

    def slow_requests():
        for i in range(3):
            yield i
            time.sleep(0.6)  # far longer than 3 heartbeat intervals

    with running_broker(heartbeat_interval=heartbeat) as broker:
        with thread_workers(broker.backend_address, target=count_and_sleep,
                            heartbeat_interval=heartbeat):
            wait_for_workers(broker, 1)
            task = broker.imap(slow_requests(), heartbeat_interval=heartbeat)
            assert list(task) == [0, 1, 2]
    assert executions == {0: 1, 1: 1, 2: 1}, "a request of a live task ran twice"


def test_failing_slow_request_iterator_is_reported_in_its_place(broker):
    read = []

    def requests():
        for i in range(4):
            read.append(i)
            time.sleep(0.05)
            yield i
        raise OSError("the source went away")

    with thread_workers(broker.backend_address):
        task = broker.imap(requests(), errors="return")
        assert [next(task) for _ in range(4)] == [0, 2, 4, 6]
        with pytest.raises(OSError, match="went away"):
            next(task)
        with pytest.raises(StopIteration):
            next(task)
        assert read == [0, 1, 2, 3]


def test_run_in_the_calling_thread_reads_a_generator_in_another(broker):
    readers = set()

    def requests():
        for i in range(5):
            readers.add(threading.current_thread())
            yield i

    with thread_workers(broker.backend_address):
        task = broker.imap(requests(), start=False)
        task.run()
        assert list(task) == [0, 2, 4, 6, 8]
    assert threading.current_thread() not in readers and len(readers) == 1


def test_only_iterators_over_containers_are_read_in_the_loop_thread():
    assert not reader_for(iter([1, 2])).threaded and not reader_for(iter(range(3))).threaded
    assert reader_for(x for x in [1, 2]).threaded
    assert reader_for(CountingIterator([1, 2])).threaded


def test_threaded_reader_reads_one_batch_ahead_at_most():
    source = CountingIterator(itertools.count())
    ready = threading.Event()
    reader = reader_for(source)
    reader.start(ready.set)
    assert reader.take(10, 10) == ([], False)  # nothing read yet: the loop is woken later
    assert ready.wait(5)
    assert reader.take(10, 10) == (list(range(10)), False)
    wait_until(lambda: source.count == 20, timeout=5, message="the next batch read")
    time.sleep(0.1)  # a reader that went on would have read more by now
    assert source.count == 20
    reader.close()


# -- fault 5: connections of apply --------------------------------------------------------------


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_apply_in_short_lived_threads_closes_its_connections():
    context = zmq.Context()
    broker = pfmq.Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", heartbeat_interval=0.2,
                         context=context)
    try:
        broker.run_async()
        with thread_workers(broker.backend_address, context=context):
            assert broker.apply(1) == 2  # the main thread's connection stays open
            before = open_descriptors()
            results = []
            gc.collect()  # what earlier tests left behind is not ours to report
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ResourceWarning)
                for i in range(40):
                    thread = threading.Thread(target=lambda i=i: results.append(broker.apply(i)))
                    thread.start()
                    thread.join(10)
                gc.collect()
            assert sorted(results) == [2 * i for i in range(40)]
            unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)
                        and "Unclosed socket" in str(w.message)]  # pyzmq's words
            assert unclosed == [], "apply left sockets for the garbage collector to close"
            assert open_descriptors() <= before + 4
    finally:
        broker.cancel(timeout=10)
        terminated = context_terminates(context)
    assert terminated, "a socket of apply kept the context from terminating"


def test_apply_never_reuses_the_connection_of_a_collected_curve_client():
    public, secret = zmq.curve_keypair()
    trusted = CurveClient(public)
    server = CurveServer(secret, public, allowed_clients=[trusted.public_key])
    with running_broker("tcp://127.0.0.1:*", frontend_address="tcp://127.0.0.1:*",
                        curve=server) as broker:
        with thread_workers(broker.backend_address, curve=server.client()):
            assert pfmq.apply(1, broker.frontend_address, curve=trusted) == 2
            address = id(trusted)
            del trusted
            gc.collect()
            # Make clients until one lands where the trusted one lived.
            kept, stranger = [], None
            for _ in range(20000):
                candidate = CurveClient(server.public_key)
                if id(candidate) == address:
                    stranger = candidate
                    break
                kept.append(candidate)
            if stranger is None:
                pytest.skip("the interpreter did not reuse the address of the collected client")
            with pytest.raises(TimeoutError):
                pfmq.apply(2, broker.frontend_address, curve=stranger, timeout=0.3,
                           num_retries=1)
            assert server.refused >= 1
