"""A TCP sink that speaks Graphite's plaintext protocol and keeps every line, for tests.

Both daemons under test send ``name value timestamp\\n`` lines over TCP, but they delimit their
flushes differently:

* Etsy statsd opens a NEW connection for every flush, writes the whole flush and closes it. A
  flush is one connection; it is complete when the sender closes it.
* tallyd keeps ONE connection open for all flushes, and every line of a flush carries the same
  timestamp. A flush is a run of lines with one timestamp; it is complete when a line with a
  later timestamp arrives, when the connection closes, or when nothing has arrived for a short
  "settle" time.

The sink records every line as a :class:`Record` (connection id, line, arrival time) and offers
both views: :meth:`GraphiteSink.flushes_by_connection` and
:meth:`GraphiteSink.flushes_by_timestamp`. ``wait_for_flushes`` blocks until enough flushes of
the chosen view exist. It binds 127.0.0.1 port 0, so tests never need a fixed port; one
`harness.receiver.LineReceiver` thread reads every connection.

SHELL (sockets, threads).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from harness.receiver import LineReceiver

#: How long a timestamp group must be quiet before it counts as complete, when no later line
#: or connection close has marked its end. Loopback delivers a flush within milliseconds.
DEFAULT_SETTLE_SECONDS = 0.15

Grouping = Literal["connection", "timestamp"]


@dataclass(frozen=True)
class Record:
    """One received line (without its trailing newline, ``\\r`` kept as sent)."""

    connection: int
    line: str
    arrival: float  # time.monotonic()
    wall: float = 0.0  # time.time() at arrival

    @property
    def timestamp(self) -> int | None:
        """The line's third field as an int, or None if the line is not ``name value ts``."""
        parts = self.line.rsplit(" ", 2)
        if len(parts) != 3 or not parts[2].isdigit():
            return None
        return int(parts[2])


@dataclass(frozen=True)
class Flush:
    """One flush as seen by the sink.

    ``key`` is the connection id (connection view) or the timestamp (timestamp view).
    ``started`` is when its first byte or line arrived (time.monotonic()).
    """

    key: int
    lines: tuple[str, ...]
    started: float
    complete: bool


@dataclass
class _Connection:
    ident: int
    opened: float
    closed: bool = False
    lines: list[str] = field(default_factory=list)


@dataclass
class _Group:
    ts: int
    lines: list[str]
    first: float
    last: float
    slot: int | None


