"""The values of the cluster report (`ringtool.cluster`), and reading one /status document.

A /status document (docs/admin.md, "GET /status") is read defensively: keys this reader does
not know are ignored, a missing counter is 0, and a document that is not an object, has
another ``schema`` or a key of the wrong type makes that daemon a ``bad_status`` (named in
the report, never a crash).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

PROXY: Final = "proxy"
AGGREGATOR: Final = "aggregator"
CARBON: Final = "carbon"
#: The /status schema this reader understands.
STATUS_SCHEMA: Final = 1
#: The drop reason of datagrams the kernel dropped (a count of datagrams, not lines).
KERNEL_OVERFLOW: Final = "kernel_overflow"
#: The finding kinds that are problems (exit status 1).
PROBLEMS: Final = frozenset({"lost", "unreachable", "diverged", "bad_status"})


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


def _minus(now: Mapping[str, int], then: Mapping[str, int]) -> dict[str, int]:
    return {key: value - then.get(key, 0) for key, value in now.items()}


def subtract_counts(now: Counts, then: Counts) -> Counts:
    """The counters' growth from ``then`` to ``now``; levels stay ``now``'s."""
    changes: dict[str, Any] = {}
    for field in attrs.fields(Counts):
        a, b = getattr(now, field.name), getattr(then, field.name)
        if field.name in LEVELS:
            changes[field.name] = a
        elif isinstance(a, Mapping):
            changes[field.name] = _minus(a, b)
        else:
            changes[field.name] = a - b
    return Counts(**changes)


@attrs.frozen
class MemberView:
    """One member of a daemon's /status: a proxy's aggregator, an aggregator's Carbon
    node."""

    kind: str
    index: int
    name: str
    address: str = ""
    state: str = "up"
    reason: str = ""
    sent_lines: int = 0
    buffered_lines: int = 0
    buffer_capacity_lines: int | None = None
    dropped_lines: Mapping[str, int] = attrs.Factory(dict)

    def as_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["dropped_lines"] = dict(self.dropped_lines)
        return out


def subtract_member(now: MemberView, then: MemberView | None) -> MemberView:
    if then is None:
        return now
    return attrs.evolve(now, sent_lines=now.sent_lines - then.sent_lines,
                        dropped_lines=_minus(now.dropped_lines, then.dropped_lines))


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


class BadStatus(ValueError):
    """A /status document this reader cannot use."""


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadStatus(f"{key} is {value!r}, not a number")
    return int(value)


def _by_reason(data: Mapping[str, Any], key: str) -> dict[str, int]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise BadStatus(f"{key} is {value!r}, not an object")
    return {str(reason): _int(value, reason) for reason in value}


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key, "")
    return "" if value is None else str(value)


def _float(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadStatus(f"{key} is {value!r}, not a number")
    return float(value)


def parse_counts(data: Any) -> Counts:
    if not isinstance(data, Mapping):
        raise BadStatus("totals is not an object")
    return Counts(lines_in=_int(data, "lines_in"), lines_out=_int(data, "lines_out"),
                  buffered_lines=_int(data, "buffered_lines"),
                  dropped_lines=_by_reason(data, "dropped_lines"),
                  points_flushed=_int(data, "points_flushed"),
                  points_sent=_int(data, "points_sent"),
                  points_buffered=_int(data, "points_buffered"),
                  points_dropped=_by_reason(data, "points_dropped"),
                  self_lines=_int(data, "self_lines"))


def parse_member(data: Any) -> MemberView:
    if not isinstance(data, Mapping):
        raise BadStatus("a member is not an object")
    capacity = data.get("buffer_capacity_lines")
    return MemberView(kind=_str(data, "kind"), index=_int(data, "index"),
                      name=_str(data, "name"), address=_str(data, "address"),
                      state=_str(data, "state") or "up", reason=_str(data, "reason"),
                      sent_lines=_int(data, "sent_lines"),
                      buffered_lines=_int(data, "buffered_lines"),
                      buffer_capacity_lines=None if capacity is None
                      else _int(data, "buffer_capacity_lines"),
                      dropped_lines=_by_reason(data, "dropped_lines"))


def parse_status(answer: StatusAnswer) -> DaemonView:
    """The `DaemonView` of one document.

    Raises:
        BadStatus: for a document this reader cannot use (the module docstring).
    """
    doc = answer.document
    if not isinstance(doc, Mapping):
        raise BadStatus("the answer is not a JSON object")
    if doc.get("schema") != STATUS_SCHEMA:
        raise BadStatus(f"schema {doc.get('schema')!r}: this tool reads schema "
                        f"{STATUS_SCHEMA}")
    fingerprints = doc.get("fingerprints") or {}
    members = doc.get("members") or []
    rates = doc.get("rates") or {}
    not_ready = doc.get("not_ready") or []
    if not isinstance(fingerprints, Mapping) or not isinstance(members, list) \
            or not isinstance(rates, Mapping) or not isinstance(not_ready, list):
        raise BadStatus("fingerprints, members, rates or not_ready of the wrong type")
    pid = doc.get("pid")
    return DaemonView(
        url=answer.url, tier=answer.tier, position=answer.position, reachable=True,
        role=_str(doc, "role"), identity=_str(doc, "identity"), version=_str(doc, "version"),
        pid=pid if isinstance(pid, int) else None, started=_float(doc, "started"),
        uptime_seconds=_float(doc, "uptime_seconds"), health=_str(doc, "health"),
        ready=doc.get("ready") is True, not_ready=tuple(str(r) for r in not_ready),
        flush_interval=_float(doc, "flush_interval"),
        membership=_str(fingerprints, "membership"), config=_str(fingerprints, "config"),
        workers=_int(doc, "workers") or 1, totals=parse_counts(doc.get("totals") or {}),
        rates=dict(rates), members=tuple(parse_member(m) for m in members))


def parse_answer(answer: StatusAnswer, before: StatusAnswer | None) -> DaemonView:
    """The `DaemonView` of ``answer``; with ``before`` (the window's first reading of the
    same daemon), its counters over the window.

    An error, a bad document or a daemon of another role than its tier is an unreachable
    view whose ``error_kind`` is ``unreachable`` or ``bad_status``.
    """
    unreachable = DaemonView(url=answer.url, tier=answer.tier, position=answer.position,
                             reachable=False)
    if answer.error is not None:
        return attrs.evolve(unreachable, error=answer.error, error_kind="unreachable")
    try:
        view = parse_status(answer)
    except BadStatus as exc:
        return attrs.evolve(unreachable, error=str(exc), error_kind="bad_status")
    if view.role != answer.tier:
        return attrs.evolve(unreachable, identity=view.identity, error_kind="bad_status",
                            error=f"listed as a {answer.tier}, but its role is {view.role!r}")
    if before is None:
        return view
    try:
        first = parse_status(before) if before.error is None else None
    except BadStatus:
        first = None
    if first is None or (first.pid, first.started) != (view.pid, view.started):
        return attrs.evolve(view, restarted=first is not None)
    old = {(m.kind, m.index, m.name): m for m in first.members}
    return attrs.evolve(view, windowed=True, totals=subtract_counts(view.totals, first.totals),
                        members=tuple(subtract_member(m, old.get((m.kind, m.index, m.name)))
                                      for m in view.members))


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

    def as_json(self) -> dict[str, Any]:
        out = attrs.asdict(self, recurse=False)
        out["dropped_at_proxies"] = dict(self.dropped_at_proxies)
        out["sent_by"] = [{"proxy": p, "lines": n} for p, n in self.sent_by]
        out["dropped_by"] = [{"proxy": p, "reason": r, "lines": n}
                             for p, r, n in self.dropped_by]
        out["states"] = [{"proxy": p, "state": s, "reason": r} for p, s, r in self.states]
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
