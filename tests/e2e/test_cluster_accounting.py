"""End to end: ``tallyd-ring cluster`` (the console script) over a real cluster on
127.0.0.1: 2 proxies -> 2 aggregators (W=1, and W=2) -> 1 Graphite sink, every daemon's HTTP
admin on a free port.

Known traffic first: every line is accounted for and the tool exits 0. Then one aggregator is
SIGKILLed and more known traffic is sent: the tool exits 1 and names exactly the lines lost
and where: per proxy, the lines it dropped for that aggregator (``destination_down``) plus
the ones it still holds for it equal the lines sent through that proxy to names the stopped
aggregator owns; nothing else is lost, and the stopped aggregator is named unreachable.

And membership: a third proxy with another aggregator list is named diverged; read from a
ring file's ``[cluster]`` table, the aggregators' Carbon ring matches the file's ``carbon``,
and a file with another ring names both aggregators.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.shard import shard_index
from harness.client import send_udp
from harness.daemon import wait_until
from harness.sink import GraphiteSink
from harness.tallyd import AggregatorProcess, ProxyProcess, start_aggregator, start_proxy

pytestmark = pytest.mark.e2e

TALLYD_RING = Path(sys.executable).parent / "tallyd-ring"
NAMES = 120
LINES_PER_DATAGRAM = 20
STOPPED = 1  # the aggregator killed in the second phase


class Cluster:
    """The daemons, the sink, and the lines sent through each proxy per aggregator."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.sink = GraphiteSink().start()
        self.aggregators: list[AggregatorProcess] = []
        self.proxies: list[ProxyProcess] = []
        #: (proxy, aggregator) -> lines sent through that proxy to names it owns
        self.sent: collections.Counter[tuple[int, int]] = collections.Counter()

    def start(self) -> None:
        for index in range(2):
            self.aggregators.append(start_aggregator(
                ["--listen", "udp://127.0.0.1:0", "--carbon", f"127.0.0.1:{self.sink.port}",
                 "--flush-interval", "0.5", "--mgmt-port", "0", "--identity", f"a{index}",
                 "--workers", str(self.workers)]))
        members = []
        for proc in self.aggregators:
            members += ["--aggregator", f"127.0.0.1:{proc.udp[1]}:{proc.mgmt[1]}"]
        for index in range(2):
            self.proxies.append(start_proxy(
                ["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0", *members,
                 "--identity", f"p{index}", "--health-interval", "0.2", "--retry-base", "0.05",
                 "--retry-max", "0.3", "--aggregator-buffer-bytes", "2000",
                 # The proxies' own gauges travel like client lines, to whichever aggregator
                 # owns their names: off, so that the lines for the stopped aggregator are
                 # exactly the test's. Their interval also paces the /status rates.
                 "--no-self-metrics", "--flush-interval", "1"]))

    def urls(self) -> list[str]:
        args = []
        for flag, procs in (("--proxy", self.proxies), ("--aggregator", self.aggregators)):
            for proc in procs:
                host, port = proc.http
                args += [flag, f"http://{host}:{port}"]
        return args

    def send(self, prefix: str, rounds: int) -> None:
        """``rounds`` increments of every name, datagrams alternating between the proxies."""
        lines = [f"{prefix}.c{i}" for i in range(NAMES)] * rounds
        for number, start in enumerate(range(0, len(lines), LINES_PER_DATAGRAM)):
            chunk = lines[start:start + LINES_PER_DATAGRAM]
            proxy = number % 2
            for name in chunk:
                self.sent[proxy, shard_index(name.encode(), 2)] += 1
            send_udp(self.proxies[proxy].udp, [b"\n".join(f"{n}:1|c".encode() for n in chunk)])

    def through(self, proxy: int) -> int:
        """Lines sent through ``proxy``."""
        return sum(n for (p, _), n in self.sent.items() if p == proxy)

    def total(self, prefix: str) -> float:
        return sum(float(r.line.split(" ")[1]) for r in self.sink.records()
                   if r.line.startswith(f"stats_counts.{prefix}."))

    def owned(self, prefix: str, aggregator: int, rounds: int) -> int:
        return sum(rounds for i in range(NAMES)
                   if shard_index(f"{prefix}.c{i}".encode(), 2) == aggregator)

    def close(self) -> None:
        for proc in [*self.proxies, *self.aggregators]:
            proc.kill()
        self.sink.close()


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(getattr(request, "param", 1))
    try:
        c.start()
        yield c
    finally:
        c.close()


