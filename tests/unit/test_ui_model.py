"""The cluster page's model (``ringtool/static/ui.js``: what it draws from each report), run
under Node on reports that ``ringtool.cluster`` builds from hand-made /status documents:
rates between two readings, a restarted daemon, a daemon gone (its identity kept), a
Carbon node no longer reported, a proxy member nobody listed, divergence, readiness, drops
that grow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ringtool.cluster import build_report, report_json
from ringtool.clustermodel import ClusterSample, StatusAnswer
from support.statusdocs import member, status

SCRIPT = Path(__file__).resolve().parents[2] / "ringtool" / "static" / "ui.js"

#: Feeds the reports (JSON on stdin) to the page's model one after the other, as the page
#: does, and prints what it would draw.
RUNNER = """
const ui = require(process.argv[1]);
const reports = JSON.parse(require("fs").readFileSync(0, "utf8"));
const seen = ui.newMemory();
const out = reports.map((report) => {
  const m = ui.model(report, seen);
  seen.previous = report;
  const node = (n) => ({ title: n.title, state: n.state, diverged: !!n.diverged,
                         in_rate: n.inRate === undefined ? null : n.inRate,
                         intake: n.intake || null });
  return {
    nodes: Object.fromEntries([...m.proxies, ...m.aggregators, ...m.carbon]
      .map((n) => [n.key, node(n)])),
    edges: Object.fromEntries(m.edges.map((e) => [e.source.key + " > " + e.target.key,
      { rate: e.rate, dropping: e.dropping, state: e.state, buffered: e.buffered }])),
  };
});
console.log(JSON.stringify(out));
"""


def node_program() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is not on PATH (tools/bootstrap --test installs it)")
        pytest.skip("node is not on PATH")
    return node


def answer(tier: str, position: int, document: Any = None,
           error: str | None = None) -> StatusAnswer:
    return StatusAnswer(url=f"http://{tier}{position}:1", tier=tier, position=position,
                        document=document, error=error)


def report(taken_at: float, answers: list[StatusAnswer]) -> dict[str, Any]:
    return report_json(build_report(ClusterSample(taken_at=taken_at, answers=tuple(answers))))


def draw(*reports: dict[str, Any]) -> list[dict[str, Any]]:
    done = subprocess.run([node_program(), "-e", RUNNER, str(SCRIPT)],
                          input=json.dumps(reports), capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    drawn: list[dict[str, Any]] = json.loads(done.stdout)
    return drawn


def proxy(sent: int, *, pid: int = 10, membership: str = "m1", dropped: int = 0,
          identity: str = "p0", position: int = 0) -> StatusAnswer:
    drops = {"buffer_full": dropped} if dropped else {}
    return answer("proxy", position, status(
        "proxy", identity, pid=pid, membership=membership, lines_in=sent + dropped,
        lines_out=sent, dropped_lines=drops,
        members=[member("aggregator", 0, "a0:8125", sent=sent, dropped=drops)]))


def aggregator(lines: int, *, carbon: tuple[str, ...] = ("c0:2003",),
               **fields: Any) -> StatusAnswer:
    document = status("aggregator", "a0", membership="ring", lines_in=lines, lines_out=lines,
                      members=[member("carbon", i, name, sent=lines)
                               for i, name in enumerate(carbon)])
    document.update(fields)
    return answer("aggregator", 0, document)


P0, A0 = "proxy|http://proxy0:1", "aggregator|http://aggregator0:1"


def test_rates_are_the_growth_between_two_readings() -> None:
    first, second = draw(report(1000.0, [proxy(100), aggregator(100)]),
                         report(1002.0, [proxy(300), aggregator(260)]))
    assert first["edges"][f"{P0} > {A0}"]["rate"] is None  # one reading: no rate yet
    assert second["edges"][f"{P0} > {A0}"]["rate"] == 100.0
    assert second["nodes"][P0]["in_rate"] == 100.0
    assert second["nodes"][A0]["in_rate"] == 80.0
    assert second["edges"][f"{A0} > carbon|c0:2003"]["rate"] == 80.0


def test_a_restarted_daemon_gives_no_rate_for_that_refresh() -> None:
    _, restarted = draw(report(1000.0, [proxy(500), aggregator(100)]),
                        report(1002.0, [proxy(40, pid=11), aggregator(140)]))
    assert restarted["nodes"][P0]["in_rate"] is None
    assert restarted["edges"][f"{P0} > {A0}"]["rate"] is None
    assert restarted["nodes"][A0]["in_rate"] == 20.0


def test_a_daemon_gone_is_down_under_its_last_identity_and_its_nodes_stay() -> None:
    up = [proxy(100), aggregator(100, carbon=("c0:2003", "c1:2003"))]
    gone = [proxy(100), answer("aggregator", 0, error="connect_failed: refused")]
    _, later = draw(report(1000.0, up), report(1002.0, gone))
    assert later["nodes"][A0]["title"] == "a0" and later["nodes"][A0]["state"] == "down"
    assert later["nodes"][A0]["in_rate"] is None
    # No aggregator reports the Carbon nodes now: still drawn, state unknown, no edges.
    assert later["nodes"]["carbon|c1:2003"]["state"] == "unknown"
    assert not [k for k in later["edges"] if "carbon|" in k]


def test_a_proxy_member_nobody_listed_gets_a_placeholder() -> None:
    document = status("proxy", "p0", lines_in=10, lines_out=10,
                      members=[member("aggregator", 0, "a0:8125", sent=4),
                               member("aggregator", 1, "a1:8125", sent=6)])
    [drawn] = draw(report(1000.0, [answer("proxy", 0, document), aggregator(4)]))
    assert drawn["nodes"]["unlisted|1"]["title"] == "a1:8125"
    assert drawn["nodes"]["unlisted|1"]["state"] == "unlisted"
    assert f"{P0} > unlisted|1" in drawn["edges"]


def test_divergence_readiness_and_health_are_drawn() -> None:
    proxies = [proxy(10, identity=f"p{i}", position=i, membership="m2" if i == 2 else "m1")
               for i in range(3)]
    [drawn] = draw(report(1000.0, [*proxies, aggregator(30, ready=False,
                                                        not_ready=["no_carbon"])]))
    assert {k for k, n in drawn["nodes"].items() if n["diverged"]} == {"proxy|http://proxy2:1"}
    assert drawn["nodes"][A0]["state"] == "not-ready"
    [drained] = draw(report(1000.0, [proxy(10), aggregator(30, health="down")]))
    assert drained["nodes"][A0]["state"] == "down"


def test_an_edge_is_dropping_only_while_its_drops_grow() -> None:
    drawn = draw(report(1000.0, [proxy(100), aggregator(100)]),
                 report(1002.0, [proxy(100, dropped=5), aggregator(100)]),
                 report(1004.0, [proxy(100, dropped=5), aggregator(100)]))
    assert [d["edges"][f"{P0} > {A0}"]["dropping"] for d in drawn] == [False, True, False]


def test_aggregators_carry_what_the_proxies_sent_them_and_what_they_received() -> None:
    [drawn] = draw(report(1000.0, [proxy(100), aggregator(90)]))
    assert drawn["nodes"][A0]["intake"] == {"sent": 100, "received": 90, "difference": 10}
    [gone] = draw(report(1000.0, [proxy(100), answer("aggregator", 0, error="refused")]))
    assert gone["nodes"][A0]["intake"] == {"sent": 100, "received": None, "difference": None}
