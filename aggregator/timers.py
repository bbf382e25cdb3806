"""Timer statistics, computed so the floats match Etsy statsd bit for bit.

For one timer with samples ``v`` (sorted ascending, ``n`` of them) and a sample-scaled
event count ``C``, over an interval of ``I`` seconds:

======================  ===================================================================
``count``, ``count_ps``  ``C`` and ``C / I`` (sample rates scale the count, not the stats)
``lower``, ``upper``     ``v[0]``, ``v[n-1]``
``sum``, ``sum_squares`` running sums of ``v`` and ``v*v``, accumulated in ascending order
``mean``                 ``sum / n``
``median``               middle value, or the mean of the two middle values
``std``                  population standard deviation, two-pass, accumulated in order
======================  ===================================================================

Percent thresholds: for each ``p``, ``m = round(|p| / 100 * n)`` (halves up; ``m = n``
when ``n == 1``). A group with ``m == 0`` is omitted. ``p > 0`` describes the lowest
``m`` values (``upper_p`` is the largest of them); ``p < 0`` the highest ``m`` values
(``lower_topP`` is the smallest of them), and its sums are differences of the running
sums, as Etsy computes them, except that when ``m == n`` tallyd uses the whole sum where
Etsy prints NaN. Suffixes: ``90`` -> ``90``, ``99.9`` -> ``99_9``, ``-10`` -> ``top10``.

Histogram bins ``[b1, b2, ..., "inf"]`` count the values below each bound that no earlier
bin counted; values at or above the last finite bound without an ``inf`` bin are not
counted anywhere.

Overflow: every sample is finite, but sums, squares and differences of large samples need
not be (``1e308`` twice sums to Infinity; ``1e200`` squared is Infinity). Nothing
non-finite is returned. When the plain computation above gives a non-finite statistic
(and only then: otherwise every value is Etsy's, bit for bit), it is computed again on the
samples scaled by a power of two (exact), with ``math.fsum``:

* ``mean``, ``median``, ``std`` and ``mean_P`` always lie within the samples' range, so
  they are always emitted (correctly rounded where Etsy would print Infinity or NaN);
* ``sum``, ``sum_squares``, ``sum_P`` and ``sum_squares_P`` are emitted when their exact
  value is within the double range, and left out when it is not;
* ``count``, ``count_ps``, ``upper``, ``lower`` and the bins cannot overflow.

Never use ``sum()`` on floats here: from Python 3.12 it compensates rounding errors and
would no longer match JavaScript's plain left-to-right additions.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from functools import reduce
from itertools import accumulate
from operator import add, mul
from typing import Final

from common.jsnum import format_number

#: A histogram bound: a finite number, or the string "inf".
Bound = float | str


def js_round(x: float) -> int:
    """JavaScript's ``Math.round``: the nearest integer, halves rounded up."""
    floor = math.floor(x)
    return floor + 1 if x - floor >= 0.5 else floor


def percentile_suffix(pct: float) -> str:
    """Etsy's name for a percent threshold: ``90``, ``99_9``, ``top10``."""
    return format_number(pct).replace(".", "_", 1).replace("-", "top", 1)


def bin_name(bound: Bound) -> str:
    """Etsy's histogram bin name: ``bin_100``, ``bin_0_5``, ``bin_inf``."""
    text = bound if isinstance(bound, str) else format_number(bound)
    return "bin_" + text.replace(".", "_", 1)


_PERCENT_KEY: Final = re.compile(r"_(top)?\d+(_\d+)?$")


def timer_metric_filter(selected: Sequence[str]) -> frozenset[str] | None:
    """Normalise ``calculated_timer_metrics``; None means "emit every statistic"."""
    return frozenset(selected) if selected else None


def keeps_stat(stat: str, selected: frozenset[str] | None) -> bool:
    """Whether statistic ``stat`` (``mean_90``, ``histogram``, ...) passes the filter.

    Percentile statistics are selected by their ``_percent`` form (``mean_percent``
    selects ``mean_90``, ``mean_top10`` and, unlike Etsy, ``mean_99_9``).
    """
    if selected is None:
        return True
    return _PERCENT_KEY.sub("_percent", stat) in selected


