"""The task's I/O loop step by step, without a broker: a socket that records what is sent."""
import threading
import time

import pytest
import zmq

from pythonflow.pfmq import Task, protocol
from pythonflow.pfmq.liveness import Liveness
from pythonflow.pfmq.protocol import OK, SERIALIZATION_ERROR, WORKERS_DIED, Kind
from pythonflow.pfmq.serialization import make_serializer
from pythonflow.pfmq.stream import Stream


class RecordingSocket:
    """Stands in for the DEALER: keeps every message sent, as a list of frames."""

    def __init__(self):
        self.sent = []

    def send_multipart(self, frames, flags=0, copy=True):
        self.sent.append(frames)


def make_stream(timeout=1.0, num_retries=2, requests=(), cache_size=100, ordered=False):
    stream = Stream(requests, "inproc://nobody", make_serializer(), protocol.Wire(None),
                    zmq.Context.instance(), timeout, num_retries, cache_size=cache_size,
                    ordered=ordered, seed=None, heartbeat_interval=0.1, max_batch=100,
                    target_job_seconds=0.1)
    stream.sock = RecordingSocket()
    stream.liveness = Liveness(stream.ping_interval, timeout, num_retries)
    return stream


def submitted(stream):
    """``(first, count)`` of every job the stream sent, in order."""
    jobs = []
    for frames in stream.sock.sent:
        kind, fields, _ = stream.wire.unpack(frames)
        assert kind is Kind.SUBMIT
        jobs.append((fields[1], fields[2]))
    return jobs


def test_a_batch_that_cannot_be_serialised_is_split_and_only_the_culprit_fails():
    stream = make_stream()
    stream._submit(10, [1, threading.Lock(), 3])
    assert submitted(stream) == [(10, 1), (12, 1)]
    [(index, (code, reason))] = stream.outbox.items
    assert (index, code) == (11, SERIALIZATION_ERROR) and "cannot be serialised" in reason


def test_a_batch_over_the_frame_limit_is_split_and_only_the_large_request_fails():
    stream = make_stream()
    stream.max_message_size = 4096
    stream._submit(0, [b"a", b"x" * 8192, b"b"])
    assert submitted(stream) == [(0, 1), (2, 1)]
    [(index, (code, reason))] = stream.outbox.items
    assert (index, code) == (1, SERIALIZATION_ERROR) and "max_message_size" in reason


def test_a_failed_batch_is_sent_again_one_request_per_job():
    stream = make_stream()
    stream._submit(5, ["a", "b", "c"])
    [job_id] = stream.pending
    stream._on_failed(job_id, "the worker died")
    assert submitted(stream) == [(5, 3), (5, 1), (6, 1), (7, 1)]
    assert stream.in_flight == 3 and not stream.outbox.items
    stream._on_failed(next(iter(stream.pending)), "the worker died")  # a lone request fails
    assert list(stream.outbox.items) == [(5, (WORKERS_DIED, "the worker died"))]


def test_silence_counts_only_with_jobs_in_flight_and_gives_up_after_the_retries():
    stream = make_stream(timeout=0.5, num_retries=2)
    stream.liveness.last_counted = time.monotonic() - 10  # long silent, but nothing in flight
    stream._on_events({})
    assert stream.liveness.silent_timeouts == 0
    stream._submit(0, [1])
    stream._on_events({})
    assert stream.liveness.silent_timeouts == 1
    stream.liveness.last_counted = time.monotonic() - 10
    with pytest.raises(TimeoutError, match="no answer from the broker at inproc://nobody for 1 s"):
        stream._on_events({})


def test_a_cache_smaller_than_a_batch_does_not_stop_the_reading_at_every_result():
    # 100 cheap requests per job and a cache of 4: with one job's results waiting the task
    # still sends, else the workers would wait for the consumer to empty the cache each time.
    stream = make_stream(requests=range(1000), cache_size=4)
    stream.seconds_per_request, stream.capacity = 1e-6, 2
    stream.outbox.put([(index, (OK, index)) for index in range(100)])
    stream._submit_new_jobs()
    assert submitted(stream) and not stream.waiting_for_consumer
    stream.outbox.put([(index, (OK, index)) for index in range(100, 200)])
    stream._submit_new_jobs()  # two batches' results wait: enough
    assert stream.waiting_for_consumer


def test_large_results_make_small_batches():
    stream = make_stream()
    stream.seconds_per_request = 1e-6  # by time alone, 100 requests per job
    assert stream._batch_size() == 100
    stream.result_bytes_per_request = 100 << 10  # each result 100 KiB: about a MiB per job
    assert stream._batch_size() == 10


def test_outbox_counts_the_results_the_consumer_took_in_bulk():
    stream = make_stream()
    stream.outbox.put([(index, (OK, index)) for index in range(5)])
    assert stream.outbox.get() == (0, (OK, 0))
    assert len(stream.outbox) == 4
    stream.outbox.put([(5, (OK, 5))])
    stream.outbox.close()
    assert [stream.outbox.get()[0] for _ in range(5)] == [1, 2, 3, 4, 5]
    with pytest.raises(StopIteration):
        stream.outbox.get()


def test_ordered_results_of_jobs_out_of_order_are_delivered_in_order():
    stream = make_stream(ordered=True)
    stream._deliver_run(3, [(OK, "d"), (OK, "e")])
    stream._deliver_run(5, [(OK, "f")])
    assert len(stream.outbox) == 0 and len(stream.held) == 3
    stream._deliver_run(0, [(OK, "a"), (OK, "b"), (OK, "c")])
    assert [stream.outbox.get() for _ in range(6)] == [
        (index, (OK, letter)) for index, letter in enumerate("abcdef")]
    assert not stream.held and stream.next_delivery == 6


def test_tiny_requests_travel_in_jobs_of_a_thousand_by_default():
    # Per-message costs of about 100 us at each of broker, worker and task: a job of 1,024
    # requests of a microsecond spreads them over many (256 left them a third of the work).
    stream = Task(range(10), "inproc://nobody", start=False)._io
    stream.seconds_per_request = 1e-6
    stream.bytes_per_request = stream.result_bytes_per_request = 40
    assert stream._batch_size() == 1024
