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


def _all_finite(stats: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in stats.values())


def test_overflowing_sums_are_left_out_and_the_rest_kept() -> None:
    s = stats_of([1e308, 1e308], pcts=(90.0, -50.0))
    assert _all_finite(s)
    assert s["mean"] == s["median"] == s["upper"] == s["lower"] == 1e308
    assert s["std"] == 0.0 and s["count"] == 2 and s["count_ps"] == 0.2
    assert "sum" not in s and "sum_squares" not in s and "sum_90" not in s
    assert s["mean_90"] == 1e308 and s["sum_top50"] == 1e308 and s["mean_top50"] == 1e308
    assert "sum_squares_top50" not in s


def test_overflowing_squares_keep_a_finite_sum_and_std() -> None:
    s = stats_of([1e200, 3e200])
    assert _all_finite(s)
    assert s["sum"] == 4e200 and s["mean"] == 2e200 and s["std"] == 1e200
    assert "sum_squares" not in s and "sum_squares_90" not in s
    assert s["median"] == 2e200


def test_opposite_extremes_give_finite_mean_std_and_median() -> None:
    s = stats_of([-1.5e308, -1e308, 1e308, 1.5e308], pcts=(-25.0, 50.0))
    assert _all_finite(s)
    assert s["mean"] == 0.0 and s["median"] == 0.0 and s["sum"] == 0.0
    assert math.isclose(s["std"], math.sqrt((2 * 1.5**2 + 2) / 4) * 1e308)
    assert s["sum_top25"] == 1.5e308 and s["mean_50"] == -1.25e308
    assert "sum_50" not in s


def test_ordinary_values_take_etsys_path_unchanged() -> None:
    values = [0.1, 0.2, 0.3, 1e10, 7.0]
    plain = stats_of(values)
    assert plain["sum"] == 0.1 + 0.2 + 0.3 + 7.0 + 1e10  # ascending, left to right
    assert plain["sum_squares"] == 0.1 * 0.1 + 0.2 * 0.2 + 0.3 * 0.3 + 7.0 * 7.0 + 1e20


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=40),
       st.sampled_from([(90.0,), (50.0, -10.0), (-100.0, 100.0)]))
def test_no_statistic_is_ever_non_finite(values: list[float], pcts: tuple[float, ...]) -> None:
    s = stats_of(values, pcts=pcts, bins=(0.0, "inf"))
    assert _all_finite(s)
    for stat in ("mean", "median", "std", "upper", "lower", "count", "count_ps"):
        assert stat in s
    low, high = min(values), max(values)  # Etsy's sum / n may round just past them
    assert low - 1e-12 * abs(low) <= s["mean"] <= high + 1e-12 * abs(high)
    assert s["std"] >= 0.0
    assert s["histogram.bin_0"] + s["histogram.bin_inf"] == len(values)
