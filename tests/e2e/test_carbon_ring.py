"""End to end: an aggregator writing to a ring of REAL carbon-caches (issue 3's verification).

Every cache is ``carbon==1.1.10`` from ``.cache/carbon``, started by tools/localcarbon.py on
127.0.0.1 with its own data dir, port and instance name, storing ``1s:1h``. The aggregator
flushes every second. Points are read back from the Whisper files with ``whisper``.

How a missing flush is found: each "round" sends every test counter once, in the middle of a
flush interval, with a value unique to (round, counter); with ``--delete-idle-stats`` a counter
is only written in the flush that carries its round. So every counter series must hold exactly
``{round timestamp: round value}`` for every round, nothing more. Besides, the aggregator's own
metrics (Etsy's internal ones and tallyd's per-node self-metrics) are written at EVERY flush,
so their series must have a point at every flush timestamp: a gap names the flush that was lost.

carbon-cache writes its cache about once a second and loses what it has not written when it
stops, so the tests wait for data to be on disk before stopping or killing a cache. Points a
cache had received but not written when it was killed are carbon's loss, not tallyd's; the
flushes concerned (between the last check and the kill) are the only ones not checked.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from carbonring_helpers import (
    FLUSH_INTERVAL,
    SCHEMA,
    SELF_MEASURES,
    Cache,
    CountingProxy,
    LateListener,
    StalledListener,
    admin_stats,
    counter_paths,
    dir_bytes,
    every_flush_paths,
    misplaced_series,
    names_by_node,
    node_stat,
    read_series,
    self_metric,
    send_round,
    timestamps,
    wait_for_exact,
    wait_for_phase,
    wait_for_timestamps,
)

from common.ring import CarbonNode, Ring, parse_carbon_node
from harness.client import mgmt_command
from harness.daemon import wait_until
from harness.tallyd import AggregatorProcess, start_aggregator

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: Generous: a recovering node is retried with exponential backoff (up to several seconds here).
RECOVERY_TIMEOUT = 40.0

CacheFactory = Callable[[str], Cache]
Launcher = Callable[..., AggregatorProcess]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def caches(carbon_available: Path, tmp_path: Path) -> Iterator[CacheFactory]:
    """``caches("a")`` starts a carbon-cache with instance ``a``; all are stopped afterwards."""
    started: list[Cache] = []

    def make(instance: str) -> Cache:
        cache = Cache(tmp_path / f"carbon-{instance}", schema=SCHEMA, instance=instance)
        started.append(cache)
        return cache.start()

    yield make
    errors = []
    for cache in started:
        try:
            cache.stop()
        except Exception as exc:  # keep stopping the others
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def closing() -> Iterator[contextlib.ExitStack]:
    """Proxies and fake listeners register their ``close`` here."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def aggregators(closing: contextlib.ExitStack) -> Iterator[Launcher]:
    """``aggregators(carbon_specs, *flags, workers=1)`` starts ``python -m aggregator``; all
    are killed afterwards, worker processes included. Tests list it after ``caches``, so the
    aggregators stop before the caches do.

    One flushing process unless a test asks for more: the self-metric names and the admin
    port's per-node figures below are those of a single-process aggregator (with workers,
    each worker is its own flusher, with its own connections and figures)."""
    procs: list[AggregatorProcess] = []

    def launch(carbon: list[str], *flags: str, workers: int = 1) -> AggregatorProcess:
        args = ["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0",
                "--flush-interval", f"{FLUSH_INTERVAL:g}", "--ring-hash", "carbon_ch",
                "--replication-factor", "1", "--workers", str(workers)]
        for spec in carbon:
            args += ["--carbon", spec]
        proc = start_aggregator([*args, *flags])
        procs.append(proc)
        if workers > 1:  # "event=started" comes from the supervisor; wait for the workers
            deadline = time.monotonic() + 30
            while sum("event=worker_started" in line
                      for line in proc.log_text(None).splitlines()) < workers:
                assert time.monotonic() < deadline, "workers not started\n" + proc.describe()
                time.sleep(0.05)
        return proc

    yield launch
    for proc in procs:
        proc.kill_group()


