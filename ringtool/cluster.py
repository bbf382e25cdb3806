"""Loss accounting across the tiers: from every daemon's /status, where lines were lost.

The API (the ``tallyd-ring cluster`` command and the cluster page both use it):

* `ringtool.clusterfetch.collect` (shell): ``await collect(proxies=[URL...],
  aggregators=[URL...], carbon_query=None, timeout_seconds=5.0, previous=None)`` reads every
  daemon's ``GET /status`` (the proxies first, then the aggregators, so a line in flight
  when a proxy was read has mostly arrived when its aggregator is) and returns a
  `ClusterReport`. ``previous``: an earlier report's ``sample``; then every counter is the
  difference over that window (``window_seconds``) instead of the total since start.
* `build_report` (here, pure): the same from a `ClusterSample` (the answers as read).
* `report_json` (here, pure): the report as one JSON object; docs/cluster.md lists its keys.
  ``ringtool.clusterfetch`` re-exports it.

What the report holds (its attributes, and the same keys in JSON):

* ``daemons``: every daemon listed, reachable or not (`DaemonView`): its tier as listed
  (``proxy`` or ``aggregator``), identity, health, readiness, fingerprints, totals, rates
  and members (a proxy's aggregators, an aggregator's Carbon nodes).
* ``tiers``: per tier (`TierSummary`) the totals added up, and the per-second rates of the
  daemons' last completed interval added up.
* ``edges``: one per (daemon, member): proxy -> aggregator and aggregator -> Carbon node,
  with the lines sent, buffered (and the buffer's capacity) and dropped by reason, and the
  member's state as that daemon sees it.
* ``between`` (JSON; `between_tiers`): the proxy -> aggregator hop as a whole.
* ``intake``: per aggregator (`AggregatorIntake`, by position: the i-th ``--aggregator`` is
  the proxies' member i, the order of their ``aggregator`` list; each proxy's members are
  matched to a position by name, the name most proxies give that index, and a proxy whose
  member i has another name is a ``diverged`` ``member_name`` finding) what the proxies sent it,
  what it received (``lines_in``), the difference (lost between the tiers: the aggregator
  was down, or the kernel dropped datagrams), what the proxies dropped for it by reason and
  hold for it.
* ``carbon_nodes``: per Carbon node (by name), the points the aggregators sent, buffer and
  dropped, and, with ``--carbon-query``, what Carbon's own
  ``carbon.agents.*.metricsReceived`` says it accepted (``carbon_accepted``).
* ``fingerprints``: per tier, each membership fingerprint and the daemons that have it.
* ``findings``: every problem and remark, one `Finding` each: ``lost`` (lines or points,
  where and why), ``unreachable``, ``diverged`` (a membership fingerprint unlike its
  tier's), ``bad_status``; and not problems: ``buffered`` (held, not lost yet),
  ``in_flight`` (a daemon's own equation not balanced at the moment it was read),
  ``note``.
* ``ok`` / ``exit_status``: 0 when no finding is a problem, 1 otherwise.

Units: proxies count lines; aggregators count lines in and points (output lines) out;
``kernel_overflow`` counts datagrams (their lines were never read).

Pure: no I/O, no clock; the time of a reading comes in with the sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from .clusterfind import find_problems
from .clustermodel import (
    AGGREGATOR,
    KERNEL_OVERFLOW,
    PROBLEMS,
    PROXY,
    RETIRED,
    AggregatorIntake,
    CarbonNodeView,
    ClusterReport,
    ClusterSample,
    DaemonView,
    Edge,
    Finding,
    MemberView,
    StatusAnswer,
    TierSummary,
    add_counts,
)
from .clusterstatus import parse_answer

__all__ = ["AGGREGATOR", "PROBLEMS", "PROXY", "AggregatorIntake", "CarbonNodeView",
           "ClusterReport", "ClusterSample", "DaemonView", "Edge", "Finding",
           "StatusAnswer", "TierSummary", "between_tiers", "build_report", "report_json"]

#: The JSON report's shape (docs/cluster.md); readers ignore keys they do not know.
REPORT_SCHEMA: Final = 1


def _add(into: dict[str, int], more: Mapping[str, int]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0) + value


def _summarize(tier: str, daemons: Sequence[DaemonView]) -> TierSummary:
    up = [d for d in daemons if d.reachable]
    rates_in = sum(float(d.rates.get("lines_in", 0) or 0) for d in up)
    rates_out = sum(float(d.rates.get("lines_out", 0) or 0) for d in up)
    rate_drops: dict[str, float] = {}
    for d in up:
        for reason, value in dict(d.rates.get("dropped_lines") or {}).items():
            rate_drops[reason] = rate_drops.get(reason, 0.0) + float(value)
    return TierSummary(tier=tier, daemons=len(daemons), reachable=len(up),
                       totals=add_counts(d.totals for d in up),
                       lines_in_per_second=round(rates_in, 3),
                       lines_out_per_second=round(rates_out, 3),
                       dropped_per_second={k: round(v, 3) for k, v in rate_drops.items()})


def _edges(daemons: Sequence[DaemonView]) -> list[Edge]:
    return [Edge(source=d.url, source_name=d.name, kind=m.kind, target_index=m.index,
                 target=m.name, address=m.address, state=m.state, reason=m.reason,
                 sent=m.sent_lines, buffered=m.buffered_lines,
                 buffer_capacity=m.buffer_capacity_lines, dropped=dict(m.dropped_lines))
            for d in daemons if d.reachable for m in d.members]


def aggregator_names(proxies: Sequence[DaemonView]) -> dict[int, str]:
    """The name of each aggregator position as the reachable proxies agree on it: per index
    of their live (not retired) members, the name most of them have there (a tie: the first
    proxy's)."""
    votes: dict[int, dict[str, int]] = {}
    for p in proxies:
        for m in p.members:
            if m.kind == AGGREGATOR and m.state != RETIRED:
                tally = votes.setdefault(m.index, {})
                tally[m.name] = tally.get(m.name, 0) + 1
    return {index: max(tally, key=tally.__getitem__) for index, tally in sorted(votes.items())}


def _mismatches(proxies: Sequence[DaemonView], names: Mapping[int, str]) -> list[Finding]:
    """Every proxy whose live member ``i`` is not the aggregator the others name ``i``."""
    return [Finding(kind="diverged", tier=PROXY,
                    where=f"proxy {p.name} -> aggregator [{m.index}] {m.name}",
                    reason="member_name", daemon=p.url, member=m.name,
                    detail=f"its member {m.index} is {m.name}, the proxies' is "
                           f"{names[m.index]}: its lines are counted for the aggregator of "
                           "that name, if any")
            for p in proxies for m in p.members
            if m.kind == AGGREGATOR and m.state != RETIRED and names.get(m.index) != m.name]


def _intake(proxies: Sequence[DaemonView], aggregators: Sequence[DaemonView]
            ) -> list[AggregatorIntake]:
    """Per aggregator position: what the reachable proxies sent, held and dropped for it,
    and what it received.

    Members are matched by name (`aggregator_names`: position ``i`` is the aggregator the
    proxies name ``i``), so a proxy whose list is in another order, or a retired member,
    is counted for the aggregator it sent to; a member whose name is no position's is an
    intake of its own, not listed (its lines are not checked).
    """
    names = aggregator_names(proxies)
    position_of: dict[str, int] = {}
    for index, name in names.items():
        position_of.setdefault(name, index)
    by_position = {d.position: d for d in aggregators}
    groups: dict[tuple[int, str | None], list[tuple[DaemonView, MemberView]]] = {
        (position, None): [] for position in sorted({*by_position, *names})}
    for p in proxies:
        for m in p.members:
            if m.kind != AGGREGATOR:
                continue
            position = position_of.get(m.name)
            key = (position, None) if position is not None else (m.index, m.name)
            groups.setdefault(key, []).append((p, m))
    out = []
    for (position, unlisted), members in groups.items():
        aggregator = by_position.get(position) if unlisted is None else None
        sent_by: list[tuple[str, int]] = []
        dropped_by: list[tuple[str, str, int]] = []
        dropped: dict[str, int] = {}
        buffered = 0
        states: list[tuple[str, str, str]] = []
        for p, m in members:
            sent_by.append((p.name, m.sent_lines))
            buffered += m.buffered_lines
            states.append((p.name, m.state, m.reason))
            _add(dropped, m.dropped_lines)
            dropped_by += [(p.name, r, n) for r, n in sorted(m.dropped_lines.items()) if n]
        sent = sum(n for _, n in sent_by)
        received = (aggregator.totals.lines_in
                    if aggregator is not None and aggregator.reachable else None)
        name = unlisted or names.get(position) or (
            aggregator.name if aggregator is not None else "?")
        kernel = (aggregator.totals.dropped_lines.get(KERNEL_OVERFLOW, 0)
                  if aggregator is not None and aggregator.reachable else 0)
        out.append(AggregatorIntake(
            position=position, url=aggregator.url if aggregator is not None else None,
            name=name, identity=aggregator.identity if aggregator is not None else "",
            sent=sent, sent_by=tuple(sent_by), received=received,
            difference=None if received is None or not sent_by else sent - received,
            dropped_at_proxies=dropped, dropped_by=tuple(dropped_by),
            buffered_at_proxies=buffered, kernel_overflow=kernel, states=tuple(states),
            unreachable_workers=(aggregator.unreachable_workers
                                 if aggregator is not None and aggregator.reachable else ())))
    return out


def _carbon_nodes(aggregators: Sequence[DaemonView],
                  accepted: Mapping[str, int] | None) -> list[CarbonNodeView]:
    nodes: dict[str, dict[str, Any]] = {}
    for a in aggregators:
        if not a.reachable:
            continue
        for m in a.members:
            if m.kind != "carbon":
                continue
            node = nodes.setdefault(m.name, {"address": m.address, "sent": 0, "buffered": 0,
                                             "dropped": {}, "sent_by": [], "down_at": []})
            node["sent"] += m.sent_lines
            node["buffered"] += m.buffered_lines
            _add(node["dropped"], m.dropped_lines)
            node["sent_by"].append((a.name, m.sent_lines))
            if m.state not in ("up", RETIRED):
                node["down_at"].append((a.name, m.reason))
    return [CarbonNodeView(name=name, address=n["address"], points_sent=n["sent"],
                           points_buffered=n["buffered"], points_dropped=n["dropped"],
                           sent_by=tuple(n["sent_by"]), down_at=tuple(n["down_at"]))
            for name, n in nodes.items()]


def _fingerprints(daemons: Sequence[DaemonView]) -> dict[str, list[str]]:
    """Each membership fingerprint of the reachable ``daemons``, and their URLs."""
    out: dict[str, list[str]] = {}
    for d in daemons:
        if d.reachable:
            out.setdefault(d.membership, []).append(d.url)
    return out


def _divergent(tier: str, daemons: Sequence[DaemonView], expected: str | None
               ) -> list[Finding]:
    """Every daemon whose membership fingerprint is not its tier's: ``expected`` when given
    (the ring file's ring, for the aggregators), else the one most daemons have (with a tie,
    every daemon is named)."""
    seen = {d.url: d.membership for d in daemons if d.reachable}
    if not seen:
        return []
    counts = {fp: len(urls) for fp, urls in _fingerprints(daemons).items()}
    source = "the ring file's" if expected is not None else "the tier's"
    if expected is None:
        best = max(counts.values())
        leaders = [fp for fp, n in counts.items() if n == best]
        if len(counts) == 1:
            return []
        expected = leaders[0] if len(leaders) == 1 else None
    names = {d.url: d.name for d in daemons}
    findings = []
    for url, fp in seen.items():
        if fp != expected:
            want = f"{source} {expected}" if expected else "no majority: " + ", ".join(
                f"{f} x{n}" for f, n in sorted(counts.items()))
            findings.append(Finding(kind="diverged", tier=tier, where=f"{tier} {names[url]}",
                                    reason="membership", daemon=url,
                                    detail=f"membership fingerprint {fp}, not {want}"))
    return findings


def build_report(sample: ClusterSample, *, previous: ClusterSample | None = None,
                 ring_fingerprint: str | None = None) -> ClusterReport:
    """The report of ``sample`` (module docstring).

    Args:
        previous: an earlier sample of the same daemons; then counters are the differences
            since it (a daemon restarted in between counts from its start, and says so).
        ring_fingerprint: the Carbon ring every aggregator should have (from the ring
            file); None: the fingerprint most aggregators have.
    """
    before = ({(a.tier, a.url): a for a in previous.answers} if previous is not None else {})
    daemons = [parse_answer(a, before.get((a.tier, a.url))) if previous is not None
               else parse_answer(a, None) for a in sample.answers]
    proxies = [d for d in daemons if d.tier == PROXY]
    aggregators = [d for d in daemons if d.tier == AGGREGATOR]
    intake = _intake(proxies, aggregators)
    carbon = _carbon_nodes(aggregators, sample.carbon_accepted)
    findings = find_problems(daemons, intake, carbon, sample)
    findings += _mismatches(proxies, aggregator_names(proxies))
    findings += _divergent(PROXY, proxies, None)
    findings += _divergent(AGGREGATOR, aggregators, ring_fingerprint)
    window = sample.taken_at - previous.taken_at if previous is not None else None
    return ClusterReport(
        sample=sample, window_seconds=window, daemons=tuple(daemons),
        tiers={PROXY: _summarize(PROXY, proxies), AGGREGATOR: _summarize(AGGREGATOR,
                                                                            aggregators)},
        edges=tuple(_edges(daemons)), intake=tuple(intake), carbon_nodes=tuple(carbon),
        fingerprints={PROXY: _fingerprints(proxies), AGGREGATOR: _fingerprints(aggregators)},
        findings=tuple(findings))


def between_tiers(report: ClusterReport) -> dict[str, int]:
    """The proxy -> aggregator hop as a whole: ``sent`` (by the proxies, to every
    aggregator), ``sent_to_read`` (to the aggregators that could be read), ``received`` (by
    those), ``difference`` (``sent_to_read - received``: positive is lost between the tiers,
    negative came from elsewhere) and ``unread`` (aggregator positions not read)."""
    read = [i for i in report.intake if i.received is not None]
    sent_to_read = sum(i.sent for i in read)
    received = sum(i.received or 0 for i in read)
    return {"sent": sum(i.sent for i in report.intake), "sent_to_read": sent_to_read,
            "received": received, "difference": sent_to_read - received,
            "unread": len(report.intake) - len(read)}


def report_json(report: ClusterReport) -> dict[str, Any]:
    """The report as one JSON object (docs/cluster.md, "The JSON report")."""
    lost_lines = sum(f.count or 0 for f in report.findings
                     if f.kind == "lost" and f.unit == "lines")
    lost_points = sum(f.count or 0 for f in report.findings
                      if f.kind == "lost" and f.unit == "points")
    accepted = report.sample.carbon_accepted
    return {
        "schema": REPORT_SCHEMA,
        "ok": report.ok,
        "exit_status": report.exit_status,
        "taken_at": report.sample.taken_at,
        "window_seconds": report.window_seconds,
        "summary": {
            "lines_lost": lost_lines, "points_lost": lost_points,
            "unreachable": sum(1 for f in report.findings if f.kind == "unreachable"),
            "diverged": sum(1 for f in report.findings if f.kind == "diverged"),
            "partial": sum(1 for f in report.findings if f.kind == "partial"),
            "problems": sum(1 for f in report.findings if f.kind in PROBLEMS)},
        "tiers": {name: summary.as_json() for name, summary in report.tiers.items()},
        "between": between_tiers(report),
        "daemons": [d.as_json() for d in report.daemons],
        "edges": [attrs.asdict(e) for e in report.edges],
        "intake": [i.as_json() for i in report.intake],
        "carbon_nodes": [n.as_json(accepted) for n in report.carbon_nodes],
        "carbon_accepted": None if accepted is None and report.sample.carbon_error is None
        else {"agents": dict(accepted or {}), "total": sum((accepted or {}).values()),
              "error": report.sample.carbon_error},
        "fingerprints": {tier: {fp: list(urls) for fp, urls in fps.items()}
                         for tier, fps in report.fingerprints.items()},
        "findings": [attrs.asdict(f) for f in report.findings],
    }
