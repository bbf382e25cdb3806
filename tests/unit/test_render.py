"""Graphite rendering: names in both namespaces, suffixes, tags, JS numbers, numStats."""

from __future__ import annotations

from aggregator.backends.render import GraphiteRenderer, Naming
from aggregator.ledger import Accumulator, LedgerOptions

DEFAULT_NAMING = Naming()


def render(packets: list[bytes], naming: Naming = DEFAULT_NAMING, *, flushes: int = 1,
           interval: float = 10.0, chunk_names: int = 2000) -> set[str]:
    a = Accumulator(LedgerOptions(prefix_stats=naming.prefix_stats,
                                 key_name_sanitize=naming.key_name_sanitize))
    for p in packets:
        a.ingest(p)
    renderer = GraphiteRenderer(naming, chunk_names=chunk_names)
    out = b""
    for i in range(flushes):
        snap = a.swap(1000 + 10 * i, interval)
        out = b"".join(renderer.render_chunks(snap, num_stats=snap.key_count))
    lines = out.decode().splitlines()
    assert all(line.endswith(f" {1000 + 10 * (flushes - 1)}") for line in lines)
    return {line.rsplit(" ", 1)[0] for line in lines}


def test_legacy_names() -> None:
    out = render([b"c:5|c\ng:1.5|g\ns:a|s\nt:3|ms"])
    assert {"stats.c 0.5", "stats_counts.c 5", "stats.gauges.g 1.5", "stats.sets.s.count 1",
            "stats.timers.t.mean 3", "stats.timers.t.upper_90 3", "statsd.numStats 7",
            "stats.statsd.bad_lines_seen 0", "stats_counts.statsd.packets_received 1"} <= out


def test_nonlegacy_names_with_prefixes_and_suffix() -> None:
    naming = Naming(legacy_namespace=False, global_prefix="gp", prefix_counter="pc",
                    prefix_timer="pt", prefix_gauge="pg", prefix_set="ps", global_suffix="sfx")
    out = render([b"c:5|c\ng:1|g\ns:a|s\nt:3|ms"], naming)
    assert {"gp.pc.c.rate.sfx 0.5", "gp.pc.c.count.sfx 5", "gp.pg.g.sfx 1",
            "gp.ps.s.count.sfx 1", "gp.pt.t.mean.sfx 3", "gp.statsd.numStats.sfx 7",
            "gp.pc.statsd.bad_lines_seen.count.sfx 0"} <= out


def test_empty_prefixes_leave_no_empty_component() -> None:
    naming = Naming(legacy_namespace=False, global_prefix="", prefix_counter="",
                    prefix_timer="", prefix_gauge="", prefix_set="")
    out = render([b"c:1|c\nt:1|ms\ng:1|g"], naming)
    assert {"c.rate 0.1", "t.mean 1", "g 1", "statsd.numStats 6"} <= out


def test_legacy_ignores_prefix_options_but_keeps_suffix_and_prefix_stats() -> None:
    naming = Naming(global_prefix="gp", prefix_counter="pc", global_suffix="sfx",
                    prefix_stats="mystats")
    out = render([b"c:1|c"], naming)
    assert {"stats.c.sfx 0.1", "stats_counts.c.sfx 1", "mystats.numStats.sfx 4",
            "stats.mystats.bad_lines_seen.sfx 0"} <= out


def test_suffix_goes_before_tags() -> None:
    out = render([b"req:1|c|#env:prod"], Naming(legacy_namespace=False, global_suffix="x"))
    assert "stats.counters.req.rate.x;env=prod 0.1" in out


def test_flush_counts_false_drops_counts() -> None:
    out = render([b"c:1|c"], Naming(flush_counts=False))
    assert not any(line.startswith("stats_counts.") for line in out)


def test_unsanitized_keys_are_cleaned_in_names_only() -> None:
    out = render([b"fo/o:1|c|#k:v/w"], Naming(key_name_sanitize=False))
    assert "stats.fo-o;k=v/w 0.1" in out