def ring_of(specs: list[str]) -> Ring:
    return Ring.from_nodes([parse_carbon_node(s) for s in specs], hash_type="carbon_ch",
                           replication_factor=1)


def round_values(names: list[str], k: int) -> dict[str, int]:
    """Round k's value for each counter: unique per (round, counter)."""
    return {name: k * 1000 + i for i, name in enumerate(names)}


def expected_counts(ring: Ring, caches_by_node: dict[CarbonNode, Cache], names: list[str],
                    rounds: dict[int, int]) -> dict[Cache, dict[str, dict[int, float]]]:
    """Exact points of every counter path (rate and count; interval 1 s, so both equal the
    sent value), on the cache the ring names. ``rounds``: round number -> flush timestamp."""
    expected: dict[Cache, dict[str, dict[int, float]]] = {c: {} for c in caches_by_node.values()}
    for path_of in (lambda n: f"stats.{n}", lambda n: f"stats_counts.{n}"):
        for name in names:
            path = path_of(name)
            owner = caches_by_node[ring.node_for(path)]
            expected[owner][path] = {
                ts: float(round_values(names, k)[name]) for k, ts in rounds.items()
            }
    return expected


def every_flush_expectation(ring: Ring, caches_by_node: dict[CarbonNode, Cache],
                            identity: str, windows: dict[Cache, set[int]]
                            ) -> dict[Cache, dict[str, set[int]]]:
    """For each cache, the every-flush series the ring puts on it and the timestamps at which
    each must have a point."""
    expected: dict[Cache, dict[str, set[int]]] = {c: {} for c in windows}
    for path in every_flush_paths(identity, list(ring.nodes)):
        owner = caches_by_node[ring.node_for(path)]
        if owner in windows:
            expected[owner][path] = windows[owner]
    return expected


def logs(*procs: AggregatorProcess) -> Callable[[], str]:
    return lambda: "\n".join(p.describe() for p in procs)


# -- placement -----------------------------------------------------------------------------


def test_placement_every_series_only_on_the_node_the_ring_names(
        caches: CacheFactory, aggregators: Launcher) -> None:
    a, b, c = caches("a"), caches("b"), caches("c")
    specs = [a.spec, b.spec, c.spec]
    ring = ring_of(specs)
    by_node = {cache.node: cache for cache in (a, b, c)}
    names = [f"e2e.place.svc{i}.hits" for i in range(20)]
    # The 40 paths are placed independently (a counter's rate and count may part ways);
    # every node must own some of them, or the test would prove little.
    owners = {ring.node_for(p) for n in names for p in counter_paths(n)}
    assert owners == set(ring.nodes)
    agg = aggregators(specs, "--identity", "place", "--delete-idle-stats")

    rounds = {k: send_round(agg.udp, round_values(names, k)) for k in (1, 2, 3)}
    wait_for_exact(expected_counts(ring, by_node, names, rounds), what="counter rounds",
                   extra=logs(agg))
    # Every Whisper file on every node (our counters, Etsy's internal metrics, tallyd's
    # self-metrics) is on the node carbon_ch names, so no path has a copy elsewhere.
    assert misplaced_series([a, b, c], ring) == []
    for cache in (a, b, c):
        mine = [m for m in cache.series() if ".e2e.place." in f".{m}"]
        assert mine, f"node {cache.instance} got none of the test's series"
    stats = admin_stats(agg)
    for node in ring.nodes:
        assert node_stat(stats, node, "dropped_lines") == 0


