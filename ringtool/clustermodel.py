"""The values of the cluster report (`ringtool.cluster`): the answers as read, each daemon
as the report sees it, and what the report found. `ringtool.clusterstatus` reads the
/status documents into them.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from common.admin.status import Member

#: One member of a daemon's /status (a proxy's aggregator, an aggregator's Carbon node),
#: read back into the class that wrote it.
MemberView = Member

PROXY: Final = "proxy"
AGGREGATOR: Final = "aggregator"
CARBON: Final = "carbon"
#: The drop reason of datagrams the kernel dropped (a count of datagrams, not lines).
KERNEL_OVERFLOW: Final = "kernel_overflow"
#: The state of a member a reload retired (its counts stay part of the totals).
RETIRED: Final = "retired"
#: The finding kinds that are problems (exit status 1). ``partial``: an aggregator answered
#: without some of its workers (their counts are missing from its totals).
PROBLEMS: Final = frozenset({"lost", "unreachable", "diverged", "bad_status", "partial"})
#: How an aggregator's /status names a worker that did not answer (``not_ready``).
_WORKER_UNREACHABLE: Final = re.compile(r"worker_(\d+)_unreachable")


@attrs.frozen
class StatusAnswer:
    """One daemon's answer as read: its URL, the tier it was listed in, its position in
    that list, and the parsed JSON document or why there is none."""

    url: str
    tier: str
    position: int
    document: Any = None
    error: str | None = None


@attrs.frozen
class ClusterSample:
    """Every answer of one reading, when it was taken (epoch seconds), and Carbon's own
    count of the points it accepted per agent (None: not asked, or ``carbon_error``)."""

    taken_at: float
    answers: tuple[StatusAnswer, ...]
    carbon_accepted: Mapping[str, int] | None = None
    carbon_error: str | None = None
    carbon_since: float | None = None


@attrs.frozen
class Counts:
    """A daemon's ``totals`` (counters; ``buffered_lines`` and ``points_buffered`` are
    levels)."""

    lines_in: int = 0
    lines_out: int = 0
    buffered_lines: int = 0
    dropped_lines: Mapping[str, int] = attrs.Factory(dict)
    points_flushed: int = 0
    points_sent: int = 0
    points_buffered: int = 0
    points_dropped: Mapping[str, int] = attrs.Factory(dict)
    self_lines: int = 0

    def as_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["dropped_lines"] = dict(self.dropped_lines)
        out["points_dropped"] = dict(self.points_dropped)
        return out


LEVELS: Final = ("buffered_lines", "points_buffered")


def add_counts(parts: Iterable[Counts]) -> Counts:
    """Several daemons' counts added up."""
    total: dict[str, Any] = {}
    for part in parts:
        for field in attrs.fields(Counts):
            value = getattr(part, field.name)
            if isinstance(value, Mapping):
                into = total.setdefault(field.name, {})
                for key, n in value.items():
                    into[key] = into.get(key, 0) + n
            else:
                total[field.name] = total.get(field.name, 0) + value
    return Counts(**total)


@attrs.frozen
class DaemonView:
    """One daemon as the report sees it. Unreachable (or a bad document): ``reachable``
    False, ``error`` says why, and the rest is empty.

    ``windowed``: its counters are differences over a window; ``restarted``: with a window,
    the daemon's process changed since the first reading (its counters then count from its
    start, not from the window's)."""

    url: str
    tier: str
    position: int
    reachable: bool
    error: str | None = None
    error_kind: str = ""
    role: str = ""
    identity: str = ""
    version: str = ""
    pid: int | None = None
    started: float | None = None
    uptime_seconds: float | None = None
    health: str = ""
    ready: bool = False
    not_ready: tuple[str, ...] = ()
    flush_interval: float | None = None
    membership: str = ""
    config: str = ""
    workers: int = 1
    totals: Counts = attrs.Factory(Counts)
    rates: Mapping[str, Any] = attrs.Factory(dict)
    members: tuple[MemberView, ...] = ()
    restarted: bool = False
    windowed: bool = False

    @property
    def unreachable_workers(self) -> tuple[int, ...]:
        """The workers an aggregator left out of its totals (``worker_<i>_unreachable`` in
        ``not_ready``): its document is partial."""
        found = (_WORKER_UNREACHABLE.fullmatch(r) for r in self.not_ready)
        return tuple(int(m.group(1)) for m in found if m is not None)

    @property
    def name(self) -> str:
        """The identity and URL (for messages)."""
        return f"{self.identity} ({self.url})" if self.identity else self.url

    def as_json(self) -> dict[str, Any]:
        out = attrs.asdict(self, recurse=False)
        out["not_ready"] = list(self.not_ready)
        out["totals"] = self.totals.as_json()
        out["rates"] = dict(self.rates)
        out["members"] = [m.as_json() for m in self.members]
        out["name"] = self.name
        return out


