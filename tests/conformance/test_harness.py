"""The harness itself: masking, filtering, diff reports, and that a real difference is caught."""

from __future__ import annotations

import socket
import time
from collections import Counter

import pytest

from conformance.harness import (
    MASK,
    ConformanceRunner,
    case,
    diff_report,
    differential_view,
    divergent,
    internal_counter_names,
    normalise,
    ordered,
    packets_received,
)
from harness.sink import GraphiteSink

pytestmark = pytest.mark.conformance


def test_timing_dependent_values_are_masked_names_kept() -> None:
    got = normalise([
        "stats.statsd.processing_time 3 100",
        "stats.gauges.statsd.timestamp_lag -0.5 100",
        "stats.statsd.graphiteStats.flush_length 812 100",
        "gp.pstats.graphiteStats.last_flush.gs 99 100",
        "stats.QxQ.processing_time 3 100",  # a user metric: compared
        "stats_counts.a 1 100",
    ])
    assert got == [
        ("stats.statsd.processing_time", MASK),
        ("stats.gauges.statsd.timestamp_lag", MASK),
        ("stats.statsd.graphiteStats.flush_length", MASK),
        ("gp.pstats.graphiteStats.last_flush.gs", MASK),
        ("stats.QxQ.processing_time", "3"),
        ("stats_counts.a", "1"),
    ]


def test_names_with_blanks_keep_their_value() -> None:
    assert normalise(["stats.t;k=a b 2 100"]) == [("stats.t;k=a b", "2")]


def test_differential_view_drops_only_other_cases() -> None:
    view = differential_view(["stats.QmineQ.a 1 5", "stats.QotherQ.a 0 5", "statsd.numStats 3 5",
                              "stats. 0 5"], "QmineQ")
    assert view == Counter({"stats.QmineQ.a 1": 1, "statsd.numStats 3": 1, "stats. 0": 1})


def test_diff_report_pairs_values_by_name() -> None:
    report = "\n".join(diff_report("etsy", Counter({"a 1": 1, "b 2": 1, "c 3": 1}),
                                   "tallyd", Counter({"a 1": 1, "b 5": 1, "d 4": 1})))
    assert "values differ" in report and "b" in report and "5" in report
    assert "only from etsy:\n    c 3" in report
    assert "only from tallyd:\n    d 4" in report
    assert diff_report("x", Counter({"a 1": 2}), "y", Counter({"a 1": 2})) == []


def test_duplicate_lines_count() -> None:
    assert diff_report("x", Counter({"a 1": 2}), "y", Counter({"a 1": 1}))


@pytest.mark.parametrize(("config", "rate", "count"), [
    ({}, "stats.statsd.packets_received", "stats_counts.statsd.packets_received"),
    ({"graphite": {"globalSuffix": "s"}, "prefixStats": "p"},
     "stats.p.packets_received.s", "stats_counts.p.packets_received.s"),
    ({"graphite": {"legacyNamespace": False}},
     "stats.counters.statsd.packets_received.rate",
     "stats.counters.statsd.packets_received.count"),
    ({"graphite": {"legacyNamespace": False, "globalPrefix": "", "prefixCounter": ""}},
     "statsd.packets_received.rate", "statsd.packets_received.count"),
    ({"flush_counts": False}, "stats.statsd.packets_received", None),
])
def test_internal_counter_names(config: dict[str, object], rate: str, count: str | None) -> None:
    assert internal_counter_names(config, "packets_received") == (rate, count)


def test_packets_received_from_rate_without_counts() -> None:
    config = {"flush_counts": False, "flushInterval": 500}
    assert packets_received(["stats.statsd.packets_received 6 1"], config) == 3


def test_case_validation() -> None:
    with pytest.raises(ValueError, match="names"):
        case("Bad-Name", "x:1|c")
    with pytest.raises(ValueError, match="steps"):
        divergent("d", "x:1|c", [], tallyd=[["a 1"]], difference="test")
    with pytest.raises(ValueError, match="duplicate"):
        ordered([case("same", "x:1|c"), case("same", "y:1|c")])


def test_case_token_substitution() -> None:
    c = case("tok", ["{k}.a:1|c", b"{k}.b:\xff|s"])
    assert c.datagrams(0) == [b"QtokQ.a:1|c", b"QtokQ.b:\xff|s"]


def test_a_real_difference_is_reported(conformance_runner: ConformanceRunner,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Feed the candidate other bytes than Etsy: the case must fail with a readable diff."""
    c = case("harness_catches_difference", "{k}.a:1|c\n{k}.t:5|ms")
    pair = conformance_runner.pair(c.pair_key)
    send = pair.candidate.send
    monkeypatch.setattr(pair.candidate, "send",
                        lambda datagrams: send([d.replace(b"5|ms", b"6|ms") for d in datagrams]))
    with pytest.raises(AssertionError) as info:
        conformance_runner.run(c)
    report = str(info.value)
    assert "stats.timers.Qharness_catches_differenceQ.t.upper" in report, report
    assert "values differ" in report, report
    assert "stats_counts.Qharness_catches_differenceQ.a" not in report, report


# -- the Graphite sink ------------------------------------------------------------------------


def _send_lines(sink: GraphiteSink, *chunks: bytes, pause: float = 0.0) -> None:
    with socket.create_connection(sink.address) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
            time.sleep(pause)


def test_sink_groups_by_connection() -> None:
    with GraphiteSink() as sink:
        _send_lines(sink, b"a 1 100\nb 2 100\n")
        _send_lines(sink, b"a 3 101\nlast-without-newline 4 101")
        flushes = sink.wait_for_flushes(2, timeout=5, grouping="connection")
    assert [f.lines for f in flushes] == [("a 1 100", "b 2 100"),
                                         ("a 3 101", "last-without-newline 4 101")]
    assert all(f.complete for f in flushes)


def test_sink_groups_by_timestamp_on_one_connection() -> None:
    with GraphiteSink(settle=0.1) as sink:
        _send_lines(sink, b"a 1 100\nb 2 100\n", b"a 3 101\n", b"a 4 102\nb 5 102\n",
                    pause=0.05)
        flushes = sink.wait_for_flushes(3, timeout=5, grouping="timestamp")
    assert [(f.key, f.lines) for f in flushes] == [
        (100, ("a 1 100", "b 2 100")), (101, ("a 3 101",)), (102, ("a 4 102", "b 5 102"))]


def test_sink_splits_equal_timestamps_at_a_pause() -> None:
    with GraphiteSink(gap=0.2, settle=0.1) as sink:
        _send_lines(sink, b"a 1 100\n", b"a 2 100\n", pause=0.4)
        flushes = sink.wait_for_flushes(2, timeout=5, grouping="timestamp")
    assert [f.lines for f in flushes] == [("a 1 100",), ("a 2 100",)]


def test_sink_open_group_completes_after_settle() -> None:
    with GraphiteSink(settle=0.2) as sink, socket.create_connection(sink.address) as sock:
        sock.sendall(b"a 1 100\n")
        deadline = time.monotonic() + 5
        while sink.started_count("timestamp") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.flush_at("timestamp", 0) is not None
        assert not sink.flush_at("timestamp", 0).complete  # type: ignore[union-attr]
        flush = sink.wait_for_flush("timestamp", 0, timeout=5)
        assert flush.complete and flush.lines == ("a 1 100",)
