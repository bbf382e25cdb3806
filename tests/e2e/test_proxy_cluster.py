"""End to end: 2 proxies and 3 aggregators, real processes on 127.0.0.1.

Each aggregator flushes to its own Graphite sink, so a Graphite path written by two
aggregators would show up in two sinks. Metrics are sent round-robin through both proxies.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.shard import shard_index
from harness.client import mgmt_command, send_udp
from harness.daemon import parse_logfmt, wait_until
from harness.port import split_host_port
from harness.sink import GraphiteSink
from harness.tallyd import AggregatorProcess, start_aggregator

pytestmark = pytest.mark.e2e

NAMES = 120
LINES_PER_DATAGRAM = 20


def aggregator_args(sink: GraphiteSink, index: int, *, udp_port: int = 0,
                    mgmt_port: int = 0) -> list[str]:
    return ["--listen", f"udp://127.0.0.1:{udp_port}", "--listen", "tcp://127.0.0.1:0",
            "--carbon", f"127.0.0.1:{sink.port}",
            "--flush-interval", "0.5", "--mgmt-port", str(mgmt_port),
            # Two worker ledgers each: routing must hold whichever worker reads a line.
            "--prefix-stats", f"agg{index}", "--workers", "2"]


class Cluster:
    def __init__(self, start_proxy: Callable[..., Any], forward: str = "udp") -> None:
        self.start_proxy = start_proxy
        self.forward = forward
        self.sinks = [GraphiteSink().start() for _ in range(3)]
        self.aggregators: list[AggregatorProcess] = []
        self.proxies: list[Any] = []
        self.sent = 0

    def start(self) -> None:
        for index, sink in enumerate(self.sinks):
            proc = start_aggregator(aggregator_args(sink, index))
            self.aggregators.append(proc)
        members = []
        for proc in self.aggregators:
            port = proc.udp[1] if self.forward == "udp" else proc.tcp[1]
            members += ["--aggregator", f"127.0.0.1:{port}:{proc.mgmt[1]}"]
        for _ in range(2):
            self.proxies.append(self.start_proxy(
                ["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0", *members,
                 "--forward", self.forward,
                 "--health-interval", "0.2", "--retry-base", "0.05", "--retry-max", "0.3",
                 "--aggregator-buffer-bytes", "2000"]))

    def restart_aggregator(self, index: int, udp_port: int, mgmt_port: int) -> None:
        self.aggregators[index] = start_aggregator(
            aggregator_args(self.sinks[index], index, udp_port=udp_port, mgmt_port=mgmt_port))

    def send(self, prefix: str, rounds: int) -> None:
        """``rounds`` increments of every name, datagrams alternating between proxies."""
        lines = [f"{prefix}.c{i}:1|c".encode() for i in range(NAMES)] * rounds
        datagrams = [b"\n".join(lines[i:i + LINES_PER_DATAGRAM])
                     for i in range(0, len(lines), LINES_PER_DATAGRAM)]
        for number, datagram in enumerate(datagrams):
            send_udp(self.proxies[number % 2].udp, [datagram])

    def totals(self, index: int, prefix: str) -> dict[str, float]:
        """Counter totals (sum of every flush's ``stats_counts`` value) in sink ``index``."""
        totals: dict[str, float] = collections.defaultdict(float)
        for record in self.sinks[index].records():
            path, value, _ = record.line.split(" ")
            if path.startswith(f"stats_counts.{prefix}."):
                totals[path.removeprefix("stats_counts.")] += float(value)
        return totals

    def owner(self, name: str) -> int:
        return shard_index(name.encode(), 3)

    def close(self) -> None:
        for proc in [*self.proxies, *self.aggregators]:
            proc.kill()
        for sink in self.sinks:
            sink.close()


@pytest.fixture(params=["udp"])
def cluster(request: pytest.FixtureRequest,
            proxy_launcher: Callable[..., Any]) -> Iterator[Cluster]:
    c = Cluster(proxy_launcher, request.param)
    try:
        c.start()
        yield c
    finally:
        c.close()


def expected_for(prefix: str, rounds: int, owner: int | None = None) -> dict[str, float]:
    names = {f"{prefix}.c{i}": float(rounds) for i in range(NAMES)}
    return {n: v for n, v in names.items() if owner is None or shard_index(n.encode(), 3) == owner}


@pytest.mark.parametrize("cluster", ["udp", "tcp"], indirect=True)
def test_cluster_every_path_from_one_aggregator_and_totals_exact(cluster: Cluster) -> None:
    assert cluster.proxies[0].fingerprint() == cluster.proxies[1].fingerprint()
    cluster.send("p1", rounds=5)
    for index in range(3):
        wait_until(lambda i=index: cluster.totals(i, "p1") == expected_for("p1", 5, i), 20,
                   message=f"aggregator {index} totals")
    paths = [{r.line.split(" ")[0] for r in sink.records()} for sink in cluster.sinks]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not paths[a] & paths[b], f"written by aggregators {a} and {b}"
    stats = cluster.proxies[0].stats()
    assert (stats["proxy.membership.fingerprint"]
            == cluster.proxies[1].stats()["proxy.membership.fingerprint"])


def test_cluster_stopped_aggregator_drops_counted_others_exact_then_recovers(
    cluster: Cluster,
) -> None:
    cluster.send("p1", rounds=2)
    wait_until(lambda: all(cluster.totals(i, "p1") == expected_for("p1", 2, i)
                           for i in range(3)), 20, message="phase 1 totals")
    udp_port, mgmt_port = cluster.aggregators[1].udp[1], cluster.aggregators[1].mgmt[1]
    assert cluster.aggregators[1].stop() == 0
    wait_until(lambda: all(p.stats()["proxy.forwarder.1.state"] == "down"
                           for p in cluster.proxies), 10, message="proxies see aggregator 1 down")

    cluster.send("p2", rounds=10)
    for index in (0, 2):
        wait_until(lambda i=index: cluster.totals(i, "p2") == expected_for("p2", 10, i), 20,
                   message=f"aggregator {index} totals while 1 is down")
    stats = [p.stats() for p in cluster.proxies]
    dropped = sum(int(s["proxy.forwarder.1.dropped_lines.destination_down"]) for s in stats)
    buffered = sum(int(s["proxy.forwarder.1.buffered_lines"]) for s in stats)
    owned = sum(1 for i in range(NAMES) if cluster.owner(f"p2.c{i}") == 1) * 10
    assert dropped > 0
    assert dropped + buffered == owned  # every line for it is held or counted
    for s in stats:
        assert int(s["proxy.forwarder.0.dropped_lines.destination_down"]) == 0
        assert int(s["proxy.forwarder.2.dropped_lines.destination_down"]) == 0
        assert s["proxy.forwarders.dropped_lines.destination_down"] == (
            s["proxy.forwarder.1.dropped_lines.destination_down"])

    cluster.restart_aggregator(1, udp_port, mgmt_port)
    wait_until(lambda: all(p.stats()["proxy.forwarder.1.state"] == "up"
                           for p in cluster.proxies), 10,
               message="proxies see aggregator 1 up again")
    cluster.send("p3", rounds=3)
    for index in range(3):
        wait_until(lambda i=index: cluster.totals(i, "p3") == expected_for("p3", 3, i), 20,
                   message=f"aggregator {index} totals after the restart")
    # What was buffered during the outage arrived after the restart.
    wait_until(lambda: sum(cluster.totals(1, "p2").values()) == buffered, 10,
               message="buffered lines delivered")


def receive_lines(sink: socket.socket, count: int, timeout: float = 10.0) -> list[bytes]:
    """The lines of the datagrams ``sink`` receives, until ``count`` or ``timeout``."""
    lines: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count and time.monotonic() < deadline:
        try:
            lines += sink.recv(65_535).split(b"\n")
        except TimeoutError:
            pass
    return lines


def test_proxy_processes_share_one_port_and_forward_everything(
    proxy_launcher: Callable[..., Any],
) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.2)
    proc = proxy_launcher(["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0", "--processes",
                           "2", "--aggregator", f"127.0.0.1:{sink.getsockname()[1]}"])
    try:
        wait_until(lambda: proc.log_text(None).count("event=started") == 2, 20,
                   message="both processes started")
        assert len(set(proc.addresses["udp"])) == 1  # one port, two sockets
        assert len(set(proc.addresses["mgmt"])) == 2
        target = split_host_port(proc.addresses["udp"][0])
        for client in range(40):  # distinct source ports: the kernel spreads 4-tuples
            send_udp(target, [b"\n".join(b"proc.c%d:1|c" % (client * 5 + j) for j in range(5))])
        lines = receive_lines(sink, 200)
        assert sorted(lines) == sorted(b"proc.c%d:1|c" % i for i in range(200))
        received = [int(dict(line.split(": ", 1) for line in mgmt_command(
            split_host_port(address), "stats").splitlines() if ": " in line)[
                "proxy.router.received_packets"]) for address in proc.addresses["mgmt"]]
        assert sum(received) == 40 and all(received), received
        assert proc.stop() == 0
    finally:
        proc.kill()
        sink.close()