@attrs.frozen
class TierSummary:
    """A tier's daemons added up: their totals, and their rates over their last completed
    interval (per second)."""

    tier: str
    daemons: int
    reachable: int
    totals: Counts
    lines_in_per_second: float = 0.0
    lines_out_per_second: float = 0.0
    dropped_per_second: Mapping[str, float] = attrs.Factory(dict)

    def as_json(self) -> dict[str, Any]:
        out = attrs.asdict(self, recurse=False)
        out["totals"] = self.totals.as_json()
        out["dropped_per_second"] = dict(self.dropped_per_second)
        return out


@attrs.frozen
class Edge:
    """One daemon -> member link: ``kind`` ``aggregator`` (a proxy's) or ``carbon`` (an
    aggregator's); ``sent``, ``buffered``, ``dropped`` are lines (points for Carbon)."""

    source: str
    source_name: str
    kind: str
    target_index: int
    target: str
    address: str
    state: str
    reason: str
    sent: int
    buffered: int
    buffer_capacity: int | None
    dropped: dict[str, int]


@attrs.frozen
class AggregatorIntake:
    """One aggregator (the proxies' member ``position``) from both sides.

    ``difference`` = ``sent`` - ``received``: lines the proxies handed to the kernel for it
    that it did not count (None when it could not be read); negative when it received lines
    from elsewhere (clients sending to it directly, a proxy restarted since).
    """

    position: int
    url: str | None
    name: str
    identity: str
    sent: int
    sent_by: tuple[tuple[str, int], ...]
    received: int | None
    difference: int | None
    dropped_at_proxies: Mapping[str, int]
    dropped_by: tuple[tuple[str, str, int], ...]
    buffered_at_proxies: int
    kernel_overflow: int
    states: tuple[tuple[str, str, str], ...]
    #: Its workers that did not answer: ``received`` lacks their counts (no loss is told).
    unreachable_workers: tuple[int, ...] = ()

    def as_json(self) -> dict[str, Any]:
        out = attrs.asdict(self, recurse=False)
        out["dropped_at_proxies"] = dict(self.dropped_at_proxies)
        out["sent_by"] = [{"proxy": p, "lines": n} for p, n in self.sent_by]
        out["dropped_by"] = [{"proxy": p, "reason": r, "lines": n}
                             for p, r, n in self.dropped_by]
        out["states"] = [{"proxy": p, "state": s, "reason": r} for p, s, r in self.states]
        out["unreachable_workers"] = list(self.unreachable_workers)
        return out


@attrs.frozen
class CarbonNodeView:
    """One Carbon node from the aggregators' side (points)."""

    name: str
    address: str
    points_sent: int
    points_buffered: int
    points_dropped: Mapping[str, int]
    sent_by: tuple[tuple[str, int], ...]
    down_at: tuple[tuple[str, str], ...]

    def as_json(self, accepted: Mapping[str, int] | None = None) -> dict[str, Any]:
        del accepted  # Carbon's agents are named by host, not by node: see carbon_accepted
        return {"name": self.name, "address": self.address, "points_sent": self.points_sent,
                "points_buffered": self.points_buffered,
                "points_dropped": dict(self.points_dropped),
                "sent_by": [{"aggregator": a, "points": n} for a, n in self.sent_by],
                "down_at": [{"aggregator": a, "reason": r} for a, r in self.down_at]}


@attrs.frozen
class Finding:
    """One thing the report says: ``kind`` (`PROBLEMS` are problems), the ``tier``
    (``proxy``, ``aggregator``, ``between`` or ``carbon``), ``where`` in words, the
    ``reason`` (a drop reason, ``not_received``, ``membership``...), ``count`` of
    ``unit`` (lines, points, datagrams) when there is one, the ``daemon``'s URL and the
    ``member`` concerned."""

    kind: str
    tier: str
    where: str
    reason: str
    count: int | None = None
    unit: str | None = None
    daemon: str | None = None
    member: str | None = None
    detail: str = ""


@attrs.frozen
class ClusterReport:
    """What `ringtool.cluster.build_report` found (its module docstring)."""

    sample: ClusterSample
    window_seconds: float | None
    daemons: tuple[DaemonView, ...]
    tiers: Mapping[str, TierSummary]
    edges: tuple[Edge, ...]
    intake: tuple[AggregatorIntake, ...]
    carbon_nodes: tuple[CarbonNodeView, ...]
    fingerprints: Mapping[str, Mapping[str, list[str]]]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not any(f.kind in PROBLEMS for f in self.findings)

    @property
    def exit_status(self) -> int:
        return 0 if self.ok else 1