class GraphiteSink:
    """Accepts any number of connections on 127.0.0.1 and records the lines they send.

    Timestamps are whole seconds, so flushes less than a second apart can share one. Two options
    separate them in the timestamp view: ``gap``, a pause of more than ``gap`` seconds between
    two lines starts a new flush; ``slots=(interval, offset)``, for a sender whose flushes are
    aligned to wall-clock multiples of ``interval``: lines are grouped by the wall-clock slot
    ``floor((time - offset) / interval)`` they arrive in (pick ``offset`` well after the flush
    instant, so that a flush written in parts, say by several workers, stays in one slot).
    ``settle``: how long the last timestamp group must be quiet to count as complete. Both views
    are maintained as lines arrive, so polling them is cheap.

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, host: str = "127.0.0.1", *, port: int = 0, gap: float | None = None,
                 slots: tuple[float, float] | None = None,
                 settle: float = DEFAULT_SETTLE_SECONDS) -> None:
        self.gap = gap
        self.slots = slots
        self.settle = settle
        self._cond = threading.Condition()
        self._records: list[Record] = []
        self._connections: dict[int, _Connection] = {}
        self._groups: list[_Group] = []
        self._receiver = LineReceiver(self, host, port=port)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self._receiver.address

    @property
    def port(self) -> int:
        return self.address[1]

    def peer(self, connection: int) -> str:
        """The address connection number ``connection`` came from."""
        return self._receiver.peers[connection]

    def start(self) -> GraphiteSink:
        self._receiver.start()
        return self

    def close(self) -> None:
        """Stop receiving; connections still open count as closed."""
        self._receiver.close()

    def __enter__(self) -> GraphiteSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- receiving ------------------------------------------------------------------------

    def opened(self, connection: int, now: float) -> None:
        with self._cond:
            self._connections[connection] = _Connection(connection, now)
            self._cond.notify_all()

    def received(self, connection: int, lines: bytes, now: float, wall: float) -> None:
        with self._cond:
            conn = self._connections[connection]
            for raw in lines.split(b"\n")[:-1]:
                self._add(conn, raw, now, wall)
            self._cond.notify_all()

    def closed(self, connection: int, rest: bytes, now: float, wall: float) -> None:
        with self._cond:
            conn = self._connections[connection]
            if rest:  # a last line without "\n" still counts
                self._add(conn, rest, now, wall)
            conn.closed = True
            self._cond.notify_all()

    def _add(self, conn: _Connection, raw: bytes, now: float, wall: float) -> None:
        """Record one line (lock held) and extend both views."""
        rec = Record(conn.ident, raw.decode("utf-8", "replace"), now, wall)
        self._records.append(rec)
        conn.lines.append(rec.line)
        ts = rec.timestamp
        slot = None
        if self.slots is not None:
            interval, offset = self.slots
            slot = math.floor((wall - offset) / interval)
        groups = self._groups
        if groups:
            last = groups[-1]
            paused = self.gap is not None and now - last.last > self.gap
            if not paused and slot == last.slot and (ts is None or ts == last.ts):
                last.lines.append(rec.line)
                last.last = now
                return
        groups.append(_Group(ts if ts is not None else -1, [rec.line], now, now, slot))

    # -- views ----------------------------------------------------------------------------

    def records(self) -> list[Record]:
        """A snapshot of every line received so far, in arrival order."""
        with self._cond:
            return list(self._records)

    def connection_count(self) -> int:
        with self._cond:
            return len(self._connections)

    def wait_closed(self, timeout: float) -> None:
        """Block until every sender has closed its connection and all it wrote is read
        (after a daemon exits, its last lines may still be on their way through the kernel
        and this sink's reader threads)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._all_closed():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"sink: connections still open after {timeout}s")
                self._cond.wait(left)

    def _all_closed(self) -> bool:
        return bool(self._connections) and all(c.closed for c in self._connections.values())

    def _count(self, grouping: Grouping) -> int:
        return len(self._connections) if grouping == "connection" else len(self._groups)

    def _flush(self, grouping: Grouping, index: int, *, with_lines: bool = True) -> Flush:
        if grouping == "connection":
            conn = self._connections[index]
            return Flush(index, tuple(conn.lines) if with_lines else (), conn.opened, conn.closed)
        group = self._groups[index]
        complete = (index < len(self._groups) - 1 or self._all_closed()
                    or time.monotonic() - group.last >= self.settle)
        return Flush(group.ts, tuple(group.lines) if with_lines else (), group.first, complete)

    def flushes_by_connection(self, *, complete_only: bool = True) -> list[Flush]:
        """Etsy's view: one flush per connection, in the order the connections were opened.

        A connection counts once it is open (its ``started`` is the accept time); it is complete
        once the sender has closed it.
        """
        return self.flushes("connection", complete_only=complete_only)

    def flushes_by_timestamp(self, *, complete_only: bool = True) -> list[Flush]:
        """tallyd's view: one flush per run of equal timestamps (split at pauses > ``gap``).

        Lines that are not ``name value ts`` join the current group. A group is complete when a
        later group has started, when every connection is closed, or when it has been quiet for
        ``settle`` seconds.
        """
        return self.flushes("timestamp", complete_only=complete_only)

    def flushes(self, grouping: Grouping, *, complete_only: bool = True) -> list[Flush]:
        with self._cond:
            result = [self._flush(grouping, i) for i in range(self._count(grouping))]
        return [f for f in result if f.complete or not complete_only]

    def started_count(self, grouping: Grouping) -> int:
        """How many flushes have begun arriving (complete or not)."""
        with self._cond:
            return self._count(grouping)

    def latest_start(self, grouping: Grouping) -> float | None:
        """When the most recent flush began arriving (time.monotonic()), if any."""
        with self._cond:
            count = self._count(grouping)
            if count == 0:
                return None
            return self._flush(grouping, count - 1, with_lines=False).started

    def flush_at(self, grouping: Grouping, index: int) -> Flush | None:
        """The flush with this index (complete or not), or None if it has not started."""
        with self._cond:
            if index >= self._count(grouping):
                return None
            return self._flush(grouping, index)

    # -- waiting --------------------------------------------------------------------------

    def wait_for_flushes(
        self,
        n: int,
        timeout: float,
        *,
        grouping: Grouping = "connection",
        started_only: bool = False,
    ) -> list[Flush]:
        """Block until at least ``n`` flushes exist (complete ones, unless ``started_only``).

        Returns all flushes of the view (complete ones only unless ``started_only``). Raises
        :class:`TimeoutError` with a summary of what did arrive.
        """
        deadline = time.monotonic() + timeout
        while True:
            flushes = self.flushes(grouping, complete_only=not started_only)
            if len(flushes) >= n:
                return flushes
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"sink {self.address[0]}:{self.address[1]}: wanted {n} "
                    f"{'started' if started_only else 'complete'} flushes (by {grouping}) "
                    f"within {timeout:.1f}s, have {len(flushes)}; "
                    f"{self.connection_count()} connection(s), {len(self.records())} line(s)"
                )
            # Wake up at least every `settle` seconds: quiet time completes a group.
            with self._cond:
                self._cond.wait(min(remaining, max(self.settle / 2, 0.01)))

    def wait_for_flush(self, grouping: Grouping, index: int, timeout: float) -> Flush:
        """Block until flush ``index`` is complete; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            flush = self.flush_at(grouping, index)
            if flush is not None and flush.complete:
                return flush
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"sink {self.address[0]}:{self.address[1]}: flush #{index} (by {grouping}) "
                    f"not complete within {timeout:.1f}s; {self.started_count(grouping)} started"
                )
            with self._cond:
                self._cond.wait(min(remaining, max(self.settle / 4, 0.005)))


def parse_line(line: str) -> tuple[str, str, str]:
    """Split ``name value ts`` into its three fields; raise ValueError for anything else.

    The name may contain blanks (tags are not sanitised with keyNameSanitize false).
    """
    parts = line.rsplit(" ", 2)
    if len(parts) != 3:
        raise ValueError(f"not a Graphite plaintext line: {line!r}")
    return parts[0], parts[1], parts[2]
