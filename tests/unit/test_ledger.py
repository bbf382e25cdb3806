"""Accumulator ledger: accumulation, swap, and Etsy's reset rules across flushes."""

from __future__ import annotations

from aggregator.ledger import Accumulator, LedgerOptions

INTERNAL = {b"statsd.bad_lines_seen", b"statsd.packets_received", b"statsd.metrics_received"}


def agg(**options) -> Accumulator:
    return Accumulator(LedgerOptions(**options))


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


from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_piece = st.sampled_from([b"a", b"b", b"a b", b"a|#t", b"x:y", b"", b"+", b"-", b"1", b"-2",
                          b"1.5", b"0x1F", b"1_0", b"inf", b"nan", b"1e400", b" 3", b"\r",
                          b"c", b"ms", b"g", b"h", b"s", b"C", b"@0.5", b"@0", b"#k:v", b";k=v",
                          b"|", b":", b"|#", b"\xc3\xa9", b"/"])


_name = st.sampled_from([b"a", b"b", b"a b", b"a|#t", b"x;k=v", b"", b"+", b"\xc3\xa9", b"a/b",
                        b"_e{1,1}", b"_sc|a|0"])
_value = st.sampled_from([b"1", b"-2", b"+3", b"1.5", b"0x1F", b"1_0", b"inf", b"nan", b"1e400",
                          b" 3", b"", b"x", b"a:b", b"-0", b"1e308", b"+1e308", b"-1e308",
                          b"1e300", b"9" * 400, b"1e307"])
_kind = st.sampled_from([b"c", b"ms", b"g", b"h", b"d", b"s", b"C", b"c\r", b"", b"ms "])
_segment = st.tuples(_value, _kind, st.sampled_from([b"", b"|@0.5", b"|@0", b"|x",
                                                      b"|@1e-320"])).map(
    lambda t: t[0] + b"|" + t[1] + t[2])
_structured = st.tuples(_name, st.lists(_segment, min_size=0, max_size=3),
                        st.sampled_from([b"", b"|#k:v", b"|#"])).map(
    lambda t: t[0] + b"".join(b":" + seg for seg in t[1]) + t[2])
_free = st.lists(_piece, min_size=1, max_size=7).map(b"".join)


TRICKY = [b"s:a:b|s", b"a|#t:1|c", b"a:1|c|#t", b"a:1|c", b"a:1|c\r", b"t:-1|ms", b"t:1|ms",
          b"g:+1|g", b"g: +1|g", b"h:-1|h", b"c:1_0|c", b"c:inf|c", b"c:0x1F|c", b"s:|s",
          b"c:1|c:2|c", b"x:1|C", b"a b:1|c", b"" + b"y" * 30 + b":1|c", b"d:-1|d",
          b"c:1e308|c", b"c:1e307|c", b"g:1e308|g", b"g:+1e308|g", b"_e{1,1}:a|b",
          b"_sc|a|0"]


@settings(max_examples=500)
def ingest_both(fast: Accumulator, general: Accumulator, packet: bytes) -> None:
    """``packet`` into ``fast`` as intake hands it over (the inline paths), and into
    ``general`` line by line through the checked path, with the same packet and line counts."""
    fast.ingest(packet)
    lines = [line for line in packet.split(b"\n") if line]
    for line in lines:
        general._ingest_line(line)
    general.ledger.packets += 1
    general.ledger.lines += len(lines)


@given(st.lists(st.one_of(_structured, _free, st.sampled_from(TRICKY)), min_size=1, max_size=12))
@example(TRICKY)
def test_fast_path_agrees_with_general_parser(lines: list[bytes]) -> None:
    packet = b"\n".join(lines)
    fast = agg(max_line_bytes=20)
    general = agg(max_line_bytes=20)
    for _ in range(2):  # the second round hits the key cache, i.e. the fast path
        ingest_both(fast, general, packet)
    a, b = fast.swap(10, 10.0), general.swap(10, 10.0)
    assert a.counters == b.counters
    assert {k: list(v) for k, v in a.timers.items()} == {k: list(v) for k, v in b.timers.items()}
    assert a.timer_counts == b.timer_counts
    assert a.sets == b.sets
    assert a.gauges == b.gauges
    assert fast.bad_lines_total == general.bad_lines_total
    assert fast.dropped == general.dropped


