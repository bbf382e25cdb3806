"""A Carbon plaintext sink for benchmarks: it counts what a flush carries at memory speed.

`harness.sink.GraphiteSink` keeps every line it receives, for tests that check them one by
one; at a million lines a second that bookkeeping would be the bottleneck. `TallySink` keeps
only the sums a benchmark checks (a `Tally`): each block of complete lines is scanned with a
few literal-first regular expressions, and only matching lines reach Python. One background
thread serves every connection (Etsy statsd opens one per flush, tallyd keeps one).

Every flush, in both daemons, ends with ``stats.statsd.graphiteStats.flush_length``; the
sink records when each arrives, so a caller can wait for "the next flush".

SHELL (sockets, a thread).
"""

from __future__ import annotations

import re
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

#: The receive buffer of each accepted connection, and the most read at once.
RECEIVE_BYTES = 4 << 20
#: How often the sink's thread looks at its stop flag while idle.
POLL_SECONDS = 0.2


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
    """A Graphite plaintext receiver on 127.0.0.1 (port 0) that tallies in one thread.

    Lines are cut at newlines per connection; each block of complete lines is scanned with
    the patterns above.
    """

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.tally = Tally()
        self.flush_ends: list[float] = []
        self.cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="carbon-sink", daemon=True)
        self._thread.start()

    def _scan(self, block: bytes) -> None:
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
                now = time.monotonic()
                self.flush_ends.extend([now] * ends)
                self.cond.notify_all()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, None)
        partial: dict[socket.socket, bytes] = {}
        while not self._stop:
            for key, _ in sel.select(POLL_SECONDS):
                if key.data is None:
                    try:
                        conn, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BYTES)
                    sel.register(conn, selectors.EVENT_READ, True)
                    partial[conn] = b""
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    data = conn.recv(RECEIVE_BYTES)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    rest = partial.pop(conn, b"")
                    if rest:
                        self._scan(rest + b"\n")
                    sel.unregister(conn)
                    conn.close()
                    continue
                data = partial[conn] + data
                cut = data.rfind(b"\n") + 1
                partial[conn] = data[cut:]
                if cut:
                    self._scan(data[:cut])
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]

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
        self._stop = True
        self._thread.join(5)
        self.listener.close()
