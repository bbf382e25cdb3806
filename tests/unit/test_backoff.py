"""Tests for common.backoff: exponential, capped, jittered retry delays."""

from __future__ import annotations

import pytest

from common.backoff import backoff_delay


@pytest.mark.parametrize(("failures", "low", "high"), [(0, 0.0, 0.0), (1, 0.05, 0.1),
                                                       (2, 0.1, 0.2), (4, 0.4, 0.8),
                                                       (30, 5.0, 10.0)])
def test_backoff_delay_doubles_with_jitter_up_to_cap(failures: int, low: float,
                                                     high: float) -> None:
    for jitter in (0.0, 0.5, 0.999):
        delay = backoff_delay(failures, base=0.1, cap=10.0, jitter=jitter)
        assert low <= delay <= high
    if failures:
        assert backoff_delay(failures, base=0.1, cap=10.0, jitter=0.0) == low