# Overflow: a line that would make an aggregate non-finite is refused as "overflow", the
# aggregate keeps its value, and every other line counts.

def overflow_run(*packets: bytes, **options: object) -> tuple[Accumulator, object]:
    a = agg(**options)
    for p in packets:
        a.ingest(p)
    return a, a.swap(100, 10.0)


def test_tiny_sample_rate_is_refused_as_overflow() -> None:
    a, snap = overflow_run(b"x:1|c\nx:1|c|@1e-320\nx:0|c|@1e-320\nt:1|ms|@1e-320\nok:2|c")
    assert a.dropped["overflow"] == 3
    assert snap.counters[b"x"] == 1.0 and snap.counters[b"ok"] == 2.0
    assert b"t" not in snap.timers and b"t" not in snap.timer_counts
    assert snap.counters[b"statsd.bad_lines_seen"] == 0
    assert snap.counters[b"statsd.metrics_received"] == 5


def test_counter_sum_over_the_limit_is_refused_and_keeps_its_value() -> None:
    # The first 1e307 takes the checked path (a new name), the second the inline path's
    # magnitude test: both refuse what would pass a tenth of the largest double (the rate
    # at a 0.1 s interval).
    a, snap = overflow_run(b"x:1e307|c", b"x:1e307|c\nx:1|c", b"y:1e308|c")
    assert snap.counters[b"x"] == 1e307 + 1
    assert b"y" not in snap.counters
    assert a.dropped["overflow"] == 2
    assert [e.reason for e in a.take_errors()] == ["overflow", "overflow"]


def test_gauge_delta_past_the_largest_double_is_refused() -> None:
    a, snap = overflow_run(b"g:1e308|g", b"g:+1e308|g\ng:-1|g", b"h:-1e308|g\nh:-1e308|g")
    assert snap.gauges[b"g"] == 1e308 - 1
    assert snap.gauges[b"h"] == -1e308  # set, then a delta of -1e308 refused
    assert a.dropped["overflow"] == 2
    a.ingest(b"g:+1e308|g")
    assert a.gauges[b"g"] == 1e308 - 1 and a.dropped["overflow"] == 3


def test_inline_path_never_adds_a_value_past_its_limit() -> None:
    a = agg()
    a.ingest(b"c:1|c\ng:1|g\nt:1|ms")  # known names: the next lines reach the inline path
    big = b"9" * 400  # float() reads it as inf
    a.ingest(b"c:" + big + b"|c\nc:1e300|c\ng:+" + big + b"|g\nt:" + big + b"|ms")
    snap = a.swap(100, 10.0)
    assert snap.counters[b"c"] == 1 + 1e300
    assert snap.gauges[b"g"] == 1.0
    assert list(snap.timers[b"t"]) == [1.0]
    assert snap.counters[b"statsd.bad_lines_seen"] == 3  # not numbers: bad_value


def test_overflow_leaves_the_other_segments_of_a_line() -> None:
    a, snap = overflow_run(b"x:1e307|c", b"x:1e307|c:5|c")
    assert snap.counters[b"x"] == 1e307 + 5 and a.dropped["overflow"] == 1


def test_distribution_is_aggregated_like_a_histogram() -> None:
    d, h = agg(), agg()
    for packet in (b"m:-3|d\nm:5|d|@0.5\nm:7|d|#k:v", b"m:2|d\nm:x|d"):
        d.ingest(packet)
        h.ingest(packet.replace(b"|d", b"|h"))
    a, b = d.swap(10, 10.0), h.swap(10, 10.0)
    assert {k: list(v) for k, v in a.timers.items()} == {k: list(v) for k, v in b.timers.items()}
    assert a.timers[b"m"].tolist() == [-3.0, 5.0, 2.0]
    assert a.timer_counts == b.timer_counts and a.counters == b.counters


def test_dogstatsd_events_and_service_checks_have_their_own_reasons() -> None:
    a = agg()
    a.ingest(b"_e{5,4}:title|text|#k:v\n_e{1,1}:a|b\n_sc|db.up|0\n_sc|db|1|#a:b|m:down:x\nok:1|c")
    assert a.dropped == {"overflow": 0, "dogstatsd_event": 2, "dogstatsd_service_check": 2}
    assert [e.reason for e in a.take_errors()] == ["dogstatsd_event", "dogstatsd_service_check"]
    assert a.statistics().dropped_lines == {"overflow": 0, "dogstatsd_event": 2,
                                            "dogstatsd_service_check": 2}
    snap = a.swap(10, 10.0)
    assert snap.counters[b"statsd.bad_lines_seen"] == 0
    assert snap.counters[b"statsd.metrics_received"] == 5
    assert a.parser.keys == {b"ok": b"ok"}


