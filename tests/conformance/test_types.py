"""Conformance: counters, gauges, sets, timers, percentiles, histograms, number formatting
(etsy-semantics.md §1.5, §3, §4.3).

Every case must produce exactly the Graphite output of Etsy statsd 0.9.0. Percent thresholds
are chosen so that no timer hits tallyd's deliberate top-percentile difference (round(|p|n/100)
== n with n > 1 and p < 0); those inputs are in test_differences.py.
"""

from __future__ import annotations

import pytest

from conformance.harness import Case, ConformanceRunner, case, ids, ordered

pytestmark = pytest.mark.conformance

#: Many percent thresholds at once: positive, decimal, negative, 100, and small ones that round
#: to zero values for small timers (the whole group is then omitted).
PERCENTILES = {"percentThreshold": [90, 50, 95, 99.9, 66.6, 100, 25, 10, 1, 0.1, -10, -20, -5.5]}
SCALAR_PERCENTILE = {"percentThreshold": 80}

HISTOGRAMS = {"histogram": [
    {"metric": "hnone", "bins": []},
    {"metric": "hfirst", "bins": [1, 10]},
    {"metric": "hf", "bins": [5, "inf"]},
    {"metric": "hinf", "bins": [1, 2.21, "inf"]},
    {"metric": "hdec", "bins": [0.5, 100.5, 1000]},
    {"metric": "", "bins": [1000]},
]}

CALCULATED = {
    "percentThreshold": [90, -10],
    "histogram": [{"metric": "hist", "bins": [10, "inf"]}],
    "calculatedTimerMetrics": ["count", "count_ps", "mean_percent", "upper_percent",
                               "lower_percent", "sum_squares_percent", "histogram", "median"],
}
CALCULATED_NO_HISTOGRAM = {
    "percentThreshold": [90, 80],
    "histogram": [{"metric": "", "bins": [10, "inf"]}],
    "calculatedTimerMetrics": ["std", "count_percent", "sum_percent", "unknown_stat"],
}


def timer(name: str, *values: object, suffix: str = "") -> str:
    return "\n".join(f"{{k}}.{name}:{v}|ms{suffix}" for v in values)


