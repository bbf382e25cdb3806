"""The flush ticker: at every wall-clock multiple of the interval, swap the ledger and ship it.

Timing: flush *k* happens at the first wall-clock instant ``t`` with ``t % interval == 0``
after the previous one, and every line of it carries that instant as its timestamp. Several
aggregators (or workers) with the same interval therefore stamp one interval's points with
one timestamp, whatever moment they started.

Changes that must not split an interval (a new Carbon ring) wait for a flush boundary:
`Flusher.at_next_boundary` runs them right after a flush's output is handed to the
backends, inside the flush's lock.

Intake is never paused for long: `Accumulator.swap` is a few dict operations, and rendering
runs in chunks with a checkpoint between them, so the receive loops get the CPU every few
milliseconds while a large flush is being computed.

SHELL.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import attrs
import trio

from common.logging import log_event
from common.stats import Reading, numeric

from .backends import Backend, EtsyStatus
from .backends.render import GraphiteRenderer, Naming
from .ledger import Accumulator

LOGGER = logging.getLogger(__name__)


#: Called at a flush boundary with the flush's sequence number and timestamp.
BoundaryAction = Callable[[int, int], None]


class Coordinator(Protocol):
    """Keeps the workers of one aggregator in step at each flush (`aggregator.workers.exchange`)."""

    async def before_swap(self, sequence: int) -> None: ...

    def after_swap(self, sequence: int) -> None: ...

    async def num_stats(self, sequence: int, own: int) -> int | None: ...

    def rendered(self, sequence: int) -> None: ...


@attrs.frozen
class FlushStatistics:
    """What the last flush took (its render time is the next flush's
    ``graphiteStats.calculationtime``; the duration and sizes are logged)."""

    flushes: int
    last_flush_timestamp: int
    last_duration_ms: float
    last_render_ms: float
    last_lines: int
    last_names: int


def next_boundary(now: float, interval: float) -> float:
    """The first multiple of ``interval`` strictly after ``now``."""
    return (math.floor(now / interval) + 1) * interval


def flush_sequence(boundary: float, interval: float) -> int:
    """A flush's number: which multiple of the interval its boundary is."""
    return round(boundary / interval)


def flush_timestamp(boundary: float) -> int:
    """A flush's Graphite timestamp: its boundary in whole seconds."""
    return round(boundary)


def format_self_metrics(identity: str, readings: Sequence[Reading]) -> dict[str, float]:
    """tallyd's figures as flushed self-metrics: ``tallyd.<role>.<identity>.<rest>`` for
    every counter (a total since start) and level named ``<role>.<rest>``, under the
    renderer's internal namespace."""
    out: dict[str, float] = {}
    for name, value in numeric(readings).items():
        role, _, rest = name.partition(".")
        out[f"tallyd.{role}.{identity}.{rest}"] = value
    return out


def format_etsy_figures(statuses: Sequence[EtsyStatus]) -> dict[str, float]:
    """The Etsy backends' figures as they end every flush (``graphiteStats.flush_length``)."""
    return {f"{status.flush_name}.{name}": status.figures[name]
            for status in statuses for name in (status.flush_order or status.figures)}


def _no_readings() -> list[Reading]:
    return []


def _no_statuses() -> list[EtsyStatus]:
    return []


