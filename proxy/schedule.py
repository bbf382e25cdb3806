"""When a changed aggregator list takes effect, and what a proxy does around that instant.

A proxy's list decides which aggregator owns each name (H1 is modulo N), and an aggregator
writes, for every interval, what it received between two flushes. So a list may change only
at a flush boundary of the aggregators' interval, on every proxy at the same instant:
otherwise the interval in progress is split between two owners of a name and Graphite gets
two writers for one (path, interval).

The instant (`switch_instant`): ``aggregators_from`` rounded up to a multiple of
``flush_interval`` when it is given (every proxy given the same value computes the same
instant, whenever its reload happens), else the first multiple at least ``switch_margin``
after the reload (for one proxy, or the processes of one ``--processes`` proxy, whose
supervisor computes it once for all of them).

Around the instant (`SwitchSchedule`): from ``at - switch_guard`` the proxy stops sending and
holds what it receives (`HeldPackets`); at ``at`` it changes its list; at ``at +
switch_guard`` it routes what it held by the new list, then carries on. The guard before the
instant lets the last lines sent by the old list reach their aggregator before its flush at
the boundary; the guard after it keeps lines routed by the new list from reaching an
aggregator before its flush at the boundary has run (a busy host flushes a little late).

`plan_change` says which forwarders are kept (specs in both lists, by position), started
(new specs) and retired (specs gone).

Pure: times come in as arguments.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Final

import attrs

from common.errors import ConfigError
from common.stats import counter, level, text

from .membership import AggregatorSpec

ROUTING: Final = "routing"
HOLDING: Final = "holding"
SWITCHED: Final = "switched"
RELEASED: Final = "released"
#: Tolerance for float noise when a time is already a multiple of the interval.
_EPSILON: Final = 1e-9


def first_boundary_at_or_after(t: float, interval: float) -> float:
    """The first multiple of ``interval`` that is ``t`` or later."""
    return math.ceil(t / interval - _EPSILON) * interval


def switch_instant(now: float, *, interval: float, requested: float, margin: float,
                   guard: float, refuse_passed: bool = True) -> float:
    """The wall-clock instant a changed list takes effect (module docstring).

    Args:
        now: the reload's time (epoch seconds).
        interval: ``flush_interval``.
        requested: ``aggregators_from`` (0: not given).
        margin: ``switch_margin`` (used only when ``requested`` is 0).
        guard: ``switch_guard``: the hold must begin after ``now``.
        refuse_passed: False for a change a starting process was handed (its siblings
            switch at that instant, whatever the time it took to start): it is never
            refused, and holds or switches at once when its time has come.

    Raises:
        ConfigError: (key ``aggregators_from``) the requested instant's hold would have
            begun already: switching now would split the interval in progress.
    """
    if requested:
        at = first_boundary_at_or_after(requested, interval)
        if refuse_passed and at - guard <= now:
            raise ConfigError(
                f"{requested:g} (switch at {at:g}) has passed or is closer than switch_guard "
                f"({guard:g} s) at {now:.3f}: give a later time, or 0 for the next boundary",
                key="aggregators_from")
        return at
    return first_boundary_at_or_after(now + max(margin, guard), interval)


@attrs.frozen
class SwitchSchedule:
    """One scheduled change of the list: the instant and the hold around it."""

    at: float
    guard: float
    old_fingerprint: str
    new_fingerprint: str

    @property
    def hold_from(self) -> float:
        return self.at - self.guard

    @property
    def release_at(self) -> float:
        return self.at + self.guard

    def phase(self, now: float) -> str:
        """`ROUTING` (old list) before the hold, `HOLDING` until the instant, `SWITCHED`
        (new list, still holding) until the release, then `RELEASED`."""
        if now < self.hold_from:
            return ROUTING
        if now < self.at:
            return HOLDING
        if now < self.release_at:
            return SWITCHED
        return RELEASED


@attrs.frozen
class SwitchStatistics:
    """A proxy's list changes: the one pending, and how many were applied."""

    scheduled: str = text(help="the fingerprint of the list a reload scheduled (none: no "
                               "change pending; compare it across proxies too)")
    scheduled_at: float = level(help="when that list takes effect (unix time; 0: none)")
    switches: int = counter(help="list changes applied since start")
    held_packets: int = level(help="datagrams and stream blocks held around a change, "
                                   "waiting to be routed by the new list")
    held_lines: int = level(help="the lines of those (in /status: in lines_in and "
                                 "buffered_lines)")
    late_lines: int = counter(help="lines routed by an old list still queued for its "
                                   "aggregators at the instant (a backlog: they reach them "
                                   "after their flush, into the next interval)")
    hold_cuts: int = counter(help="holds ended early because the held bytes reached the cap "
                                  "(event=switch_hold_cut; then routed by the list in force)")


@attrs.frozen
class MembershipChange:
    """How two lists differ, by position: ``kept`` pairs (old index, new index) of specs in
    both, ``added`` new indexes, ``removed`` old indexes."""

    kept: tuple[tuple[int, int], ...]
    added: tuple[int, ...]
    removed: tuple[int, ...]


def plan_change(old: Sequence[AggregatorSpec], new: Sequence[AggregatorSpec]
                ) -> MembershipChange:
    """Match the specs of two lists (equal host, port and admin port: one forwarder)."""
    where = {spec: i for i, spec in enumerate(old)}
    kept = tuple((where[spec], j) for j, spec in enumerate(new) if spec in where)
    added = tuple(j for j, spec in enumerate(new) if spec not in where)
    staying = {i for i, _ in kept}
    removed = tuple(i for i in range(len(old)) if i not in staying)
    return MembershipChange(kept=kept, added=added, removed=removed)


def count_held_lines(blob: bytes) -> int:
    """The lines of a datagram or stream block as the router counts them (empty ones are
    no lines)."""
    parts = blob.split(b"\n")
    return len(parts) - parts.count(b"")


class HeldPackets:
    """What intake received during a switch's hold: datagrams and stream blocks, in order,
    routed only when the hold ends (then by the new list).

    Bounded: ``full`` once ``limit_bytes`` are held (the pipeline then ends the hold early
    rather than drop a line: ``event=switch_hold_cut``).
    """

    def __init__(self, limit_bytes: int = 2**62) -> None:
        self._packets: deque[bytes] = deque()
        self.limit_bytes = limit_bytes
        self.bytes = 0
        #: The lines of the packets that still wait (`count_held_lines`).
        self.lines = 0
        #: Every packet held so far (a counter; `len` is what still waits).
        self.total = 0

    def __len__(self) -> int:
        return len(self._packets)

    @property
    def full(self) -> bool:
        return self.bytes >= self.limit_bytes

    def extend(self, packets: Sequence[bytes]) -> None:
        self._packets.extend(packets)
        self.bytes += sum(map(len, packets))
        self.lines += count_held_lines(b"\n".join(packets))
        self.total += len(packets)

    def append(self, packet: bytes) -> None:
        self._packets.append(packet)
        self.bytes += len(packet)
        self.lines += count_held_lines(packet)
        self.total += 1

    def take(self, limit: int) -> list[bytes]:
        """The oldest ``limit`` packets (fewer when fewer wait), removed."""
        packets = self._packets
        out = [packets.popleft() for _ in range(min(limit, len(packets)))]
        self.bytes -= sum(map(len, out))
        self.lines -= count_held_lines(b"\n".join(out))
        return out

    def take_all(self) -> list[bytes]:
        """Every packet that waits, removed."""
        return self.take(len(self._packets))