# -- one connection per node ---------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_connections_one_per_node_per_flushing_process_across_many_flushes(
        caches: CacheFactory, aggregators: Launcher, closing: contextlib.ExitStack,
        workers: int) -> None:
    a, b = caches("a"), caches("b")
    proxy_a = closing.enter_context(contextlib.closing(CountingProxy(a.address)))
    proxy_b = closing.enter_context(contextlib.closing(CountingProxy(b.address)))
    specs = [f"127.0.0.1:{proxy_a.port}:a", f"127.0.0.1:{proxy_b.port}:b"]
    ring = ring_of(specs)
    by_node = dict(zip(ring.nodes, (a, b), strict=True))
    names = [f"e2e.conn.c{i}" for i in range(8)]
    agg = aggregators(specs, "--identity", "conn", "--delete-idle-stats", workers=workers)

    rounds = {k: send_round(agg.udp, round_values(names, k)) for k in range(1, 13)}
    expected = expected_counts(ring, by_node, names, rounds)
    assert all(expected[cache] for cache in (a, b)), "each node must carry some counters"
    wait_for_exact(expected, what="12 rounds through the proxies", extra=logs(agg))
    # 12 flushes with data (and more without) went through; each node saw one connection
    # per flushing process, opened once.
    assert (proxy_a.accepted, proxy_b.accepted) == (workers, workers), logs(agg)()
    if workers == 1:
        stats = admin_stats(agg)
        for node in ring.nodes:
            assert node_stat(stats, node, "connected") == 1
            assert node_stat(stats, node, "dropped_lines") == 0


# -- a node killed and restarted -----------------------------------------------------------


def test_outage_killed_node_gets_every_point_after_restart_others_no_gap(
        caches: CacheFactory, aggregators: Launcher, closing: contextlib.ExitStack) -> None:
    a, b, c = caches("a"), caches("b"), caches("c")
    # a and c behind counting proxies: they must keep their one connection through b's outage.
    proxy_a = closing.enter_context(contextlib.closing(CountingProxy(a.address)))
    proxy_c = closing.enter_context(contextlib.closing(CountingProxy(c.address)))
    specs = [f"127.0.0.1:{proxy_a.port}:a", b.spec, f"127.0.0.1:{proxy_c.port}:c"]
    ring = ring_of(specs)
    node_a, node_b, node_c = ring.nodes
    by_node = {node_a: a, node_b: b, node_c: c}
    names = [f"e2e.outage.svc{i}.req" for i in range(24)]
    identity = "outage"
    agg = aggregators(specs, "--identity", identity, "--delete-idle-stats",
                      "--carbon-replay-lines-per-second", "300")
    expected_all = expected_counts(ring, by_node, names, {1: 0})
    assert all(expected_all[cache] for cache in (a, b, c)), "each node must carry counters"

    rounds: dict[int, int] = {}
    for k in (1, 2, 3):
        rounds[k] = send_round(agg.udp, round_values(names, k))
    first = rounds[1]
    wait_for_exact(expected_counts(ring, by_node, names, rounds), what="rounds before the kill",
                   extra=logs(agg))
    wait_for_timestamps(
        every_flush_expectation(ring, by_node, identity,
                                {cache: timestamps(first, rounds[3]) for cache in (a, b, c)}),
        what="every flush before the kill", extra=logs(agg))

    wait_for_phase()
    b.kill()  # SIGKILL
    outage_first = math.floor(time.time()) + 1  # every flush from here on is after the kill
    for k in range(4, 9):
        rounds[k] = send_round(agg.udp, round_values(names, k))
    # While b is down, a and c get every round and every flush, without delay.
    during = expected_counts(ring, by_node, names, rounds)
    wait_for_exact({a: during[a], c: during[c]}, timeout=10, what="a and c during b's outage",
                   extra=logs(agg))
    wait_for_timestamps(
        every_flush_expectation(ring, by_node, identity,
                                {a: timestamps(first, rounds[8]), c: timestamps(first, rounds[8])}),
        timeout=10, what="a and c: every flush during b's outage", extra=logs(agg))
    stats = admin_stats(agg)
    assert node_stat(stats, node_b, "connected") == 0
    assert node_stat(stats, node_b, "buffered_lines") > 0
    assert read_series(b, list(during[b])) == {m: {t: v for t, v in pts.items()
                                                   if t <= rounds[3]}
                                               for m, pts in during[b].items()}, \
        "b's files changed while it was down"

    b.start()  # same port, same data dir
    for k in (9, 10):
        rounds[k] = send_round(agg.udp, round_values(names, k))
    last = rounds[10]
    wait_for_exact(expected_counts(ring, by_node, names, rounds), timeout=RECOVERY_TIMEOUT,
                   what="every round on every node after b's restart",
                   extra=lambda: logs(agg)() + "\nb's carbon.log:\n" + b.log_tail())
    windows = {a: timestamps(first, last), c: timestamps(first, last),
               b: timestamps(first, rounds[3]) | timestamps(outage_first, last)}
    wait_for_timestamps(every_flush_expectation(ring, by_node, identity, windows),
                        timeout=RECOVERY_TIMEOUT, what="every flush on every node",
                        extra=logs(agg))

    wait_until(lambda: node_stat(admin_stats(agg), node_b, "buffered_lines") == 0, 20,
               message="b's backlog replayed")
    stats = admin_stats(agg)
    for node in ring.nodes:
        assert node_stat(stats, node, "dropped_lines") == 0, node
        assert node_stat(stats, node, "connected") == 1, node
    assert (proxy_a.accepted, proxy_c.accepted) == (1, 1), "a or c was reconnected"
    assert misplaced_series([a, b, c], ring) == []


