"""The clocks of a connection's heartbeats, stepped through time by hand."""
from pythonflow.pfmq.liveness import Liveness


def test_pings_are_numbered_and_spaced_by_the_interval():
    clocks = Liveness(interval=1.0, timeout=10.0, first_ping=0.5, now=100.0)
    assert clocks.ping_due(100.0) is None and clocks.wait(100.0) == 0.5
    assert clocks.ping_due(100.5) == 1
    assert clocks.ping_due(101.0) is None
    assert clocks.ping_due(101.6) == 2 and clocks.wait(101.6) == 1.0


def test_silence_counts_retries_until_giving_up_and_a_word_resets_them():
    clocks = Liveness(interval=1.0, timeout=2.0, num_retries=2, now=0.0)
    assert not clocks.count_silence(2.0), "exactly the timeout is not yet silence"
    assert clocks.count_silence(2.5) and not clocks.gave_up and clocks.silence == 2.0
    assert not clocks.count_silence(4.0)
    assert clocks.heard(4.4) is False and clocks.silent_timeouts == 0
    assert clocks.count_silence(6.5) and clocks.count_silence(8.6)
    assert clocks.gave_up and clocks.silence == 4.0
    never = Liveness(interval=1.0, timeout=1.0, num_retries=None, now=0.0)
    for second in range(2, 100, 2):
        assert never.count_silence(float(second))
    assert not never.gave_up


def test_a_lapse_presumes_the_connection_lost_until_the_peer_speaks_again():
    clocks = Liveness(interval=1.0, timeout=30.0, liveness=3, now=0.0)
    assert not clocks.lapsed(3.0) and clocks.lapsed(3.1)
    clocks.renewed(3.1)
    assert clocks.presumed_lost and not clocks.lapsed(6.0) and clocks.lapsed(6.2)
    assert clocks.heard(6.5) is True, "the first word after a renewal says the peer is back"
    assert not clocks.presumed_lost and clocks.heard(7.0) is False
    clocks.rest(50.0)  # nothing to speak for meanwhile: that silence means nothing
    assert not clocks.lapsed(52.0) and not clocks.count_silence(52.0)
    assert not Liveness(interval=1.0, timeout=1.0, now=0.0).lapsed(1e9), "no liveness: never"
