"""proxy.server.serve in-process, with fake aggregators (UDP/TCP sinks) on 127.0.0.1; and
what a ``--processes`` child is handed (proxy.cli)."""

from __future__ import annotations

import json
import socket as stdsocket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from common.config import config_from_mapping
from common.listener import BoundAddresses
from common.shard import shard_index, worker_index
from common.stats import COUNTER, TEXT, Reading
from common.supervisor import WORKER_ENV
from harness.client import mgmt_stats
from proxy import cli
from proxy.cli import ProcessSet, config_description, config_from_description, run_child
from proxy.config import ProxyConfig
from proxy.forwarders.base import SHUTDOWN
from proxy.forwarders.udp import UdpForwarder
from proxy.membership import Membership, parse_aggregator
from proxy.mgmt import ProxyMgmt
from proxy.server import serve


class UdpSink:
    """A fake aggregator: records every datagram it receives."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        self.datagrams: list[bytes] = []
        self.port = 0

    async def bind(self, port: int = 0) -> UdpSink:
        await self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        return self

    async def run(self) -> None:
        while True:
            data = await self.sock.recv(65_535)
            if data:
                self.datagrams.append(data)

    @property
    def lines(self) -> list[bytes]:
        return [line for d in self.datagrams for line in d.split(b"\n")]


def make_config(aggregators: list[str], **values: Any) -> ProxyConfig:
    mapping = {"listen": ["udp://127.0.0.1:0"], "aggregator": aggregators, "mgmt_port": 0,
               "http": "127.0.0.1:0", "self_metrics": False, "udp_receive_buffer_bytes": 0,
               "retry_base": 0.02, "retry_max": 0.1, **values}
    return config_from_mapping(ProxyConfig, mapping)


@asynccontextmanager
async def running_proxy(config: ProxyConfig, sinks: list[UdpSink] = ()  # type: ignore[assignment]
                        ) -> AsyncIterator[tuple[BoundAddresses, trio.Event]]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for sink in sinks:
            nursery.start_soon(sink.run)
        addresses = await nursery.start(lambda task_status: serve(
            config, task_status=task_status, shutdown_trigger=stop.wait))
        yield addresses, stop
        stop.set()
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    for sink in sinks:
        sink.sock.close()


async def send_udp(address: str, packets: list[bytes]) -> None:
    host, _, port = address.rpartition(":")
    sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    with sock:
        for packet in packets:
            await sock.sendto(packet, (host, int(port)))


async def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll a condition on state that other tasks and the kernel change."""
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


def lines_for(n: int, count: int, start: int = 0) -> list[bytes]:
    return [b"svc.m%d:%d|c" % (i % 37, i) for i in range(start, start + count)]


async def test_serve_routes_each_line_to_its_aggregator_unchanged_in_order() -> None:
    sinks = [await UdpSink().bind() for _ in range(3)]
    config = make_config([f"127.0.0.1:{s.port}" for s in sinks])
    lines = [*lines_for(3, 300), b"a b/c:1|c|#k:v", b"a_b-c:2|c"]
    async with running_proxy(config, sinks) as (addresses, _):
        await send_udp(addresses.first("udp"),
                       [b"\n".join(lines[i:i + 20]) for i in range(0, len(lines), 20)])
        await wait_for(lambda: sum(len(s.lines) for s in sinks) == len(lines))
    for index, sink in enumerate(sinks):
        expected = [line for line in lines
                    if shard_index(line.split(b":")[0].replace(b" ", b"_").replace(b"/", b"-"),
                                   3) == index]
        assert sink.lines == expected
    assert sum(b"a b/c:1|c|#k:v" in s.lines and b"a_b-c:2|c" in s.lines for s in sinks) == 1


async def test_serve_packs_datagrams_within_limit() -> None:
    sink = await UdpSink().bind()
    config = make_config([f"127.0.0.1:{sink.port}"], max_datagram_bytes=100)
    lines = lines_for(1, 200)
    async with running_proxy(config, [sink]) as (addresses, _):
        await send_udp(addresses.first("udp"), [b"\n".join(lines[i:i + 50])
                                                for i in range(0, 200, 50)])
        await wait_for(lambda: len(sink.lines) == 200)
    assert sink.lines == lines
    assert all(len(d) <= 100 for d in sink.datagrams)
    assert len(sink.datagrams) < 200 / 2  # packed, not one line per datagram