# -- the disk spool across an aggregator restart -------------------------------------------


def test_spool_survives_aggregator_restart_while_node_down(
        caches: CacheFactory, aggregators: Launcher, tmp_path: Path) -> None:
    a, b = caches("a"), caches("b")
    specs = [a.spec, b.spec]
    ring = ring_of(specs)
    node_a, node_b = ring.nodes
    by_node = {node_a: a, node_b: b}
    names = [f"e2e.spool.svc{i}.req" for i in range(16)]
    identity = "spooler"
    spool = tmp_path / "spool"
    graceful = 3.0
    # A 200-byte buffer: almost everything for a down node goes to the spool.
    flags = ["--identity", identity, "--delete-idle-stats", "--carbon-buffer-bytes", "200",
             "--carbon-spool-dir", str(spool), "--carbon-replay-lines-per-second", "500",
             "--graceful-timeout", f"{graceful:g}"]
    first_agg = aggregators(specs, *flags)
    expected_all = expected_counts(ring, by_node, names, {1: 0})
    assert expected_all[a] and expected_all[b], "each node must carry counters"

    rounds: dict[int, int] = {}
    for k in (1, 2):
        rounds[k] = send_round(first_agg.udp, round_values(names, k))
    first = rounds[1]
    wait_for_exact(expected_counts(ring, by_node, names, rounds), what="rounds before the stop",
                   extra=logs(first_agg))
    wait_for_timestamps(
        every_flush_expectation(ring, by_node, identity,
                                {a: timestamps(first, rounds[2]), b: timestamps(first, rounds[2])}),
        what="every flush before the stop", extra=logs(first_agg))

    wait_for_phase()
    b.stop()  # localcarbon stop: SIGTERM, waits for the exit
    outage_first = math.floor(time.time()) + 1
    for k in (3, 4, 5):
        rounds[k] = send_round(first_agg.udp, round_values(names, k))
    during = expected_counts(ring, by_node, names, rounds)
    wait_for_exact({a: during[a]}, timeout=10, what="a during b's outage",
                   extra=logs(first_agg))
    stats = admin_stats(first_agg)
    assert node_stat(stats, node_b, "connected") == 0
    assert node_stat(stats, node_b, "spooled_lines") > 0, "the spool was not used"

    term_at = time.time()
    code = first_agg.stop(timeout=graceful + 12)
    took = time.time() - term_at
    final_flush = math.floor(term_at) + 1  # the shutdown flush: the interval in progress
    assert code == 0, logs(first_agg)()
    assert took < graceful + 3, f"SIGTERM took {took:.1f}s (graceful timeout {graceful})"
    spooled = dir_bytes(spool)
    assert spooled > 0, (f"nothing left on disk in {spool} for the down node: "
                         f"{sorted(str(p) for p in spool.rglob('*'))}\n{logs(first_agg)()}")

    second_agg = aggregators(specs, *flags)  # same spool dir
    for k in (6, 7):
        rounds[k] = send_round(second_agg.udp, round_values(names, k))
    b.start()  # same port, same data dir
    for k in (8, 9):
        rounds[k] = send_round(second_agg.udp, round_values(names, k))
    last = rounds[9]
    wait_for_exact(expected_counts(ring, by_node, names, rounds), timeout=RECOVERY_TIMEOUT,
                   what="every round on both nodes after the restarts",
                   extra=lambda: logs(first_agg, second_agg)() + "\nb's carbon.log:\n"
                   + b.log_tail())
    second = timestamps(rounds[6], last)
    windows = {a: timestamps(first, final_flush) | second,
               b: timestamps(first, rounds[2]) | timestamps(outage_first, final_flush) | second}
    wait_for_timestamps(every_flush_expectation(ring, by_node, identity, windows),
                        timeout=RECOVERY_TIMEOUT,
                        what="every flush of both aggregator runs, spooled ones included",
                        extra=logs(first_agg, second_agg))
    wait_until(lambda: all(node_stat(admin_stats(second_agg), n, m) == 0
                           for n in ring.nodes for m in ("buffered_lines", "spooled_lines")),
               20, message="backlog and spool replayed")
    stats = admin_stats(second_agg)
    for node in ring.nodes:
        assert node_stat(stats, node, "dropped_lines") == 0, node
    assert misplaced_series([a, b], ring) == []


