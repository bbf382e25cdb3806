"""A Carbon plaintext sink for benchmarks: it counts what a flush carries at memory speed.

`harness.sink.GraphiteSink` keeps every line it receives, for tests that check them one by
one; at a million lines a second that bookkeeping would be the bottleneck. `TallySink` keeps
only the sums a benchmark checks (a `Tally`): each block of complete lines is scanned with a
few literal-first regular expressions, and only matching lines reach Python. One
`harness.receiver.LineReceiver` thread serves every connection (Etsy statsd opens one per
flush, tallyd keeps one).

Every flush, in both daemons, ends with ``stats.statsd.graphiteStats.flush_length``; the
sink records when each arrives, so a caller can wait for "the next flush".

SHELL (sockets, a thread).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from harness.receiver import LineReceiver

#: The receive buffer of each accepted connection, and the most read at once.
RECEIVE_BYTES = 4 << 20


@dataclass
class Tally:
    """What the sink counted since the last reset (only the lines the benchmark checks)."""

    counters: dict[str, float] = field(default_factory=dict)  # prefix -> sum of counts
    timer_counts: dict[str, float] = field(default_factory=dict)  # prefix -> sum of .count
    gauges: dict[str, dict[int, float]] = field(default_factory=dict)  # prefix -> i -> value
    sets: dict[str, set[int]] = field(default_factory=dict)  # prefix -> indexes seen > 0
    metrics_received: float = 0.0
    packets_received: float = 0.0
    bytes: int = 0

    def copy(self) -> Tally:
        return Tally(dict(self.counters), dict(self.timer_counts),
                     {p: dict(g) for p, g in self.gauges.items()},
                     {p: set(s) for p, s in self.sets.items()},
                     self.metrics_received, self.packets_received, self.bytes)


# Literal-first patterns: the regex engine finds a literal prefix with a fast scan, so each
# pattern reads a flush at memory speed; only matching lines reach Python.
_COUNTER = re.compile(rb"stats_counts\.([A-Za-z0-9_]+)\.m\d+ (\S+) ")
_TIMER = re.compile(rb"stats\.timers\.([A-Za-z0-9_]+)\.t\d+\.count (\S+) ")
_GAUGE = re.compile(rb"stats\.gauges\.([A-Za-z0-9_]+)\.g(\d+) (\S+) ")
_SET = re.compile(rb"stats\.sets\.([A-Za-z0-9_]+)\.s(\d+)\.count ([1-9][0-9]*) ")
_INTERNAL = re.compile(rb"stats_counts\.statsd\.(metrics_received|packets_received) (\S+) ")
#: The last line of every flush, in both daemons: the flush's end marker.
_FLUSH_END = b"stats.statsd.graphiteStats.flush_length "


class TallySink:
    """A Graphite plaintext sink on 127.0.0.1 (port 0) that scans each block of complete
    lines with the patterns above."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.flush_ends: list[float] = []
        self.cond = threading.Condition()
        self._receiver = LineReceiver(self, receive_buffer_bytes=RECEIVE_BYTES,
                                      read_bytes=RECEIVE_BYTES)
        self.port = self._receiver.address[1]
        self._receiver.start()

    def opened(self, connection: int, now: float) -> None:
        """Nothing to count for a new connection."""

    def received(self, connection: int, lines: bytes, now: float, wall: float) -> None:
        self._scan(lines, now)

    def closed(self, connection: int, rest: bytes, now: float, wall: float) -> None:
        if rest:
            self._scan(rest + b"\n", now)

    def _scan(self, block: bytes, now: float) -> None:
        counters: dict[bytes, float] = {}
        for prefix, value in _COUNTER.findall(block):
            counters[prefix] = counters.get(prefix, 0.0) + float(value)
        timers: dict[bytes, float] = {}
        for prefix, value in _TIMER.findall(block):
            timers[prefix] = timers.get(prefix, 0.0) + float(value)
        gauges = _GAUGE.findall(block) if b"stats.gauges." in block else []
        sets = _SET.findall(block) if b"stats.sets." in block else []
        internal = _INTERNAL.findall(block) if b"stats_counts.statsd." in block else []
        ends = block.count(_FLUSH_END)
        with self.cond:
            t = self.tally
            t.bytes += len(block)
            for p, v in counters.items():
                t.counters[p.decode()] = t.counters.get(p.decode(), 0.0) + v
            for p, v in timers.items():
                t.timer_counts[p.decode()] = t.timer_counts.get(p.decode(), 0.0) + v
            for p, i, v in gauges:
                t.gauges.setdefault(p.decode(), {})[int(i)] = float(v)
            for p, i, _ in sets:
                t.sets.setdefault(p.decode(), set()).add(int(i))
            for name, v in internal:
                if name == b"metrics_received":
                    t.metrics_received += float(v)
                else:
                    t.packets_received += float(v)
            if ends:
                self.flush_ends.extend([now] * ends)
                self.cond.notify_all()

    def reset(self) -> Tally:
        """Start counting afresh; return what was counted before."""
        with self.cond:
            old, self.tally = self.tally, Tally()
            return old

    def snapshot(self) -> Tally:
        with self.cond:
            return self.tally.copy()

    def wait_flush_end(self, after: float, timeout: float) -> float | None:
        """Wait for a flush that ends after monotonic time ``after``; return when it ended."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                later = [t for t in self.flush_ends if t > after]
                if later:
                    return later[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self) -> None:
        self._receiver.close()