CASES = ordered([
    # -- counters --
    case("counters_basic",
         ["{k}.a:1|c\n{k}.a:2|c\n{k}.neg:-3|c\n{k}.zero:0|c\n{k}.frac:1.5|c\n{k}.frac:0.25|c",
          "{k}.a:4|c"],
         about="counters sum within a flush; rate = count / interval"),
    case("counters_sample_rates",
         ["\n".join([
             "{k}.half:1|c|@0.5", "{k}.half:1|c|@0.5",
             "{k}.tenth:1|c|@0.1",
             "{k}.third:1|c|@0.3",
             "{k}.quarter:3|c|@0.25",
             "{k}.two:5|c|@2",
             "{k}.mixed:1|c|@0.5", "{k}.mixed:2|c", "{k}.mixed:1|c|@0.1",
             "{k}.dec:0.7|c|@0.2",
             "{k}.neg:-2|c|@0.5",
         ])],
         about="count += value * (1/rate), in that order of operations"),
    case("counters_idle_stay_zero",
         ["{k}.a:3|c\n{k}.b:1|c|@0.1"], [], [],
         about="idle counters are flushed as rate 0 and count 0"),
    # -- gauges --
    case("gauges_set_and_deltas",
         ["\n".join([
             "{k}.g:50|g", "{k}.g:-3|g",
             "{k}.first_plus:+4|g",
             "{k}.first_minus:-4|g",
             "{k}.zero_base:0|g", "{k}.zero_base:-7|g",
             "{k}.five_base:5|g", "{k}.five_base:-7|g",
             "{k}.rate_ignored:3|g|@0.5",
             "{k}.acc:1.5|g", "{k}.acc:+0.1|g", "{k}.acc:+0.2|g",
             "{k}.reset:10|g", "{k}.reset:+5|g", "{k}.reset:2|g",
             "{k}.negzero:-0|g",
             "{k}.plus_zero:+0|g",
         ])],
         about="a signed value is a delta from the current value (missing = 0); unsigned sets"),
    case("gauges_persist_across_flushes",
         ["{k}.p:10|g"], [], ["{k}.p:+5|g"], ["{k}.p:-15|g"], ["{k}.p:+2|g"], ["{k}.p:3|g"],
         about="gauges keep their value and deltas apply to it in later flushes"),
    # -- sets --
    case("sets_basic",
         ["\n".join([
             "{k}.s:a|s", "{k}.s:a|s", "{k}.s:b|s",
             "{k}.num:1|s", "{k}.num:1.0|s", "{k}.num:01|s",
             "{k}.empty:|s", "{k}.empty:0|s",
             "{k}.rate:x|s|@0.5",
             "{k}.words:hello world|s", "{k}.words:-5|s", "{k}.words:+5|s",
             "{k}.colon:a:b|s",
         ])],
         ["{k}.s:c|s"], [],
         about="distinct strings; 1 and 1.0 differ; an empty value is '0'; idle sets count 0"),
    # -- timers --
    case("timers_all_stats",
         [timer("t", 100, 200, 300), timer("one", 42), timer("even", 300, 200, 400, 100),
          timer("odd", 5, 1, 4, 2, 3), timer("zero", 0), timer("dec", 0.3, 0.1, 0.2),
          timer("same", 7, 7, 7, 7)],
         about="std is the population deviation (81.64965809277261 for 100,200,300)"),
    case("timers_sample_rates",
         [timer("sr", 100, suffix="|@0.1") + "\n" + timer("mix", 1, 2, suffix="|@0.5") + "\n"
          + timer("mix", 3) + "\n" + timer("third", 5, suffix="|@0.3")],
         about="the rate scales count and count_ps only; count_P counts values"),
    case("timers_idle_count_only",
         [timer("t", 1, 2, 3)], [], [timer("t", 4)],
         about="an idle timer is flushed as count 0 and count_ps 0 only"),
    case("timers_many_values",
         ["\n".join(timer("many", v) for v in range(1, 101))],
         about="100 values: percentiles at exact boundaries"),
    case("timers_float_accumulation",
         [timer("f", 0.1, 0.2, 0.3, 0.4, 1e-7, 123456.789, 3.14159, 2.71828)],
         about="cumulative sums in ascending order, bit for bit"),
    # -- number formatting (§4.3) --
    case("number_formatting",
         ["\n".join([
             "{k}.c1:0.1|c", "{k}.c1:0.2|c",
             "{k}.c2:1|c|@0.3",
             "{k}.g_big:1e21|g",
             "{k}.g_long:123456789012345678901|g",
             "{k}.g_micro:1e-6|g",
             "{k}.g_small:1e-7|g",
             "{k}.g_small2:1.5e-7|g",
             "{k}.g_neg_small:-2.5e-8|g",
             "{k}.g_neg_big:-2.5e22|g",
             "{k}.g_1e16:1e16|g",
             "{k}.g_1e-5:0.00001|g",
             "{k}.c_tiny:1e-7|c",
             "{k}.c_huge:1e21|c",
             "{k}.t_tiny:1e-7|ms",
             "{k}.g_max:1.7976931348623157e308|g",
             "{k}.g_min:5e-324|g",
         ])],
         about="values printed as JavaScript's String(number)"),
    # -- percentiles --
    case("percentiles_many",
         [timer("one", 100), timer("two", 10, 20), timer("four", 1, 2, 3, 4),
          timer("five", 5, 4, 3, 2, 1), timer("ten", 10, 10, 10, 10, 10, 10, 10, 10, 100, 200),
          "\n".join(timer("hundred", v) for v in range(100, 0, -1))],
         config=PERCENTILES,
         about="positive, decimal (99_9, 66_6), negative (top10, top5_5), 100 and small "
               "thresholds that round to zero values (omitted)"),
    case("percentiles_half_rounds_up",
         [timer("h2", 1, 2), timer("h5", 1, 2, 3, 4, 5)],
         config={"percentThreshold": [25, 50, 70, -50, -30]},
         about="Math.round: .5 rounds up (round(0.5) = 1, round(2.5) = 3)"),
    case("percentiles_scalar_threshold",
         [timer("t", 100, 200, 300, 400, 500)], config=SCALAR_PERCENTILE,
         about="a scalar percentThreshold is a one-element list"),
    # -- histograms --
    case("histograms",
         [timer("hfirst_a", 0, 0.5, 1, 5, 9.99, 10, 11),
          timer("hf_b", 1, 5, 6, 1e6),
          timer("hinf_c", 0.1234, 2.89, 4, 6, 8),
          timer("hdec_d", 0.25, 0.5, 100, 100.5, 999, 1000, 5000),
          timer("hnone_e", 1, 2, 3),
          timer("catchall_f", 1, 999, 1000)],
         [], [timer("hfirst_a", 3)],
         config=HISTOGRAMS,
         about="first matching entry wins; per-bin counts; 'inf' takes the rest; values at or "
               "above the last finite bin are dropped; bin names bin_2_21, bin_100_5, bin_inf"),
    # -- calculatedTimerMetrics --
    case("calculated_timer_metrics",
         [timer("t", 100, 200, 300) + "\n" + timer("hist_t", 1, 5, 50)], [],
         config=CALCULATED,
         about="only listed stats; *_percent selects every percentile of a stat"),
    case("calculated_timer_metrics_without_histogram",
         [timer("t", 100, 200, 300, 400)], config=CALCULATED_NO_HISTOGRAM,
         about="histogram not listed: no bins; unknown names select nothing"),
])


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_matches_etsy(case: Case, conformance_runner: ConformanceRunner) -> None:
    conformance_runner.run(case)
