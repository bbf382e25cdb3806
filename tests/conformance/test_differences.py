"""Conformance where tallyd deliberately differs from Etsy statsd (the numbered differences).

For these inputs the expected lines are written by hand: tallyd's documented behaviour, and,
where the input is safe for Etsy, Etsy's behaviour too (so the difference stays documented
against the real daemon). Inputs that crash Etsy (``@ 0.5``, ``@+0.5``, ``@Infinity``) and the
JS-object keys are sent to tallyd only. Checked are the lines carrying the case token and the
lines named in the expectations; see harness.divergent.

The last tests here need their own daemons: percent-threshold config errors, aligned flush
timestamps, and the final flush on SIGTERM.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.harness import (
    INTERVAL,
    Case,
    ConformanceRunner,
    bad_lines,
    counter_lines,
    divergent,
    ids,
    js,
    ordered,
)
from harness.checkout import REPO_ROOT
from harness.client import send_udp
from harness.etsy import start_etsy
from harness.sink import GraphiteSink, parse_line
from harness.tallyd import start_aggregator

pytestmark = pytest.mark.conformance


def timer_lines(name: str, **stats: object) -> list[str]:
    """Legacy-namespace timer lines, stat=value as written."""
    return [f"stats.timers.{name}.{stat} {value}" for stat, value in stats.items()]


def per_second(count: float) -> str:
    return js(count / INTERVAL)


def single_value_timer(name: str, value: str, square: str, count: float = 1) -> list[str]:
    """The lines of a timer that got one value (default percentThreshold 90)."""
    return timer_lines(
        name, count=js(count), count_ps=per_second(count), lower=value, upper=value, sum=value,
        sum_squares=square, mean=value, median=value, std=0, count_90=1, mean_90=value,
        upper_90=value, sum_90=value, sum_squares_90=square,
    )


TOP = {"percentThreshold": [90, -90, -100]}
DECIMAL_FILTER = {"percentThreshold": [99.9, 90], "calculatedTimerMetrics": ["mean_percent"]}

CASES = ordered([
    # 1. h is a histogram aggregated as a timer; negative values allowed.
    divergent(
        "d1_h_is_a_timer", "{k}.h:5|h\n{k}.h:-3|h\n{k}.hr:10|h|@0.5",
        tallyd=[[
            *timer_lines("{k}.h", count=2, count_ps=per_second(2), lower=-3, upper=5, sum=2,
                         sum_squares=34, mean=1, median=1, std=4, count_90=2, mean_90=1,
                         upper_90=5, sum_90=2, sum_squares_90=34),
            *single_value_timer("{k}.hr", "10", "100", count=2),
            *bad_lines(0),
        ]],
        etsy=[[*counter_lines("{k}.h", 2), *counter_lines("{k}.hr", 20), *bad_lines(0)]],
        difference="1: type h is a histogram (a timer), Etsy counts it",
    ),
    # 1. DogStatsD's d (distribution) is aggregated exactly like h: the h case's lines, as d.
    divergent(
        "d1_d_is_h", "{k}.h:5|d\n{k}.h:-3|d\n{k}.hr:10|d|@0.5",
        tallyd=[[
            *timer_lines("{k}.h", count=2, count_ps=per_second(2), lower=-3, upper=5, sum=2,
                         sum_squares=34, mean=1, median=1, std=4, count_90=2, mean_90=1,
                         upper_90=5, sum_90=2, sum_squares_90=34),
            *single_value_timer("{k}.hr", "10", "100", count=2),
            *bad_lines(0),
        ]],
        etsy=[[*counter_lines("{k}.h", 2), *counter_lines("{k}.hr", 20), *bad_lines(0)]],
        difference="1: type d (DogStatsD distribution) is h, a timer; Etsy counts it",
    ),
    # 33. DogStatsD events and service checks: refused under their own reasons, not bad lines.
    divergent(
        "d1_dogstatsd_events", "_e{5,4}:{k}.t|text|#a:b\n_sc|{k}.sc|0\n{k}.ok:1|c",
        tallyd=[[*counter_lines("{k}.ok", 1), *bad_lines(0)]],
        send_to_etsy=False,
        difference="33: DogStatsD events and service checks are counted as dropped, not bad",
    ),
    # 2. Unknown types are bad lines.
    divergent(
        "d2_unknown_types", "{k}.x:1|x\n{k}.C:1|C\n{k}.M:1|MS\n{k}.e:1|\n{k}.G:2|G\n{k}.D:1|D",
        tallyd=[bad_lines(6)],
        etsy=[[*counter_lines("{k}.x", 1), *counter_lines("{k}.C", 1),
               *counter_lines("{k}.M", 1), *counter_lines("{k}.e", 1),
               *counter_lines("{k}.G", 2), *counter_lines("{k}.D", 1), *bad_lines(0)]],
        difference="2: anything but c, g, ms, h, d, s is a bad line; Etsy counts it",
    ),
    # 3. Sample rates are Python floats > 0.
    divergent(
        "d3_rate_exponent", "{k}.a:1|c|@1e-1\n{k}.b:1|c|@1E-1\n{k}.c:1|c|@1e400",
        tallyd=[[*counter_lines("{k}.a", 10), *counter_lines("{k}.b", 10), *bad_lines(1)]],
        etsy=[[*counter_lines("{k}.a", 1), *counter_lines("{k}.b", 1),
               *counter_lines("{k}.c", 1), *bad_lines(0)]],
        difference="3: @1e-1 means 0.1 (Etsy reads the leading digits: 1); @1e400 is bad",
    ),
    divergent(
        "d3_rate_zero", "{k}.z:1|c|@0\n{k}.z2:1|c|@0.0\n{k}.h:1|c|@0x1",
        tallyd=[bad_lines(3)],
        etsy=[["stats.{k}.z Infinity", "stats_counts.{k}.z Infinity",
               "stats.{k}.z2 Infinity", "stats_counts.{k}.z2 Infinity",
               "stats.{k}.h Infinity", "stats_counts.{k}.h Infinity", *bad_lines(0)]],
        difference="3: a rate must be > 0 in Python float syntax; Etsy divides by 0",
    ),
    divergent(
        "d3_rates_that_crash_etsy",
        "{k}.sp:1|c|@ 0.5\n{k}.plus:1|c|@+0.5\n{k}.inf:1|c|@Infinity\n{k}.t:4|ms|@ 0.25",
        tallyd=[[*counter_lines("{k}.sp", 2), *counter_lines("{k}.plus", 2),
                 *single_value_timer("{k}.t", "4", "16", count=4), *bad_lines(1)]],
        send_to_etsy=False,
        difference="3: '@ 0.5' and '@+0.5' mean 0.5, '@Infinity' is bad (each kills Etsy)",
    ),
    # 4. Values must be finite numbers; whitespace-only is bad.
    divergent(
        "d4_non_finite_values",
        "{k}.inf:Infinity|c\n{k}.ninf:-Infinity|g\n{k}.big:1e400|g\n{k}.bigms:1e400|ms",
        tallyd=[bad_lines(4)],
        etsy=[[
            "stats.{k}.inf Infinity", "stats_counts.{k}.inf Infinity",
            "stats.gauges.{k}.ninf -Infinity", "stats.gauges.{k}.big Infinity",
            *timer_lines("{k}.bigms", count=1, count_ps=per_second(1), lower="Infinity",
                         upper="Infinity", sum="Infinity", sum_squares="Infinity",
                         mean="Infinity", median="Infinity", std="NaN", count_90=1,
                         mean_90="Infinity", upper_90="Infinity", sum_90="Infinity",
                         sum_squares_90="Infinity"),
            *bad_lines(0),
        ]],
        difference="4: Infinity and overflowing values are bad lines; Etsy prints Infinity",
    ),
    # 34. Finite values whose aggregate would overflow are refused (as overflow, not bad).
    divergent(
        "d34_overflow", "{k}.o:1e307|c\n{k}.o:1e307|c\n{k}.g:1e308|g\n{k}.g:+1e308|g",
        tallyd=[["stats.{k}.o 2e+307", "stats_counts.{k}.o 1e+307",
                 "stats.gauges.{k}.g 1e+308", *bad_lines(0)]],
        etsy=[["stats.{k}.o 4e+307", "stats_counts.{k}.o 2e+307",
               "stats.gauges.{k}.g Infinity", *bad_lines(0)]],
        difference="34: a line that would make an aggregate non-finite is refused",
    ),
    divergent(
        "d4_whitespace_only_values", "{k}.ws: |c\n{k}.wg: |g\n{k}.wt:  |ms\n{k}.tab:\t|c",
        tallyd=[bad_lines(4)],
        etsy=[[*counter_lines("{k}.ws", 0), "stats.gauges.{k}.wg 0",
               *single_value_timer("{k}.wt", "0", "0"), *counter_lines("{k}.tab", 0),
               *bad_lines(0)]],
        difference="4: a whitespace-only value is a bad line; Etsy reads 0",
    ),
    # 5. The type is trimmed before validation.
    divergent(
        "d5_trimmed_type",
        "{k}.neg:-5|ms\r\n{k}.neg2:-5|ms \n{k}.set:abc|s\r\n{k}.set2:abc|s \n{k}.cnt:1|c\r",
        tallyd=[["stats.sets.{k}.set.count 1", "stats.sets.{k}.set2.count 1",
                 *counter_lines("{k}.cnt", 1), *bad_lines(2)]],
        etsy=[[*single_value_timer("{k}.neg", "-5", "25"),
               *single_value_timer("{k}.neg2", "-5", "25"),
               *counter_lines("{k}.cnt", 1), *bad_lines(2)]],
        difference="5: 'ms\\r' is checked like 'ms' (no negatives), 's\\r' like 's'",
    ),
    # 6. An empty key after sanitising is a bad line.
    divergent(
        "d6_empty_key", ":2|c\n+++:1|c\n:1|c|#a:b\n:5|g\n%%:x|s",
        tallyd=[bad_lines(5)],
        etsy=[[*counter_lines("", 3), *counter_lines(";a=b", 1), "stats.gauges. 5",
               "stats.sets..count 1", *bad_lines(0)]],
        difference="6: empty keys are bad lines; Etsy emits stats. and stats_counts.",
    ),
    # 7. Top percentiles covering all values: correct values instead of NaN.
    divergent(
        "d7_top_percentile_all_values", "{k}.t:1|ms\n{k}.t:2|ms\n{k}.one:7|ms",
        tallyd=[[
            *timer_lines("{k}.t", count=2, count_ps=per_second(2), lower=1, upper=2, sum=3,
                         sum_squares=5, mean=1.5, median=1.5, std=0.5,
                         count_90=2, mean_90=1.5, upper_90=2, sum_90=3, sum_squares_90=5,
                         count_top90=2, mean_top90=1.5, lower_top90=1, sum_top90=3,
                         sum_squares_top90=5,
                         count_top100=2, mean_top100=1.5, lower_top100=1, sum_top100=3,
                         sum_squares_top100=5),
            *timer_lines("{k}.one", count=1, count_ps=per_second(1), lower=7, upper=7, sum=7,
                         sum_squares=49, mean=7, median=7, std=0,
                         count_90=1, mean_90=7, upper_90=7, sum_90=7, sum_squares_90=49,
                         count_top90=1, mean_top90=7, lower_top90=7, sum_top90=7,
                         sum_squares_top90=49,
                         count_top100=1, mean_top100=7, lower_top100=7, sum_top100=7,
                         sum_squares_top100=49),
        ]],
        etsy=[[
            *timer_lines("{k}.t", count=2, count_ps=per_second(2), lower=1, upper=2, sum=3,
                         sum_squares=5, mean=1.5, median=1.5, std=0.5,
                         count_90=2, mean_90=1.5, upper_90=2, sum_90=3, sum_squares_90=5,
                         count_top90=2, mean_top90="NaN", lower_top90=1, sum_top90="NaN",
                         sum_squares_top90="NaN",
                         count_top100=2, mean_top100="NaN", lower_top100=1, sum_top100="NaN",
                         sum_squares_top100="NaN"),
            *timer_lines("{k}.one", count=1, count_ps=per_second(1), lower=7, upper=7, sum=7,
                         sum_squares=49, mean=7, median=7, std=0,
                         count_90=1, mean_90=7, upper_90=7, sum_90=7, sum_squares_90=49,
                         count_top90=1, mean_top90=7, lower_top90=7, sum_top90=7,
                         sum_squares_top90=49,
                         count_top100=1, mean_top100=7, lower_top100=7, sum_top100=7,
                         sum_squares_top100=49),
        ]],
        config=TOP,
        difference="7: sum/mean/sum_squares of a top percentile over all n values are "
                   "computed; Etsy prints NaN",
    ),
    # 8. Decimal percentiles can be selected by calculatedTimerMetrics.
    divergent(
        "d8_decimal_percentile_selectable", "{k}.t:1|ms\n{k}.t:2|ms\n{k}.t:3|ms",
        tallyd=[["stats.timers.{k}.t.mean_99_9 2", "stats.timers.{k}.t.mean_90 2"]],
        etsy=[["stats.timers.{k}.t.mean_90 2"]],
        config=DECIMAL_FILTER,
        difference="8: mean_99_9 matches mean_percent; Etsy can never select it",
    ),
    # 9. __proto__ and constructor are ordinary names.
    divergent(
        "d9_js_object_keys",
        "__proto__:1|c\n__proto__:1|c\nconstructor:2|c\n__proto__:5|g\nconstructor:3|g\n"
        "__proto__:x|s\n__proto__:y|s\nconstructor:4|ms\ntoString:1|c\nhasOwnProperty:6|g",
        tallyd=[[
            *counter_lines("__proto__", 2), *counter_lines("constructor", 2),
            "stats.gauges.__proto__ 5", "stats.gauges.constructor 3",
            "stats.sets.__proto__.count 2",
            *single_value_timer("constructor", "4", "16"),
            *counter_lines("toString", 1), "stats.gauges.hasOwnProperty 6",
            *bad_lines(0),
        ]],
        send_to_etsy=False,
        difference="9: keys named like JavaScript object properties work (Etsy loses or "
                   "garbles them, and a timer named constructor kills it)",
    ),
])


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_documented_difference(case: Case, conformance_runner: ConformanceRunner) -> None:
    conformance_runner.run(case)


# -- 7: percent thresholds outside [-100, 0) U (0, 100] are config errors ----------------------


def _check_config(tmp_path: Path, config: dict[str, object]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.js"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [sys.executable, "-m", "aggregator", "--etsy-config", str(path), "--check-config",
         "--listen", "udp://127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )


@pytest.mark.parametrize("threshold", [0, 150, -150, 100.5, -100.5])
def test_percent_threshold_out_of_range_is_config_error(tmp_path: Path, threshold: float) -> None:
    result = _check_config(tmp_path, {"percentThreshold": [90, threshold]})
    assert result.returncode != 0, (
        f"percentThreshold {threshold} was accepted:\n{result.stdout}\n{result.stderr}")
    assert "percent" in (result.stderr + result.stdout).lower(), result.stderr


@pytest.mark.parametrize("threshold", [100, -100, 0.1, -0.1, 99.9])
def test_percent_threshold_in_range_is_accepted(tmp_path: Path, threshold: float) -> None:
    result = _check_config(tmp_path, {"percentThreshold": [threshold]})
    assert result.returncode == 0, f"{threshold} rejected:\n{result.stdout}\n{result.stderr}"


# -- 10: flush timestamps are aligned; graphiteStats lines carry the flush's timestamp ---------


def test_flush_timestamps_aligned_and_shared(graphite_sink: GraphiteSink) -> None:
    interval = 2
    proc = start_aggregator(["--listen", "udp://127.0.0.1:0", "--carbon",
                             f"127.0.0.1:{graphite_sink.port}", "--mgmt-address", "127.0.0.1",
                             "--mgmt-port", "0", "--flush-interval", str(interval)])
    try:
        flushes = graphite_sink.wait_for_flushes(4, timeout=5 * interval + 10,
                                                 grouping="timestamp")
    finally:
        assert proc.stop() == 0, proc.describe()
    stamps = []
    # The first flush may be one worker's alone: a worker that is ready first flushes at a
    # boundary its slower peer (worker 0, which reports graphiteStats) has not reached yet.
    for flush in flushes[1:4]:
        fields = [parse_line(line) for line in flush.lines]
        names = {name for name, _, _ in fields}
        assert "stats.statsd.graphiteStats.last_flush" in names, sorted(names)
        assert "statsd.numStats" in names, sorted(names)
        assert len({ts for _, _, ts in fields}) == 1, flush.lines
        stamps.append(int(fields[0][2]))
    assert all(ts % interval == 0 for ts in stamps), f"not multiples of {interval}: {stamps}"
    assert [b - a for a, b in itertools.pairwise(stamps)] == [interval, interval], stamps
    assert abs(stamps[-1] - time.time()) < 3 * interval, (stamps, time.time())


# -- 11: SIGTERM delivers the last partial interval (Etsy loses it) ----------------------------


def test_sigterm_flushes_partial_interval(graphite_sink: GraphiteSink) -> None:
    proc = start_aggregator(["--listen", "udp://127.0.0.1:0", "--carbon",
                             f"127.0.0.1:{graphite_sink.port}", "--mgmt-address", "127.0.0.1",
                             "--mgmt-port", "0", "--flush-interval", "3600s"])
    try:
        send_udp(proc.udp, [b"final.c:5|c\nfinal.c:2|c", b"final.t:9|ms", b"final.g:4|g"])
        time.sleep(0.3)  # let the datagrams be read before the signal
    finally:
        code = proc.stop()
    assert code == 0, proc.describe()
    lines = [parse_line(line)[:2] for line in graphite_sink.wait_for_flushes(
        1, timeout=10, grouping="timestamp")[0].lines]
    got = dict(lines)
    assert got.get("stats_counts.final.c") == "7", sorted(got.items())
    assert got.get("stats.timers.final.t.upper") == "9", sorted(got.items())
    assert got.get("stats.gauges.final.g") == "4", sorted(got.items())


def test_etsy_loses_partial_interval_on_sigterm(etsy_available: Path,
                                                graphite_sink: GraphiteSink) -> None:
    """The reference behaviour that difference 11 departs from."""
    proc = start_etsy({"flushInterval": 3_600_000, "graphiteHost": "127.0.0.1",
                       "graphitePort": graphite_sink.port})
    try:
        send_udp(proc.udp, [b"final.c:5|c"])
        time.sleep(0.3)
    finally:
        proc.stop()
    time.sleep(0.5)
    assert not any("final.c" in rec.line for rec in graphite_sink.records()), (
        "Etsy delivered data on SIGTERM; etsy-semantics.md §2 says it is lost")
