"""Hostile input over the wire, mixed with valid counters: nothing crashes, nothing is lost.

One real ``python -m aggregator`` (``--workers 2``; UDP, TCP, unix and unixgram listeners; 1 s
flush) writing to a Carbon sink gets, from a seeded random generator (`harness.hostile`),
random bytes, numbers no StatsD value may take (NaN, Infinity, 1e309, ``@0``), finite input
whose aggregates overflow (``@1e-320``, ``1e308|c`` twice), empty and huge names, DogStatsD
events, lines over ``max_line_bytes`` (some spanning many TCP reads), streams cut mid-line by a
FIN or a reset, bursts of 64 KiB UDP datagrams and unixgram datagrams over 64 KiB, all
interleaved with valid counters whose names and totals the generator records. Then:

* the daemon is up: the same three pids (supervisor, two workers), no worker restarted
  (``worker.generation`` 0, no ``worker_died``), and it stops cleanly;
* memory is bounded (`rss_bounds`): a worker keeps nothing of what it refused, and no
  process grows past what one burst can occupy;
* every valid counter's total in Carbon is exact, and no other name under the test's prefix
  appears there;
* nothing written to Carbon is non-finite;
* the accounting balances: ``metrics_received`` counts every line sent, and equals the lines
  aggregated plus every counted drop (`DROP_REASONS`).

The traffic is a pure function of the seed, and so is every expectation; timing decides only
how the lines spread over intervals and workers, which no check depends on. The seed is in
every failure message; rerun one with ``TALLYD_HOSTILE_SEED=<seed>``.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.protocol import LineParser
from harness.daemon import DaemonError, parse_logfmt
from harness.hostile import Traffic, count_lines
from harness.proctree import RssSampler, cpu_seconds, is_running, process_tree
from harness.sink import GraphiteSink, Record
from harness.tallyd import AggregatorProcess, start_aggregator
from harness.wire import Wire, WireError

pytestmark = [pytest.mark.e2e]

SEED = int(os.environ.get("TALLYD_HOSTILE_SEED", "20261201"))
WORKERS = 2
IDENTITY = "hostile"
PREFIX = "hz"
MiB = 1024 * 1024

# -- Accounting: the one place that lists what counts as a dropped line ----------------------
#
# Each entry: a Carbon path, and how it reports. PER_INTERVAL: the count of one flush interval
# (summed over the flushes). SINCE_START: a worker's total since it started (its last value).
# ``{worker}`` stands for each worker's identity (``hostile-w0``, ``hostile-w1``); a path the
# daemon does not publish counts 0. Every reason must count LINES refused after intake counted
# them in metrics_received, each line under one reason: a breakdown of a reason already listed
# goes in NOT_LINE_DROPS, or its lines are counted twice.
PER_INTERVAL = "per_interval"
SINCE_START = "since_start"
_LEDGER = "stats.statsd.tallyd.aggregator.{worker}.ledger."
_EXCHANGE = "stats.statsd.tallyd.aggregator.{worker}.exchange."
DROP_REASONS: tuple[tuple[str, str], ...] = (
    # Etsy's: bad segments; since items 5/6, also lines cut by truncation or too long.
    ("stats_counts.statsd.bad_lines_seen", PER_INTERVAL),
    # Item 8: an aggregate would be non-finite; DogStatsD events and service checks.
    (_LEDGER + "dropped_lines.overflow", SINCE_START),
    (_LEDGER + "dropped_lines.dogstatsd_event", SINCE_START),
    (_LEDGER + "dropped_lines.dogstatsd_service_check", SINCE_START),
    # The worker exchange: lines read by one worker that never reached their owner.
    (_EXCHANGE + "dropped_lines.worker_down", SINCE_START),
    (_EXCHANGE + "dropped_lines.exchange_full", SINCE_START),
    (_EXCHANGE + "dropped_lines.too_large", SINCE_START),
    (_EXCHANGE + "dropped_lines.truncated", SINCE_START),
    (_EXCHANGE + "dropped_lines.send_failed", SINCE_START),
)
#: Counts this traffic must leave at zero: events in other units than lines, or that it
#: never causes (nobody forges exchange messages here, and no worker may die).
MUST_STAY_ZERO: tuple[tuple[str, str], ...] = (
    (_EXCHANGE + "dropped_messages.malformed", SINCE_START),
    (_EXCHANGE + "dropped_messages.truncated", SINCE_START),
    (_EXCHANGE + "dropped_messages.send_failed", SINCE_START),
    ("stats.statsd.tallyd.aggregator.{worker}.workers.deaths", SINCE_START),
    ("stats.statsd.tallyd.aggregator.{worker}.workers.lost_lines_at_most", SINCE_START),
)
#: Paths that look like drop counts but are not intake lines, or count lines another entry
#: already counts: Carbon output (paths); the intake's figures (datagrams and connections;
#: its overlong stream lines are in bad_lines_seen); the ledger's bad_lines (Etsy's
#: bad_lines_seen as a total); its refused_lines (every refusal again, per line); the
#: per-second rates of Etsy's counters.
NOT_LINE_DROPS: tuple[str, ...] = (
    r"^stats\.statsd\.tallyd\.aggregator\.[^.]+\.carbon\.",
    r"^stats\.statsd\.tallyd\.aggregator\.[^.]+\.intake\.(stream_connections"
    r"|stream_connections_refused|stream_connections_evicted|stream_connections_idle_closed"
    r"|overlong_stream_lines|truncated_datagrams|kernel_drops)$",
    r"^stats\.statsd\.tallyd\.aggregator\.[^.]+\.ledger\.bad_lines$",
    # The same refusals counted once per whole line (the loss accounting's view of them).
    r"^stats\.statsd\.tallyd\.aggregator\.[^.]+\.ledger\.refused_lines\.",
    r"^stats\.statsd\.(bad_lines_seen|metrics_received|packets_received)$",
)
#: A nonzero series whose name says "drop" that no list above names fails the test: a new
#: reason must be classified here, never silently left out of the sum.
DROP_LIKE = re.compile(
    r"drop|refus|reject|truncat|overflow|too_long|overlong|bad_line|discard|lost|death")

# -- Traffic --------------------------------------------------------------------------------

#: Datagrams and streams of each mixed phase (the baseline run and the hostile run).
MIXED_ACTIONS = 500
#: Largest mixed datagram, and the noise datagrams (random-bytes lines only).
MIXED_DATAGRAM_BYTES = 16 * 1024
NOISE_DATAGRAM_BYTES = 60 * 1024
#: Longest random line: 4 KiB bad lines are the issue's measured case (item 9).
RANDOM_LINE_BYTES = 4096
#: The UDP maximum over IPv4, in bursts the worker exchange must survive (items 1, 2).
UDP_DATAGRAM_BYTES = 65_507
UDP_BURSTS = (100, 200)
#: unixgram datagrams over 64 KiB (item 5; a client's default send buffer allows ~208 KiB).
UNIXGRAM_DATAGRAM_BYTES = 150_000
UNIXGRAM_BIG_DATAGRAMS = 8
#: The daemon's limit (its default), a stream line spanning many 64 KiB reads (item 6).
MAX_LINE_BYTES = 65_536
OVERLONG_STREAM_LINE_BYTES = 200 * 1024

# -- Memory bounds (see rss_bounds) ---------------------------------------------------------

#: Datagrams a worker drains in one go (common.listener.DATAGRAMS_PER_CHECKPOINT).
DRAINED_DATAGRAMS = 256
#: Copies of a drained batch Python holds at once: the datagrams (1), the joined block (1),
#: its lines as bytes objects (1.5: 33 bytes of header per ~120-byte line), the own block
#: (0.5), the foreign lines encoded, queued and read back by the peer (1.5), the peer's split
#: (0.75): about 6.5; allocator high water on top. 5.6 was measured before the fixes.
COPIES_IN_FLIGHT = 8
#: Allocator noise between two runs of the same shape (pymalloc arenas and glibc free lists
#: are reused, not returned, in an order that varies): 0.7-1.2 MiB measured, 5x that allowed.
SAME_SHAPE_SLACK_BYTES = 6 * MiB
#: Per new valid name: its entries in the key cache, the ledger, the output's caches.
STATE_BYTES_PER_NAME = 1024
#: Copies of a huge name a worker may keep: the key cache (the ledger shares the object),
#: the owner cache, its two output paths (stats.X, stats_counts.X) and their placement.
HUGE_NAME_COPIES = 5
#: The supervisor reads no input: it may only wobble.
SUPERVISOR_SLACK_BYTES = 8 * MiB

# -- Waiting --------------------------------------------------------------------------------

#: How long the daemon may take to count what was sent (a correct one needs 1-2 flushes).
CATCH_UP_SECONDS = 30.0
#: A count that has not moved for this long, with the UDP queue empty and every process idle
#: (its CPU use within this margin of what it uses before any traffic: a worker polls its
#: exchange, ~0.13 core here, and a flush of this test's names takes a few ms), will not move.
QUIET_SECONDS = 3.0
BUSY_MARGIN_CORES = 0.25
#: The graceful stop: the daemon's graceful_timeout (15 s) and the supervisor's margin (5 s).
STOP_TIMEOUT_SECONDS = 25.0
#: How long the idle CPU use is measured, after the daemon has started.
IDLE_MEASURE_SECONDS = 1.5


@dataclass
class Failures:
    """Every check's verdict, so one run reports all that is wrong, not only the first."""

    seed: int
    items: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.items.append(message)

    def note(self, figure: str) -> None:
        self.figures.append(figure)

    def report(self, agg: AggregatorProcess) -> str:
        return (f"hostile input, seed {self.seed} (rerun: TALLYD_HOSTILE_SEED={self.seed}): "
                f"{len(self.items)} check(s) failed\n"
                + "\n".join(f"  FAIL {item}" for item in self.items)
                + "\n  figures:\n" + "\n".join(f"    {f}" for f in self.figures)
                + "\n  daemon log, warnings and errors by event (refused lines left out):\n"
                + "\n".join(f"    | {line[:300]}" for line in log_summary(agg.log_text(None))))


