"""Timer statistics: Etsy's formulas, bit for bit, and tallyd's documented fixes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.timers import (
    bin_name,
    bins_for,
    js_round,
    keeps_stat,
    percentile_suffix,
    timer_metric_filter,
    timer_stats,
)


def stats_of(values, count=None, interval=10.0, pcts=(90.0,), bins=()):
    return dict(timer_stats(values, len(values) if count is None else count, interval, pcts, bins))


def test_three_values_match_etsy_reference() -> None:
    s = stats_of([300.0, 100.0, 200.0], interval=0.1)
    assert s["std"] == 81.64965809277261
    assert (s["upper"], s["lower"], s["count"], s["count_ps"]) == (300, 100, 3, 30)
    assert (s["sum"], s["sum_squares"], s["mean"], s["median"]) == (600, 140000, 200, 200)
    assert (s["count_90"], s["upper_90"], s["mean_90"], s["sum_90"]) == (3, 300, 200, 600)


def test_even_count_median_is_mean_of_middle_values() -> None:
    assert stats_of([1.0, 2.0, 3.0, 10.0])["median"] == 2.5


def test_single_value_emits_every_group_with_that_value() -> None:
    s = stats_of([7.0], pcts=(90.0, -10.0, 1.0))
    assert (s["count_90"], s["upper_90"], s["mean_90"], s["sum_squares_90"]) == (1, 7, 7, 49)
    assert (s["count_top10"], s["lower_top10"], s["sum_top10"]) == (1, 7, 7)
    assert s["upper_1"] == 7


def test_group_rounding_to_zero_is_omitted() -> None:
    s = stats_of([1.0, 2.0, 3.0], pcts=(10.0,))
    assert "upper_10" not in s and "count_10" not in s


def test_top_percentile_uses_prefix_sum_difference() -> None:
    s = stats_of([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], pcts=(-20.0,))
    assert (s["count_top20"], s["lower_top20"], s["sum_top20"], s["mean_top20"]) == (2, 9, 19, 9.5)
    assert s["sum_squares_top20"] == 81 + 100


def test_top_percentile_over_all_values_is_not_nan() -> None:
    # Etsy prints NaN here (round(0.9 * 2) == 2 == n); tallyd reports the whole sums.
    s = stats_of([1.0, 3.0], pcts=(-90.0,))
    assert (s["count_top90"], s["lower_top90"], s["sum_top90"], s["mean_top90"]) == (2, 1, 4, 2)
    assert s["sum_squares_top90"] == 10


def test_decimal_percentile_names_and_values() -> None:
    values = [float(i) for i in range(1, 1001)]
    s = stats_of(values, pcts=(99.9,))
    assert s["upper_99_9"] == 999 and s["count_99_9"] == 999


def test_sample_rate_scales_count_only() -> None:
    s = stats_of([5.0], count=10.0, interval=0.2)
    assert (s["count"], s["count_ps"], s["sum"]) == (10, 50, 5)


def test_histogram_bins_are_per_bin_not_cumulative() -> None:
    s = stats_of([1.0, 5.0, 50.0, 500.0, 5000.0], bins=(10.0, 100.0, 1000.0, "inf"))
    assert [s[f"histogram.bin_{b}"] for b in ("10", "100", "1000", "inf")] == [2, 1, 1, 1]


def test_histogram_without_inf_drops_values_above_last_bin() -> None:
    s = stats_of([1.0, 2.21, 3.0], bins=(2.21,))
    assert s == s | {"histogram.bin_2_21": 1}
    assert sum(v for k, v in s.items() if k.startswith("histogram.")) == 1


def test_bins_for_takes_first_matching_rule() -> None:
    rules = (("api", (10.0,)), ("", (1.0, "inf")))
    assert bins_for(b"svc.api.latency", rules) == (10.0,)
    assert bins_for(b"other", rules) == (1.0, "inf")
    assert bins_for(b"other", ()) == ()


@pytest.mark.parametrize(("pct", "suffix"), [(90.0, "90"), (99.9, "99_9"), (-10.0, "top10"),
                                             (66.6, "66_6"), (-0.5, "top0_5")])
def test_percentile_suffix(pct: float, suffix: str) -> None:
    assert percentile_suffix(pct) == suffix


def test_bin_names() -> None:
    assert [bin_name(b) for b in (100.0, 100.5, 0.5, "inf")] == [
        "bin_100", "bin_100_5", "bin_0_5", "bin_inf"]


def test_calculated_metrics_filter_selects_percent_families() -> None:
    chosen = timer_metric_filter(["mean_percent", "upper", "histogram"])
    assert keeps_stat("mean_90", chosen) and keeps_stat("mean_top10", chosen)
    assert keeps_stat("mean_99_9", chosen)  # Etsy can never select this one
    assert keeps_stat("upper", chosen) and keeps_stat("histogram", chosen)
    assert not keeps_stat("upper_90", chosen) and not keeps_stat("count_ps", chosen)
    assert keeps_stat("anything", timer_metric_filter([]))


def test_js_round_rounds_halves_up() -> None:
    assert [js_round(x) for x in (0.5, 1.5, 2.5, -0.5, -1.5, 2.4999)] == [1, 2, 3, 0, -1, 2]


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1,
                max_size=50))
def test_invariants_hold_for_any_samples(values: list[float]) -> None:
    s = stats_of(values, pcts=(50.0, -50.0, 100.0))
    assert s["lower"] <= s["median"] <= s["upper"]
    assert s["std"] >= 0 and math.isfinite(s["std"])
    assert s["upper_100"] == s["upper"]
    assert all(math.isfinite(v) for v in s.values())