# -- replay pace after a reconnect ---------------------------------------------------------


def test_replay_after_reconnect_paced_at_configured_rate(
        aggregators: Launcher, closing: contextlib.ExitStack) -> None:
    node = closing.enter_context(contextlib.closing(LateListener()))  # down until open()
    rate = 100  # lines per second
    names = [f"e2e.replay.c{i}" for i in range(30)]
    agg = aggregators([f"127.0.0.1:{node.port}:r"], "--identity", "replay",
                      "--delete-idle-stats", "--carbon-replay-lines-per-second", str(rate))
    rounds = {k: send_round(agg.udp, round_values(names, k)) for k in range(1, 5)}
    backlog_end = rounds[4]  # every line stamped <= this was flushed while the node was down
    time.sleep(0.7)  # past that flush
    assert node_stat(admin_stats(agg), f"127.0.0.1:{node.port}:r", "connected") == 0
    node.open()

    want = {(p, ts): float(round_values(names, k)[n])
            for n in names for p in counter_paths(n) for k, ts in rounds.items()}

    def counters() -> dict[tuple[str, int], float]:
        got = {}
        for _, line in node.snapshot():
            path, value, ts = line.split(" ")
            if ".e2e.replay." in f".{path}":
                got[path, int(ts)] = float(value)
        return got

    wait_until(lambda: counters() == want, RECOVERY_TIMEOUT,
               message=f"every round delivered after the node came up ({logs(agg)()})")
    backlog = [arrival for arrival, line in node.snapshot()
               if int(line.rsplit(" ", 1)[1]) <= backlog_end]
    took = backlog[-1] - backlog[0]
    # At most `rate` lines a second: the backlog needs about len/rate seconds. One second's
    # worth of slack for whatever a pacer sends before its first pause.
    minimum = len(backlog) / rate - 1.0
    assert len(backlog) >= 250, f"backlog too small to measure a pace: {len(backlog)} lines"
    assert took >= minimum, (f"{len(backlog)} backlog lines arrived in {took:.2f}s, faster "
                             f"than {rate} lines/s allows (>= {minimum:.2f}s)")
    assert node.accepted == 1


# -- a stalled node ------------------------------------------------------------------------


