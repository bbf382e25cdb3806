"""End to end with the StatsD clients people already use, unchanged, into a real carbon-cache.

PyPI's ``statsd`` (UDP, TCP, Unix stream) and ``datadog`` (DogStatsd: UDP, Unix datagram) and
npm's ``hot-shots`` (UDP, TCP) send counters, gauges with deltas, timers, sets, ``h`` and ``d``,
sample rates and tags to one tallyd-aggregator listening on udp, tcp, unix and unixgram. The
values are then read back from the Whisper files and compared with what Etsy statsd computes
(tests/conformance proves tallyd equals Etsy line by line; this test proves the clients' lines are
read as their authors meant).

One flush only: the interval is long and chosen so that no boundary falls within the test, and
the data is delivered by the final flush on SIGTERM, after the admin port has shown every line
counted. Sampling is made deterministic by replacing each client's random number generator, so
``@0.5`` always sends and Etsy's 1/rate scaling is checked exactly.

Not covered, because the clients and tallyd speak different framings there: datadog's Unix
*stream* transport (``unixstream://``) prefixes every packet with its length, where tallyd's
``unix://`` (like Etsy's TCP) reads newline-separated lines; hot-shots' ``uds`` protocol needs
the optional native ``unix-dgram`` module, which tools/bootstrap leaves out.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.carbon import LocalCarbon
from harness.checkout import REPO_ROOT
from harness.client import mgmt_command
from harness.etsy import node_binary
from harness.tallyd import AggregatorProcess, start_aggregator
from harness.whisper_batch import wait_for_series

pytestmark = pytest.mark.e2e

HOT_SHOTS_DIR = REPO_ROOT / ".cache" / "hot-shots" / "node_modules" / "hot-shots"

#: Candidate flush intervals (seconds). The test needs one whose next wall-clock boundary is
#: far enough away that every line lands in the final flush.
CANDIDATE_INTERVALS = (3600, 3300, 3000, 2700)
#: How far the next boundary must be: the whole test takes a few seconds.
BOUNDARY_MARGIN_SECONDS = 300
#: How long the admin port may take to show every line (slow, shared machines).
INTAKE_TIMEOUT_SECONDS = 60.0

Expected = dict[str, float]

#: Each client that sends distributions sends four `d` lines.
D_LINES_PER_CLIENT = 4


def quiet_interval(now: float) -> int:
    for interval in CANDIDATE_INTERVALS:
        if interval - now % interval > BOUNDARY_MARGIN_SECONDS:
            return interval
    raise AssertionError(f"no interval of {CANDIDATE_INTERVALS} has a quiet boundary at {now}")


def timer_stats(values: list[float], count: float, interval: int) -> dict[str, float]:
    """Etsy's timer series for ``values`` (one flush; default percentThreshold 90).

    ``count`` is Etsy's ``timer_counters``: the sum of 1/rate over the samples.
    """
    ordered = sorted(values)
    n = len(ordered)
    mean = sum(ordered) / n
    in_90 = round(0.9 * n)  # Etsy: numInThreshold = Math.round(pct / 100 * count)
    top = ordered[:in_90]
    return {
        "count": count,
        "count_ps": count / interval,
        "lower": ordered[0],
        "upper": ordered[-1],
        "sum": sum(ordered),
        "mean": mean,
        "std": math.sqrt(sum((v - mean) ** 2 for v in ordered) / n),
        "upper_90": top[-1],
        "sum_90": sum(top),
        "mean_90": sum(top) / len(top),
        "count_90": len(top),
    }


def counter(expected: Expected, key: str, count: float, interval: int, tags: str = "") -> None:
    expected[f"stats_counts.{key}{tags}"] = count
    expected[f"stats.{key}{tags}"] = count / interval


def timer(expected: Expected, key: str, values: list[float], count: float, interval: int,
          tags: str = "") -> None:
    for stat, value in timer_stats(values, count, interval).items():
        expected[f"stats.timers.{key}.{stat}{tags}"] = value


# -- the clients -------------------------------------------------------------------------------


def python_statsd(prefix: str, make: Callable[[], Any], interval: int) -> Expected:
    """PyPI ``statsd`` (jsocol/pystatsd 4.0.1): no tags, no h/d; gauge deltas."""
    client = make()
    try:
        for _ in range(3):
            client.incr(f"{prefix}.hits")
        client.incr(f"{prefix}.hits", 2)
        client.decr(f"{prefix}.hits")
        client.incr(f"{prefix}.sampled", 1, rate=0.5)
        client.gauge(f"{prefix}.g", 10)
        client.gauge(f"{prefix}.g", 5, delta=True)
        client.gauge(f"{prefix}.g", -3, delta=True)
        client.gauge(f"{prefix}.neg", -7)  # the client sends 0|g first: -7 is no delta here
        for ms in (10, 20, 30):
            client.timing(f"{prefix}.t", ms)
        client.timing(f"{prefix}.t", 40, rate=0.5)
        for member in ("a", "b", "a"):
            client.set(f"{prefix}.u", member)
        with client.pipeline() as pipe:  # several lines in one datagram (or one write)
            pipe.incr(f"{prefix}.piped")
            pipe.incr(f"{prefix}.piped", 4)
            pipe.timing(f"{prefix}.pt", 7)
        client.incr(f"{prefix}.done")
    finally:
        client.close()
    expected: Expected = {}
    counter(expected, f"{prefix}.hits", 4, interval)
    counter(expected, f"{prefix}.sampled", 2, interval)
    counter(expected, f"{prefix}.piped", 5, interval)
    expected[f"stats.gauges.{prefix}.g"] = 12
    expected[f"stats.gauges.{prefix}.neg"] = -7
    timer(expected, f"{prefix}.t", [10, 20, 30, 40], 5, interval)
    timer(expected, f"{prefix}.pt", [7], 1, interval)
    expected[f"stats.sets.{prefix}.u.count"] = 2
    return expected


def datadog_statsd(prefix: str, make: Callable[[], Any], interval: int) -> Expected:
    """PyPI ``datadog`` (DogStatsd 0.56.0): tags, h and d; no gauge deltas in its API."""
    client = make()
    try:
        client.increment(f"{prefix}.hits")
        client.increment(f"{prefix}.hits", 3)
        client.decrement(f"{prefix}.hits")
        client.increment(f"{prefix}.sampled", sample_rate=0.5)
        client.gauge(f"{prefix}.g", 42)
        client.gauge(f"{prefix}.neg", -5)  # sent as -5|g: Etsy reads it as a delta from 0
        client.timing(f"{prefix}.t", 10)
        client.timing(f"{prefix}.t", 30)
        for value in (1, 2, 3):
            client.histogram(f"{prefix}.h", value)
            client.distribution(f"{prefix}.d", value)
        client.histogram(f"{prefix}.h", 4, sample_rate=0.5)
        client.distribution(f"{prefix}.d", 4, sample_rate=0.5)
        for member in ("x", "y", "x"):
            client.set(f"{prefix}.u", member)
        client.increment(f"{prefix}.tagged", 2, tags=["zone:b", "env:prod"])
        client.gauge(f"{prefix}.tg", 9, tags=["env:prod"])
        client.histogram(f"{prefix}.th", 5, tags=["env:prod"])
        client.increment(f"{prefix}.done")
    finally:
        client.close_socket()
    expected: Expected = {}
    counter(expected, f"{prefix}.hits", 3, interval)
    counter(expected, f"{prefix}.sampled", 2, interval)
    expected[f"stats.gauges.{prefix}.g"] = 42
    expected[f"stats.gauges.{prefix}.neg"] = -5
    timer(expected, f"{prefix}.t", [10, 30], 2, interval)
    timer(expected, f"{prefix}.h", [1, 2, 3, 4], 5, interval)
    timer(expected, f"{prefix}.d", [1, 2, 3, 4], 5, interval)  # d is aggregated like h
    expected[f"stats.sets.{prefix}.u.count"] = 2
    # Etsy folds DogStatsD tags into Graphite tags (in the order sent; carbon sorts them).
    counter(expected, f"{prefix}.tagged", 2, interval, ";zone=b;env=prod")
    expected[f"stats.gauges.{prefix}.tg;env=prod"] = 9
    timer(expected, f"{prefix}.th", [5], 1, interval, ";env=prod")
    return expected


HOT_SHOTS_SCRIPT = r"""
const StatsD = require(process.argv[1]);
Math.random = () => 0;  // sampled calls always send
const [protocol, host, port, p] = process.argv.slice(2);
const client = new StatsD({host, port: Number(port), protocol, maxBufferSize: 0,
                           errorHandler: (err) => { console.error(err); process.exit(3); }});
