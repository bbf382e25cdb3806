"""Aggregator ledger: accumulation, swap, and Etsy's reset rules across flushes."""

from __future__ import annotations

from aggregator.ledger import Aggregator, LedgerOptions

INTERNAL = {b"statsd.bad_lines_seen", b"statsd.packets_received", b"statsd.metrics_received"}


def agg(**options) -> Aggregator:
    return Aggregator(LedgerOptions(**options))


def test_counters_scale_by_sample_rate_in_etsy_order() -> None:
    a = agg()
    a.ingest(b"c:1|c|@0.3\nc:2|c:3|c\n\n")
    snap = a.swap(100, 10.0)
    assert snap.counters[b"c"] == 1 * (1 / 0.3) + 5
    assert snap.counters[b"statsd.packets_received"] == 1
    assert snap.counters[b"statsd.metrics_received"] == 2
    assert snap.counters[b"statsd.bad_lines_seen"] == 0


def test_bad_lines_are_counted_and_kept_for_logging() -> None:
    a = agg()
    a.ingest(b"ok:1|c\nbad\nx:1|q:2|c")
    assert [e.reason for e in a.take_errors()] == ["missing_value", "unknown_type"]
    assert a.take_errors() == []
    snap = a.swap(100, 10.0)
    assert snap.counters[b"statsd.bad_lines_seen"] == 2
    assert snap.counters[b"x"] == 2
    assert a.bad_lines_total == 2


def test_idle_names_are_reported_as_zero_by_default() -> None:
    a = agg()
    a.ingest(b"c:1|c\nt:5|ms\ns:x|s\ng:3|g")
    a.swap(10, 10.0)
    snap = a.swap(20, 10.0)
    assert snap.counters[b"c"] == 0
    assert snap.idle_timers == {b"t"} and snap.timers == {}
    assert snap.idle_sets == {b"s"} and snap.sets == {}
    assert snap.gauges[b"g"] == 3
    assert snap.gauges[b"statsd.timestamp_lag"] == 0
    # numStats: 4 counters (3 internal + c) + 1 timer + 2 gauges (g, lag) + 1 set
    assert snap.key_count == 8


def test_timestamp_lag_appears_from_second_flush() -> None:
    a = agg()
    assert b"statsd.timestamp_lag" not in a.swap(10, 10.0).gauges
    assert a.swap(30, 10.0).gauges[b"statsd.timestamp_lag"] == 10


def test_delete_counters_keeps_internal_like_names() -> None:
    a = agg(delete_counters=True)
    a.ingest(b"c:1|c\nmy.packets_received:1|c")
    a.swap(10, 10.0)
    snap = a.swap(20, 10.0)
    assert set(snap.counters) == INTERNAL | {b"my.packets_received"}


def test_delete_timers_and_sets_forget_idle_names() -> None:
    a = agg(delete_timers=True, delete_sets=True)
    a.ingest(b"t:5|ms\ns:x|s")
    a.swap(10, 10.0)
    snap = a.swap(20, 10.0)
    assert snap.idle_timers == frozenset() and snap.idle_sets == frozenset()
    assert snap.key_count == 4  # 3 internal counters + the timestamp_lag gauge


def test_gauge_deltas_apply_to_persisted_and_deleted_values() -> None:
    a = agg(delete_gauges=True)
    a.ingest(b"g:5|g\ng:-7|g")
    assert a.swap(10, 10.0).gauges[b"g"] == -2
    assert b"g" not in a.swap(20, 10.0).gauges  # TTL 1: gone after one idle flush
    a.ingest(b"g:+4|g")
    assert a.swap(30, 10.0).gauges[b"g"] == 4


def test_gauge_zero_then_negative_sets_negative() -> None:
    a = agg()
    a.ingest(b"x:0|g\nx:-7|g")
    assert a.swap(10, 10.0).gauges[b"x"] == -7


def test_gauges_max_ttl_keeps_gauge_for_that_many_flushes() -> None:
    a = agg(delete_gauges=True, gauges_max_ttl=2)
    a.ingest(b"g:1|g")
    assert b"g" in a.swap(10, 10.0).gauges
    assert b"g" in a.swap(20, 10.0).gauges
    assert b"g" not in a.swap(30, 10.0).gauges


def test_timer_counts_and_histogram_share_timers() -> None:
    a = agg()
    a.ingest(b"t:1|ms|@0.5\nt:-2|h")
    snap = a.swap(10, 10.0)
    assert list(snap.timers[b"t"]) == [1.0, -2.0]
    assert snap.timer_counts[b"t"] == 3.0


def test_sets_count_distinct_strings() -> None:
    a = agg()
    a.ingest(b"s:1|s\ns:1.0|s\ns:1|s\ns:|s")
    assert a.swap(10, 10.0).sets[b"s"] == {b"1", b"1.0", b"0"}


def test_swap_detaches_snapshot_from_new_intake() -> None:
    a = agg()
    a.ingest(b"c:1|c\nt:1|ms")
    snap = a.swap(10, 10.0)
    a.ingest(b"c:5|c\nt:2|ms")
    assert snap.counters[b"c"] == 1 and list(snap.timers[b"t"]) == [1.0]


def test_admin_delete_exact_and_folder() -> None:
    a = agg()
    a.ingest(b"app.a:1|c\napp.b:1|c\nother:1|c\ng.x:1|g\ng.y:1|g")
    assert sorted(a.delete("counters", [b"app.*"])) == [b"app.a", b"app.b"]
    assert a.delete("counters", [b"missing"]) == []
    assert a.delete("gauges", [b"g.x"]) == [b"g.x"]
    snap = a.swap(10, 10.0)
    assert b"app.a" not in snap.counters and b"other" in snap.counters
    assert set(snap.gauges) == {b"g.y"}