def log_summary(log: str) -> list[str]:
    """Each warning or error event once, with its count, and each exception a traceback ends
    with; refused lines (``bad_line``, ``bad_lines``) left out."""
    seen: dict[str, tuple[int, str]] = {}
    exceptions: list[str] = []
    for line in log.splitlines():
        if not line.startswith("ts="):
            text = line.strip(" |")
            if re.match(r"[\w.]*(Error|Exception|Group)\b.*:", text) and text not in exceptions:
                exceptions.append(text)
            continue
        fields = parse_logfmt(line)
        event = fields.get("event", "")
        if fields.get("level") in ("warning", "error") and event not in ("bad_line", "bad_lines"):
            count, first = seen.get(event, (0, line))
            seen[event] = (count + 1, first)
    return [f"{count}x {first}" for count, first in seen.values()] + exceptions[:20]


# -- Reading the sink -----------------------------------------------------------------------


def value_of(record: Record) -> float | None:
    """A Graphite line's value, or None when it is not ``path value timestamp``."""
    parts = record.line.rsplit(" ", 2)
    if len(parts) != 3:
        return None
    try:
        return float(parts[1])
    except ValueError:
        return None


class Series:
    """The sink's records by path: sums (per-interval counts), last values (levels), and the
    paths that were ever written a non-finite value."""

    def __init__(self, records: list[Record]) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.last: dict[str, float] = {}
        self.non_finite: dict[str, str] = {}
        self.malformed: list[str] = []
        for record in records:
            value = value_of(record)
            if value is None:
                self.malformed.append(record.line[:200])
                continue
            path = record.line.rsplit(" ", 2)[0]
            if not math.isfinite(value):
                self.non_finite.setdefault(path, record.line.rsplit(" ", 2)[1])
            self.sums[path] += value
            self.last[path] = value

    def total(self, pattern: str, how: str) -> float:
        """A listed metric's total over the run (``{worker}`` expanded over the workers)."""
        table = self.sums if how == PER_INTERVAL else self.last
        return sum(table.get(path, 0.0) for path in expand(pattern))