client.increment(`${p}.hits`);
client.increment(`${p}.hits`, 4);
client.decrement(`${p}.hits`, 2);
client.increment(`${p}.sampled`, 1, 0.5);
client.gauge(`${p}.g`, 20);
client.gaugeDelta(`${p}.g`, -5);
client.gaugeDelta(`${p}.g`, 2);
client.timing(`${p}.t`, 5);
client.timing(`${p}.t`, 15);
for (const v of [2, 4, 6]) { client.histogram(`${p}.h`, v); client.distribution(`${p}.d`, v); }
client.histogram(`${p}.h`, 8, 0.5);
client.distribution(`${p}.d`, 8, 0.5);
for (const m of ["m", "n", "m"]) client.set(`${p}.u`, m);
client.increment(`${p}.tagged`, 3, ["env:prod", "zone:b"]);
client.timing(`${p}.tt`, 11, ["env:prod"]);
client.increment(`${p}.done`);
client.close((err) => { if (err) { console.error(err); process.exit(4); } });
"""


def hot_shots(prefix: str, protocol: str, address: tuple[str, int], interval: int) -> Expected:
    """npm ``hot-shots`` 17.1.1: gaugeDelta, tags, h and d."""
    node = node_binary()
    assert node is not None
    subprocess.run(
        [node, "-e", HOT_SHOTS_SCRIPT, str(HOT_SHOTS_DIR), protocol, address[0],
         str(address[1]), prefix],
        check=True, timeout=60, capture_output=True, text=True,
    )
    expected: Expected = {}
    counter(expected, f"{prefix}.hits", 3, interval)
    counter(expected, f"{prefix}.sampled", 2, interval)
    expected[f"stats.gauges.{prefix}.g"] = 17
    timer(expected, f"{prefix}.t", [5, 15], 2, interval)
    timer(expected, f"{prefix}.h", [2, 4, 6, 8], 5, interval)
    timer(expected, f"{prefix}.d", [2, 4, 6, 8], 5, interval)
    expected[f"stats.sets.{prefix}.u.count"] = 2
    counter(expected, f"{prefix}.tagged", 3, interval, ";env=prod;zone=b")
    timer(expected, f"{prefix}.tt", [11], 1, interval, ";env=prod")
    return expected


# -- the test ----------------------------------------------------------------------------------


def is_distribution(series: str) -> bool:
    """A series of a ``|d`` metric (the clients above name them ``<prefix>.d``)."""
    return series.startswith("stats.timers.") and ".d." in series


@pytest.fixture
def carbon(carbon_available: Path, tmp_path: Path) -> Iterator[LocalCarbon]:
    cache = LocalCarbon(tmp_path / "carbon", schema="1s:1h")
    cache.start()
    try:
        yield cache
    finally:
        cache.stop()


@pytest.fixture
def hot_shots_available() -> bool:
    """hot-shots in .cache/hot-shots (tools/bootstrap --test); missing: skipped, failed in CI."""
    found = (HOT_SHOTS_DIR / "package.json").is_file() and node_binary() is not None
    if not found and os.environ.get("CI"):
        pytest.fail(f"hot-shots is not installed in {HOT_SHOTS_DIR}; run tools/bootstrap --test",
                    pytrace=False)
    return found


def counters_dump(agg: AggregatorProcess) -> dict[str, float]:
    reply = mgmt_command(agg.mgmt, "counters")
    body = reply.rsplit("END", 1)[0].strip()
    return {str(k): float(v) for k, v in json.loads(body).items()} if body else {}


def wait_for_intake(agg: AggregatorProcess, expected: Expected) -> None:
    """Until the admin port shows every expected counter (each client's last line is a
    ``done`` counter, so the lines before it on that connection were read too)."""
    wanted = {name[len("stats_counts."):]: value for name, value in expected.items()
              if name.startswith("stats_counts.")}
    deadline = time.monotonic() + INTAKE_TIMEOUT_SECONDS
    while True:
        have = counters_dump(agg)
        missing = {k: (v, have.get(k)) for k, v in wanted.items() if have.get(k) != v}
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"counters not seen by the admin port: {missing}\n"
                                 f"counters: {have}\n" + agg.describe())
        time.sleep(0.1)


def test_third_party_clients_values_in_whisper(
    carbon: LocalCarbon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    hot_shots_available: bool,
) -> None:
    import datadog.dogstatsd.base
    import statsd
    import statsd.client.base

    # Sampled calls always send (the clients drop them when random() > rate).
    monkeypatch.setattr(statsd.client.base.random, "random", lambda: 0.0)
    monkeypatch.setattr(datadog.dogstatsd.base, "random", lambda: 0.0)

    interval = quiet_interval(time.time())
    unix_path, unixgram_path = tmp_path / "s.sock", tmp_path / "g.sock"
    agg = start_aggregator([
        "--listen", "udp://127.0.0.1:0", "tcp://127.0.0.1:0", f"unix://{unix_path}",
        f"unixgram://{unixgram_path}",
        "--carbon", carbon.endpoint, "--mgmt-address", "127.0.0.1", "--mgmt-port", "0",
        "--flush-interval", f"{interval}s", "--workers", "1",
    ])
    try:
        udp_host, udp_port = agg.udp
        tcp_host, tcp_port = agg.tcp
        base = f"cl{os.getpid()}"
        expected: Expected = {}
        expected |= python_statsd(
            f"{base}.pystatsd_udp", lambda: statsd.StatsClient(udp_host, udp_port), interval)
        expected |= python_statsd(
            f"{base}.pystatsd_tcp", lambda: statsd.TCPStatsClient(tcp_host, tcp_port), interval)
        expected |= python_statsd(
            f"{base}.pystatsd_unix", lambda: statsd.UnixSocketStatsClient(str(unix_path)),
            interval)
        expected |= datadog_statsd(
            f"{base}.dd_udp",
            lambda: datadog.dogstatsd.base.DogStatsd(host=udp_host, port=udp_port), interval)
        # socket_timeout=None (blocking sends): DogStatsd's default 0 drops a datagram when the
        # socket's queue is full, and Linux queues only net.unix.max_dgram_qlen (default 10)
        # datagrams per Unix datagram socket, whatever the reader's buffer size; a burst of
        # one-metric datagrams overruns it before any reader is scheduled.
        expected |= datadog_statsd(
            f"{base}.dd_unixgram",
            lambda: datadog.dogstatsd.base.DogStatsd(
                socket_path=f"unixgram://{unixgram_path}", socket_timeout=None),
            interval)
        if hot_shots_available:
            expected |= hot_shots(f"{base}.hotshots_udp", "udp", agg.udp, interval)
            expected |= hot_shots(f"{base}.hotshots_tcp", "tcp", agg.tcp, interval)
        wait_for_intake(agg, expected)
        bad_lines = counters_dump(agg)["statsd.bad_lines_seen"]
        assert agg.stop(timeout=60) == 0, agg.describe()
    finally:
        agg.kill()

    # DogStatsD distributions (d) are aggregated like h once branch `core` is merged; until
    # then the aggregator refuses them as bad lines (unknown_type), and their series are checked
    # only when it does not. No other line may be refused.
    d_series = {name for name in expected if is_distribution(name)}
    d_lines = D_LINES_PER_CLIENT * len({name.split(".")[3] for name in d_series})
    assert bad_lines in (0, d_lines), (
        f"{bad_lines} bad lines; expected none, or the {d_lines} `d` lines\n" + agg.describe())
    d_refused = bad_lines > 0
    checked = {name: value for name, value in expected.items()
               if not (d_refused and name in d_series)}

    # One point per series, from the final flush; compare them all, then report every mismatch.
    got = wait_for_series(carbon, checked)
    wrong = {name: (value, got[name]) for name, value in checked.items()
             if len(got[name] or []) != 1
             or (got[name] or [(0, math.nan)])[0][1] != pytest.approx(value, rel=1e-12)}
    assert not wrong, "series: (expected, points in Whisper)\n" + "\n".join(
        f"  {name}: {pair}" for name, pair in sorted(wrong.items()))
    if d_refused:
        pytest.xfail(f"the aggregator refuses `d` (unknown_type): {len(d_series)} distribution "
                     f"series not checked; everything else matched")
    if not hot_shots_available:
        pytest.skip("hot-shots is not installed (tools/bootstrap --test); the rest passed")


def test_quiet_interval_avoids_boundaries() -> None:
    assert quiet_interval(7200 + 10) == 3600
    assert quiet_interval(7200 - 10) != 3600
    assert all(i - (7200 - 10) % i > BOUNDARY_MARGIN_SECONDS
               for i in [quiet_interval(7200 - 10)])


def test_timer_stats_match_etsy_example() -> None:
    # Etsy's graphite_tests.js-style example: 4 values, 90th percentile keeps all of them.
    stats = timer_stats([10, 20, 30, 40], 5, 10)
    assert (stats["count"], stats["count_ps"], stats["upper_90"], stats["mean"]) == (5, 0.5, 40, 25)
    # 10 values: the 90th percentile drops the largest.
    assert timer_stats([float(v) for v in range(1, 11)], 10, 10)["upper_90"] == 9
