"""Turns a `FlushSnapshot` into Graphite plaintext lines, named exactly as Etsy statsd names them.

Names (``S`` is ``"." + global_suffix`` or nothing; ``P`` is ``prefix_stats``; the suffix
goes after the name and before any ``;tag=value`` part):

==============  =================================  =======================================
what            legacy namespace (default)         ``legacy_namespace = false``
==============  =================================  =======================================
counter rate    ``stats.<key>S``                   ``<gp>.<pc>.<key>.rateS``
counter count   ``stats_counts.<key>S``            ``<gp>.<pc>.<key>.countS``
timer stat      ``stats.timers.<key>.<stat>S``     ``<gp>.<pt>.<key>.<stat>S``
gauge           ``stats.gauges.<key>S``            ``<gp>.<pg>.<key>S``
set size        ``stats.sets.<key>.countS``        ``<gp>.<ps>.<key>.countS``
numStats        ``P.numStatsS``                    ``<gp>.P.numStatsS``
internal        ``stats.P.<x>S``                   ``<gp>.P.<x>S``
==============  =================================  =======================================

``<gp> <pc> <pt> <pg> <ps>`` are ``global_prefix`` and the four type prefixes; an empty one
is left out (no empty path component). The legacy namespace ignores them all.

Values are printed as JavaScript prints numbers (`common.jsnum`). Every line of one flush
carries the flush's timestamp. No non-finite value is ever written: the ledger refuses the
lines that would make a counter or gauge non-finite, `timer_stats` never returns one, and a
non-finite value that got past them anyway is left out and counted (`non_finite`).

Rendering is split into chunks (`render_chunks`) so the shell can let intake run between
them: a flush of 100k names never holds the event loop for its whole duration.

Pure: no I/O, no clock. Durations measured by the shell come in as arguments.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Final

import attrs

from common.jsnum import format_number_bytes as fmt
from common.protocol import sanitize_key

from ..ledger import FlushSnapshot
from ..timers import Bound, bins_for, idle_timer_stats, keeps_stat, timer_stats

#: Names rendered per chunk: about 5-10 ms of work for counters, less for timers.
DEFAULT_CHUNK_NAMES: Final = 2_000


@attrs.frozen
class Naming:
    """How output paths are built (the Graphite namespace options) and what is computed."""

    legacy_namespace: bool = True
    global_prefix: str = "stats"
    prefix_counter: str = "counters"
    prefix_timer: str = "timers"
    prefix_gauge: str = "gauges"
    prefix_set: str = "sets"
    global_suffix: str | None = None
    prefix_stats: str = "statsd"
    flush_counts: bool = True
    key_name_sanitize: bool = True
    percent_threshold: tuple[float, ...] = (90.0,)
    histogram: tuple[tuple[str, tuple[Bound, ...]], ...] = ()
    calculated_timer_metrics: frozenset[str] | None = None


def _namespace(*parts: str) -> bytes:
    kept = [p for p in parts if p]
    return (".".join(kept) + ".").encode() if kept else b""


class GraphiteRenderer:
    """Renders snapshots for one `Naming`; precomputes every constant part of the names."""

    def __init__(self, naming: Naming, *, chunk_names: int = DEFAULT_CHUNK_NAMES) -> None:
        self.naming = naming
        self.chunk_names = chunk_names
        n = naming
        self.suffix = b"." + n.global_suffix.encode() if n.global_suffix is not None else b""
        stats = n.prefix_stats.encode()
        if n.legacy_namespace:
            self.counter_ns = b"stats."
            self.timer_ns = b"stats.timers."
            self.gauge_ns = b"stats.gauges."
            self.set_ns = b"stats.sets."
            self.num_stats = stats + b".numStats"
            self.internal_ns = b"stats." + stats + b"."
        else:
            self.counter_ns = _namespace(n.global_prefix, n.prefix_counter)
            self.timer_ns = _namespace(n.global_prefix, n.prefix_timer)
            self.gauge_ns = _namespace(n.global_prefix, n.prefix_gauge)
            self.set_ns = _namespace(n.global_prefix, n.prefix_set)
            self.internal_ns = _namespace(n.global_prefix) + stats + b"."
            self.num_stats = self.internal_ns + b"numStats"
        self._stat_names: dict[str, bytes | None] = {}
        #: Values left out because they were not finite, since start (should stay 0).
        self.non_finite = 0

    def _split(self, key: bytes) -> tuple[bytes, bytes]:
        name, sep, tags = key.partition(b";")
        if not self.naming.key_name_sanitize:
            name = sanitize_key(name)
        return name, sep + tags

    def _stat(self, stat: str) -> bytes | None:
        """``b"." + stat`` if the statistic is selected, else None (cached)."""
        try:
            return self._stat_names[stat]
        except KeyError:
            family = "histogram" if stat.startswith("histogram.") else stat
            keep = keeps_stat(family, self.naming.calculated_timer_metrics)
            self._stat_names[stat] = name = b"." + stat.encode() if keep else None
            return name

    def render_chunks(self, snap: FlushSnapshot, *, num_stats: int | None = None
                      ) -> Iterator[bytes]:
        """Yield the flush's data lines in chunks of at most ``chunk_names`` names.

        Args:
            num_stats: the ``numStats`` value to report (Etsy: the snapshot's name count;
                with several workers, worker 0 reports all workers' total), or None to
                leave the line out (the other workers). `render_internal` adds the rest.
        """
        tail = b" " + str(snap.timestamp).encode() + b"\n"
        sfx = self.suffix
        chunk: list[bytes] = []
        names = 0
        limit = self.chunk_names
        naming = self.naming
        split = self._split

        interval = snap.interval
        c_ns = self.counter_ns
        if naming.legacy_namespace:
            rate_pre, rate_post = c_ns, b""
            count_pre, count_post = b"stats_counts.", b""
        else:
            rate_pre, rate_post = c_ns, b".rate"
            count_pre, count_post = c_ns, b".count"
        for key, value in snap.counters.items():
            rate = value / interval
            if rate - rate != 0.0:  # inf or nan: neither line is written
                self.non_finite += 1
                continue
            name, tags = split(key)
            chunk.append(rate_pre + name + rate_post + sfx + tags + b" "
                         + fmt(rate) + tail)
            if naming.flush_counts:
                chunk.append(count_pre + name + count_post + sfx + tags + b" " + fmt(value) + tail)
            names += 1
            if names >= limit:
                yield b"".join(chunk)
                chunk, names = [], 0

        percentiles = naming.percent_threshold
        histograms = naming.histogram
        stat = self._stat
        t_ns = self.timer_ns
        timer_items: Iterator[tuple[bytes, Sequence[float] | None]] = iter(
            [*snap.timers.items(), *((k, None) for k in snap.idle_timers)]
        )
        for key, values in timer_items:
            name, tags = split(key)
            if values:
                stats = timer_stats(values, snap.timer_counts[key], interval, percentiles,
                                    bins_for(key, histograms) if histograms else ())
            else:
                stats = idle_timer_stats()
            head = t_ns + name
            for stat_name, value in stats:
                dotted = stat(stat_name)
                if dotted is not None:
                    chunk.append(head + dotted + sfx + tags + b" " + fmt(value) + tail)
            names += 1
            if names >= limit:
                yield b"".join(chunk)
                chunk, names = [], 0

        g_ns = self.gauge_ns
        for key, value in snap.gauges.items():
            if value - value != 0.0:
                self.non_finite += 1
                continue
            name, tags = split(key)
            chunk.append(g_ns + name + sfx + tags + b" " + fmt(value) + tail)
            names += 1
            if names >= limit:
                yield b"".join(chunk)
                chunk, names = [], 0

        s_ns = self.set_ns
        for key, members in [*snap.sets.items(), *((k, ()) for k in snap.idle_sets)]:
            name, tags = split(key)
            chunk.append(s_ns + name + b".count" + sfx + tags + b" "
                         + str(len(members)).encode() + tail)
            names += 1
            if names >= limit:
                yield b"".join(chunk)
                chunk, names = [], 0

        if num_stats is not None:
            chunk.append(self.num_stats + sfx + b" " + str(num_stats).encode() + tail)
        if chunk:
            yield b"".join(chunk)

    def render_internal(self, timestamp: int, values: Mapping[str, float]) -> bytes:
        """Lines for tallyd's own timing metrics, under ``stats.<prefix_stats>.``.

        ``values`` maps names such as ``processing_time`` or
        ``graphiteStats.flush_length`` to numbers.
        """
        tail = b" " + str(timestamp).encode() + b"\n"
        return b"".join(
            self.internal_ns + name.encode() + self.suffix + b" " + fmt(value) + tail
            for name, value in values.items() if value - value == 0.0
        )