async def test_serve_down_aggregator_buffers_drops_counted_and_recovers() -> None:
    sinks = [await UdpSink().bind() for _ in range(2)]
    config = make_config([f"127.0.0.1:{s.port}" for s in sinks],
                         aggregator_buffer_bytes=300, max_batch_delay_ms=0)
    down_port = sinks[1].port
    sinks[1].sock.close()
    lines = [b"k%d:1|c" % i for i in range(400)]
    mine = [line for line in lines if shard_index(line.split(b":")[0], 2) == 0]
    async with running_proxy(config, sinks[:1]) as (addresses, _):
        for start in range(0, 400, 10):
            await send_udp(addresses.first("udp"), [b"\n".join(lines[start:start + 10])])
            await trio.sleep(0.002)
        await wait_for(lambda: len(sinks[0].lines) == len(mine))
        stats = await mgmt_stats(addresses.mgmt)
        assert stats["proxy.forwarder.1.state"] == "down"
        assert int(stats["proxy.forwarder.1.dropped_lines.destination_down"]) > 0
        assert stats["proxy.forwarder.0.state"] == "up"
        assert int(stats["proxy.forwarder.0.dropped_lines.destination_down"]) == 0
        dropped = int(stats["proxy.forwarder.1.dropped_lines.destination_down"])
        buffered = int(stats["proxy.forwarder.1.buffered_lines"])
        sent = int(stats["proxy.forwarder.1.sent_lines"])
        assert sent + buffered + dropped == len(lines) - len(mine)
        assert int(stats["proxy.forwarders.sent_lines"]) == (
            int(stats["proxy.forwarder.0.sent_lines"]) + sent)
        assert int(stats["proxy.forwarders.dropped_lines.destination_down"]) == dropped

        back = await UdpSink().bind(down_port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(back.run)
            await wait_for(lambda: len(back.lines) >= buffered)
            extra = [b"late%d:1|c" % i for i in range(40)
                     if shard_index(b"late%d" % i, 2) == 1]
            await send_udp(addresses.first("udp"), [b"\n".join(extra)])
            await wait_for(lambda: back.lines[-len(extra):] == extra)
            nursery.cancel_scope.cancel()
        back.sock.close()
        stats = await mgmt_stats(addresses.mgmt)
        assert stats["proxy.forwarder.1.state"] == "up"
    assert sinks[0].lines == mine


async def test_serve_tcp_forwarding_uses_one_newline_framed_connection() -> None:
    received: list[bytes] = []
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        async for chunk in stream:
            received.append(chunk)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        config = make_config([f"127.0.0.1:{port}"], forward="tcp")
        lines = lines_for(1, 500)
        async with running_proxy(config) as (addresses, _):
            for start in range(0, 500, 25):
                await send_udp(addresses.first("udp"), [b"\n".join(lines[start:start + 25])])
            await wait_for(lambda: b"".join(received).count(b"\n") == 500)
        nursery.cancel_scope.cancel()
    data = b"".join(received)
    assert data.endswith(b"\n")
    assert data.split(b"\n")[:-1] == lines
    assert connections == 1


async def test_serve_token_auth_forwards_only_authenticated_lines_stripped() -> None:
    sink = await UdpSink().bind()
    config = make_config([f"127.0.0.1:{sink.port}"], auth="token", auth_tokens=["tok"],
                         auth_revoked_tokens=["old"])
    async with running_proxy(config, [sink]) as (addresses, _):
        await send_udp(addresses.first("udp"), [b"tok.a:1|c\nold.b:1|c\nc:1|c\nx.d:1|c",
                                                b"tok.e:2|g"])
        await wait_for(lambda: len(sink.lines) == 2)
        stats = await mgmt_stats(addresses.mgmt)
    assert sink.lines == [b"a:1|c", b"e:2|g"]
    assert (stats["proxy.router.received_lines"],
            stats["proxy.forwarders.sent_lines"]) == ("5", "2")
    assert (stats["proxy.auth.refused_lines.missing"], stats["proxy.auth.refused_lines.invalid"],
            stats["proxy.auth.refused_lines.revoked"],
            stats["proxy.forwarders.dropped_lines.auth"]) == ("1", "1", "1", "3")
    assert stats["proxy.router.dropped_lines.auth"] == "3"


async def test_serve_graceful_stop_sends_lines_still_held_back() -> None:
    sink = await UdpSink().bind()
    config = make_config([f"127.0.0.1:{sink.port}"], max_batch_delay_ms=1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.run)
        stop = trio.Event()
        addresses = await nursery.start(lambda task_status: serve(
            config, task_status=task_status, shutdown_trigger=stop.wait))
        await send_udp(addresses.first("udp"), [b"held:1|c"])
        await trio.sleep(0.1)
        assert sink.lines == []  # still waiting for more lines
        stop.set()
        await wait_for(lambda: sink.lines == [b"held:1|c"])
        nursery.cancel_scope.cancel()
    sink.sock.close()


async def test_serve_stream_listener_forwards_tcp_client_lines() -> None:
    sink = await UdpSink().bind()
    config = make_config([f"127.0.0.1:{sink.port}"], listen=["tcp://127.0.0.1:0"])
    async with running_proxy(config, [sink]) as (addresses, _):
        host, _, port = addresses.first("tcp").rpartition(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"a:1|c\nb:2|c\nc:3")
            await stream.send_all(b"|c\n")
        await wait_for(lambda: len(sink.lines) == 3)
    assert sink.lines == [b"a:1|c", b"b:2|c", b"c:3|c"]


async def test_serve_follows_dns_change_without_moving_names(monkeypatch: Any) -> None:
    first = await UdpSink().bind()
    second = UdpSink()
    await second.sock.bind(("127.0.0.2", first.port))
    second.port = first.port
    other = await UdpSink().bind()
    current = {"ip": "127.0.0.1"}

    async def fake_resolve(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
        if host == "agg.example":
            return stdsocket.AF_INET, (current["ip"], port)
        return stdsocket.AF_INET, ("127.0.0.1", port)

    monkeypatch.setattr("proxy.resolver.resolve", fake_resolve)
    config = make_config([f"agg.example:{first.port}", f"127.0.0.1:{other.port}"],
                         resolve_interval=0.05, max_batch_delay_ms=0)
    names = [b"n%d" % i for i in range(60)]
    mine = [n + b":1|c" for n in names if shard_index(n, 2) == 0]
    async with running_proxy(config, [first, second, other]) as (addresses, _):
        await send_udp(addresses.first("udp"), [b"\n".join(n + b":1|c" for n in names)])
        await wait_for(lambda: first.lines == mine)
        current["ip"] = "127.0.0.2"
        with trio.fail_after(5):
            while (await mgmt_stats(addresses.mgmt))[  # noqa: ASYNC110
                    "proxy.forwarder.0.address"] != f"127.0.0.2:{first.port}":
                await trio.sleep(0.02)
        await send_udp(addresses.first("udp"), [b"\n".join(n + b":1|c" for n in names)])
        await wait_for(lambda: second.lines == mine)
    assert first.lines == mine  # nothing more went to the old address
    assert len(other.lines) == 2 * (len(names) - len(mine))


async def test_serve_tcp_forwarding_reconnects_after_aggregator_restart() -> None:
    received: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        async for chunk in stream:
            received.append(chunk)

    async def run_aggregator(scope: trio.CancelScope, port: int,
                             task_status: trio.TaskStatus[Any]) -> None:
        with scope:
            await trio.serve_tcp(handler, port, host="127.0.0.1", task_status=task_status)

    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()
        listeners = await nursery.start(run_aggregator, first, 0)
        port = listeners[0].socket.getsockname()[1]
        config = make_config([f"127.0.0.1:{port}"], forward="tcp")
        async with running_proxy(config) as (addresses, _):
            await send_udp(addresses.first("udp"), [b"before:1|c"])
            await wait_for(lambda: b"".join(received) == b"before:1|c\n")
            first.cancel()  # the aggregator goes away; its connections close
            with trio.fail_after(5):
                while (await mgmt_stats(addresses.mgmt))[  # noqa: ASYNC110
                        "proxy.forwarder.0.state"] != "down":
                    await trio.sleep(0.02)
            await send_udp(addresses.first("udp"), [b"during:1|c\nduring:2|c"])
            await trio.sleep(0.2)
            await nursery.start(run_aggregator, trio.CancelScope(), port)
            await wait_for(lambda: b"".join(received).endswith(b"during:1|c\nduring:2|c\n"))
            stats = await mgmt_stats(addresses.mgmt)
            assert stats["proxy.forwarder.0.state"] == "up"
            assert int(stats["proxy.forwarder.0.connects"]) == 2
        nursery.cancel_scope.cancel()
    assert b"".join(received) == b"before:1|c\nduring:1|c\nduring:2|c\n"


async def test_serve_counts_overlong_stream_line_over_many_reads() -> None:
    sink = await UdpSink().bind()
    config = make_config([f"127.0.0.1:{sink.port}"], listen=["tcp://127.0.0.1:0"],
                         max_line_bytes=1000)
    async with running_proxy(config, [sink]) as (addresses, _):
        host, _, port = addresses.first("tcp").rpartition(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"a:1|c\nlong:")
            for _ in range(5):
                await stream.send_all(b"1" * 600)
                await trio.sleep(0.02)
            await stream.send_all(b"|c\nb:2|c\n")
        await wait_for(lambda: len(sink.lines) == 2)
        stats = await mgmt_stats(addresses.mgmt)
    assert sink.lines == [b"a:1|c", b"b:2|c"]
    assert stats["proxy.router.dropped_lines.line_too_long"] == "1"
    assert stats["proxy.forwarders.dropped_lines.line_too_long"] == "1"
    assert stats["proxy.router.received_lines"] == "3"


async def test_forwarder_queue_drops_oldest_counted_by_state_and_reports_a_snapshot() -> None:
    membership = Membership([parse_aggregator("127.0.0.1:9")])
    forwarder = UdpForwarder(0, membership, source_sockets=1, buffer_bytes=20, retry_base=0.1,
                             retry_max=1.0, connect_timeout=1.0)
    chunks = [b"c%d:1|c" % i for i in range(4)]  # 6 bytes each; no socket yet: all queued
    forwarder.offer(chunks)
    assert list(forwarder.queue) == chunks[1:]
    forwarder.fail("econnrefused")
    forwarder.offer([b"d0:1|c\nd1:1|c"])
    before = forwarder.statistics()
    assert list(forwarder.queue) == [chunks[3], b"d0:1|c\nd1:1|c"]
    assert forwarder.drop_all(SHUTDOWN) == 3
    stats = forwarder.statistics()
    assert (stats.state, stats.reason, stats.transitions) == ("down", "econnrefused", 1)
    assert (stats.aggregator, stats.address) == ("127.0.0.1:9", "unresolved")
    assert stats.dropped_lines == {"buffer_full": 1, "destination_down": 2, "shutdown": 3}
    assert (stats.buffered_lines, stats.buffered_bytes, stats.sent_lines) == (0, 0, 0)
    assert (before.buffered_lines, before.buffered_bytes) == (3, 19)
    assert before.dropped_lines["shutdown"] == 0


def test_mgmt_stats_are_uptime_then_the_readings_it_is_given() -> None:
    readings = [Reading("proxy.membership.fingerprint", "abc", TEXT),
                Reading("proxy.router.received_lines", 3, COUNTER)]
    config = make_config(["127.0.0.1:9"])
    mgmt = ProxyMgmt(config, lambda: readings, fingerprint="abc")
    lines = list(mgmt.stats_lines())
    assert lines[0][0] == "uptime"
    assert lines[1:] == [("proxy.membership.fingerprint", "abc"),
                         ("proxy.router.received_lines", 3)]
    assert ("fingerprint", '"abc"') in mgmt.config_lines()


#: A value for every setting, none of them its default; tokens with a quote, a backslash, a
#: tab, a control character and a non-ASCII letter (TOML's basic strings cannot hold the
#: control character unescaped).
EVERY_SETTING: dict[str, Any] = {
    "listen": ["udp://127.0.0.1:0", "tcp://[::1]:9", "unix:///tmp/a b.sock",
               "unixgram:///tmp/g.sock"],
    "aggregator": ["127.0.0.1:9", "agg.example:8125:8126"],
    "flush_interval": 2.0, "aggregators_from": 1_700_000_000.0, "switch_margin": 1.5,
    "switch_guard": 0.1, "forward": "tcp", "max_datagram_bytes": 512, "max_batch_delay_ms": 0.5,
    "source_sockets": 2, "aggregator_buffer_bytes": 0, "resolve_interval": 1.5,
    "health_interval": 0.25, "retry_base": 0.01, "retry_max": 3.0, "connect_timeout": 0.5,
    "write_timeout": 1.0, "processes": 3, "key_name_sanitize": False, "auth": "token",
    "auth_tokens": ["tok", 'q"uote', "back\\slash", "tab\there", "ctl\x01", "\u00e9t\u00e9"],
    "auth_revoked_tokens": ["old"], "max_line_bytes": 1000, "max_tcp_connections": 7,
    "tcp_idle_timeout_seconds": 0.0, "reuse_port": True, "udp_receive_buffer_bytes": 4096,
    "mgmt_address": "::1", "mgmt_port": 0, "graceful_timeout": 2.5, "log_level": "debug",
    "http": "127.0.0.1:0", "identity": "edge-1", "self_metrics": False,
}


def test_a_child_is_handed_the_parents_config_whole() -> None:
    config = config_from_mapping(ProxyConfig, EVERY_SETTING)
    default = ProxyConfig()
    fields = attrs.fields(ProxyConfig)
    assert [f.name for f in fields if getattr(config, f.name) == getattr(default, f.name)] == []
    launch = ProcessSet(config=config, groups=[[], [], []]).launch(1, generation=4)
    description = json.loads(json.dumps(launch.description))  # as the child reads it
    assert set(description) == {"index", "fds", "config"}
    assert config_from_description(description["config"]) == config
    # An unset value is left out, and comes back as unset: only settings whose default is
    # unset may be unset (ProxyConfig has none so far).
    optional = [f for f in fields if f.metadata["kind"].startswith("optional_")]
    assert all(f.default is None for f in optional)
    unset = attrs.evolve(config, **{f.name: None for f in optional})
    assert config_from_description(config_description(unset)) == unset


def test_a_child_serves_its_description_never_the_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = make_config(["127.0.0.1:9"], mgmt_port=7)
    monkeypatch.setenv(WORKER_ENV, json.dumps(
        {"index": 1, "fds": [], "config": config_description(config)}))
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)
    served: list[tuple[ProxyConfig, dict[str, Any]]] = []
    monkeypatch.setattr(cli, "run_child", lambda c, d: served.append((c, d)) or 0)
    # the file is gone and the flags differ: the child serves what its parent resolved
    assert cli.main(["--config", str(tmp_path / "gone.toml"), "--mgmt-port", "9"]) == 0
    assert [c for c, _ in served] == [config]


def test_a_child_handed_the_wrong_sockets_is_a_config_error() -> None:
    config = make_config(["127.0.0.1:9"])
    assert run_child(config, {"index": 0, "fds": []}) == 2  # not restarted in a loop


class FakeAdmin:
    """An aggregator's management port: ``health: up``, and ``workers`` answered with
    whatever `answer` holds now."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.serve, listeners)

    async def serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            buffered = b""
            while True:
                try:
                    data = await stream.receive_some(1024)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                buffered += data
                while b"\n" in buffered:
                    command, _, buffered = buffered.partition(b"\n")
                    reply = "health: up" if command == b"health" else self.answer
                    await stream.send_all(reply.encode() + b"\n")


async def test_serve_sends_to_owning_worker_and_follows_a_changed_answer() -> None:
    main, *workers = [await UdpSink().bind() for _ in range(3)]
    admin = FakeAdmin(f"workers: 2 blake2b64 {workers[0].port} {workers[1].port}")
    lines = lines_for(1, 200)
    async with trio.open_nursery() as nursery:
        await nursery.start(admin.run)
        for sink in workers:
            nursery.start_soon(sink.run)
        config = make_config([f"127.0.0.1:{main.port}:{admin.port}"], health_interval=0.05)
        async with running_proxy(config, [main]) as (addresses, _):
            assert (await mgmt_stats(addresses.mgmt))["proxy.forwarder.0.workers"] == "2"
            await send_udp(addresses.first("udp"), [b"\n".join(lines[i:i + 20])
                                                    for i in range(0, len(lines), 20)])
            await wait_for(lambda: sum(len(s.lines) for s in workers) == len(lines))
            for index, sink in enumerate(workers):
                assert sink.lines == [line for line in lines
                                      if worker_index(line.split(b":")[0], 2) == index]
            assert main.datagrams == []
            admin.answer = "ERROR"  # e.g. restarted as an older tallyd: the main port again
            while (await mgmt_stats(addresses.mgmt))[  # noqa: ASYNC110
                    "proxy.forwarder.0.workers"] != "0":
                await trio.sleep(0.02)
            await send_udp(addresses.first("udp"), [b"\n".join(lines)])
            await wait_for(lambda: len(main.lines) == len(lines))
            assert main.lines == lines
            assert sum(len(s.lines) for s in workers) == len(lines)
        nursery.cancel_scope.cancel()
    for sink in workers:
        sink.sock.close()