class Flusher:
    """Swaps, renders and ships one aggregator's data.

    Args:
        accumulator: the ledger owner.
        naming: the Graphite naming in force (`reconfigure` replaces it).
        backends: where every rendered chunk goes.
        identity: this aggregator's name in its self-metrics.
        self_metrics: whether each flush ends with tallyd's own figures.
        readings: every component's figures, read once per flush.
        etsy_statuses: the Etsy backend figures worker 0 appends to each flush.
    """

    def __init__(self, accumulator: Accumulator, naming: Naming,
                 backends: Sequence[Backend], interval: float, *, identity: str,
                 self_metrics: bool = True,
                 readings: Callable[[], list[Reading]] = _no_readings,
                 etsy_statuses: Callable[[], list[EtsyStatus]] = _no_statuses,
                 coordinator: Coordinator | None = None,
                 on_lines: Callable[[int], None] | None = None) -> None:
        self.accumulator = accumulator
        self.renderer = GraphiteRenderer(naming)
        self.backends = backends
        self.interval = interval
        self.identity = identity
        self.self_metrics = self_metrics
        self.readings = readings
        self.etsy_statuses = etsy_statuses
        self.coordinator = coordinator
        #: Told how many output lines each flush rendered (the accounting's points_flushed).
        self.on_lines = on_lines
        self.report_internal = accumulator.options.report_internal
        self._statistics = FlushStatistics(0, 0, 0.0, 0.0, 0, 0)
        self._lock = trio.Lock()
        self._at_boundary: dict[str, BoundaryAction] = {}

    def statistics(self) -> FlushStatistics:
        return self._statistics

    def reconfigure(self, naming: Naming, *, self_metrics: bool) -> None:
        """Apply reloaded settings from the next flush on."""
        self.renderer = GraphiteRenderer(naming)
        self.self_metrics = self_metrics

    def at_next_boundary(self, key: str, action: BoundaryAction) -> None:
        """Run ``action(sequence, timestamp)`` once, right after the next flush (or the one
        in progress) has handed all its output to the backends, before any later flush
        starts: what that flush carried was shipped under the old state, the next flush
        ships under the new one. A second action under the same ``key`` before then
        replaces the first (the latest reload wins)."""
        self._at_boundary[key] = action

    def _internal_values(self) -> dict[str, float]:
        values = format_etsy_figures(self.etsy_statuses()) if self.report_internal else {}
        if self.self_metrics:
            values.update(format_self_metrics(self.identity, self.readings()))
        return values

    def _ship(self, payload: bytes) -> None:
        for backend in self.backends:
            backend.offer(payload)

    async def flush(self, timestamp: int, *, sequence: int | None = None) -> None:
        """Flush once, stamped ``timestamp``. Not cancellable half-way: a flush that started
        always reaches the outputs.

        Args:
            sequence: the flush's number (its boundary divided by the interval), which the
                workers' barrier matches flushes by; sub-second intervals give several
                flushes one whole-second timestamp. Default: derived from the timestamp.
        """
        if sequence is None:
            sequence = flush_sequence(timestamp, self.interval)
        with trio.CancelScope(shield=True):
            async with self._lock:
                if self.coordinator is not None:
                    await self.coordinator.before_swap(sequence)
                # Levels (buffered lines, ...) are sampled before this flush is queued, so
                # they show the backlog, not the flush in progress.
                extra = self._internal_values()
                started = time.perf_counter()
                snapshot = self.accumulator.swap(timestamp, self.interval)
                if self.coordinator is not None:
                    self.coordinator.after_swap(sequence)
                swapped = time.perf_counter()
                num_stats: int | None = snapshot.key_count
                if self.coordinator is not None:
                    num_stats = await self.coordinator.num_stats(sequence, snapshot.key_count)
                lines = 0
                non_finite = self.renderer.non_finite
                for chunk in self.renderer.render_chunks(snapshot, num_stats=num_stats):
                    lines += chunk.count(b"\n")
                    self._ship(chunk)
                    await trio.lowlevel.checkpoint()
                if self.coordinator is not None:
                    self.coordinator.rendered(sequence)
                done = time.perf_counter()
                if self.renderer.non_finite > non_finite:
                    log_event(LOGGER, "flush_values_omitted", level=logging.WARNING,
                              reason="non_finite", count=self.renderer.non_finite - non_finite)
                render_ms = (done - swapped) * 1000
                internal: dict[str, float] = {}
                if self.report_internal:
                    internal["processing_time"] = round((done - started) * 1000)
                    previous = self._statistics.last_render_ms
                    internal["graphiteStats.calculationtime"] = round(previous)
                internal.update(extra)
                tail = self.renderer.render_internal(timestamp, internal)
                self._ship(tail)
                if self.on_lines is not None:
                    self.on_lines(lines + tail.count(b"\n"))
                stats = self._statistics = FlushStatistics(
                    flushes=self._statistics.flushes + 1, last_flush_timestamp=timestamp,
                    last_duration_ms=(time.perf_counter() - started) * 1000,
                    last_render_ms=render_ms, last_lines=lines + tail.count(b"\n"),
                    last_names=snapshot.key_count)
                log_event(LOGGER, "flush_completed", level=logging.DEBUG, timestamp=timestamp,
                          names=snapshot.key_count, lines=stats.last_lines,
                          duration_ms=f"{stats.last_duration_ms:.1f}")
                # The boundary: this flush is with the backends, the next has not begun.
                actions, self._at_boundary = self._at_boundary, {}
                for action in actions.values():
                    action(sequence, timestamp)

    async def run(self, *, wall_clock: Callable[[], float] = time.time) -> None:
        """Flush at every interval boundary until cancelled."""
        while True:
            boundary = next_boundary(wall_clock(), self.interval)
            # trio sleeps on the monotonic clock; re-check the wall clock on waking.
            while (left := boundary - wall_clock()) > 0:  # noqa: ASYNC110 (a deadline, not an event)
                await trio.sleep(left)
            await self.flush(flush_timestamp(boundary),
                             sequence=flush_sequence(boundary, self.interval))


#: Share of graceful_timeout the final flush may wait for its interval to end; the rest
#: is left for delivering it.
FINAL_FLUSH_WAIT_SHARE: Final = 0.75


def final_flush_plan(now: float, interval: float, graceful_timeout: float) -> tuple[int, float]:
    """When and with which timestamp a stopping aggregator flushes for the last time.

    Returns:
        ``(timestamp, seconds to wait)``. Normally the end of the interval in progress,
        waited for: Whisper refuses points stamped in the future, and stamping the interval's
        start would overwrite the previous flush's point. When the interval ends too late for
        the deadline (very long intervals), now, at once.
    """
    boundary = next_boundary(now, interval)
    if boundary - now <= graceful_timeout * FINAL_FLUSH_WAIT_SHARE:
        return flush_timestamp(boundary), boundary - now
    return int(now), 0.0