def test_stalled_node_fills_its_buffer_and_drops_without_stopping_others(
        caches: CacheFactory, aggregators: Launcher, closing: contextlib.ExitStack) -> None:
    real = caches("r")
    stalled = closing.enter_context(contextlib.closing(StalledListener()))
    specs = [f"127.0.0.1:{stalled.port}:s", real.spec]
    ring = ring_of(specs)
    node_s, node_r = ring.nodes
    by_node = {node_r: real}
    probes = names_by_node(ring, "e2e.stall.probe", 6, kind=counter_paths)[node_r]
    # Bulk traffic for the stalled node: ~300 lines of ~70 bytes per flush.
    bulk = names_by_node(ring, "e2e.stall.bulk.padding_padding_padding", 150,
                         kind=counter_paths)[node_s]
    # An identity whose self-metrics about both nodes are stored on the real node.
    watched = ("buffered_lines", "dropped_lines.buffer_full", "dropped_lines.spool_full")
    identity = next(
        ident for ident in (f"stall{i}" for i in range(100_000))
        if all(ring.node_for(self_metric(ident, node, m)) == node_r
               for node in ring.nodes for m in watched))
    buffer_bytes = 20_000
    agg = aggregators(specs, "--identity", identity, "--delete-idle-stats",
                      "--carbon-buffer-bytes", str(buffer_bytes),
                      "--carbon-write-timeout", "1")

    rounds: dict[int, int] = {}
    for k in range(1, 9):
        values = round_values(probes, k)
        values.update(dict.fromkeys(bulk, 1))
        rounds[k] = send_round(agg.udp, values)
    # Intake went on and the real node got every round, promptly.
    wait_for_exact(expected_counts(ring, by_node, probes, rounds), timeout=10,
                   what="the real node's rounds while the other node is stalled",
                   extra=logs(agg))
    # Write timeout 1 s: a connection whose writes stall is abandoned and opened again. How
    # soon the first write blocks depends on the kernel's socket buffers, so wait for it (a
    # busy machine once got here with the first connection still waiting for its timeout).
    wait_until(lambda: stalled.accepted >= 2, 10,
               message="a second connection to the stalled node")

    stats = admin_stats(agg)
    assert node_stat(stats, node_s, "dropped_lines") > 0, logs(agg)()
    # A level, sampled: right after a reconnect the new connection's kernel buffers may hold
    # all that was queued, and with no more traffic the buffer drains into the connections
    # that follow (one per write timeout) and stays empty. So bulk for the stalled node keeps
    # coming while we look, and the level is read just after the flush that queues it.
    def stalled_buffer_holds_lines() -> bool:
        send_round(agg.udp, dict.fromkeys(bulk, 1))
        time.sleep(0.7)  # the round's flush is at the next whole second
        return node_stat(admin_stats(agg), node_s, "buffered_lines") > 0

    wait_until(stalled_buffer_holds_lines, 20, message="the stalled node's buffer holds lines")
    assert node_stat(stats, node_r, "dropped_lines") == 0
    wait_until(lambda: node_stat(admin_stats(agg), node_r, "buffered_lines") == 0, 5,
               message="the real node's buffer empties")

    # The same story in the self-metrics, read back from the real node's Whisper files.
    names = {(node, m): self_metric(identity, node, m) for node in ring.nodes for m in watched}
    window = timestamps(rounds[1], rounds[8])
    wait_for_timestamps({real: {path: window for path in names.values()}}, timeout=10,
                        what="self-metrics on the real node", extra=logs(agg))
    data = read_series(real, names.values())

    def points(node: CarbonNode, measure: str) -> dict[int, float]:
        pts = data[names[node, measure]]
        assert pts is not None
        return {t: v for t, v in pts.items() if t in window}

    # Counters are published as totals since start: the drops are the last point.
    assert max(points(node_s, "dropped_lines.buffer_full").values()) > 0
    assert max(points(node_s, "buffered_lines").values()) > 0
    assert set(points(node_r, "dropped_lines.buffer_full").values()) == {0.0}
    assert set(points(node_s, "dropped_lines.spool_full").values()) == {0.0}  # no spool
    assert set(points(node_r, "dropped_lines.spool_full").values()) == {0.0}
    # Drops reported by the self-metrics never exceed the cumulative count on the admin port.
    total = node_stat(admin_stats(agg), node_s, "dropped_lines")
    assert max(points(node_s, "dropped_lines.buffer_full").values()) <= total


# -- two aggregators' self-metrics ---------------------------------------------------------