def run_tool(*args: str) -> tuple[int, str]:
    result = subprocess.run([str(TALLYD_RING), "cluster", *args], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, result.stdout


def balanced(cluster: Cluster) -> bool:
    """Every proxy holds nothing and every reachable aggregator counted what was sent it."""
    _, out = run_tool(*cluster.urls(), "--json")
    report = json.loads(out)
    return all(i["difference"] == 0 for i in report["intake"]) and not any(
        f["kind"] == "in_flight" for f in report["findings"])


def lost(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["kind"] == "lost"]


@pytest.mark.parametrize("cluster", [1, 2], indirect=True, ids=["W=1", "W=2"])
def test_cluster_names_exactly_the_lines_lost_to_a_stopped_aggregator(
        cluster: Cluster) -> None:
    cluster.send("p1", rounds=3)
    wait_until(lambda: cluster.total("p1") == 3 * NAMES, 20, message="phase 1 at the sink")
    wait_until(lambda: balanced(cluster), 10, message="every tier balanced")
    code, out = run_tool(*cluster.urls())
    assert code == 0, out
    assert out.rstrip().endswith("cluster: ok")
    code, out = run_tool(*cluster.urls(), "--json")
    clean = json.loads(out)
    assert code == 0 and clean["ok"] and clean["summary"]["lines_lost"] == 0
    assert [i["received"] for i in clean["intake"]] == [
        cluster.owned("p1", a, 3) for a in range(2)]
    assert clean["tiers"]["proxy"]["totals"]["lines_in"] == 3 * NAMES
    assert len(clean["fingerprints"]["proxy"]) == 1  # both proxies agree on the list
    [node] = clean["carbon_nodes"]
    assert node["points_sent"] == sum(
        d["totals"]["points_sent"] for d in clean["daemons"] if d["tier"] == "aggregator")

    dead = cluster.aggregators[STOPPED]
    dead_url = "http://{}:{}".format(*dead.http)
    before = dict(cluster.sent)
    dead.kill_group()
    wait_until(lambda: all(p.status()["members"][STOPPED]["state"] == "down"
                           for p in cluster.proxies), 10, message="proxies see it down")
    cluster.send("p2", rounds=10)
    wait_until(lambda: cluster.total("p2") == cluster.owned("p2", 0, 10), 20,
               message="the live aggregator's share at the sink")
    wait_until(lambda: all(p.status()["totals"]["lines_in"] == cluster.through(i)
                           for i, p in enumerate(cluster.proxies)), 10,
               message="proxies read everything")

    code, out = run_tool(*cluster.urls(), "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    [unreachable] = [f for f in report["findings"] if f["kind"] == "unreachable"]
    assert unreachable["daemon"] == dead_url
    statuses = [p.status() for p in cluster.proxies]
    held = 0
    for index, doc in enumerate(statuses):
        member = doc["members"][STOPPED]
        after_stop = cluster.sent[index, STOPPED] - before.get((index, STOPPED), 0)
        dropped = member["dropped_lines"]["destination_down"]
        # Every line sent through this proxy to the stopped aggregator's names since it
        # stopped is dropped or held: none was lost unaccounted.
        assert dropped + member["buffered_lines"] == after_stop > 0
        assert dropped > 0
        held += member["buffered_lines"]
        assert member["dropped_lines"]["buffer_full"] == 0
    found = [(f["daemon"], f["member"], f["reason"], f["count"], f["unit"])
             for f in lost(report)]
    proxy_urls = ["http://{}:{}".format(*p.http) for p in cluster.proxies]
    member_name = statuses[0]["members"][STOPPED]["name"]
    assert found == [(proxy_urls[i], member_name, "destination_down",
                      statuses[i]["members"][STOPPED]["dropped_lines"]["destination_down"],
                      "lines") for i in range(2)]
    assert report["summary"]["lines_lost"] == sum(count for *_, count, _ in found)
    buffered = [f for f in report["findings"] if f["kind"] == "buffered"]
    assert sum(f["count"] for f in buffered) == held
    [live, stopped] = report["intake"]
    assert live["difference"] == 0 and stopped["received"] is None
    assert report["between"]["difference"] == 0 and report["between"]["unread"] == 1
    assert stopped["dropped_at_proxies"]["destination_down"] == report["summary"]["lines_lost"]

    code, text = run_tool(*cluster.urls())
    assert code == 1
    for i in range(2):
        count = statuses[i]["members"][STOPPED]["dropped_lines"]["destination_down"]
        assert (f"LOST {count} lines: proxy p{i} ({proxy_urls[i]}) -> aggregator "
                f"[{STOPPED}] {member_name}: destination_down") in text
    assert f"UNREACHABLE: aggregator {dead_url}: unreachable: connect_failed" in text

    # Over a window with no traffic nothing more is lost; the dead aggregator still counts.
    code, out = run_tool(*cluster.urls(), "--json", "--interval", "1")
    window = json.loads(out)
    assert code == 1 and window["window_seconds"] >= 1
    assert window["summary"]["lines_lost"] == 0 and window["summary"]["unreachable"] == 1


def test_cluster_names_a_proxy_with_another_aggregator_list_and_checks_the_ring(
        cluster: Cluster, tmp_path: Path) -> None:
    first = cluster.aggregators[0]
    odd = start_proxy(["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0",
                       "--aggregator", f"127.0.0.1:{first.udp[1]}:{first.mgmt[1]}",
                       "--identity", "odd", "--no-self-metrics"])
    cluster.proxies.append(odd)  # closed with the cluster
    urls = cluster.urls()
    proxies = [u for flag, u in zip(urls[::2], urls[1::2], strict=True) if flag == "--proxy"]
    aggregators = [u for flag, u in zip(urls[::2], urls[1::2], strict=True)
                   if flag == "--aggregator"]
    ring = tmp_path / "ring.toml"
    table = (f"[cluster]\nproxies = {json.dumps(proxies)}\n"
             f"aggregators = {json.dumps(aggregators)}\n")
    ring.write_text(f'carbon = ["127.0.0.1:{cluster.sink.port}"]\n' + table)
    code, out = run_tool("--ring", str(ring), "--json")
    report = json.loads(out)
    diverged = [f for f in report["findings"] if f["kind"] == "diverged"]
    assert code == 1 and [f["daemon"] for f in diverged] == [proxies[2]]
    assert "odd" in diverged[0]["where"]
    assert report["summary"]["unreachable"] == 0 and report["summary"]["lines_lost"] == 0

    # The aggregators' ring is not the ring file's: both are named.
    ring.write_text('carbon = ["127.0.0.1:2003:x", "127.0.0.1:2004:y"]\n' + table.replace(
        f', "{proxies[2]}"', ""))
    code, out = run_tool("--ring", str(ring), "--json")
    diverged = [f["daemon"] for f in json.loads(out)["findings"] if f["kind"] == "diverged"]
    assert code == 1 and diverged == aggregators