def test_a_restarted_proxy_process_serves_the_parents_config_when_the_file_is_gone(
    proxy_launcher: Callable[..., Any], tmp_path: Path,
) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.2)
    config = tmp_path / "proxy.toml"
    config.write_text('listen = ["udp://127.0.0.1:0"]\nmgmt_port = 0\nprocesses = 2\n'
                      f'aggregator = ["127.0.0.1:{sink.getsockname()[1]}"]\n'
                      'auth = "token"\nauth_tokens = ["tok"]\n')
    proc = proxy_launcher(["--config", str(config)])
    try:
        wait_until(lambda: proc.log_text(None).count("event=started") == 2, 20,
                   message="both processes started")
        pids = parse_logfmt(proc.wait_for_log("event=supervising", 5))["pids"].split(",")
        config.unlink()
        os.kill(int(pids[0]), signal.SIGKILL)
        wait_until(lambda: proc.log_text(None).count("event=started") == 3, 20,
                   message="the killed process started again")
        assert "event=config_error" not in proc.log_text(None)
        target = split_host_port(proc.addresses["udp"][0])
        for client in range(40):  # both processes, the new one too, strip the token
            send_udp(target, [b"\n".join(b"tok.re.c%d:1|c" % (client * 5 + j)
                                         for j in range(5))])
        lines = receive_lines(sink, 200)
        assert sorted(lines) == sorted(b"re.c%d:1|c" % i for i in range(200))
        assert proc.stop() == 0
    finally:
        proc.kill()
        sink.close()