def expand(pattern: str) -> list[str]:
    if "{worker}" not in pattern:
        return [pattern]
    return [pattern.format(worker=f"{IDENTITY}-w{i}") for i in range(WORKERS)]


def metrics_received(sink: GraphiteSink) -> float:
    return sum(value_of(r) or 0.0 for r in sink.records()
               if r.line.startswith("stats_counts.statsd.metrics_received "))


def cpu_rates(pids: list[int], seconds: float) -> dict[int, float]:
    """Each process's CPU use over the next ``seconds``, in cores."""
    before = {p: cpu_seconds(p) for p in pids}
    time.sleep(seconds)
    return {p: (cpu_seconds(p) - before[p]) / seconds for p in pids}


def wait_counted(sink: GraphiteSink, wire: Wire, idle: dict[int, float], lines: int) -> float:
    """Wait until the daemon has reported ``lines`` received, or its count has stopped moving
    while it is idle (a worker busy with a backlog sends no flush mark, so its count lags).

    Args:
        idle: each process's CPU use when it has nothing to do, in cores.

    Returns the count reached (the checks at the end say whether it is right).
    """
    deadline = time.monotonic() + CATCH_UP_SECONDS
    seen, since = -1.0, time.monotonic()
    cpu = {p: cpu_seconds(p) for p in idle}
    while time.monotonic() < deadline:
        count = metrics_received(sink)
        if count == lines:
            return count
        now = time.monotonic()
        if count != seen or wire.udp_state()[0]:
            seen, since, cpu = count, now, {p: cpu_seconds(p) for p in idle}
        elif now - since > QUIET_SECONDS:
            used = {p: (cpu_seconds(p) - cpu[p]) / (now - since) for p in idle}
            if all(used[p] <= idle[p] + BUSY_MARGIN_CORES for p in idle):
                return count
            since, cpu = now, {p: cpu_seconds(p) for p in idle}
        time.sleep(0.1)
    return metrics_received(sink)