def test_bad_lines_leave_the_key_cache_empty() -> None:
    a = agg()
    name = b"k" * 4000
    for i in range(200):
        a.ingest(b"%s%d:x|c\n%s%d|c\n%s%d:1|q" % (name, i, name, i, name, i))
    assert a.parser.keys == {} and a.parser.cached_bytes == 0
    assert a.bad_lines_total == 600


# The whole-packet counter path (`aggregator.ingest._ingest_counters`) takes packets of
# counter lines only; these strategies make many of them, with everything that must send
# a packet the line-by-line way instead mixed in now and then.
_counter_name = st.sampled_from([b"a", b"b", b"c", b"a b", b"a|b", b"x:y", b"", b"a|#t",
                                 b"\xc3\xa9", b"new"])
_counter_value = st.sampled_from([b"1", b"1", b"1", b"2", b"0.1", b"0.3", b"-1", b"1e300",
                                  b"9" * 400, b"1_0", b"inf", b"nan", b"x", b"", b" 3",
                                  b"2.5e-7", b"1e307", b"-0"])
_counter_line = st.one_of(
    st.tuples(_counter_name, _counter_value).map(lambda t: t[0] + b":" + t[1] + b"|c"),
    st.sampled_from([b"a:1|c", b"b:1|c", b"a:1|c|@0.5", b"a:1|c:1|c", b"a:1|g", b"",
                     b"b:1|c\r", b"a:1|ms", b"a", b"a:1"]))
_counter_packet = st.lists(_counter_line, min_size=1, max_size=10).map(b"\n".join)


@settings(max_examples=500)
@given(st.lists(_counter_packet, min_size=1, max_size=4),
       st.sampled_from([b"", b"\n", b"\n\n"]), st.integers(20, 100))
@example([b"a:0.1|c", b"a:1|c\na:1|c\nb:1|c", b"a:1e300|c\na:1|c"], b"", 100)
def test_counter_packets_agree_with_general_parser(packets: list[bytes], end: bytes,
                                                   max_line: int) -> None:
    fast = agg(max_line_bytes=max_line)
    general = agg(max_line_bytes=max_line)
    warm = b"a:1|c\nb:0.1|c\nc:1|g\na b:1|c\na|b:1|c"  # names the second agg learns too
    for a in (fast, general):
        a.ingest(warm)
    for packet in packets * 2:  # the second time round more names are known
        packet += end
        ingest_both(fast, general, packet)
    assert fast.live_counters() == general.live_counters()
    assert all(type(v) is float for v in fast.ledger.counters.values())
    a, b = fast.swap(10, 10.0), general.swap(10, 10.0)
    assert a.counters == b.counters
    assert {k: list(v) for k, v in a.timers.items()} == {k: list(v) for k, v in b.timers.items()}
    assert a.gauges == b.gauges and a.sets == b.sets
    assert fast.bad_lines_total == general.bad_lines_total
    assert fast.dropped == general.dropped
    assert [e.line for e in fast.take_errors()] == [e.line for e in general.take_errors()]


def test_counter_sums_stay_bit_exact_in_order() -> None:
    # 0.1 then ones: float sums that depend on the order of the additions.
    a = agg()
    a.ingest(b"n:0.1|c")
    a.ingest(b"n:1|c\nn:1|c\nn:0.7|c\nn:1|c")
    a.ingest(b"n:1|c\n" * 5)
    expected = 0.1
    for value in (1, 1, 0.7, 1, 1, 1, 1, 1, 1):
        expected += value
    assert a.ledger.counters[b"n"] == expected


def test_new_names_of_a_ones_packet_are_counted_as_floats() -> None:
    a = agg(delete_counters=True)
    a.ingest(b"k:1|c")
    a.swap(10, 10.0)  # k forgotten; still a known key for the parser
    a.ingest(b"k:1|c\nk:1|c")
    assert a.ledger.counters[b"k"] == 2.0 and type(a.ledger.counters[b"k"]) is float
