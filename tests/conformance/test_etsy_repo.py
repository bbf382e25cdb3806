"""Conformance: the black-box parts of Etsy statsd's own test suite (test/*.js in statsd 0.9.0,
etsy-semantics.md §9), ported as input-lines -> Graphite-lines cases.

The originals check single values in a fresh daemon; here the whole flush must equal Etsy's.
Their flush interval (100-200 ms) is replaced by the harness's, which rescales the rates.
"""

from __future__ import annotations

import pytest

from conformance.harness import Case, ConformanceRunner, case, ids, ordered

pytestmark = pytest.mark.conformance

GRAPHITE_TESTS = {"percentThreshold": 90,
                  "histogram": [{"metric": "a_test_value", "bins": [1000]}]}
NONLEGACY = {"graphite": {"legacyNamespace": False}}


def graphite_suite(prefix: str, config: dict[str, object], about: str) -> list[Case]:
    """The sends of graphite_tests.js and its variants, one case each, under ``config``."""
    return [
        case(f"{prefix}_malformed_post", "{k}.a_bad_test_value|z", config=config,
             about=f"{about}: send_malformed_post (bad_lines_seen, numStats)"),
        case(f"{prefix}_timer", "{k}.a_test_value:100|ms", config=config,
             about=f"{about}: timers with mean_90 and histogram bin_1000"),
        case(f"{prefix}_sampled_timer", "{k}.a_test_value:100|ms|@0.1", config=config,
             about=f"{about}: a sampled timer, count 10"),
        case(f"{prefix}_counter", ["{k}.a_test_value:100|c", "{k}.b_test_value:100|c|@0.1"],
             config=config, about=f"{about}: counter rate and count"),
        case(f"{prefix}_gauge", "{k}.a_test_value:70|g", config=config,
             about=f"{about}: gauge"),
        case(f"{prefix}_gauge_delta", ["{k}.test_value:50|g"], ["{k}.test_value:-3|g"],
             config=config, about=f"{about}: gauge 50 then delta -3 gives 47"),
        case(f"{prefix}_sanitize", ["{k}.fo/o:250|c", "{k}.b ar:250|c", "{k}.foo+bar:250|c"],
             config=config, about=f"{about}: key sanitising"),
        case(f"{prefix}_graphite_tags",
             ["{k}.fo/o;tag1=val1:250|c", "{k}.b ar;tag1=val1;tag2=val2:250|c",
              "{k}.foo+bar;tag1=val1;tag3=val3;tag2=val2:250|c"],
             config=config, about=f"{about}: Graphite tags"),
        case(f"{prefix}_dogstatsd_tags",
             ["{k}.fo/o:250|c|#tag1:val1", "{k}.b ar:250|c|#tag1:val1,tag2:val2",
              "{k}.foo+bar:250|c|#tag1:val;1,tag3:val3,tag2:val2"],
             config=config, about=f"{about}: DogStatsD tags, val;1 becomes val_1"),
    ]


PROCESS_METRICS = {
    "percentThreshold": [90, 80, -10, -20],
    "histogram": [{"metric": "foo", "bins": []},
                  {"metric": "abcd", "bins": [1, 5, "inf"]},
                  {"metric": "abc", "bins": [1, 2.21, "inf"]},
                  {"metric": "a", "bins": [1, 2]}],
}


def filtered(name: str, metrics: list[str], percentiles: list[float] | None = None,
             histogram: bool = False) -> Case:
    config: dict[str, object] = {"calculatedTimerMetrics": metrics}
    if percentiles is not None:
        config["percentThreshold"] = percentiles
    if histogram:
        config["histogram"] = PROCESS_METRICS["histogram"]
    return case(name, "\n".join(["{k}.one:100|ms", "{k}.three:100|ms\n{k}.three:200|ms\n"
                                 "{k}.three:300|ms", "{k}.even:300|ms\n{k}.even:200|ms\n"
                                 "{k}.even:400|ms\n{k}.even:100|ms"]),
                config=config,
                about=f"process_metrics_tests.js: calculatedTimerMetrics {metrics}")


CASES = ordered([
    *graphite_suite("gt", {**NONLEGACY, **GRAPHITE_TESTS}, "graphite_tests.js"),
    *graphite_suite("gl", GRAPHITE_TESTS, "graphite_legacy_tests.js"),
    *graphite_suite("gls", {**GRAPHITE_TESTS, "prefixStats": "statsprefix"},
                    "graphite_legacy_tests_statsprefix.js")[:2],
    *graphite_suite("gts", {**NONLEGACY, **GRAPHITE_TESTS, "prefixStats": "statsprefix"},
                    "graphite_tests_statsprefix.js")[:2],
    *graphite_suite("gtx", {"graphite": {"legacyNamespace": False,
                                         "globalSuffix": "statssuffix"}, **GRAPHITE_TESTS},
                    "graphite_tests_statssuffix.js")[:4],
    *graphite_suite("gtf", {**NONLEGACY, **GRAPHITE_TESTS,
                            "calculatedTimerMetrics": ["count_ps", "count", "count_percent",
                                                       "mean_percent", "histogram"]},
                    "graphite_tests_filters.js")[1:3],
    case("delete_counters_gauge_ttl",
         ["{k}.a_test_value:100|ms", "{k}.a_test_value:100|c", "{k}.a_test_value:70|g"],
         [], [], [],
         config={**GRAPHITE_TESTS, "deleteIdleStats": True, "gaugesMaxTTL": 2},
         about="graphite_delete_counters_tests.js: the gauge lives 2 flushes, numStats drops"),
    case("pm_counters", "{k}.a:2|c",
         about="process_metrics_tests.js: counter rate"),
    case("pm_bins",
         ["\n".join(f"{{k}}.a:{v}|ms" for v in range(1, 11)),
          "{k}.abc:0.1234|ms\n{k}.abc:2.89|ms\n{k}.abc:4|ms\n{k}.abc:6|ms\n{k}.abc:8|ms",
          "\n".join(f"{{k}}.{name}:{v}|ms" for name in
                    ("foo", "barbazfoobar", "bar.bazfoobar.abc", "xyz") for v in (0, 2, 4, 6, 8)),
          "{k}.one:100|ms",
          "{k}.top:10|ms\n" * 8 + "{k}.top:100|ms\n{k}.top:200|ms",
          "{k}.sampled:100|ms|@0.5\n{k}.sampled:200|ms|@0.1\n{k}.sampled:300|ms|@0.2"],
         config=PROCESS_METRICS,
         about="process_metrics_tests.js: histograms (first match, inf, bin_2_21), "
               "percentiles 90/80/-10/-20, sampled counts"),
    filtered("pm_filter_no_std",
             ["upper", "lower", "count", "count_ps", "sum", "sum_squares", "mean", "median"]),
    filtered("pm_filter_four", ["upper", "lower", "count_ps", "sum_squares"]),
    filtered("pm_filter_std", ["std", "count", "sum_squares", "mean", "median"]),
    filtered("pm_filter_percent", ["mean_percent", "sum_percent"], [90, 80]),
    filtered("pm_filter_percent_upper", ["count_percent", "mean_percent", "upper_percent"],
             [90]),
    filtered("pm_filter_top", ["lower_percent", "sum_percent"], [-10, -20]),
    filtered("pm_filter_histogram", ["histogram"], histogram=True),
    filtered("pm_filter_median", ["median"]),
    filtered("pm_filter_empty_list", []),
])


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_matches_etsy(case: Case, conformance_runner: ConformanceRunner) -> None:
    conformance_runner.run(case)
