"""The aggregation ledger: what one worker accumulates between two flushes.

`Accumulator` owns the live `Ledger` and everything that outlives an interval (gauge values,
the names of idle counters, timers and sets, gauge TTLs). Intake calls `ingest` for each
packet (the per-line work is `aggregator.ingest`); the flusher calls `swap`, which installs
a fresh ledger in O(1)-ish time (a few C-level dict/set operations, no Python loop over
the names unless idle deletion needs one) and returns a `FlushSnapshot` of the old one. All
the expensive work (sorting timers, formatting lines) then runs on the snapshot while
intake goes on into the new ledger.

Reset rules at each flush, as Etsy statsd applies them:

* counters: zeroed (still reported, as 0) unless ``delete_counters``; even then a counter
  whose name contains ``packets_received``, ``metrics_received`` or ``bad_lines_seen`` is
  only zeroed;
* timers and sets: emptied (an idle timer reports count 0, an idle set count 0) unless
  ``delete_timers`` / ``delete_sets``;
* gauges: kept forever, or, with ``delete_gauges``, reported for ``gauges_max_ttl``
  flushes after their last update and then forgotten.

Pure: no I/O, no clock (the flush timestamp comes in as an argument).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from common.errors import ParseError
from common.protocol import (
    DOGSTATSD_EVENT,
    DOGSTATSD_SERVICE_CHECK,
    UNSUPPORTED_REASONS,
    LineParser,
)
from common.stats import counter

from .ingest import OVERFLOW, ingest_line, ingest_packet

#: Bad lines kept per interval for the shell to log; the rest are only counted.
MAX_KEPT_ERRORS: Final = 20

_KEEP_ON_DELETE: Final = (b"packets_received", b"metrics_received", b"bad_lines_seen")

#: Every reason a line is refused for other than being bad (Etsy's ``bad_lines_seen``).
DROP_REASONS: Final = (OVERFLOW, DOGSTATSD_EVENT, DOGSTATSD_SERVICE_CHECK)
#: The reason of `Accumulator.refused_lines` for a line refused as malformed.
BAD_LINE: Final = "bad_line"


@attrs.frozen
class LedgerOptions:
    """The parts of the aggregator's configuration the ledger needs."""

    prefix_stats: str = "statsd"
    key_name_sanitize: bool = True
    delete_counters: bool = False
    delete_timers: bool = False
    delete_sets: bool = False
    delete_gauges: bool = False
    gauges_max_ttl: int = 1
    max_line_bytes: int = 65_536
    #: Whether this ledger reports Etsy's internal metrics (bad_lines_seen,
    #: packets_received, metrics_received, timestamp_lag). With several workers only
    #: worker 0 does, with the other workers' counts added in (`add_intake`).
    report_internal: bool = True


class Ledger:
    """One interval's counters, timers and sets (gauges live on the `Accumulator`)."""

    __slots__ = ("bad_lines", "counters", "gauges_touched", "lines", "packets", "sets",
                 "timer_counts", "timers")

    def __init__(self) -> None:
        self.counters: dict[bytes, float] = {}
        self.timers: dict[bytes, array[float]] = {}
        self.timer_counts: dict[bytes, float] = {}
        self.sets: dict[bytes, set[bytes]] = {}
        self.gauges_touched: set[bytes] = set()
        self.packets = 0
        self.lines = 0
        self.bad_lines = 0


@attrs.frozen
class FlushSnapshot:
    """Everything one flush reports, detached from the live state.

    ``idle_timers`` and ``idle_sets`` are known names that got no sample this interval.
    """

    timestamp: int
    interval: float
    counters: dict[bytes, float]
    timers: dict[bytes, array[float]]
    timer_counts: dict[bytes, float]
    idle_timers: frozenset[bytes]
    sets: dict[bytes, set[bytes]]
    idle_sets: frozenset[bytes]
    gauges: dict[bytes, float]

    @property
    def key_count(self) -> int:
        """Etsy's ``numStats``: counters + timers (idle ones too) + gauges + sets."""
        return (len(self.counters) + len(self.timers) + len(self.idle_timers)
                + len(self.gauges) + len(self.sets) + len(self.idle_sets))


