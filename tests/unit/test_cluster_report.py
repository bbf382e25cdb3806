"""The cluster report's core (`ringtool.cluster`) on /status documents shaped per the
contract (docs/admin.md): losses named with where and why, divergence, unreachable daemons,
windows, and bad documents that are reported, never raised."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ringtool.cluster import build_report, report_json
from ringtool.clusterfetch import parse_render_json
from ringtool.clustermodel import ClusterSample, StatusAnswer
from ringtool.clustertext import format_report
from support.statusdocs import member, status


def answer(tier: str, position: int, document: Any = None,
           error: str | None = None) -> StatusAnswer:
    return StatusAnswer(url=f"http://{tier}{position}:1", tier=tier, position=position,
                        document=document, error=error)


def healthy_cluster() -> list[StatusAnswer]:
    """2 proxies -> 2 aggregators -> 1 Carbon node; every line accounted for."""
    proxies = [answer("proxy", i, status("proxy", f"p{i}", lines_in=100, lines_out=100,
                                         members=[member("aggregator", 0, "a0:8125", sent=60),
                                                  member("aggregator", 1, "a1:8125",
                                                         sent=40)]))
               for i in range(2)]
    aggregators = [answer("aggregator", i, status(
        "aggregator", f"a{i}", membership="ring", lines_in=n, lines_out=n,
        points_flushed=7, points_sent=7, members=[member("carbon", 0, "c:2003", sent=7)]))
        for i, n in enumerate((120, 80))]
    return proxies + aggregators


def report_of(answers: list[StatusAnswer], **kwargs: Any) -> Any:
    return build_report(ClusterSample(taken_at=2000.0, answers=tuple(answers)), **kwargs)


def test_clean_cluster_is_ok_and_accounts_each_tier() -> None:
    report = report_of(healthy_cluster())
    assert report.ok and report.exit_status == 0
    assert [f for f in report.findings if f.kind != "note"] == []
    assert report.tiers["proxy"].totals.lines_out == 200
    assert report.tiers["aggregator"].totals.lines_in == 200
    assert [(i.position, i.sent, i.received, i.difference) for i in report.intake] == [
        (0, 120, 120, 0), (1, 80, 80, 0)]
    assert [(n.name, n.points_sent) for n in report.carbon_nodes] == [("c:2003", 14)]
    assert len(report.edges) == 6
    data = report_json(report)
    json.dumps(data)  # plain JSON
    assert data["ok"] is True and data["summary"]["lines_lost"] == 0
    assert data["between"] == {"sent": 200, "sent_to_read": 200, "received": 200,
                               "difference": 0, "unread": 0}
    assert data["fingerprints"]["aggregator"] == {
        "ring": ["http://aggregator0:1", "http://aggregator1:1"]}


def test_down_aggregator_names_each_proxys_drops_for_it() -> None:
    answers = healthy_cluster()
    answers[0] = answer("proxy", 0, status(
        "proxy", "p0", lines_in=130, lines_out=100, buffered_lines=5,
        dropped_lines={"destination_down": 25, "kernel_overflow": 0},
        members=[member("aggregator", 0, "a0:8125", sent=60),
                 member("aggregator", 1, "a1:8125", sent=40, buffered=5, state="down",
                        reason="refused", dropped={"destination_down": 25})]))
    answers[3] = answer("aggregator", 1, error="connect_failed: a1:1: refused")
    report = report_of(answers)
    assert report.exit_status == 1
    lost = [(f.where, f.reason, f.count) for f in report.findings if f.kind == "lost"]
    assert lost == [("proxy p0 (http://proxy0:1) -> aggregator [1] a1:8125",
                     "destination_down", 25)]
    kinds = {f.kind for f in report.findings}
    assert {"unreachable", "buffered", "note"} <= kinds
    [unreachable] = [f for f in report.findings if f.kind == "unreachable"]
    assert unreachable.daemon == "http://aggregator1:1" and "refused" in unreachable.detail
    intake = report.intake[1]
    assert intake.received is None and intake.buffered_at_proxies == 5
    assert intake.dropped_at_proxies == {"destination_down": 25}
    assert report_json(report)["between"] == {"sent": 200, "sent_to_read": 120,
                                              "received": 120, "difference": 0, "unread": 1}
    assert report_json(report)["summary"] == {"lines_lost": 25, "points_lost": 0,
                                              "unreachable": 1, "diverged": 0, "partial": 0,
                                              "problems": 2}


def test_lines_missing_between_the_tiers_are_lost_with_kernel_drops_named() -> None:
    answers = healthy_cluster()
    answers[3] = answer("aggregator", 1, status(
        "aggregator", "a1", membership="ring", lines_in=70, lines_out=70,
        dropped_lines={"kernel_overflow": 2}))
    report = report_of(answers)
    between = [f for f in report.findings if f.tier == "between"]
    assert [(f.kind, f.reason, f.count) for f in between] == [("lost", "not_received", 10)]
    assert "kernel dropped 2 datagrams" in between[0].detail
    own = [f for f in report.findings if f.tier == "aggregator" and f.kind == "lost"]
    assert [(f.reason, f.count, f.unit) for f in own] == [("kernel_overflow", 2, "datagrams")]


def test_more_received_than_sent_is_no_loss() -> None:
    answers = healthy_cluster()
    answers[2] = answer("aggregator", 0, status("aggregator", "a0", membership="ring",
                                                lines_in=500, lines_out=500))
    report = report_of(answers)
    assert report.ok and report.intake[0].difference == -380


def test_proxy_drops_no_member_accounts_for_are_the_proxys_own() -> None:
    answers = healthy_cluster()
    answers[1] = answer("proxy", 1, status(
        "proxy", "p1", lines_in=103, lines_out=100, dropped_lines={"bad_line": 3},
        members=[member("aggregator", 0, "a0:8125", sent=60),
                 member("aggregator", 1, "a1:8125", sent=40)]))
    [lost] = [f for f in report_of(answers).findings if f.kind == "lost"]
    assert (lost.where, lost.reason, lost.count) == ("proxy p1 (http://proxy1:1)",
                                                     "bad_line", 3)


def test_dropped_points_are_named_with_their_carbon_node() -> None:
    answers = healthy_cluster()
    answers[2] = answer("aggregator", 0, status(
        "aggregator", "a0", membership="ring", lines_in=120, lines_out=120,
        points_flushed=10, points_sent=4, points_buffered=2, points_dropped={"spool_full": 4},
        members=[member("carbon", 0, "c:2003", sent=4, buffered=2, state="down",
                        reason="not_connected", dropped={"spool_full": 4})]))
    report = report_of(answers)
    [lost] = [f for f in report.findings if f.kind == "lost"]
    assert (lost.tier, lost.where, lost.reason, lost.count, lost.unit) == (
        "carbon", "aggregator a0 (http://aggregator0:1) -> carbon node [0] c:2003",
        "spool_full", 4, "points")
    assert report.carbon_nodes[0].down_at == (("a0 (http://aggregator0:1)", "not_connected"),)
    assert report_json(report)["summary"]["points_lost"] == 4


def test_a_divergent_membership_is_named() -> None:
    answers = healthy_cluster()
    answers.append(answer("proxy", 2, status("proxy", "p2", membership="m2")))
    report = report_of(answers)
    [diverged] = [f for f in report.findings if f.kind == "diverged"]
    assert diverged.daemon == "http://proxy2:1" and "m2" in diverged.detail
    assert report.exit_status == 1


def test_a_tie_of_fingerprints_names_every_daemon() -> None:
    answers = healthy_cluster()
    answers[1] = answer("proxy", 1, status("proxy", "p1", membership="m2"))
    diverged = [f.daemon for f in report_of(answers).findings if f.kind == "diverged"]
    assert diverged == ["http://proxy0:1", "http://proxy1:1"]


def test_aggregators_are_checked_against_the_ring_files_fingerprint() -> None:
    report = report_of(healthy_cluster(), ring_fingerprint="other")
    assert [f.daemon for f in report.findings if f.kind == "diverged"] == [
        "http://aggregator0:1", "http://aggregator1:1"]
    assert report_of(healthy_cluster(), ring_fingerprint="ring").ok


@pytest.mark.parametrize(("document", "expected"), [
    ([1, 2], "not a JSON object"),
    ({"schema": 2, "role": "proxy"}, "schema 2"),
    ({**status("proxy", "x"), "totals": {"lines_in": "many"}}, "not a number"),
    ({**status("proxy", "x"), "members": {"a": 1}}, "wrong type"),
    (status("aggregator", "x"), "role is 'aggregator'"),
])
def test_a_bad_document_is_reported_not_raised(document: Any, expected: str) -> None:
    report = report_of([answer("proxy", 0, document)])
    [bad] = [f for f in report.findings if f.kind == "bad_status"]
    assert expected in bad.detail and report.exit_status == 1


@pytest.mark.parametrize("bad", [
    {"totals": {"lines_in": 1e999}},
    {"totals": {"lines_in": float("nan")}},
    {"totals": {"dropped_lines": {"buffer_full": 1e999}}},
    {"members": [member("aggregator", 0, "a0:8125", sent=float("inf"))]},
    {"started": float("nan")},
    {"rates": {"lines_in": "x"}},
    {"rates": {"lines_out": 1e999}},
    {"rates": {"dropped_lines": [1, 2]}},
    {"rates": {"dropped_lines": {"buffer_full": "x"}}},
    {"rates": [1]},
])
def test_one_bad_daemon_is_bad_status_and_the_others_still_render(bad: dict[str, Any]
                                                                   ) -> None:
    answers = healthy_cluster()
    answers[1] = answer("proxy", 1, {**status("proxy", "p1"), **bad})
    report = report_of(answers)
    [found] = [f for f in report.findings if f.kind == "bad_status"]
    assert found.daemon == "http://proxy1:1" and report.exit_status == 1
    assert [d.reachable for d in report.daemons] == [True, False, True, True]
    json.dumps(report_json(report), allow_nan=False)
    assert report.tiers["proxy"].lines_in_per_second == 5.0


def test_text_report_escapes_what_the_daemons_say() -> None:
    answers = healthy_cluster()
    hostile = "p1\x1b]0;pwned\x07\ncluster: ok\u2028\x9b2J"
    answers[1] = answer("proxy", 1, {
        **status("proxy", hostile, lines_in=100, lines_out=90,
                 dropped_lines={"\x1b[31mred": 10},
                 members=[member("aggregator", 0, "a0:8125", sent=60),
                          member("aggregator", 1, "a1\r:8125", sent=30)]),
        "ready": False, "not_ready": ["\x1b[2Jgone"]})
    report = report_of(answers)
    lines = format_report(report)
    assert all(line.isprintable() for line in lines)
    assert lines.count("cluster: ok") == 0 and lines[-1].startswith("cluster: PROBLEMS")
    assert any("p1\\x1b]0;pwned\\x07\\ncluster: ok\\u2028\\x9b2J" in line for line in lines)
    assert any("\\x1b[2Jgone" in line for line in lines)
    data = report_json(report)  # --json keeps them as they are
    assert data["daemons"][1]["identity"] == hostile


def test_an_unbalanced_daemon_is_in_flight_not_lost() -> None:
    answers = healthy_cluster()
    answers[2] = answer("aggregator", 0, status("aggregator", "a0", membership="ring",
                                                lines_in=120, lines_out=117))
    report = report_of(answers)
    assert report.ok
    [gap] = [f for f in report.findings if f.kind == "in_flight"]
    assert gap.count == 3 and gap.unit == "lines"


def test_a_window_counts_the_differences_and_marks_restarts() -> None:
    first = ClusterSample(taken_at=1990.0, answers=tuple(healthy_cluster()))
    later = healthy_cluster()
    later[0] = answer("proxy", 0, status(
        "proxy", "p0", lines_in=150, lines_out=140, buffered_lines=4,
        dropped_lines={"buffer_full": 6},
        members=[member("aggregator", 0, "a0:8125", sent=80),
                 member("aggregator", 1, "a1:8125", sent=60, buffered=4,
                        dropped={"buffer_full": 6})]))
    later[2] = answer("aggregator", 0, status("aggregator", "a0", membership="ring",
                                              lines_in=140, lines_out=140))
    later[3] = answer("aggregator", 1, status("aggregator", "a1", membership="ring", pid=99,
                                              lines_in=20, lines_out=20))
    report = build_report(ClusterSample(taken_at=2000.0, answers=tuple(later)),
                          previous=first)
    assert report.window_seconds == 10.0
    p0 = report.daemons[0]
    assert p0.windowed and p0.totals.lines_in == 50 and p0.totals.buffered_lines == 4
    assert [(i.sent, i.received) for i in report.intake] == [(20, 20), (20, 20)]
    assert report.daemons[3].restarted and report.daemons[3].totals.lines_in == 20
    lost = [(f.reason, f.count) for f in report.findings if f.kind == "lost"]
    assert lost == [("buffer_full", 6)]
    assert not [f for f in report.findings if f.kind == "in_flight"]


def test_a_window_matches_members_by_name_when_the_list_moved_them() -> None:
    first = ClusterSample(taken_at=1990.0, answers=tuple(healthy_cluster()))
    later = healthy_cluster()
    for i in range(2):  # the list is now [a1, a0]: each forwarder moved index
        later[i] = answer("proxy", i, status(
            "proxy", f"p{i}", lines_in=120, lines_out=120,
            members=[member("aggregator", 0, "a1:8125", sent=50),
                     member("aggregator", 1, "a0:8125", sent=70)]))
    report = build_report(ClusterSample(taken_at=2000.0, answers=tuple(later)),
                          previous=first)
    sent = {m.name: m.sent_lines for m in report.daemons[0].members}
    assert sent == {"a0:8125": 10, "a1:8125": 10}
    # p1: a1 removed (its forwarder retired, index -1), then added back (a new one)
    later[1] = answer("proxy", 1, status(
        "proxy", "p1", lines_in=120, lines_out=120,
        members=[member("aggregator", 0, "a0:8125", sent=70),
                 member("aggregator", 1, "a1:8125", sent=5),
                 member("aggregator", -1, "a1:8125", sent=45, state="retired")]))
    report = build_report(ClusterSample(taken_at=2000.0, answers=tuple(later)),
                          previous=first)
    assert [(m.name, m.state, m.sent_lines) for m in report.daemons[1].members] == [
        ("a0:8125", "up", 10), ("a1:8125", "up", 5), ("a1:8125", "retired", 5)]


def test_proxies_members_are_matched_to_aggregators_by_name() -> None:
    # p1 lists the two aggregators the other way round: by position, a0 would be charged
    # p1's lines for a1 (a false loss at one, a surplus at the other).
    def proxy(i: int, names: list[str], sent: list[int],
              extra: list[dict[str, Any]] | None = None) -> StatusAnswer:
        members = [member("aggregator", k, n, sent=c)
                   for k, (n, c) in enumerate(zip(names, sent, strict=True))]
        return answer("proxy", i, status("proxy", f"p{i}", lines_in=sum(sent),
                                         lines_out=sum(sent), members=members + (extra or [])))
    answers = [proxy(0, ["a0:8125", "a1:8125"], [60, 40],
                     [member("aggregator", 0, "a1:8125", sent=7, state="retired"),
                      member("aggregator", 1, "old:8125", sent=5, state="retired")]),
               proxy(1, ["a1:8125", "a0:8125"], [30, 20]),
               proxy(2, ["a0:8125", "a1:8125"], [10, 10])]
    answers += [answer("aggregator", i, status("aggregator", f"a{i}", membership="ring",
                                               lines_in=n, lines_out=n))
                for i, n in enumerate((90, 87))]
    report = report_of(answers)
    assert [(i.position, i.name, i.url is not None, i.sent, i.difference)
            for i in report.intake] == [(0, "a0:8125", True, 90, 0),
                                        (1, "a1:8125", True, 87, 0),
                                        (1, "old:8125", False, 5, None)]
    assert not [f for f in report.findings if f.kind == "lost"]
    mismatched = [(f.daemon, f.member) for f in report.findings
                  if (f.kind, f.reason) == ("diverged", "member_name")]
    assert mismatched == [("http://proxy1:1", "a1:8125"), ("http://proxy1:1", "a0:8125")]
    assert report.exit_status == 1
    assert [f.reason for f in report.findings if f.member == "old:8125"] == ["not_listed"]


def test_an_aggregator_without_a_worker_is_partial_not_a_loss_between_tiers() -> None:
    answers = healthy_cluster()
    answers[3] = answer("aggregator", 1, {
        **status("aggregator", "a1", membership="ring", lines_in=50, lines_out=45,
                 points_flushed=7, points_sent=7,
                 members=[member("carbon", 0, "c:2003", sent=7),
                          member("carbon", 1, "old:2003", sent=3, state="retired")]),
        "workers": 2, "ready": False, "not_ready": ["worker_1_unreachable"]})
    report = report_of(answers)
    assert not [f for f in report.findings if f.kind in ("lost", "in_flight")]
    [partial] = [f for f in report.findings if f.kind == "partial"]
    assert partial.daemon == "http://aggregator1:1" and "worker 1 unreachable" in partial.detail
    [between] = [f for f in report.findings if f.reason == "partial"]
    assert between.kind == "note" and between.count == 80
    assert report.intake[1].unreachable_workers == (1,)
    assert report.exit_status == 1 and report_json(report)["summary"]["partial"] == 1
    assert format_report(report)[-1].endswith(", 1 partial")
    # a retired Carbon node is neither down nor a member_down
    old = [n for n in report.carbon_nodes if n.name == "old:2003"]
    assert old[0].down_at == () and old[0].points_sent == 3
    assert not [f for f in report.findings if f.reason == "member_down"]


def test_carbon_accepted_is_reported_beside_the_points_sent() -> None:
    sample = ClusterSample(taken_at=2000.0, answers=tuple(healthy_cluster()),
                           carbon_accepted={"carbon.agents.h-a.metricsReceived": 14})
    report = build_report(sample)
    [note] = [f for f in report.findings if f.reason == "carbon_accepted"]
    assert note.count == 14 and "sent 14" in note.detail
    assert report_json(report)["carbon_accepted"]["total"] == 14


def test_render_json_is_summed_per_series_and_bad_shapes_refused() -> None:
    assert parse_render_json([{"target": "carbon.agents.a.metricsReceived",
                               "datapoints": [[3.0, 60], [None, 120], [4, 180]]}]) == {
        "carbon.agents.a.metricsReceived": 7}
    with pytest.raises(ValueError, match="datapoints"):
        parse_render_json([{"target": "x"}])
    with pytest.raises(ValueError, match="list"):
        parse_render_json({"error": "x"})
