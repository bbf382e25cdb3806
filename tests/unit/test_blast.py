"""harness.blast.expected_totals: what a blast run over some names must add up to."""

from __future__ import annotations

import pytest

from harness.blast import MIX30, Expected, expected_totals


@pytest.mark.parametrize(("kind", "lines", "names", "expected"), [
    ("c", 0, 10, Expected(0, 0, 0, {}, frozenset())),
    ("c", 1234, 10, Expected(1234, 1234, 0, {}, frozenset())),
    ("ms", 50, 7, Expected(50, 0, 50, {}, frozenset())),
    # one line per slot: 4 counters, 3 timers, gauges 7 and 8 at their own index, set 9
    ("mix30", 10, 10, Expected(10, 4, 3, {7: 7.0, 8: 8.0}, frozenset({9}))),
    # 25 lines over 10 names: slots 0-4 get three lines, 5-9 two; gauge i ends at its last line
    ("mix30", 25, 10, Expected(25, 12, 7, {7: 17.0, 8: 18.0}, frozenset({9}))),
    # fewer lines than names: only the names that got a line
    ("mix30", 8, 20, Expected(8, 4, 3, {7: 7.0}, frozenset())),
    # gauge values wrap at 100 (blast sends s % 100)
    ("mix30", 150, 10, Expected(150, 60, 45, {7: 47.0, 8: 48.0}, frozenset({9}))),
])
def test_expected_totals_per_kind(kind: str, lines: int, names: int,
                                  expected: Expected) -> None:
    assert expected_totals(kind, lines, names) == expected


def test_expected_totals_mix30_counts_every_line_once() -> None:
    got = expected_totals("mix30", 1003, 1000)
    gauge_and_set_lines = sum(1 for s in range(1003) if MIX30[s % 10] in ("g", "s"))
    assert got.counters + got.timers + gauge_and_set_lines == got.lines


@pytest.mark.parametrize(("kind", "names"), [("g", 10), ("mix30", 15)])
def test_expected_totals_refuses_what_it_cannot_predict(kind: str, names: int) -> None:
    with pytest.raises(ValueError, match=kind):
        expected_totals(kind, 10, names)
