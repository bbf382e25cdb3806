"""A Carbon plaintext sink for benchmarks: it counts what a flush carries at memory speed.

`harness.sink.GraphiteSink` keeps every line it receives, for tests that check them one by
one; at a million lines a second that bookkeeping would be the bottleneck. `TallySink` keeps
only the sums a benchmark checks (a `Tally`): each block of complete lines is scanned with a
few literal-first regular expressions, and only matching lines reach Python. One
`harness.receiver.LineReceiver` thread serves every connection (Etsy statsd opens one per
flush, tallyd keeps one).

Every flush, in both daemons, ends with ``stats.statsd.graphiteStats.flush_length``; the
sink records when each arrives, so a caller can wait for "the next flush".

Daemons name their output differently; a `Naming` holds the patterns for one scheme.
`ETSY_NAMING` (the default) is Etsy's legacy namespace, which tallyd keeps too:
``stats_counts.P.mI``, ``stats.timers.P.tI.count``. `brubeck_naming` is brubeck's: a ``c``
line is a "meter" whose sum is sent under the plain name (``P.mI 20 TS``: a count per flush
like ``stats_counts``, not a rate), a timer's count as ``P.tI.count``, and its own figures
under its ``server_name`` (``NAME.metrics``: lines parsed in the interval); its last line in
every flush is ``NAME.secure.replayed``, the end marker. brubeck has no sets.

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
@dataclass(frozen=True)
class Naming:
    """How one daemon names the figures the sink counts (compiled byte patterns).

    ``counter`` and ``timer`` capture (prefix, value), ``gauge`` and ``set_`` (prefix, index,
    value), ``internal`` (name, value) with name ``metrics_received`` or ``packets_received``
    (or whatever ``internal_names`` maps to them); ``flush_end`` is the literal that starts a
    flush's last line.
    """

    counter: re.Pattern[bytes]
    timer: re.Pattern[bytes]
    gauge: re.Pattern[bytes] | None
    set_: re.Pattern[bytes] | None
    internal: re.Pattern[bytes]
    internal_names: dict[bytes, str]
    flush_end: bytes


ETSY_NAMING = Naming(
    counter=re.compile(rb"stats_counts\.([A-Za-z0-9_]+)\.m\d+ (\S+) "),
    timer=re.compile(rb"stats\.timers\.([A-Za-z0-9_]+)\.t\d+\.count (\S+) "),
    gauge=re.compile(rb"stats\.gauges\.([A-Za-z0-9_]+)\.g(\d+) (\S+) "),
    set_=re.compile(rb"stats\.sets\.([A-Za-z0-9_]+)\.s(\d+)\.count ([1-9][0-9]*) "),
    internal=re.compile(rb"stats_counts\.statsd\.(metrics_received|packets_received) (\S+) "),
    internal_names={b"metrics_received": "metrics_received",
                    b"packets_received": "packets_received"},
    #: The last line of every flush, in both daemons: the flush's end marker.
    flush_end=b"stats.statsd.graphiteStats.flush_length ",
)


def brubeck_naming(server_name: str) -> Naming:
    """brubeck's names, for a brubeck whose ``server_name`` is ``server_name``."""
    name = re.escape(server_name.encode())
    return Naming(
        # plain names: anchored at a line start, so "stats_counts.P.m1" would not match
        counter=re.compile(rb"(?m)^([A-Za-z0-9_]+)\.m\d+ (\S+) "),
        timer=re.compile(rb"(?m)^([A-Za-z0-9_]+)\.t\d+\.count (\S+) "),
        gauge=re.compile(rb"(?m)^([A-Za-z0-9_]+)\.g(\d+) (\S+) "),
        set_=None,
        internal=re.compile(rb"(?m)^" + name + rb"\.(metrics) (\S+) "),
        internal_names={b"metrics": "metrics_received"},
        flush_end=server_name.encode() + b".secure.replayed ",
    )


class TallySink:
    """A Graphite plaintext sink on 127.0.0.1 (port 0) that scans each block of complete
    lines with the patterns above."""

    def __init__(self, naming: Naming = ETSY_NAMING) -> None:
        self.naming = naming
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
        n = self.naming
        counters: dict[bytes, float] = {}
        for prefix, value in n.counter.findall(block):
            counters[prefix] = counters.get(prefix, 0.0) + float(value)
        timers: dict[bytes, float] = {}
        for prefix, value in n.timer.findall(block):
            timers[prefix] = timers.get(prefix, 0.0) + float(value)
        gauges = n.gauge.findall(block) if n.gauge is not None else []
        sets = n.set_.findall(block) if n.set_ is not None else []
        internal = n.internal.findall(block)
        ends = block.count(n.flush_end)
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
                if n.internal_names.get(name) == "metrics_received":
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
