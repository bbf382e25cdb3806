"""End to end: tallyd-aggregator flushing into a REAL carbon-cache, checked in the Whisper files.

carbon-cache is started by tools/localcarbon.py with one-second points (``1s:1h``), so every
one-second flush lands in its own point. carbon writes its cache to disk about once a second and
loses what it has not written when it stops, so the tests poll the Whisper files before carbon
is stopped.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator

import pytest

from harness.carbon import LocalCarbon
from harness.client import send_udp
from harness.tallyd import AggregatorProcess, start_aggregator

pytestmark = pytest.mark.e2e

_names = itertools.count()


@pytest.fixture
def prefix() -> str:
    """A metric prefix no other test in this module (or an earlier run) uses."""
    return f"e2e.p{os.getpid()}n{next(_names)}"


def aggregator(carbon: LocalCarbon, *flags: str) -> AggregatorProcess:
    return start_aggregator(["--listen", "udp://127.0.0.1:0", "--carbon", carbon.endpoint,
                             "--mgmt-address", "127.0.0.1", "--mgmt-port", "0", *flags])


@pytest.fixture
def running(carbon: LocalCarbon) -> Iterator[AggregatorProcess]:
    """An aggregator flushing every second to ``carbon``; killed if a test leaves it running."""
    proc = aggregator(carbon, "--flush-interval", "1")
    try:
        yield proc
    finally:
        proc.kill()


def has_value(expected: float):  # type: ignore[no-untyped-def]
    return lambda points: any(value == expected for _, value in points)


def test_metrics_land_in_whisper(carbon: LocalCarbon, running: AggregatorProcess,
                                 prefix: str) -> None:
    send_udp(running.udp, [
        f"{prefix}.hits:3|c\n{prefix}.hits:4|c\n{prefix}.sampled:1|c|@0.5".encode(),
        f"{prefix}.lat:10|ms\n{prefix}.lat:20|ms\n{prefix}.lat:30|ms".encode(),
        f"{prefix}.temp:42|g\n{prefix}.users:a|s\n{prefix}.users:b|s\n{prefix}.users:a|s".encode(),
    ])
    expected = {
        f"stats_counts.{prefix}.hits": 7,
        f"stats.{prefix}.hits": 7,  # a rate per second, over a one-second interval
        f"stats_counts.{prefix}.sampled": 2,
        f"stats.timers.{prefix}.lat.count": 3,
        f"stats.timers.{prefix}.lat.lower": 10,
        f"stats.timers.{prefix}.lat.upper": 30,
        f"stats.timers.{prefix}.lat.mean": 20,
        f"stats.timers.{prefix}.lat.sum": 60,
        f"stats.timers.{prefix}.lat.upper_90": 30,
        f"stats.gauges.{prefix}.temp": 42,
        f"stats.sets.{prefix}.users.count": 2,
    }
    for metric, value in expected.items():
        carbon.wait_for_points(metric, has_value(value), describe=f"a point equal to {value}")
    # Idle counters are flushed as 0 in the following seconds; gauges repeat their value.
    carbon.wait_for_points(f"stats_counts.{prefix}.hits", has_value(0), describe="an idle 0")
    carbon.wait_for_points(f"stats.gauges.{prefix}.temp",
                           lambda points: sum(v == 42 for _, v in points) >= 2,
                           describe="the gauge repeated in a later flush")
    assert running.stop() == 0, running.describe()


def test_each_flush_is_its_own_point(carbon: LocalCarbon, running: AggregatorProcess,
                                     prefix: str) -> None:
    metric = f"stats_counts.{prefix}.c"
    send_udp(running.udp, [f"{prefix}.c:2|c".encode()])
    first = carbon.wait_for_points(metric, has_value(2), describe="the first flush")
    send_udp(running.udp, [f"{prefix}.c:5|c".encode()])
    points = carbon.wait_for_points(metric, has_value(5), describe="the second flush")
    [t2] = [ts for ts, v in points if v == 2]
    [t5] = [ts for ts, v in points if v == 5]
    assert t5 > t2, points
    assert all(v == 0 for ts, v in points if t2 < ts < t5), (
        f"points between the two flushes must be idle zeros: {points}")
    assert first[0][0] <= t2, first
    assert running.stop() == 0, running.describe()


def test_sigterm_delivers_partial_interval(carbon: LocalCarbon, prefix: str) -> None:
    """With a long interval nothing is flushed before SIGTERM; the final flush delivers it."""
    proc = aggregator(carbon, "--flush-interval", "3600s")
    try:
        send_udp(proc.udp, [f"{prefix}.final:5|c\n{prefix}.final:1|c\n{prefix}.g:-3|g\n"
                            f"{prefix}.t:8|ms".encode()])
        time.sleep(0.5)  # the datagram is read before the signal
        code = proc.stop(timeout=30)
    finally:
        proc.kill()
    assert code == 0, proc.describe()
    metric = f"stats_counts.{prefix}.final"
    try:
        carbon.wait_for_points(metric, has_value(6), describe="the final flush's count")
    except AssertionError as exc:
        if carbon.whisper_file(metric).exists():
            raise AssertionError(
                f"{exc}\nThe series exists but has no point up to now: carbon got the line, so "
                f"its timestamp was probably in the future (whisper stores it, fetch up to now "
                f"does not return it). The final flush must not be stamped after the time "
                f"of the flush.") from None
        raise
    carbon.wait_for_points(f"stats.gauges.{prefix}.g", has_value(-3),
                           describe="the final flush's gauge")
    carbon.wait_for_points(f"stats.timers.{prefix}.t.upper", has_value(8),
                           describe="the final flush's timer")
