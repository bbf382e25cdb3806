"""The findings of the cluster report: every line or point lost, where and why.

Rules (docs/cluster.md, "What is a loss"):

* every drop a daemon counts, by reason, is ``lost``: a proxy's drops for one aggregator are
  named with that aggregator (its member), a drop no member accounts for is the daemon's own
  (bad lines, refused lines, ``kernel_overflow`` in datagrams); an aggregator's dropped
  points for a Carbon node are named with that node;
* between the tiers, per aggregator: lines the proxies sent it that it did not count are
  ``lost`` (``not_received``), with its kernel's drops as the likely reason;
* lines or points still held (a proxy's queue for a down aggregator, an aggregator's buffer
  or spool for a down Carbon node) are ``buffered``: not lost yet;
* a daemon whose own equation (docs/admin.md) does not balance at the moment it was read
  is ``in_flight`` (since start only: over a window the held levels are not differences).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from .clustermodel import (
    AGGREGATOR,
    KERNEL_OVERFLOW,
    PROXY,
    RETIRED,
    AggregatorIntake,
    CarbonNodeView,
    ClusterSample,
    DaemonView,
    Finding,
)


def _unit(reason: str, default: str) -> str:
    return "datagrams" if reason == KERNEL_OVERFLOW else default


def _unreachable(d: DaemonView) -> Finding:
    return Finding(kind=d.error_kind or "unreachable", tier=d.tier, where=f"{d.tier} {d.name}",
                   reason=d.error_kind or "unreachable", daemon=d.url, detail=d.error or "")


def _daemon_drops(d: DaemonView, members_kind: str | None, unit: str) -> list[Finding]:
    """The drops of ``d``'s members of ``members_kind`` (None: none), then the rest of its
    totals' drops as its own."""
    out = []
    totals = dict(d.totals.dropped_lines if unit == "lines" else d.totals.points_dropped)
    target_tier = "carbon" if members_kind == "carbon" else d.tier
    for m in d.members:
        if members_kind is None or m.kind != members_kind:
            continue
        label = "carbon node" if m.kind == "carbon" else "aggregator"
        for reason, n in sorted(m.dropped_lines.items()):
            if n <= 0:
                continue
            totals[reason] = totals.get(reason, 0) - n
            out.append(Finding(kind="lost", tier=target_tier,
                               where=f"{d.tier} {d.name} -> {label} [{m.index}] {m.name}",
                               reason=reason, count=n, unit=unit, daemon=d.url,
                               member=m.name))
    for reason, n in sorted(totals.items()):
        if n > 0:
            out.append(Finding(kind="lost", tier=d.tier, where=f"{d.tier} {d.name}",
                               reason=reason, count=n, unit=_unit(reason, unit),
                               daemon=d.url))
    return out


def _held(d: DaemonView, unit: str) -> list[Finding]:
    label = "carbon node" if unit == "points" else "aggregator"
    return [Finding(kind="buffered", tier=d.tier,
                    where=f"{d.tier} {d.name} -> {label} [{m.index}] {m.name}",
                    reason=f"held while {m.state}" + (f" ({m.reason})" if m.reason else ""),
                    count=m.buffered_lines, unit=unit, daemon=d.url, member=m.name)
            for m in d.members if m.buffered_lines > 0]


def _down_members(d: DaemonView) -> list[Finding]:
    label = "carbon node" if d.tier == AGGREGATOR else "aggregator"
    return [Finding(kind="note", tier=d.tier,
                    where=f"{d.tier} {d.name} -> {label} [{m.index}] {m.name}",
                    reason="member_down", daemon=d.url, member=m.name,
                    detail=f"seen {m.state}" + (f": {m.reason}" if m.reason else ""))
            for m in d.members if m.state not in ("up", RETIRED)]


def _equations(d: DaemonView) -> list[Finding]:
    t = d.totals
    drops = sum(n for r, n in t.dropped_lines.items() if r != KERNEL_OVERFLOW)
    gaps = []
    if d.tier == PROXY:
        gaps.append(("lines", t.lines_in - t.lines_out - drops - t.buffered_lines,
                     "lines_in - lines_out - dropped_lines - buffered_lines"))
    else:
        gaps.append(("lines", t.lines_in - t.lines_out - drops,
                     "lines_in - lines_out - dropped_lines"))
        gaps.append(("points", t.points_flushed - t.points_sent - t.points_buffered
                     - sum(t.points_dropped.values()),
                     "points_flushed - points_sent - points_buffered - points_dropped"))
    return [Finding(kind="in_flight", tier=d.tier, where=f"{d.tier} {d.name}",
                    reason="unbalanced", count=gap, unit=unit, daemon=d.url,
                    detail=f"{what} = {gap} when read (lines still being handed on)")
            for unit, gap, what in gaps if gap != 0]