def test_self_metrics_of_two_identities_in_separate_files_with_own_values(
        caches: CacheFactory, aggregators: Launcher) -> None:
    a, b = caches("a"), caches("b")
    specs = [a.spec, b.spec]
    ring = ring_of(specs)
    by_node = dict(zip(ring.nodes, (a, b), strict=True))
    alpha = aggregators(specs, "--identity", "alpha")
    beta = aggregators(specs, "--identity", "beta")
    # Only alpha gets data: 10 counters per node, both paths on that node. Counters are not
    # deleted when idle, so alpha writes these 20 extra paths per node at every later flush.
    # An identity's own self-metric paths (34: per node, intake and ledger) split over the
    # nodes by their names (and the ports in them): for beta to write exactly 20 more of
    # them than alpha on a node is a 4.8-sigma draw, so the two counts per node differ.
    data_names = [n for names in names_by_node(ring, "e2e.ident", 10,
                                               kind=counter_paths).values() for n in names]
    sent = send_round(alpha.udp, dict.fromkeys(data_names, 5))
    steady = [sent + 3, sent + 4, sent + 5]
    paths = {(ident, node, m): self_metric(ident, node, m)
             for ident in ("alpha", "beta") for node in ring.nodes for m in SELF_MEASURES}
    assert len(set(paths.values())) == len(paths)
    expected_ts: dict[Cache, dict[str, set[int]]] = {a: {}, b: {}}
    for path in paths.values():
        expected_ts[by_node[ring.node_for(path)]][path] = set(steady)
    wait_for_timestamps(expected_ts, timeout=20, what="both identities' self-metrics",
                        extra=logs(alpha, beta))
    assert misplaced_series([a, b], ring) == []  # each file only where the ring says

    # What each aggregator writes per flush: the shared Etsy internal paths, its own
    # tallyd.aggregator.<identity> paths, and (alpha only) the data counters.
    per_node: dict[CarbonNode, list[str]] = {node: by_node[node].series() for node in ring.nodes}
    data_paths = {p for n in data_names for p in counter_paths(n)}

    def emitted(ident: str, node: CarbonNode) -> int:
        other = "beta" if ident == "alpha" else "alpha"
        count = 0
        for path in per_node[node]:
            if f".tallyd.aggregator.{other}." in path or (ident == "beta" and path in data_paths):
                continue
            count += 1
        return count

    data = {path: pts for cache in (a, b)
            for path, pts in read_series(cache, expected_ts[cache]).items()}

    def check(measures: tuple[str, ...], want: Callable[[str, CarbonNode, str], float]
              ) -> list[str]:
        wrong = []
        for (ident, node, measure), path in paths.items():
            if measure in measures:
                pts = data[path]
                assert pts is not None
                got = [pts.get(t) for t in steady]
                if got != [want(ident, node, measure)] * 3:
                    wrong.append(f"  {path} (on {by_node[ring.node_for(path)].instance}): "
                                 f"got {got}, want {want(ident, node, measure)}")
        return wrong

    def check_increase(measure: str, want: Callable[[str, CarbonNode], float]) -> list[str]:
        wrong = []
        for (ident, node, m), path in paths.items():
            if m == measure:
                pts = data[path]
                assert pts is not None
                got = [pts[t] - pts[t - 1] if t in pts and t - 1 in pts else None
                       for t in steady[1:]]
                if got != [want(ident, node)] * 2:
                    wrong.append(f"  {path} (on {by_node[ring.node_for(path)].instance}): "
                                 f"increases {got}, want {want(ident, node)}")
        return wrong

    # Each identity's figures are its own: every line it writes per flush is sent (and the
    # two counts differ, so an overwritten file would show), connected, nothing dropped or
    # reconnected. sent_lines is a total since start: it grows by one flush's lines.
    wrong = check_increase("sent_lines", lambda ident, node: float(emitted(ident, node)))
    wrong += check(("connected",), lambda *_: 1.0)
    wrong += check(("dropped_lines.buffer_full", "dropped_lines.spool_full", "reconnects"),
                   lambda *_: 0.0)
    assert not wrong, (f"self-metrics at steady flushes {steady}:\n" + "\n".join(wrong)
                       + "\n" + logs(alpha, beta)())
    assert all(emitted("alpha", node) != emitted("beta", node) for node in ring.nodes), (
        f"alpha's data paths missing on a node: {per_node}\nalpha's counters: "
        f"{mgmt_command(alpha.mgmt, 'counters')}\n{logs(alpha, beta)()}")
    # Levels: nothing waits in memory or on disk for a healthy node between flushes.
    wrong = check(("buffered_lines", "spooled_lines"), lambda *_: 0.0)
    assert not wrong, (f"backlog levels of healthy nodes at steady flushes {steady}:\n"
                       + "\n".join(wrong))
