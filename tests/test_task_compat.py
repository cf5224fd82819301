"""Tasks: Pythonflow 0.3 spellings and life cycle, and faults on the task side (issue 9).

* the 0.3 option names ``max_retries``/``max_results``, ``with`` on a task created with
  ``start=False``, ``run()`` in the calling thread;
* a ``StopIteration`` raised by the transformation must not end the consumer's loop silently.
"""
import threading
import time
import uuid

import pytest
from pfmq_helpers import (  # noqa: F401 (broker_fixture provides the ``broker`` fixture)
    broker_fixture,
    thread_workers,
)

from pythonflow import pfmq

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