@attrs.frozen
class LedgerStatistics:
    """A snapshot of what the accumulator refused after parsing, since start."""

    dropped_lines: dict[str, int] = counter(
        help="lines refused after parsing, by reason (overflow: an aggregate would not be "
             "finite; dogstatsd_event, dogstatsd_service_check: not metrics)")
    bad_lines: int = counter(help="lines refused as malformed (Etsy's bad_lines_seen)")
    received_lines: int = counter(
        help="lines received on this process's sockets (refused ones included, those "
             "authentication refused aside; with several workers, forwarded ones too)")
    refused_lines: dict[str, int] = counter(
        help="lines none of whose segments reached the ledger, by the reason of their "
             "first refusal (bad_line or a dropped_lines reason); the loss accounting's "
             "drops, where bad_lines and dropped_lines count segments")


class Accumulator:
    """The aggregation state machine of one worker.

    Args:
        options: reset rules and internal metric names.
    """

    def __init__(self, options: LedgerOptions) -> None:
        self.options = options
        self.parser = LineParser(
            sanitize=options.key_name_sanitize, max_line_bytes=options.max_line_bytes
        )
        self.ledger = Ledger()
        self.gauges: dict[bytes, float] = {}
        self.gauge_ttl: dict[bytes, int] = {}
        self.known_timers: set[bytes] = set()
        self.known_sets: set[bytes] = set()
        self.recent_errors: list[ParseError] = []
        self.bad_lines_total = 0
        #: Lines received on this process's own sockets, since start (`count_received`).
        self.received_lines_total = 0
        #: Lines (or segments) refused for one of `DROP_REASONS`, since start.
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        #: Whole lines refused (no segment aggregated), by reason, since start: a line
        #: with one good segment of three reached the ledger, so it is not here.
        self.refused_lines: dict[str, int] = dict.fromkeys((BAD_LINE, *DROP_REASONS), 0)
        #: The reason of the first refusal of the line `ingest_checked` is on ("": none).
        self._refused_as = ""
        #: Epoch seconds of the last message received (set by the shell; None: none yet).
        self.last_message_time: float | None = None
        self.last_timestamp: int | None = None
        prefix = options.prefix_stats.encode()
        self.internal_keys = (
            prefix + b".bad_lines_seen",
            prefix + b".packets_received",
            prefix + b".metrics_received",
        )
        self.lag_key = prefix + b".timestamp_lag"
        if options.report_internal:
            for key in self.internal_keys:
                self.ledger.counters[key] = 0.0

    def ingest(self, packet: bytes, *, intake: bool = True, packets: int = 1) -> None:
        """Aggregate one packet (a datagram, or a block of complete lines from a stream).

        Plain lines take the inline path, the others the checked one (`aggregator.ingest`).

        Args:
            intake: count the packet and its lines as received here (``packets_received``,
                ``metrics_received``); false for lines another worker received and
                forwarded, which that worker already counted.
            packets: how many datagrams ``packet`` joins (intake hands over bursts).
        """
        ledger = self.ledger
        lines = ingest_packet(packet, ledger, self.gauges, self.parser, self._ingest_line)
        if intake:
            ledger.packets += packets
            ledger.lines += lines
            self.received_lines_total += lines

    def ingest_sharded(self, packet: bytes, foreign: Mapping[bytes, list[bytes]],
                       route: Callable[[bytes], None], *, packets: int = 1) -> int:
        """`ingest` for a worker of several, in one pass: its own lines are aggregated,
        the others appended to their owner's list (see `aggregator.ingest.ingest_packet`);
        the packet and all its lines count as received here.

        Args:
            foreign: raw names of other workers' lines -> the list their lines go to.
            route: takes each line the inline path does not (it aggregates the line
                with `ingest_checked` if it is this worker's, else appends it).

        Returns:
            The packet's number of lines, forwarded ones included.
        """
        ledger = self.ledger
        lines = ingest_packet(packet, ledger, self.gauges, self.parser, route, foreign)
        ledger.packets += packets
        ledger.lines += lines
        self.received_lines_total += lines
        return lines

    def count_received(self, lines: int) -> None:
        """Count lines received on this process's sockets that reach the ledger by another
        way than `ingest` (a worker's packet split while its barrier holds lines)."""
        self.received_lines_total += lines

    def ingest_checked(self, line: bytes) -> None:
        """Aggregate one line by the general path (`ingest_line`), counting what it
        refuses here (segments, and the line in `refused_lines` if none of it counted)."""
        self._refused_as = ""
        if not ingest_line(line, self.ledger, self.gauges, self.parser, self._refuse):
            reason = self._refused_as
            if reason:
                self.refused_lines[reason] += 1

    _ingest_line = ingest_checked

    def _refuse(self, errors: list[ParseError]) -> None:
        """Count refused segments: bad lines, or one of `DROP_REASONS`; keep some to log.

        DogStatsD events and service checks are ordinary traffic for such clients: only
        the first of each is kept for the log, the counter says the rest.
        """
        reason = errors[0].reason
        dropped = reason in UNSUPPORTED_REASONS or reason == OVERFLOW
        if not self._refused_as:
            self._refused_as = reason if dropped else BAD_LINE
        if dropped:  # always one error
            seen = self.dropped[reason]
            self.dropped[reason] = seen + 1
            if seen and reason != OVERFLOW:
                return
        else:
            self.ledger.bad_lines += len(errors)
            self.bad_lines_total += len(errors)
        if len(self.recent_errors) < MAX_KEPT_ERRORS:
            self.recent_errors.extend(errors[: MAX_KEPT_ERRORS - len(self.recent_errors)])

    def reconfigure(self, options: LedgerOptions) -> None:
        """Apply reloaded options; whether this worker reports Etsy's internal metrics
        stays as it was (it is decided by the worker's place, not by the file)."""
        self.options = attrs.evolve(options, report_internal=self.options.report_internal)

    def statistics(self) -> LedgerStatistics:
        return LedgerStatistics(dict(self.dropped), self.bad_lines_total,
                                self.received_lines_total, dict(self.refused_lines))

    def note_arrival(self, now: float) -> None:
        """Remember when the last message arrived (epoch seconds; Etsy's
        ``messages.last_msg_seen`` counts from it)."""
        self.last_message_time = now

    def refuse_lines(self, lines: int) -> None:
        """Count lines the intake refused before parsing (too long, cut): they were
        received, and they are bad."""
        self.add_intake(0, lines, lines)
        self.bad_lines_total += lines
        self.refused_lines[BAD_LINE] += lines
        self.received_lines_total += lines

    def add_intake(self, packets: int, lines: int, bad_lines: int) -> None:
        """Count intake that happened elsewhere (another worker's share) in this interval."""
        ledger = self.ledger
        ledger.packets += packets
        ledger.lines += lines
        ledger.bad_lines += bad_lines

    def live_counters(self) -> dict[bytes, float]:
        """The interval's counters so far, Etsy's internal ones included (the mgmt
        ``counters`` dump; with several workers, each shows the intake it has not handed
        over yet)."""
        ledger = self.ledger
        counters = dict(ledger.counters)
        for key, count in zip(self.internal_keys,
                              (ledger.bad_lines, ledger.packets, ledger.lines), strict=True):
            counters[key] = counters.get(key, 0.0) + count
        return counters

    def take_intake(self) -> tuple[int, int, int]:
        """Hand over the ``(packets, lines, bad_lines)`` counted so far and start again at 0.

        A worker that does not report the internal metrics sends these to the one that
        does; what it counts afterwards goes with its next hand-over, never lost.
        """
        ledger = self.ledger
        counts = ledger.packets, ledger.lines, ledger.bad_lines
        ledger.packets = ledger.lines = ledger.bad_lines = 0
        return counts

    def take_errors(self) -> list[ParseError]:
        """Hand the kept bad lines to the caller (for rate-limited logging)."""
        errors, self.recent_errors = self.recent_errors, []
        return errors

    def swap(self, timestamp: int, interval: float) -> FlushSnapshot:
        """End the interval: detach its data as a snapshot and apply the reset rules.

        Args:
            timestamp: the flush's timestamp (epoch seconds), shared by all its lines.
            interval: the flush interval in seconds.
        """
        opts = self.options
        old, new = self.ledger, Ledger()
        counters = old.counters
        if opts.report_internal:
            for key, count in zip(self.internal_keys, (old.bad_lines, old.packets, old.lines),
                                  strict=True):
                counters[key] = counters.get(key, 0.0) + count
            if self.last_timestamp is not None:
                self.gauges[self.lag_key] = timestamp - self.last_timestamp - interval
        else:
            # Not reported here: kept until `take_intake` hands them over.
            new.packets, new.lines, new.bad_lines = old.packets, old.lines, old.bad_lines
        self.last_timestamp = timestamp

        if opts.delete_counters:
            new.counters = dict.fromkeys(
                (k for k in counters if any(mark in k for mark in _KEEP_ON_DELETE)), 0.0
            )
        else:
            new.counters = dict.fromkeys(counters, 0.0)
        if opts.delete_timers:
            idle_timers: frozenset[bytes] = frozenset()
        else:
            idle_timers = frozenset(self.known_timers.difference(old.timers))
            self.known_timers.update(old.timers)
        if opts.delete_sets:
            idle_sets: frozenset[bytes] = frozenset()
        else:
            idle_sets = frozenset(self.known_sets.difference(old.sets))
            self.known_sets.update(old.sets)

        snapshot = FlushSnapshot(
            timestamp=timestamp,
            interval=interval,
            counters=counters,
            timers=old.timers,
            timer_counts=old.timer_counts,
            idle_timers=idle_timers,
            sets=old.sets,
            idle_sets=idle_sets,
            gauges=dict(self.gauges),
        )
        if opts.delete_gauges:
            ttl = self.gauge_ttl
            ttl.update(dict.fromkeys(old.gauges_touched, opts.gauges_max_ttl))
            for key in list(ttl):
                left = ttl[key] - 1
                if left < 1:
                    del ttl[key]
                    self.gauges.pop(key, None)
                else:
                    ttl[key] = left
        self.ledger = new
        return snapshot

    def delete(self, kind: str, keys: list[bytes]) -> list[bytes]:
        """Forget live names (the mgmt ``delcounters`` family).

        Args:
            kind: ``counters``, ``timers`` or ``gauges``.
            keys: exact names, or a prefix ending in ``.*`` (every name under it).

        Returns:
            The names deleted.
        """
        if kind == "counters":
            stores: list[Any] = [self.ledger.counters]
        elif kind == "timers":
            stores = [self.ledger.timers, self.ledger.timer_counts, self.known_timers]
        else:
            stores = [self.gauges, self.gauge_ttl]
        primary = stores[0]
        deleted: list[bytes] = []
        for pattern in keys:
            matches = [pattern] if pattern in primary else []
            if kind == "timers" and pattern in self.known_timers and not matches:
                matches = [pattern]
            if pattern.endswith(b".*"):
                stem = pattern[:-1]
                pool = set(primary) | (self.known_timers if kind == "timers" else set())
                matches += [k for k in pool if k.startswith(stem) and k != pattern]
            for key in matches:
                for store in stores:
                    if isinstance(store, set):
                        store.discard(key)
                    else:
                        store.pop(key, None)
                deleted.append(key)
        return deleted
