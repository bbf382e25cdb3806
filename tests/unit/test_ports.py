"""Each role's default ports: disjoint, so a proxy and an aggregator run on one host without
flags, and listed in one table in docs/operations.md."""

from __future__ import annotations

from pathlib import Path

from aggregator.config import AggregatorConfig
from common.address import ListenURL
from proxy.config import ProxyConfig

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
#: Enough proxy processes for any host here (each adds an admin port, mgmt_port + i).
PROXY_PROCESSES = 64


def bound_ports(listen: tuple[ListenURL, ...], mgmt: list[int]) -> set[tuple[str, int]]:
    """The (protocol, port) pairs a role binds by default (tcp for stream URLs and admin)."""
    ports = {("tcp" if url.is_stream else "udp", url.port) for url in listen}
    return ports | {("tcp", port) for port in mgmt}


def http_port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_the_roles_default_ports_do_not_collide() -> None:
    aggregator, proxy = AggregatorConfig(), ProxyConfig()
    mine = bound_ports(aggregator.listen, [aggregator.mgmt_port, http_port(aggregator.http)])
    theirs = bound_ports(proxy.listen,
                         [port + i for i in range(PROXY_PROCESSES)
                          for port in (proxy.mgmt_port, http_port(proxy.http))])
    assert len(theirs) == 1 + 2 * PROXY_PROCESSES  # no process's port is another's
    # Etsy statsd's, for a drop-in replacement, and the HTTP admin beside them.
    assert mine == {("udp", 8125), ("tcp", 8126), ("tcp", 8127)}
    assert not mine & theirs
    assert not {port for _, port in mine} & {port for _, port in theirs}  # not even by number


def test_the_ports_table_in_operations_md_is_the_defaults() -> None:
    text = OPERATIONS.read_text()
    table = text.split("\n## Ports\n", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()
            if line.startswith("| `tallyd-")}
    for role, config in (("tallyd-aggregator", AggregatorConfig()),
                         ("tallyd-proxy", ProxyConfig())):
        row = rows[f"`{role}`"]
        assert f"`{config.listen[0]}`" in row, row
        assert f"`{config.mgmt_address}:{config.mgmt_port}`" in row, row
        assert f"`{config.http}`" in row, row
