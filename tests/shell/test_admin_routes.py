"""The admin routes (common.admin) served on real loopback sockets by run_admin_server.

A small fake `AdminSource` stands in for a daemon; the clients are common.httpclient and raw
trio streams (a client that sends half a request). Time is real: the server's limits race
real sockets.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from common.admin.prometheus import CONTENT_TYPE, format_readings
from common.admin.server import open_admin_listeners, parse_http_address, run_admin_server
from common.errors import ConfigError
from common.httpclient import request
from common.netstat import udp_drops_total
from common.stats import COUNTER, Reading
from proxy.admin import format_self_lines
from ringtool.agent import Agent, AgentConfig, serve_agent


class FakeSource:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.status_calls = 0

    def not_ready(self) -> list[str]:
        return list(self.reasons)

    async def status(self) -> dict[str, Any]:
        self.status_calls += 1
        return {"schema": 1, "role": "proxy", "calls": self.status_calls}

    async def metrics(self) -> bytes:
        return format_readings([Reading("proxy.router.received_lines", 5, COUNTER, "lines",
                                        role="proxy", component="router",
                                        measure="received_lines")])

    async def route(self, name: str) -> dict[str, Any] | None:
        return None if name == "nowhere" else {"name": name}


async def start(nursery: trio.Nursery, source: FakeSource) -> str:
    listeners = await open_admin_listeners("127.0.0.1:0")
    host, port = await nursery.start(run_admin_server, listeners, source)
    return f"http://{host}:{port}"


async def test_every_endpoint_answers_with_its_code_and_type(nursery: trio.Nursery) -> None:
    source = FakeSource()
    url = await start(nursery, source)
    assert (await request("GET", url + "/healthz"))[0::2] == (200, b"ok\n")
    status, headers, body = await request("GET", url + "/status")
    assert (status, json.loads(body)["role"]) == (200, "proxy")
    assert ("content-type", "application/json") in headers
    status, headers, body = await request("GET", url + "/metrics")
    assert status == 200 and ("content-type", CONTENT_TYPE) in headers
    (family,) = text_string_to_metric_families(body.decode())
    assert (family.name, family.samples[0].value) == ("tallyd_proxy_router_received_lines",
                                                      5.0)
    status, _, body = await request("GET", url + "/route/a%2Eb")
    assert (status, json.loads(body)) == (200, {"name": "a.b"})
    assert (await request("GET", url + "/route/nowhere"))[0] == 404
    assert (await request("GET", url + "/route/%zz"))[0] == 400
    assert (await request("GET", url + "/nothing"))[0] == 404
    assert (await request("POST", url + "/status"))[0] == 405


async def test_readyz_is_503_with_the_reasons(nursery: trio.Nursery) -> None:
    source = FakeSource()
    url = await start(nursery, source)
    status, _, body = await request("GET", url + "/readyz")
    assert (status, json.loads(body)) == (200, {"ready": True, "not_ready": []})
    source.reasons = ["health_down", "no_aggregator_up"]
    status, _, body = await request("GET", url + "/readyz")
    assert (status, json.loads(body)["not_ready"]) == (503, ["health_down",
                                                             "no_aggregator_up"])


async def test_a_slow_client_does_not_block_the_others(nursery: trio.Nursery) -> None:
    url = await start(nursery, FakeSource())
    host, port = url.removeprefix("http://").split(":")
    stalled = [await trio.open_tcp_stream(host, int(port)) for _ in range(5)]
    for stream in stalled:
        await stream.send_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # never finished
    with trio.fail_after(2):
        assert (await request("GET", url + "/healthz"))[0] == 200
    for stream in stalled:
        await stream.aclose()


async def test_a_huge_head_is_431(nursery: trio.Nursery) -> None:
    url = await start(nursery, FakeSource())
    status, _, _ = await request("GET", url + "/status",
                                 headers=[("x-big", "y" * 20_000)])
    assert status == 431


def test_http_address_parses_host_port_or_off() -> None:
    assert parse_http_address("") is None
    assert parse_http_address("127.0.0.1:8127") == ("127.0.0.1", 8127)
    assert parse_http_address("[::1]:0") == ("::1", 0)
    for bad in ("127.0.0.1", "127.0.0.1:x", "h:1:2"):
        try:
            parse_http_address(bad)
        except ConfigError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


async def test_the_ring_agent_serves_the_admin_without_a_token(nursery: trio.Nursery,
                                                               tmp_path: Path) -> None:
    agent = Agent(AgentConfig(data_dir=tmp_path, host="127.0.0.1", port=0, token="secret"))
    host, port = await nursery.start(serve_agent, agent)
    url = f"http://{host}:{port}"
    assert (await request("GET", url + "/files"))[0] == 401  # the token still guards files
    assert (await request("GET", url + "/healthz"))[0] == 200
    assert (await request("GET", url + "/readyz"))[0] == 200
    status, _, body = await request("GET", url + "/status")
    doc = json.loads(body)
    assert (status, doc["role"], doc["flush_interval"], doc["members"]) == (
        200, "ring-agent", None, [])
    assert doc["figures"]["ring.agent.refused.unauthorized"] == 1
    status, _, body = await request("GET", url + "/metrics")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"tallyd_ring_agent_refused", "tallyd_ring_http_responses"} <= names
    assert (await request("GET", url + "/route/x"))[0] == 404


def test_kernel_drops_of_an_unread_socket_are_counted() -> None:
    """A socket nobody reads, with a small receive buffer: the kernel drops datagrams past
    it, and the drops column of /proc/net/udp says how many."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    receiver.bind(("127.0.0.1", 0))
    with receiver, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        assert udp_drops_total([receiver]) == 0
        for _ in range(500):
            sender.sendto(b"x" * 512, receiver.getsockname())
        drops = udp_drops_total([receiver])
        assert drops > 0
        assert udp_drops_total([receiver, receiver]) == 2 * drops


def test_proxy_self_lines_are_gauges_named_by_role_and_identity() -> None:
    readings = [Reading("proxy.router.received_lines", 12, COUNTER),
                Reading("proxy.forwarder.0.buffered_lines", 1.5, "level"),
                Reading("proxy.membership.fingerprint", "abc", "text")]
    assert format_self_lines("edge", readings) == (
        b"tallyd.proxy.edge.router.received_lines:12|g\n"
        b"tallyd.proxy.edge.forwarder.0.buffered_lines:1.5|g")
    assert format_self_lines("edge", readings[:1], token="tok") == (
        b"tok.tallyd.proxy.edge.router.received_lines:12|g")