# -- The traffic ----------------------------------------------------------------------------


def datagram(traffic: Traffic, group: str, limit: int) -> bytes:
    """Mixed lines, at most ``limit`` bytes, sometimes with empty lines or overflow probes."""
    rng = traffic.rng
    lines: list[bytes] = []
    size = 0
    # Stop adding below the limit by more than any one line is long (a line is recorded as
    # sent when it is made, so it cannot be left out afterwards).
    target = rng.randrange(64, limit - RANDOM_LINE_BYTES - 256)
    if rng.random() < 0.25:
        lines += traffic.overflow_lines()
    while size < target:
        line = next(traffic.mixed_lines(1, group, hostile=0.6, max_random=RANDOM_LINE_BYTES))
        lines.append(line)
        size += len(line) + 1
    if rng.random() < 0.2:  # empty lines count as nothing
        return b"\n\n" + b"\n\n".join(lines) + b"\n"
    return b"\n".join(lines)


def noise_datagram(traffic: Traffic) -> bytes:
    """Random-bytes lines of 2-4 KiB whose keys are as long (a parser that keeps refused keys
    grows by their size), filling a datagram."""
    return b"\n".join(traffic.random_line(RANDOM_LINE_BYTES, min_bytes=RANDOM_LINE_BYTES // 2,
                                          long_key=True)
                      for _ in range(NOISE_DATAGRAM_BYTES // RANDOM_LINE_BYTES))


def stream_chunks(traffic: Traffic, group: str) -> tuple[list[bytes], bool]:
    """A stream's contents, cut into the pieces written, and whether to end it by a reset."""
    rng = traffic.rng
    reset = rng.random() < 0.3 and group == "tcp"  # (a Unix stream cannot be reset)
    parts: list[bytes] = []
    for line in traffic.mixed_lines(rng.randrange(10, 150), group, hostile=0.5,
                                    max_random=RANDOM_LINE_BYTES):
        parts.append(line + b"\n")
        if rng.random() < 0.0003:
            parts.append(traffic.huge_name_line(rng.randrange(256, 60_000)) + b"\n")
        if rng.random() < 0.001:
            parts.append(traffic.too_long_line(MAX_LINE_BYTES + rng.randrange(1, 4096)) + b"\n")
        if rng.random() < 0.0005:
            parts.append(traffic.too_long_line(OVERLONG_STREAM_LINE_BYTES) + b"\n")
    if rng.random() < 0.5:  # cut inside the last line
        _, line = traffic.plain_line(group)
        parts.append(traffic.cut(line))
    elif rng.random() < 0.5:  # the last line complete, without its newline
        name, line = traffic.plain_line(group)
        # After a FIN it is a last line; before a reset it may be a cut one, and is refused.
        parts.append(traffic.unterminated(line) if reset else traffic.take_plain(name, line))
    payload = b"".join(parts)
    cuts = sorted(rng.sample(range(1, len(payload)), min(len(payload) - 1, rng.randrange(6))))
    chunks = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    return chunks, reset


def mixed_phase(traffic: Traffic, wire: Wire, actions: int) -> None:
    """Datagrams and streams of mixed lines on all four listeners, in random order."""
    rng = traffic.rng
    for _ in range(actions):
        pick = rng.random()
        if pick < 0.45:
            noise = noise_datagram(traffic)
            if rng.random() < 0.5:
                wire.udp(noise)
            else:
                wire.unixgram(noise)
        elif pick < 0.6:
            wire.udp(datagram(traffic, "udp", MIXED_DATAGRAM_BYTES))
        elif pick < 0.75:
            wire.unixgram(datagram(traffic, "unixgram", MIXED_DATAGRAM_BYTES))
        elif pick < 0.995:
            kind = rng.choice(("tcp", "unix"))
            chunks, reset = stream_chunks(traffic, kind)
            wire.stream(kind, chunks, reset=reset)
        else:
            wire.udp(traffic.huge_name_line(rng.randrange(256, UDP_DATAGRAM_BYTES - 64)))


def burst_phase(traffic: Traffic, wire: Wire) -> None:
    """64 KiB UDP bursts, unixgram datagrams over 64 KiB, a bulk stream, mixed datagrams."""
    rng = traffic.rng
    steps: list[Callable[[], None]] = []
    for count in UDP_BURSTS:
        burst = [traffic.bulk_datagram(UDP_DATAGRAM_BYTES) for _ in range(count)]
        steps.append(lambda burst=burst: wire.udp_burst(burst))  # type: ignore[misc]
    for _ in range(UNIXGRAM_BIG_DATAGRAMS):
        big = traffic.bulk_datagram(UNIXGRAM_DATAGRAM_BYTES)
        steps.append(lambda big=big: wire.unixgram(big))  # type: ignore[misc]
    # A line over max_line_bytes inside a big datagram: refused, the lines after it kept.
    mixed = (traffic.bulk_datagram(20_000) + b"\n" + traffic.too_long_line(80_000) + b"\n"
             + traffic.bulk_datagram(20_000))
    steps.append(lambda: wire.unixgram(mixed))
    bulk = b"\n".join(traffic.bulk_datagram(64_000) for _ in range(16)) + b"\n"
    steps.append(lambda: wire.stream("tcp", [bulk]))
    for _ in range(20):
        small = datagram(traffic, "burst", MIXED_DATAGRAM_BYTES)
        steps.append(lambda small=small: wire.udp(small))  # type: ignore[misc]
    rng.shuffle(steps)
    for step in steps:
        step()


# -- Memory ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RssBounds:
    after_hostile: int
    peak: int


def rss_bounds(baseline: int, *, supervisor: bool, new_names: int,
               new_huge_name_bytes: int) -> RssBounds:
    """What one process may occupy after the hostile mixed phase, and at its peak after.

    The baseline is the RSS after a run of the same shape whose refused lines repeat a few
    (`harness.hostile.POOL_LINES`) lines. After the hostile run, whose ~13 MiB of refused
    random keys are all distinct, a worker may hold only that plus the state of the valid
    names the baseline did not have (huge names above all), plus allocator noise: not the
    refused lines. A parser that caches every new key it sees fails here.

    Then, during the bursts, it may also hold one drained batch: at most `DRAINED_DATAGRAMS`
    datagrams and no more than the largest burst (the test waits for an empty queue before
    each), of at most the largest datagram, times `COPIES_IN_FLIGHT`.
    """
    if supervisor:
        return RssBounds(baseline + SUPERVISOR_SLACK_BYTES, baseline + SUPERVISOR_SLACK_BYTES)
    state = new_huge_name_bytes * HUGE_NAME_COPIES + new_names * STATE_BYTES_PER_NAME
    after = baseline + state + SAME_SHAPE_SLACK_BYTES
    batch = min(DRAINED_DATAGRAMS, max(UDP_BURSTS)) * UDP_DATAGRAM_BYTES
    return RssBounds(after, after + COPIES_IN_FLIGHT * batch)


def huge_name_bytes(traffic: Traffic) -> int:
    return sum(len(name) for name in traffic.totals if ".huge" in name)


# -- The test -------------------------------------------------------------------------------


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tallyd-hostile-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_hostile_input_keeps_the_daemon_up_bounded_exact_and_accounted(
        socket_dir: Path) -> None:
    traffic = Traffic(random.Random(SEED), prefix=PREFIX)
    failures = Failures(SEED)
    with GraphiteSink() as sink:
        args = ["--listen", "udp://127.0.0.1:0", "tcp://127.0.0.1:0",
                f"unix://{socket_dir}/stream.sock", f"unixgram://{socket_dir}/dgram.sock",
                "--carbon", f"127.0.0.1:{sink.port}", "--flush-interval", "1",
                "--mgmt-port", "0", "--workers", str(WORKERS), "--identity", IDENTITY,
                "--max-line-bytes", str(MAX_LINE_BYTES)]
        agg = start_aggregator(args)
        with agg, Wire(udp=agg.udp, tcp=agg.tcp, unix=agg.address("unix"),
                       unixgram=agg.address("unixgram")) as wire, RssSampler(agg.pid) as rss:
            pids = process_tree(agg.pid)
            assert len(pids) == 1 + WORKERS, f"a supervisor and {WORKERS} workers: {pids}"
            try:
                run_phases(traffic, wire, sink, rss, pids, agg.pid, failures)
            except (OSError, WireError) as e:  # the daemon stopped reading: report it all
                failures.check(False, f"sending stopped: {e!r}")
            now = process_tree(agg.pid)
            failures.check(sorted(now) == sorted(pids) and all(is_running(p) for p in pids),
                           f"processes changed: {pids} at start, {now} at the end "
                           f"(running: {[p for p in now if is_running(p)]})")
            died = [x for x in agg.log_text(None).splitlines() if "event=worker_died" in x]
            failures.check(not died, f"{len(died)} worker death(s): {died[:3]}")
            drops = wire.udp_drops()
            failures.check(drops == 0, f"the kernel dropped {drops} UDP datagrams: the test's "
                           "pacing failed, so the totals cannot be exact")
            try:
                code = agg.stop(STOP_TIMEOUT_SECONDS)
            except DaemonError:
                code = None
            failures.check(code == 0, f"the graceful stop exited {code}")
        sink.wait_closed(10)
        series = Series(sink.records())
        check_output(series, traffic, failures)
        check_accounting(series, traffic, failures)
        print(f"seed {SEED}\n" + "\n".join(failures.figures))  # shown with pytest -rP
        assert not failures.items, failures.report(agg)


def run_phases(traffic: Traffic, wire: Wire, sink: GraphiteSink, rss: RssSampler,
               pids: list[int], supervisor: int, failures: Failures) -> None:
    """Baseline run, hostile mixed run, bursts; RSS checked against `rss_bounds`."""
    idle = cpu_rates(pids, IDLE_MEASURE_SECONDS)
    failures.note("idle CPU use, cores: " + ", ".join(f"{p} {v:.2f}" for p, v in idle.items()))
    started = time.monotonic()

    def phase(name: str, send: Callable[[], None]) -> None:
        begun = time.monotonic()
        send()
        sent = time.monotonic()
        counted = wait_counted(sink, wire, idle, traffic.lines)
        failures.note(f"{name}: {traffic.lines} lines sent by now, {sent - begun:.1f}s to send, "
                      f"{counted:.0f} counted {time.monotonic() - sent:.1f}s later")

    # 1. The baseline: the mixed traffic's shape, refused lines from a small pool.
    traffic.pooled = True
    phase("baseline run", lambda: mixed_phase(traffic, wire, MIXED_ACTIONS))
    traffic.pooled = False
    baseline = rss.sample()
    names, huge = len(traffic.totals), huge_name_bytes(traffic)
    # 2. The same shape, every refused line new.
    phase("hostile mixed run", lambda: mixed_phase(traffic, wire, MIXED_ACTIONS))
    after_hostile = rss.sample()
    bounds = {pid: rss_bounds(baseline.get(pid, 0), supervisor=pid == supervisor,
                              new_names=len(traffic.totals) - names,
                              new_huge_name_bytes=huge_name_bytes(traffic) - huge)
              for pid in pids}
    rss.reset_peaks()
    # 3. Bursts and big datagrams.
    phase("bursts", lambda: burst_phase(traffic, wire))
    peaks = rss.peaks()
    failures.note(f"{wire.bytes_sent / MiB:.1f} MiB sent in {time.monotonic() - started:.1f}s")

    for pid in pids:
        role = "supervisor" if pid == supervisor else f"worker pid {pid}"
        base, after, peak = baseline.get(pid, 0), after_hostile.get(pid, 0), peaks.get(pid, 0)
        failures.note(f"RSS {role}: baseline {base / MiB:.1f} MiB, after the hostile run "
                      f"{after / MiB:.1f} (bound {bounds[pid].after_hostile / MiB:.1f}), peak "
                      f"in the bursts {peak / MiB:.1f} (bound {bounds[pid].peak / MiB:.1f})")
        failures.check(after <= bounds[pid].after_hostile,
                       f"{role} keeps refused input: RSS {after / MiB:.1f} MiB after the "
                       f"hostile run, {base / MiB:.1f} after the same shape with repeated "
                       f"refused lines (bound {bounds[pid].after_hostile / MiB:.1f})")
        failures.check(peak <= bounds[pid].peak,
                       f"{role} RSS peaked at {peak / MiB:.1f} MiB in the bursts (bound "
                       f"{bounds[pid].peak / MiB:.1f})")


def check_output(series: Series, traffic: Traffic, failures: Failures) -> None:
    """No restart, exact totals, no stray names under the prefix, nothing non-finite."""
    for i in range(WORKERS):
        generation = series.last.get(
            f"stats.statsd.tallyd.aggregator.{IDENTITY}-w{i}.worker.generation")
        failures.check(generation == 0,
                       f"worker {i}: generation {generation} at the end (0: never restarted)")
    failures.check(not series.malformed, f"{len(series.malformed)} lines at Carbon are not "
                   f"'path value timestamp': {series.malformed[:3]}")
    non_finite = series.non_finite
    failures.check(not non_finite, f"{len(non_finite)} series written to Carbon with a "
                   f"non-finite value: " + ", ".join(
                       f"{p[:100]} {v}" for p, v in sorted(non_finite.items())[:8]))

    wrong = {name: series.sums.get(f"stats_counts.{name}") for name, total in
             traffic.totals.items() if series.sums.get(f"stats_counts.{name}") != total}
    missing = sum(traffic.totals[n] - (got or 0) for n, got in wrong.items())
    failures.note(f"valid counters: {len(traffic.totals)} names, "
                  f"{sum(traffic.totals.values())} increments")
    failures.check(not wrong, f"{len(wrong)} of {len(traffic.totals)} valid counters have a "
                   f"wrong total ({missing:+.0f} increments short overall); got/want e.g. "
                   + ", ".join(f"{n[:60]}: {got}/{traffic.totals[n]}"
                               for n, got in list(wrong.items())[:5]))
    odd = [name for name, probe in traffic.probes.items()
           if probe.aggregated(series.sums, series.last) is None]
    failures.check(not odd, f"{len(odd)} overflow probes hold values no refusal explains "
                   f"(a non-finite or a mixed value): {odd[:6]}")

    counters = {f"stats_counts.{n}" for n in traffic.totals}
    probes = tuple(f"{kind}.{name}" for name in traffic.probes
                   for kind in ("stats_counts", "stats.gauges", "stats.timers"))
    stray = [p for p in series.last
             if p.startswith((f"stats_counts.{PREFIX}.", f"stats.gauges.{PREFIX}.",
                              f"stats.timers.{PREFIX}.", f"stats.sets.{PREFIX}."))
             and p not in counters and not (p + ".").startswith(
                 tuple(x + "." for x in probes))]
    failures.check(not stray, f"{len(stray)} series under {PREFIX}. that no valid line made "
                   f"(hostile lines aggregated, or cut ones): {[p[:80] for p in stray[:6]]}")


def check_accounting(series: Series, traffic: Traffic, failures: Failures) -> None:
    """metrics_received = every line sent = lines aggregated + every counted drop."""
    received = series.sums.get("stats_counts.statsd.metrics_received", 0.0)
    probed = sum(p.aggregated(series.sums, series.last) or 0.0 for p in traffic.probes.values())
    aggregated = traffic.aggregated + probed
    reasons = {pattern: series.total(pattern, how) for pattern, how in DROP_REASONS}
    dropped = sum(reasons.values())
    failures.note(f"lines sent {traffic.lines}, metrics_received {received:.0f}, aggregated "
                  f"{aggregated:.0f} (overflow probes {probed:.0f} of "
                  f"{sum(p.lines for p in traffic.probes.values())}), counted drops "
                  f"{dropped:.0f}: " + ", ".join(
                      f"{p.split('}.', 1)[-1]}={v:.0f}" for p, v in reasons.items() if v))
    failures.note(f"refused lines sent, by kind: {dict(sorted(traffic.refused.items()))}")
    failures.check(received == traffic.lines,
                   f"metrics_received {received:.0f} != {traffic.lines} lines sent "
                   f"({traffic.lines - received:+.0f} lines never counted)")
    failures.check(received == aggregated + dropped,
                   f"metrics_received {received:.0f} != aggregated {aggregated:.0f} + counted "
                   f"drops {dropped:.0f} ({received - aggregated - dropped:+.0f} lines "
                   f"unaccounted; {traffic.lines - aggregated:.0f} refused lines were sent)")
    for pattern, how in MUST_STAY_ZERO:
        value = series.total(pattern, how)
        failures.check(value == 0, f"{pattern} = {value:.0f}, must stay 0 under this traffic")
    listed = {p for pattern, _ in DROP_REASONS + MUST_STAY_ZERO for p in expand(pattern)}
    unlisted = {p: v for p, v in series.sums.items()
                if v and DROP_LIKE.search(p) and p not in listed
                and not p.startswith((f"stats_counts.{PREFIX}.", f"stats.{PREFIX}."))
                and not any(re.search(x, p) for x in NOT_LINE_DROPS)}
    failures.check(not unlisted, f"drop counts that no list of this test names (add each to "
                   f"DROP_REASONS, MUST_STAY_ZERO or NOT_LINE_DROPS): {unlisted}")


def test_generated_lines_have_the_fate_the_generator_records() -> None:
    """The generator's promise, against the parser: a line it records as aggregated gives
    one sample, a line it records as refused gives none and at most one refusal."""
    parser = LineParser(max_line_bytes=MAX_LINE_BYTES)
    traffic = Traffic(random.Random(SEED), prefix=PREFIX)
    for _ in range(3000):
        lines, aggregated = traffic.lines, traffic.aggregated
        line = next(traffic.mixed_lines(1, "unit", hostile=0.7, max_random=RANDOM_LINE_BYTES))
        samples, errors = parser.parse_line(line)
        assert traffic.lines == lines + 1
        if traffic.aggregated > aggregated:
            assert (len(samples), len(errors)) == (1, 0), (SEED, line[:200], errors)
        else:
            assert not samples and len(errors) <= 1, (SEED, line[:200], samples, errors)
    for _ in range(200):
        line = traffic.random_line(RANDOM_LINE_BYTES, min_bytes=2048, long_key=True)
        assert b"\n" not in line and line.count(b":") <= 1
        assert parser.parse_line(line)[0] == []
    assert count_lines(b"\n\na\n\nb\n") == 2
