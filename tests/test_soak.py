"""The soak (pythonflow.pfmq.bench.soak): its accounting and schedule, and short bounded runs
with every fault kind this machine and this pfmq allow, nothing lost or duplicated."""
import pytest

from pythonflow.pfmq.bench import netns, soak_peer
from pythonflow.pfmq.bench.soak import CUTS, Chaos, Fault, Settings, passed, run, unavailable_faults
from pythonflow.pfmq.bench.soak_report import build_parser, format_report

pytestmark = pytest.mark.timeout(180)


def recorded(*outcomes, hung=()):
    ledger = soak_peer.Ledger()
    ledger.hung.update(hung)
    for outcome in outcomes:
        ledger.record(outcome)
    return ledger.figures()


def test_ledger_counts_a_clean_stream_as_done():
    assert recorded(0, 1, 2) == {"done": 3, "lost": 0, "duplicated": 0, "timed_out": 0,
                                 "failed": 0, "hung": 0, "errors": []}


def test_ledger_counts_skipped_indices_as_lost_and_repeated_ones_as_duplicated():
    figures = recorded(0, 3, 3, 1, 4)
    assert (figures["done"], figures["lost"], figures["duplicated"]) == (3, 2, 2)


def test_ledger_counts_a_hung_request_timing_out_as_timed_out_not_lost():
    figures = recorded(0, TimeoutError("deadline"), 2, hung={1})
    assert (figures["done"], figures["lost"], figures["timed_out"], figures["failed"]) == \
        (2, 0, 1, 0)


def test_ledger_counts_other_errors_and_timeouts_of_other_requests_as_failures():
    figures = recorded(0, TimeoutError("deadline"), ValueError("boom"), 3, hung={2})
    assert (figures["done"], figures["timed_out"], figures["failed"]) == (2, 0, 2)
    assert figures["errors"] == ["1: TimeoutError: deadline", "2: ValueError: boom"]


def test_requests_mark_the_next_one_to_hang_or_leak():
    ledger = soak_peer.Ledger()
    requests = soak_peer.Requests(ledger)
    stream = iter(requests)
    assert next(stream)["context"] == {"index": 0, "hang": False, "leak": 0}
    requests.mark("hang")
    requests.mark("leak", 1024)
    assert next(stream)["context"] == {"index": 1, "hang": True, "leak": 0}
    assert next(stream)["context"] == {"index": 2, "hang": False, "leak": 1024}
    assert next(stream)["context"]["leak"] == 0
    assert ledger.hung == {1} and requests.leaks == 1


def test_a_leaking_worker_keeps_more_with_every_request(monkeypatch):
    monkeypatch.setattr(soak_peer, "_KEPT", [])
    monkeypatch.setattr(soak_peer, "_LEAK_STEP", [0])
    assert soak_peer.work(0, False, 0) == 0 and soak_peer._KEPT == []
    assert soak_peer.work(1, False, 1000) == 1
    assert soak_peer.work(2, False, 0) == 2  # once leaking, every request keeps more
    assert [len(kept) for kept in soak_peer._KEPT] == [1000, 1000]


def test_each_round_of_the_schedule_has_every_fault_and_two_worker_kills():
    faults = [Fault.WORKER_KILL, Fault.BROKER_KILL, Fault.HANG, Fault.CUT_BROKER_LONG]
    chaos = Chaos(cluster=None, faults=faults, settings=Settings(seed=7))
    for _ in range(3):
        one_round = [chaos.next_fault() for _ in range(len(faults) + 1)]
        assert sorted(one_round, key=faults.index) == [faults[0], *faults]
    assert chaos.rounds == 3


def clean_report():
    consumer = {"done": 500, "lost": 0, "duplicated": 0, "timed_out": 1, "failed": 0, "hung": 1,
                "errors": [], "seconds": 10.0, "error": None, "stalled": False, "leaks": 0}
    return {"seconds": 10.0, "settled": 0.5, "consumer": consumer,
            "faults": {Fault.WORKER_KILL.value: 2, Fault.HANG.value: 1},
            "unavailable": {Fault.LEAK.value: "no --max-memory"}, "chaos_error": None,
            "workers_end": 4, "workers_full": 4, "restarts": 5}


@pytest.mark.parametrize("change", [
    {"lost": 1}, {"duplicated": 1}, {"failed": 1}, {"stalled": True}, {"error": "TimeoutError"},
    {"workers_end": 3}, {"workers_end": None}, {"chaos_error": "OSError()"}])
def test_the_verdict_fails_a_soak_that_lost_duplicated_broke_or_did_not_refill_the_pool(change):
    report = clean_report()
    assert passed(report) and format_report(report).endswith("PASSED")
    for name, value in change.items():
        (report if name in report else report["consumer"])[name] = value
    assert not passed(report)
    assert format_report(report).endswith("FAILED")


def test_the_table_has_every_figure_and_says_why_faults_were_off():
    text = format_report(clean_report())
    for line in ("requests done  ", "rate, requests/s", "fault: worker SIGKILL",
                 "fault: memory growth", "timed out (of requests made to hang)",
                 "workers at the end / pool", "worker processes restarted",
                 "off (memory growth): no --max-memory"):
        assert line in text, text
    assert "  4 / 4" in text and "1 (of 1)" in text and "    50\n" in text


def test_fault_kinds_are_named_on_the_command_line_and_unknown_names_are_refused():
    assert [Fault.named(fault.option) for fault in Fault] == list(Fault)
    assert Fault.named("cut-broker-long") is Fault.CUT_BROKER_LONG
    with pytest.raises(ValueError, match="no fault kind 'cut-everything'"):
        Fault.named("cut-everything")
    parser = build_parser()
    assert parser.parse_args(["--faults", "hang,worker-kill"]).only == ["hang", "worker-kill"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--faults", "hang,bogus"])


def check_soak(settings, expected_faults):
    report = run(settings)
    text = format_report(report)
    assert passed(report), text
    consumer = report["consumer"]
    assert consumer["done"] > 100, text
    for fault in expected_faults:
        assert report["faults"][fault.value] >= 1, text
    assert consumer["timed_out"] == consumer["hung"], text
    assert report["restarts"] >= report["faults"][Fault.WORKER_KILL.value], text
    return report


def test_short_soak_on_loopback_loses_and_duplicates_nothing_and_refills_the_pool():
    settings = Settings(duration=60, rounds=1, hosts=1, processes=2, interval=0.4,
                        heartbeat=0.1, request_timeout=0.5, cuts=False, settle=30)
    missing = unavailable_faults(settings)
    assert set(CUTS) <= set(missing)
    check_soak(settings, [fault for fault in Fault if fault not in missing])


def test_short_soak_with_link_cuts_loses_and_duplicates_nothing_and_refills_the_pool():
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(f"no link cuts here: network namespaces are not available: {reason}")
    settings = Settings(duration=90, rounds=1, hosts=2, processes=1, interval=0.4,
                        heartbeat=0.1, request_timeout=0.5, settle=30)
    missing = unavailable_faults(settings)
    assert not set(CUTS) & set(missing)
    check_soak(settings, [fault for fault in Fault if fault not in missing])
