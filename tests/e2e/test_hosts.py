"""End to end: every role on a host of its own, clients reaching the proxies by one DNS name.

The hosts are Linux network namespaces on a private bridge (`harness.netns`): a DNS server
(Debian's dnsmasq, `harness.dnsmasq`), 2 proxies, 2 aggregators (2 workers each) and a spare
host for the second aggregator to move to, 2 Carbon hosts and a client. Each daemon is started
with the command docs/deployment.md ("Separate hosts") gives for its role, read from that page,
with shorter timings appended. The Carbon hosts run `harness.sink.GraphiteSink` on port 2003,
which keeps each line with the address of the aggregator that sent it (docs/deployment.md says
why not carbon-cache here).

Checked: the name answers with both proxies' addresses and clients that look it up per send
reach both; a client that resolves once stays on one proxy (docs/dns.md); every counter is
counted exactly once, by the aggregator its position in the list names, on the Carbon node
`tallyd-ring lookup` names; an aggregator whose name moves to a new address is followed by
the proxies without a restart and what they held meanwhile is delivered once.

Needs root (namespaces), iproute2 and dnsmasq-base (tools/bootstrap --test installs both).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from common.shard import shard_index
from harness.checkout import REPO_ROOT
from harness.daemon import DaemonProcess, wait_until
from harness.dnsmasq import Dnsmasq, dnsmasq_available, lookup_command, parse_getent
from harness.netns import Network
from harness.sink import GraphiteSink
from harness.tallyd import AggregatorProcess, ProxyProcess, TallydProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEPLOYMENT_DOC = REPO_ROOT / "docs" / "deployment.md"
DNS_DOC = REPO_ROOT / "docs" / "dns.md"
ZONE = "example.net"
PROXY_NAME = f"statsd.{ZONE}"
#: host -> last octet of its address on 10.213.0.0/24; agg-2-new is where agg-2 moves to.
HOSTS = {"dns": 2, "proxy-1": 11, "proxy-2": 12, "agg-1": 21, "agg-2": 22, "agg-2-new": 23,
         "carbon-1": 31, "carbon-2": 32, "client": 41}
PREFIX = "10.213.0"
AGGREGATORS = ("agg-1", "agg-2")
PROXIES = ("proxy-1", "proxy-2")
CARBONS = ("carbon-1", "carbon-2")
#: What the test appends to the documented commands: shorter timings, nothing else.
AGGREGATOR_TIMINGS = ["--flush-interval", "1s"]
PROXY_TIMINGS = ["--flush-interval", "1s", "--resolve-interval", "0.5"]
AGGREGATOR_HTTP_PORT = 8127
PROXY_HTTP_PORT = 8237
CARBON_PORT = 2003
WAIT_SECONDS = 30.0


def address(host: str) -> str:
    return f"{PREFIX}.{HOSTS[host]}"


def documented_zone(tmp: Path, path: Path = DNS_DOC) -> dict[str, list[str]]:
    """The A records of docs/dns.md's zone, name -> addresses, as BIND's named-checkzone
    reads them (it fails on a zone BIND would refuse)."""
    zone = re.search(rf"<!-- dns: zone {re.escape(ZONE)} -->\n```dns\n(.*?)```",
                     path.read_text(), re.DOTALL)
    assert zone is not None, f"no zone block in {path}"
    zone_file = tmp / f"{ZONE}.zone"
    zone_file.write_text(zone[1])
    result = subprocess.run(["named-checkzone", "-D", "-o", "-", ZONE, str(zone_file)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    out: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[2:4] == ["IN", "A"]:
            out.setdefault(fields[0].rstrip("."), []).append(fields[4])
    return out


def moved(zone: dict[str, list[str]]) -> dict[str, list[str]]:
    """The zone after agg-2's record was changed to its new host's address."""
    return {**zone, f"agg-2.{ZONE}": [address("agg-2-new")]}


def documented_commands(path: Path = DEPLOYMENT_DOC) -> dict[str, str]:
    """role -> the command of the ```sh block after ``<!-- separate-hosts: ROLE -->``, its
    continuation lines joined."""
    blocks = re.findall(r"<!-- separate-hosts: ([a-z]+) -->\n```sh\n(.*?)```", path.read_text(),
                        re.DOTALL)
    return {role: " ".join(body.replace("\\\n", " ").split()) for role, body in blocks}


def program(command: str) -> list[str]:
    """A documented tallyd command as an argv, its program taken from this venv's bin."""
    argv = shlex.split(command)
    executable = Path(sys.executable).parent / argv[0]
    assert executable.exists(), f"{argv[0]} is not installed in {executable.parent}"
    return [str(executable), *argv[1:]]


def test_documented_commands_are_complete() -> None:
    commands = documented_commands()
    assert set(commands) == {"aggregator", "proxy", "client", "lookup"}
    assert commands["aggregator"].startswith("tallyd-aggregator ")
    assert commands["proxy"].startswith("tallyd-proxy ")
    assert PROXY_NAME in commands["client"]
    for role in ("aggregator", "proxy", "lookup"):
        program(commands[role])


def test_documented_zone_names_every_host(tmp_path: Path) -> None:
    if shutil.which("named-checkzone") is None:
        _missing("named-checkzone (bind9-utils)")
    zone = documented_zone(tmp_path)
    assert zone[PROXY_NAME] == [address(p) for p in PROXIES]
    for host in (*AGGREGATORS, *CARBONS):
        assert zone[f"{host}.{ZONE}"] == [address(host)]
    assert zone[f"ns1.{ZONE}"] == [address("dns")]
    commands = " ".join(documented_commands().values())
    used = set(re.findall(rf"[a-z0-9-]+\.{re.escape(ZONE)}", commands))
    assert used <= set(zone), f"names the commands use but the zone lacks: {used - set(zone)}"


# -- the cluster --------------------------------------------------------------------------


@dataclass
class Cluster:
    net: Network
    dns: Dnsmasq
    sinks: dict[str, GraphiteSink]
    zone: dict[str, list[str]]
    aggregators: dict[str, AggregatorProcess] = field(default_factory=dict)
    proxies: dict[str, ProxyProcess] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)

    def http(self, host: str, port: int, path: str) -> tuple[int, bytes]:
        """GET http://127.0.0.1:PORT/PATH as seen from ``host`` (its own loopback)."""
        with self.net.entered(host):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", path)
                answer = conn.getresponse()
                return answer.status, answer.read()
            finally:
                conn.close()

    def status(self, host: str) -> dict[str, Any]:
        port = PROXY_HTTP_PORT if host.startswith("proxy") else AGGREGATOR_HTTP_PORT
        code, body = self.http(host, port, "/status")
        assert code == 200, body
        document: dict[str, Any] = json.loads(body)
        return document

    def wait_ready(self, host: str, proc: TallydProcess, port: int) -> None:
        """The daemon's own readiness: ``event=started``, then /readyz answering 200."""
        proc.wait_started(WAIT_SECONDS)

        def ready() -> bool:
            with contextlib.suppress(OSError):
                return self.http(host, port, "/readyz")[0] == 200
            return False

        wait_until(ready, WAIT_SECONDS, interval=0.1, message=f"{host} /readyz 200")

    def start_aggregator(self, host: str) -> AggregatorProcess:
        argv = [*program(self.commands["aggregator"]), *AGGREGATOR_TIMINGS]
        proc = AggregatorProcess(self.net.argv(host, argv))
        self.aggregators[host] = proc
        self.wait_ready(host, proc, AGGREGATOR_HTTP_PORT)
        return proc

    def start_proxy(self, host: str) -> ProxyProcess:
        argv = [*program(self.commands["proxy"]), *PROXY_TIMINGS]
        proc = ProxyProcess(self.net.argv(host, argv))
        self.proxies[host] = proc
        self.wait_ready(host, proc, PROXY_HTTP_PORT)
        return proc

    def client(self, script: list[str], *, timeout: float = 60.0) -> str:
        result = self.net.run("client", script, timeout=timeout)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def resolve(self, host: str, name: str) -> list[str]:
        return parse_getent(self.net.run(host, lookup_command(name)).stdout)

    def lines_in(self) -> dict[str, int]:
        return {p: int(self.status(p)["totals"]["lines_in"]) for p in PROXIES}


def _prerequisites() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    missing = [tool for tool, ok in (("ip (iproute2)", shutil.which("ip")),
                                     ("unshare (util-linux)", shutil.which("unshare")),
                                     ("dnsmasq (dnsmasq-base)", dnsmasq_available()),
                                     ("named-checkzone (bind9-utils)",
                                      shutil.which("named-checkzone"))) if not ok]
    if missing:
        _missing(", ".join(missing))


def _missing(what: str) -> None:
    message = f"missing {what}: run tools/bootstrap --test as root"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _prerequisites()
    tmp = tmp_path_factory.mktemp("hosts")
    processes: list[DaemonProcess] = []
    sinks: dict[str, GraphiteSink] = {}
    net = Network(PREFIX, dns=HOSTS["dns"])
    try:
        for host, octet in HOSTS.items():
            net.add_host(host, octet)
        zone = documented_zone(tmp)
        dns = Dnsmasq(prefix=net.argv("dns", [], hostname=False), address=address("dns"),
                      zone=ZONE, hosts_file=tmp / "zone.hosts", records=zone)
        processes.append(dns)
        for host in CARBONS:
            with net.entered(host):
                sinks[host] = GraphiteSink("0.0.0.0", port=CARBON_PORT)
            sinks[host].start()
        dns.wait_ready()
        cluster = Cluster(net, dns, sinks, zone=zone, commands=documented_commands())
        try:
            for host in AGGREGATORS:
                processes.append(cluster.start_aggregator(host))
            for host in PROXIES:
                processes.append(cluster.start_proxy(host))
            yield cluster
        finally:
            processes.extend(p for p in [*cluster.aggregators.values(),
                                         *cluster.proxies.values()] if p not in processes)
    finally:
        for proc in reversed(processes):
            if isinstance(proc, AggregatorProcess):
                proc.kill_group()
            else:
                proc.kill()
        for sink in sinks.values():
            sink.close()
        net.close()


# -- what the Carbon hosts received -------------------------------------------------------


@dataclass(frozen=True)
class Point:
    node: str  # the Carbon host that received it
    sender: str  # the address of the aggregator that sent it
    value: float
    timestamp: int


def received(cluster: Cluster) -> dict[str, list[Point]]:
    """Graphite path -> every point the Carbon hosts received for it."""
    out: dict[str, list[Point]] = {}
    for node, sink in cluster.sinks.items():
        for record in sink.records():
            parts = record.line.split()
            if len(parts) != 3:
                continue
            out.setdefault(parts[0], []).append(Point(node, sink.peer(record.connection),
                                                      float(parts[1]), int(parts[2])))
    return out


def ring_nodes(cluster: Cluster, paths: list[str]) -> dict[str, str]:
    """path -> the Carbon host `tallyd-ring lookup` (the documented command) names."""
    lookup = program(cluster.commands["lookup"])
    argv = [*lookup[:lookup.index("--") + 1], *paths]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    nodes = dict(line.split("\t") for line in result.stdout.splitlines())
    return {path: node.split(".", 1)[0] for path, node in nodes.items()}


def counter_total(points: list[Point]) -> float:
    return sum(p.value for p in points)


def wait_counted(cluster: Cluster, expected: dict[str, int]) -> dict[str, list[Point]]:
    """Until every ``stats_counts.NAME`` adds up to its expected count; then one more flush
    of every aggregator is let through, so a second count would show."""
    def complete() -> bool:
        seen = received(cluster)
        return all(counter_total(seen.get(f"stats_counts.{n}", [])) >= count
                   for n, count in expected.items())

    wait_until(complete, WAIT_SECONDS, interval=0.2, message="every counter in Carbon")
    latest = max(p.timestamp for pts in received(cluster).values() for p in pts)
    wait_until(lambda: all(any(r.timestamp is not None and r.timestamp > latest + 1
                               for r in sink.records()) for sink in cluster.sinks.values()),
               WAIT_SECONDS, interval=0.2, message="two more flushes")
    return received(cluster)


def check_counted(cluster: Cluster, seen: dict[str, list[Point]], expected: dict[str, int],
                  owners: dict[str, str]) -> None:
    """Each counter once, written only by its owner (an address), only on its ring node."""
    paths = [f"{prefix}.{n}" for n in expected for prefix in ("stats_counts", "stats")]
    nodes = ring_nodes(cluster, paths)
    assert set(nodes.values()) == set(CARBONS), "the names should use both Carbon nodes"
    for name, count in expected.items():
        counts = seen[f"stats_counts.{name}"]
        assert counter_total(counts) == count, (name, counts)
        for path in (f"stats_counts.{name}", f"stats.{name}"):
            assert {p.sender for p in seen[path]} == {owners[name]}, (path, seen[path])
            assert {p.node for p in seen[path]} == {nodes[path]}, (path, seen[path])


def owner_addresses(names: list[str], agg2: str) -> dict[str, str]:
    hosts = ("agg-1", agg2)
    return {n: address(hosts[shard_index(n.encode(), len(hosts))]) for n in names}


def send_per_lookup(cluster: Cluster, names: list[str], repeats: int) -> None:
    """Bash's /dev/udp, as the documented client: every send looks the name up again."""
    line = cluster.commands["client"]
    script = (f"for i in $(seq {repeats}); do for n in {' '.join(names)}; do "
              + line.replace("deploy.hits", "$n") + "; done; done")
    cluster.client(["bash", "-c", script])


# -- the tests ----------------------------------------------------------------------------


def test_each_daemon_is_its_own_host(cluster: Cluster) -> None:
    for host in (*PROXIES, *AGGREGATORS):
        assert cluster.status(host)["identity"] == host  # the host name, as on a real host
    assert len({proc.fingerprint() for proc in cluster.proxies.values()}) == 1


def test_clients_reach_both_proxies_by_one_name(cluster: Cluster) -> None:
    answers = [cluster.resolve("client", PROXY_NAME) for _ in range(4)]
    assert all(sorted(a) == sorted(address(p) for p in PROXIES) for a in answers), answers
    assert len({a[0] for a in answers}) == 2, f"dnsmasq should rotate the order: {answers}"
    before = cluster.lines_in()
    names = [f"rr.n{i}" for i in range(8)]
    send_per_lookup(cluster, names, repeats=5)
    total = len(names) * 5

    def delivered() -> bool:
        now = cluster.lines_in()
        return sum(now[p] - before[p] for p in PROXIES) >= total

    wait_until(delivered, WAIT_SECONDS, interval=0.2, message="the lines at the proxies")
    after = cluster.lines_in()
    share = {p: after[p] - before[p] for p in PROXIES}
    assert sum(share.values()) == total and min(share.values()) > 0, share


def test_client_resolving_once_sticks_to_one_proxy(cluster: Cluster) -> None:
    before = cluster.lines_in()
    count = 40
    cluster.client([sys.executable, "-c",
                    "import statsd\n"
                    f"client = statsd.StatsClient({PROXY_NAME!r}, 8125)\n"
                    f"for _ in range({count}): client.incr('sticky.hits')\n"])
    wait_until(lambda: sum(cluster.lines_in().values()) - sum(before.values()) >= count,
               WAIT_SECONDS, interval=0.2, message="the lines at the proxies")
    after = cluster.lines_in()
    assert sorted(after[p] - before[p] for p in PROXIES) == [0, count]


def test_every_counter_once_by_its_aggregator_on_its_carbon_node(cluster: Cluster) -> None:
    names = [f"hosts.web{i:02d}.requests" for i in range(16)]
    send_per_lookup(cluster, names, repeats=3)
    cluster.client(["bash", "-c", cluster.commands["client"]])  # the documented line itself
    expected = dict.fromkeys(names, 3)
    expected["deploy.hits"] = 1
    owners = owner_addresses(list(expected), "agg-2")
    assert set(owners.values()) == {address(a) for a in AGGREGATORS}
    seen = wait_counted(cluster, expected)
    check_counted(cluster, seen, expected, owners)


def test_moved_aggregator_followed_without_restart(cluster: Cluster) -> None:
    proxies = dict(cluster.proxies)
    old = cluster.aggregators["agg-2"]
    assert old.stop() == 0
    wait_until(lambda: all(cluster.status(p)["members"][1]["state"] == "down" for p in PROXIES),
               WAIT_SECONDS, interval=0.2, message="both proxies see agg-2 down")
    names = [f"moved.m{i:02d}" for i in range(12)]
    send_per_lookup(cluster, names, repeats=2)  # agg-2's share waits in the proxies
    wait_until(lambda: sum(int(cluster.status(p)["totals"]["buffered_lines"])
                           for p in PROXIES) > 0,
               WAIT_SECONDS, interval=0.2, message="lines held for agg-2")

    cluster.start_aggregator("agg-2-new")
    cluster.dns.set_records(moved(cluster.zone))
    new = f"{address('agg-2-new')}:8125"
    wait_until(lambda: all(cluster.resolve(p, f"agg-2.{ZONE}") == [address("agg-2-new")]
                           for p in PROXIES), WAIT_SECONDS, message="the record changed")

    def followed() -> bool:
        members = [cluster.status(p)["members"][1] for p in PROXIES]
        return all(m["address"] == new and m["state"] == "up" for m in members)

    wait_until(followed, WAIT_SECONDS, interval=0.2, message="both proxies on agg-2's new address")
    expected = dict.fromkeys(names, 2)
    seen = wait_counted(cluster, expected)
    check_counted(cluster, seen, expected, owner_addresses(names, "agg-2-new"))
    for host, proc in proxies.items():
        assert proc.returncode is None, f"{host} restarted or exited"
        proc.wait_for_log(rf"event=aggregator_address_changed .*address={re.escape(new)}", 5)
        totals = cluster.status(host)["totals"]
        assert totals["buffered_lines"] == 0 and not any(totals["dropped_lines"].values()), totals
