"""How long to wait before retrying something that failed: exponential, capped, jittered.

One rule for every retry loop (a proxy reconnecting to an aggregator, an aggregator to a
Carbon node): after ``n`` consecutive failures wait ``base * 2**(n-1)`` seconds, at most
``cap``, with "equal jitter": half the delay is fixed and the other half is scaled by a
random ``jitter`` in [0, 1). Many daemons that lost one peer at the same moment thus spread
their reconnects instead of arriving together (the retry storm of atlassian/gostatsd#255).

Pure: the caller draws the jitter (``random.random()``) and sleeps.
"""

from __future__ import annotations


def backoff_delay(failures: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait before the next attempt after ``failures`` consecutive failures.

    Args:
        failures: consecutive failures so far; 0 or less means no wait.
        base: the first delay (seconds), doubled per further failure.
        cap: the longest delay (seconds).
        jitter: a number in [0, 1): the share of the random half that is waited.
    """
    if failures <= 0:
        return 0.0
    delay = min(cap, base * 2.0 ** min(failures - 1, 30))
    return delay / 2 + delay / 2 * jitter
