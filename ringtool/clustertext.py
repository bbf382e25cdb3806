"""The text form of the cluster report (``tallyd-ring cluster`` without ``--json``).

Sections: the tiers (lines in, out, held and dropped by reason, with the last interval's
rates), each aggregator's intake seen from both sides, each Carbon node's points, each
daemon, then the findings (problems in capitals first) and one last summary line:
``cluster: ok`` or ``cluster: PROBLEMS: ...``.

Every line is made printable (`printable`): the daemons' strings (identities, reasons,
``not_ready``, errors) are shown with their control and other non-printable characters
escaped, so a document cannot move the cursor, set a terminal's title or forge a line
(``--json`` gives them as they are, JSON-escaped).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from .cluster import between_tiers, report_json
from .clustermodel import AGGREGATOR, PROBLEMS, PROXY, ClusterReport, Finding


def printable(text: str) -> str:
    """``text`` with every non-printable character (controls, line separators, ESC) as
    its Python escape (``\\x1b``, ``\\n``, ``\\u2028``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def _reasons(dropped: Mapping[str, int | float]) -> str:
    """``N (reason n, ...)`` with the reasons that are not zero."""
    nonzero = {r: n for r, n in sorted(dropped.items()) if n}
    total = sum(nonzero.values())
    shown = f"{total:g}" if isinstance(total, float) else str(total)
    if not nonzero:
        return shown
    return f"{shown} (" + ", ".join(f"{r} {n:g}" if isinstance(n, float) else f"{r} {n}"
                                    for r, n in nonzero.items()) + ")"


def format_finding(f: Finding) -> str:
    """One finding on one line: ``KIND COUNT UNIT: WHERE: REASON[: DETAIL]``."""
    kind = f.kind.upper() if f.kind in PROBLEMS else f.kind
    count = f" {f.count} {f.unit}" if f.count is not None and f.unit else ""
    detail = f": {f.detail}" if f.detail else ""
    return f"{kind}{count}: {f.where}: {f.reason}{detail}"


def format_report(report: ClusterReport) -> list[str]:
    """The text report (module docstring)."""
    span = (f"over the last {report.window_seconds:.1f} s" if report.window_seconds is not None
            else "since each daemon's start")
    lines = [f"cluster: counters {span}"]
    for tier, label in ((PROXY, "proxies"), (AGGREGATOR, "aggregators")):
        s = report.tiers[tier]
        t = s.totals
        out = "aggregated" if tier == AGGREGATOR else "sent"
        lines.append(f"{label}: {s.reachable}/{s.daemons} read; lines in {t.lines_in}, "
                     f"{out} {t.lines_out}, buffered {t.buffered_lines}, dropped "
                     f"{_reasons(t.dropped_lines)}; last interval {s.lines_in_per_second:g}/s "
                     f"in, {s.lines_out_per_second:g}/s out, dropped "
                     f"{_reasons(s.dropped_per_second)}/s")
        if tier == AGGREGATOR:
            lines.append(f"  points: flushed {t.points_flushed}, sent {t.points_sent}, "
                         f"buffered {t.points_buffered}, dropped {_reasons(t.points_dropped)}")
    if report.intake:
        b = between_tiers(report)
        unread = f" ({b['unread']} aggregator(s) not read: {b['sent'] - b['sent_to_read']} " \
                 "lines sent to them unchecked)" if b["unread"] else ""
        lines.append(f"between proxies and aggregators: sent {b['sent_to_read']}, received "
                     f"{b['received']}, difference {b['difference']}{unread}")
        lines.append("aggregator intake (the proxies' member order):")
    for i in report.intake:
        received = ("unknown (not read)" if i.received is None else str(i.received))
        difference = "" if i.difference is None else f", difference {i.difference}"
        lines.append(f"  [{i.position}] {i.name} {i.url or '(not listed)'}: sent by the "
                     f"proxies {i.sent}, received {received}{difference}; dropped at the "
                     f"proxies {_reasons(i.dropped_at_proxies)}, buffered at the proxies "
                     f"{i.buffered_at_proxies}")
    if report.carbon_nodes:
        lines.append("carbon nodes (points):")
    for n in report.carbon_nodes:
        by = ", ".join(f"{a} {p}" for a, p in n.sent_by)
        down = f"; down at {len(n.down_at)} aggregator(s)" if n.down_at else ""
        lines.append(f"  {n.name}: sent {n.points_sent} ({by}), buffered {n.points_buffered},"
                     f" dropped {_reasons(n.points_dropped)}{down}")
    accepted = report_json(report)["carbon_accepted"]
    if accepted is not None and accepted["error"] is None:
        lines.append(f"  carbon accepted (metricsReceived): {accepted['total']}")
    lines.append("daemons:")
    for d in report.daemons:
        if not d.reachable:
            lines.append(f"  {d.tier} {d.name}: {d.error_kind.upper()}: {d.error}")
            continue
        ready = "ready" if d.ready else "NOT READY (" + ", ".join(d.not_ready) + ")"
        t = d.totals
        lines.append(f"  {d.tier} {d.name}: {d.health}, {ready}, membership {d.membership}, "
                     f"config {d.config}, up {d.uptime_seconds or 0:.0f} s; lines in "
                     f"{t.lines_in}, out {t.lines_out}, dropped {_reasons(t.dropped_lines)}")
    if report.findings:
        lines.append("findings:")
    ordered = sorted(report.findings, key=lambda f: f.kind not in PROBLEMS)
    lines += ["  " + format_finding(f) for f in ordered]
    summary = report_json(report)["summary"]
    if report.ok:
        lines.append("cluster: ok")
    else:
        lines.append(f"cluster: PROBLEMS: {summary['lines_lost']} lines lost, "
                     f"{summary['points_lost']} points lost, {summary['unreachable']} "
                     f"unreachable, {summary['diverged']} diverged"
                     + (f", {summary['partial']} partial" if summary["partial"] else ""))
    return [printable(line) for line in lines]