def timer_stats(
    values: Iterable[float],
    count: float,
    interval: float,
    percentiles: Sequence[float],
    bins: Sequence[Bound] = (),
) -> list[tuple[str, float]]:
    """All statistics of one timer for one interval.

    Args:
        values: the interval's samples, in any order (at least one).
        count: the sample-scaled number of events (sum of 1/rate).
        interval: the flush interval in seconds (the divisor of ``count_ps``).
        percentiles: the percent thresholds, in output order.
        bins: the histogram bounds for this timer (empty: no histogram).

    Returns:
        ``(statistic, value)`` pairs; histogram bins are named ``histogram.bin_X``.
    """
    v = sorted(values)
    n = len(v)
    groups: dict[str, tuple[int, int]] = {"": (0, n)}
    low, high = v[0], v[n - 1]
    cum = list(accumulate(v))
    cumsq = list(accumulate(map(mul, v, v)))
    out: list[tuple[str, float]] = []
    for pct in percentiles:
        if n == 1:
            m, boundary, part_sum, part_sq = 1, high, low, low * low
        else:
            m = js_round(abs(pct) / 100 * n)
            if m == 0:
                continue
            if pct > 0:
                boundary, part_sum, part_sq = v[m - 1], cum[m - 1], cumsq[m - 1]
            elif m == n:
                boundary, part_sum, part_sq = v[0], cum[n - 1], cumsq[n - 1]
            else:
                boundary = v[n - m]
                part_sum = cum[n - 1] - cum[n - m - 1]
                part_sq = cumsq[n - 1] - cumsq[n - m - 1]
        suffix = percentile_suffix(pct)
        groups[suffix] = (0, m) if pct > 0 or n == 1 else (n - m, n)
        out.append(("count_" + suffix, m))
        out.append(("mean_" + suffix, part_sum / m if n > 1 else low))
        out.append((("upper_" if pct > 0 else "lower_") + suffix, boundary))
        out.append(("sum_" + suffix, part_sum))
        out.append(("sum_squares_" + suffix, part_sq))
    total = cum[n - 1]
    mean = total / n
    diffs = [x - mean for x in v]
    variance_sum = reduce(add, map(mul, diffs, diffs), 0.0)
    mid = n // 2
    median = v[mid] if n % 2 else (v[mid - 1] + v[mid]) / 2
    out += [
        ("std", math.sqrt(variance_sum / n)),
        ("upper", high),
        ("lower", low),
        ("count", count),
        ("count_ps", count / interval),
        ("sum", total),
        ("sum_squares", cumsq[n - 1]),
        ("mean", mean),
        ("median", median),
    ]
    if bins:
        i = 0
        for bound in bins:
            start = i
            if bound == "inf":
                i = n
            else:
                limit = float(bound)
                while i < n and v[i] < limit:
                    i += 1
            out.append(("histogram." + bin_name(bound), i - start))
    for _, value in out:
        if value - value != 0.0:  # inf or nan: rare, so checked once, at the end
            return _without_overflow(out, v, groups)
    return out


# A statistic's name -> (what it is, the group suffix): whole-set names first.
_WHOLE: Final = {"sum": "sum", "sum_squares": "sum_squares", "mean": "mean",
                 "median": "median", "std": "std"}
_PER_GROUP: Final = (("sum_squares_", "sum_squares"), ("sum_", "sum"), ("mean_", "mean"))


def _without_overflow(out: list[tuple[str, float]], v: list[float],
                      groups: dict[str, tuple[int, int]]) -> list[tuple[str, float]]:
    """``out`` with every non-finite statistic computed again, or left out if its exact
    value is beyond the double range (see the module's docstring)."""
    kept: list[tuple[str, float]] = []
    for name, value in out:
        if value - value == 0.0:
            kept.append((name, value))
            continue
        what, suffix = _WHOLE.get(name), ""
        if what is None:
            for prefix, what_p in _PER_GROUP:
                if name.startswith(prefix) and name[len(prefix):] in groups:
                    what, suffix = what_p, name[len(prefix):]
                    break
        if what is None:
            continue  # nothing else can overflow; never written non-finite
        lo, hi = groups[suffix]
        fixed = _robust(what, v[lo:hi])
        if fixed is not None:
            kept.append((name, fixed))
    return kept


def _robust(what: str, values: list[float]) -> float | None:
    """``what`` (sum, sum_squares, mean, median, std) of sorted ``values``, computed on
    the values scaled by 2**-e (exact) so that no intermediate overflows; None when the
    result itself is beyond the double range."""
    n = len(values)
    if what == "median":
        mid = n // 2
        return values[mid] if n % 2 else values[mid - 1] / 2 + values[mid] / 2
    e = math.frexp(max(abs(values[0]), abs(values[n - 1])))[1]
    scaled = [math.ldexp(x, -e) for x in values]  # each within (-1, 1)
    try:
        if what == "sum":
            return math.ldexp(math.fsum(scaled), e)
        if what == "sum_squares":
            return math.ldexp(math.fsum(y * y for y in scaled), 2 * e)
        mean = math.fsum(scaled) / n
        if what == "mean":
            return math.ldexp(mean, e)
        return math.ldexp(math.sqrt(math.fsum((y - mean) ** 2 for y in scaled) / n), e)
    except OverflowError:
        return None


def idle_timer_stats() -> list[tuple[str, float]]:
    """What a timer with no samples this interval reports (Etsy: count and count_ps 0)."""
    return [("count", 0), ("count_ps", 0)]


def bins_for(key: bytes, histograms: Sequence[tuple[str, Sequence[Bound]]]) -> Sequence[Bound]:
    """The bins of the first histogram rule whose ``metric`` occurs in ``key``."""
    text = key.decode("ascii", "replace")
    for metric, bounds in histograms:
        if metric in text:
            return bounds
    return ()