def _partial(d: DaemonView) -> list[Finding]:
    return [Finding(kind="partial", tier=d.tier, where=f"{d.tier} {d.name}",
                    reason="worker_unreachable", daemon=d.url,
                    detail=f"worker {w} unreachable: its counts are not in the totals")
            for w in d.unreachable_workers]


def _between(i: AggregatorIntake) -> list[Finding]:
    where = f"between the proxies and aggregator [{i.position}] {i.name}"
    if i.url is None:
        if i.sent == 0:
            return []
        return [Finding(kind="note", tier="between", where=where, reason="not_listed",
                        count=i.sent, unit="lines", member=i.name,
                        detail="the proxies send to it but it was not given (--aggregator, "
                               "in the proxies' order): its intake is not checked")]
    if i.received is None:
        if not i.sent_by:
            return []
        return [Finding(kind="note", tier="between", where=where, reason="unknown",
                        count=i.sent, unit="lines", daemon=i.url, member=i.name,
                        detail=f"the proxies sent it {i.sent} lines; it could not be read, "
                               "so what it received is unknown")]
    if i.unreachable_workers:  # what it received is known only in part: no loss is told
        workers = ", ".join(map(str, i.unreachable_workers))
        return [Finding(kind="note", tier="between", where=where, reason="partial",
                        count=i.sent, unit="lines", daemon=i.url, member=i.name,
                        detail=f"the proxies sent it {i.sent} lines, the workers that "
                               f"answered counted {i.received} (worker {workers} "
                               "unreachable): not checked")]
    if i.difference is None or i.difference <= 0:
        return []
    kernel = (f"; its kernel dropped {i.kernel_overflow} datagrams (kernel_overflow)"
              if i.kernel_overflow else "")
    return [Finding(kind="lost", tier="between", where=where, reason="not_received",
                    count=i.difference, unit="lines", daemon=i.url, member=i.name,
                    detail=f"the proxies sent it {i.sent} lines, it counted {i.received}"
                           f"{kernel}")]


def find_problems(daemons: Sequence[DaemonView], intake: Sequence[AggregatorIntake],
                  carbon: Sequence[CarbonNodeView], sample: ClusterSample) -> list[Finding]:
    """Every finding but membership divergence (`ringtool.cluster`), in this order:
    unreachable daemons, losses per daemon, losses between the tiers, held lines and
    points, then remarks."""
    problems: list[Finding] = []
    remarks: list[Finding] = []
    for d in daemons:
        if not d.reachable:
            problems.append(_unreachable(d))
            continue
        if d.tier == PROXY:
            problems += _daemon_drops(d, AGGREGATOR, "lines")
            remarks += _held(d, "lines")
        else:
            problems += _partial(d)
            problems += _daemon_drops(d, None, "lines")
            problems += _daemon_drops(d, "carbon", "points")
            remarks += _held(d, "points")
        remarks += _down_members(d)
        if d.restarted:
            remarks.append(Finding(kind="note", tier=d.tier, where=f"{d.tier} {d.name}",
                                   reason="restarted", daemon=d.url,
                                   detail="restarted within the window: its counters are "
                                          "since its start"))
        elif not d.windowed and not d.unreachable_workers:  # a partial one need not balance
            remarks += _equations(d)
    for i in intake:
        found = _between(i)
        (problems if any(f.kind == "lost" for f in found) else remarks).extend(found)
    if sample.carbon_error is not None:
        remarks.append(Finding(kind="note", tier="carbon", where="carbon query",
                               reason="carbon_query_failed", detail=sample.carbon_error))
    elif sample.carbon_accepted is not None:
        sent = sum(n.points_sent for n in carbon)
        accepted = sum(sample.carbon_accepted.values())
        remarks.append(Finding(
            kind="note", tier="carbon", where="carbon.agents.*.metricsReceived",
            reason="carbon_accepted", count=accepted, unit="points",
            detail=f"Carbon's agents counted {accepted} points received; the aggregators "
                   f"sent {sent} (Carbon counts per minute and its own metrics too)"))
    return problems + remarks