def test_js_number_formatting_in_output() -> None:
    out = render([b"a:0.1|c\na:0.2|c\nb:1|c|@0.3\nbig:1e21|g\nsmall:1e-7|g"], interval=1.0)
    assert {"stats_counts.a 0.30000000000000004", "stats_counts.b 3.3333333333333335",
            "stats.gauges.big 1e+21", "stats.gauges.small 1e-7"} <= out


def test_idle_timer_reports_count_zero_only() -> None:
    out = render([b"t:1|ms"], flushes=2)
    assert {line for line in out if line.startswith("stats.timers.t.")} == {
        "stats.timers.t.count 0", "stats.timers.t.count_ps 0"}


def test_calculated_timer_metrics_filters_stats_but_counts_the_timer() -> None:
    naming = Naming(calculated_timer_metrics=frozenset({"mean", "histogram"}),
                    histogram=(("", (10.0, "inf")),))
    out = render([b"t:1|ms\nt:20|ms"], naming)
    assert {line for line in out if line.startswith("stats.timers.")} == {
        "stats.timers.t.mean 10.5", "stats.timers.t.histogram.bin_10 1",
        "stats.timers.t.histogram.bin_inf 1"}
    assert "statsd.numStats 4" in out


def test_chunks_split_large_flushes() -> None:
    a = Accumulator(LedgerOptions())
    a.ingest(b"".join(b"c%d:1|c\n" % i for i in range(25)))
    snap = a.swap(10, 10.0)
    chunks = list(GraphiteRenderer(Naming(), chunk_names=10).render_chunks(snap, num_stats=28))
    assert len(chunks) == 3
    assert sum(c.count(b"\n") for c in chunks) == 2 * 28 + 1


def test_render_internal_names() -> None:
    r = GraphiteRenderer(Naming())
    assert r.render_internal(5, {"processing_time": 3}) == b"stats.statsd.processing_time 3 5\n"
    r2 = GraphiteRenderer(Naming(legacy_namespace=False, global_prefix=""))
    assert r2.render_internal(5, {"graphiteStats.flush_length": 10}) == (
        b"statsd.graphiteStats.flush_length 10 5\n")


def test_without_num_stats_the_line_is_left_out() -> None:
    a = Accumulator(LedgerOptions(report_internal=False))
    a.ingest(b"c:1|c")
    out = b"".join(GraphiteRenderer(Naming()).render_chunks(a.swap(10, 10.0)))
    assert out == b"stats.c 0.1 10\nstats_counts.c 1 10\n"


def test_non_finite_values_are_never_rendered() -> None:
    from aggregator.ledger import FlushSnapshot

    snap = FlushSnapshot(timestamp=10, interval=0.1, counters={b"c": 1e308, b"ok": 1.0},
                         timers={}, timer_counts={}, idle_timers=frozenset(), sets={},
                         idle_sets=frozenset(), gauges={b"g": float("nan"), b"h": 2.0})
    renderer = GraphiteRenderer(DEFAULT_NAMING)
    out = b"".join(renderer.render_chunks(snap, num_stats=4))
    out += renderer.render_internal(10, {"x": float("inf"), "y": 1.0})
    assert b"Infinity" not in out and b"NaN" not in out
    assert b"stats.c " not in out and b"stats_counts.c " not in out and b"gauges.g " not in out
    assert b"stats_counts.ok 1 10\n" in out and b"stats.gauges.h 2 10\n" in out
    assert b"stats.statsd.y 1 10\n" in out
    assert renderer.non_finite == 2


def test_overflowing_input_renders_no_infinity() -> None:
    out = render([b"big:1e307|c\nbig:1e307|c\ng:1e308|g\ng:+1e308|g\nx:1|c|@1e-320",
                  b"t:1e308|ms\nt:1e308|ms\nt:1e200|ms\nd:1e300|d\nd:-1e300|d"], interval=0.1)
    assert not any("Infinity" in line or "NaN" in line for line in out)
    assert {"stats_counts.big 1e+307", "stats.big 1e+308", "stats.gauges.g 1e+308",
            "stats.timers.t.upper 1e+308", "stats.timers.t.median 1e+308",
            "stats.timers.d.mean 0", "stats.timers.d.sum 0"} <= out
    assert not any(line.startswith("stats.timers.t.sum ") for line in out)
