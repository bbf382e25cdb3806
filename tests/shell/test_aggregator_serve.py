"""serve() in-process: every transport, flush timing, Carbon connection handling, shutdown."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable
from functools import partial

import pytest
import trio

from aggregator.config import AggregatorConfig
from aggregator.server import serve
from common.config import config_from_mapping
from common.errors import ConfigError
from common.listener import BoundAddresses
from common.stats import path_component
from harness.port import free_port
from harness.triosink import TrioSink


def make_config(**values: object) -> AggregatorConfig:
    base: dict[str, object] = {"listen": ["udp://127.0.0.1:0"], "mgmt_port": 0,
                               "http": "127.0.0.1:0", "flush_interval": 10}
    base.update(values)
    return config_from_mapping(AggregatorConfig, base)


async def start(nursery: trio.Nursery, config: AggregatorConfig,
                wall_clock: Callable[[], float], stop: trio.Event | None = None) -> BoundAddresses:
    trigger = stop.wait if stop is not None else None
    return await nursery.start(partial(serve, config, wall_clock=wall_clock,
                                       shutdown_trigger=trigger))


def host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


async def send_udp(address: str, *packets: bytes) -> None:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as s:
        for p in packets:
            await s.sendto(p, host_port(address))


async def test_every_transport_reaches_carbon(nursery, sink: TrioSink, wall_clock, tmp_path,
                                              autojump_clock) -> None:
    config = make_config(listen=["udp://127.0.0.1:0", "tcp://127.0.0.1:0",
                                 f"unix://{tmp_path}/s.sock", f"unixgram://{tmp_path}/g.sock"],
                         carbon=[f"127.0.0.1:{sink.port}"])
    addrs = await start(nursery, config, wall_clock)
    assert [k for k, _ in addrs.intake] == ["udp", "tcp", "unix", "unixgram"]
    await send_udp(addrs.first("udp"), b"hits:1|c\nhits:2|c")
    tcp = await trio.open_tcp_stream(*host_port(addrs.first("tcp")))
    await tcp.send_all(b"hits:10|c\nhi")
    await tcp.send_all(b"ts:5|c\n")
    await tcp.aclose()
    unix = await trio.open_unix_socket(f"{tmp_path}/s.sock")
    await unix.send_all(b"hits:100|c\n")
    await unix.aclose()
    with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM) as g:
        await g.sendto(b"hits:1000|c", f"{tmp_path}/g.sock")
    await sink.wait_for(lambda lines: any(b"stats_counts.hits " in x for x in lines))
    # 1 + 2 (udp) + 10 + 5 (tcp, the second line split across two sends) + 100 + 1000
    assert sink.values(b"stats_counts.hits") == [1118.0]
    assert sink.values(b"stats.hits") == [111.8]


async def test_flushes_are_aligned_and_share_one_connection(nursery, sink, wall_clock,
                                                            autojump_clock) -> None:
    addrs = await start(nursery, make_config(carbon=[f"127.0.0.1:{sink.port}"]), wall_clock)
    for i in range(3):
        await send_udp(addrs.first("udp"), b"c:1|c")
        await sink.wait_for(lambda lines, n=i: len([x for x in lines
                                                    if x.startswith(b"stats_counts.c ")]) > n)
    stamps = sorted({int(x.split()[2]) for x in sink.lines})
    assert all(ts % 10 == 0 for ts in stamps)
    assert all(b - a == 10 for a, b in itertools.pairwise(stamps))
    assert sink.connections == 1


async def test_graceful_stop_delivers_the_interval_in_progress(nursery, sink, wall_clock,
                                                               autojump_clock) -> None:
    stop = trio.Event()
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[BoundAddresses] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        await serve(make_config(carbon=[f"127.0.0.1:{sink.port}"]), wall_clock=wall_clock,
                    shutdown_trigger=stop.wait, task_status=task_status)
        done.set()

    addrs = await nursery.start(run)
    await sink.wait_for(lambda lines: len(lines) > 0)  # first flush done, connection up
    await trio.sleep(3)
    await send_udp(addrs.first("udp"), b"late:7|c")
    await trio.sleep(0.1)
    stop.set()
    with trio.fail_after(30):
        await done.wait()  # serve() returned: the graceful stop finished
    await sink.wait_for(lambda lines: any(x.startswith(b"stats_counts.late ") for x in lines))
    late = [x for x in sink.lines if x.startswith(b"stats_counts.late ")]
    assert late[0].split()[1] == b"7"
    assert int(late[0].split()[2]) % 10 == 0


async def test_carbon_down_at_first_then_up_gets_buffered_flushes(nursery, wall_clock,
                                                                   autojump_clock) -> None:
    port = free_port()
    addrs = await start(nursery, make_config(carbon=[f"127.0.0.1:{port}"]), wall_clock)
    await send_udp(addrs.first("udp"), b"early:5|c")
    await trio.sleep(25)  # two flushes while nothing listens
    late_sink = TrioSink(port=port)
    await nursery.start(partial(trio.serve_tcp, late_sink.handler, port, host="127.0.0.1"))
    await late_sink.wait_for(lambda lines: len(late_sink.values(b"stats_counts.early")) >= 2)
    assert late_sink.values(b"stats_counts.early")[:2] == [5.0, 0.0]


async def test_stalled_carbon_drops_oldest_and_intake_goes_on(nursery, wall_clock,
                                                              autojump_clock) -> None:
    stalled = TrioSink(read=False)
    listeners = await nursery.start(partial(trio.serve_tcp, stalled.handler, 0, host="127.0.0.1"))
    stalled.port = listeners[0].socket.getsockname()[1]
    config = make_config(carbon=[f"127.0.0.1:{stalled.port}"], carbon_buffer_bytes=64 * 1024,
                         carbon_write_timeout=1000)
    addrs = await start(nursery, config, wall_clock)
    packets = [b"".join(b"name.%d:1|c\n" % i for i in range(j, j + 50))
               for j in range(0, 4000, 50)]
    for _ in range(50):  # ~200 kB per flush: the kernel's socket buffers fill, then ours
        await send_udp(addrs.first("udp"), *packets)
        await trio.sleep(10)
    mgmt = await trio.open_tcp_stream(*host_port(addrs.mgmt))
    async with mgmt:
        await check_stalled_stats(mgmt, f"127.0.0.1:{stalled.port}")


async def check_stalled_stats(mgmt: trio.SocketStream, node: str) -> None:
    await mgmt.send_all(b"stats\n")
    reply = b""
    while not reply.endswith(b"END\n\n"):
        reply += await mgmt.receive_some(65536)
    stats = dict(line.split(": ", 1) for line in reply.decode().splitlines() if ": " in line)
    assert int(stats[f"aggregator.carbon.{path_component(node)}.dropped_lines.buffer_full"]) > 0
    assert int(stats[f"aggregator.carbon.{path_component(node)}.buffered_lines"]) > 0
    await mgmt.send_all(b"counters\n")
    reply = b""
    while not reply.endswith(b"END\n\n"):
        reply += await mgmt.receive_some(65536)
    assert b'"statsd.metrics_received": ' in reply


async def test_unbindable_listener_is_a_config_error(nursery, wall_clock) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(ConfigError, match="cannot bind"):
            await serve(make_config(listen=[f"udp://127.0.0.1:{taken.getsockname()[1]}"]),
                        wall_clock=wall_clock)
    finally:
        taken.close()


async def test_stream_connections_over_limit_are_refused(nursery, sink, wall_clock,
                                                         autojump_clock) -> None:
    config = make_config(listen=["tcp://127.0.0.1:0"], max_tcp_connections=1,
                         carbon=[f"127.0.0.1:{sink.port}"])
    addrs = await start(nursery, config, wall_clock)
    first = await trio.open_tcp_stream(*host_port(addrs.first("tcp")))
    await first.send_all(b"kept:1|c\n")
    await trio.sleep(0.5)
    second = await trio.open_tcp_stream(*host_port(addrs.first("tcp")))
    async with second:
        assert await second.receive_some(10) == b""  # closed by the server at once
    await first.send_all(b"kept:1|c\n")
    await first.aclose()
    await sink.wait_for(lambda lines: bool(sink.values(b"stats_counts.kept")))
    assert sink.values(b"stats_counts.kept") == [2.0]


async def test_token_auth_strips_valid_tokens_and_drops_the_rest(nursery, sink, wall_clock,
                                                                 autojump_clock) -> None:
    config = make_config(carbon=[f"127.0.0.1:{sink.port}"], auth="token",
                         auth_tokens=["s3cret"], auth_revoked_tokens=["old"])
    addrs = await start(nursery, config, wall_clock)
    await send_udp(addrs.first("udp"),
                   b"s3cret.app.hits:2|c\nold.app.hits:100|c\napp.hits:100|c\nnope.app.hits:1|c",
                   b"s3cret.app.hits:3|c|#env:prod")
    await sink.wait_for(lambda lines: bool(sink.values(b"stats_counts.app.hits"))
                        and any(b".auth.refused_lines.revoked " in x for x in lines))
    assert sink.values(b"stats_counts.app.hits") == [2.0]
    assert sink.values(b"stats_counts.app.hits;env=prod") == [3.0]
    assert not any(b"old" in x or b"nope" in x or b"s3cret" in x for x in sink.lines)
    identity = [x for x in sink.lines if b".auth.refused_lines." in x]
    refused = {x.split()[0].rsplit(b".", 1)[1]: float(x.split()[1]) for x in identity}
    assert refused == {b"missing": 0.0, b"invalid": 2.0, b"revoked": 1.0}
    # "app" of "app.hits:100|c" is read as a token and refused: statsgod's rule.


def test_token_mode_without_tokens_is_a_config_error() -> None:
    from aggregator.config import check_config

    with pytest.raises(ConfigError):
        check_config(make_config(auth="token"))


def test_final_flush_waits_for_the_interval_end_within_the_deadline() -> None:
    from aggregator.flusher import final_flush_plan

    assert final_flush_plan(1003.5, 10.0, 15.0) == (1010, 6.5)
    assert final_flush_plan(1000.0, 10.0, 15.0) == (1010, 10.0)
    assert final_flush_plan(1000.5, 3600.0, 15.0) == (1000, 0.0)  # too far: now, at once


async def test_reload_applies_reloadable_settings_and_reports_the_rest(nursery, sink, wall_clock,
                                                                       autojump_clock) -> None:
    config = make_config(carbon=[f"127.0.0.1:{sink.port}"])
    reloads = trio.open_memory_channel[AggregatorConfig](1)
    addrs = await nursery.start(partial(serve, config, wall_clock=wall_clock,
                                        reload_trigger=reloads[1].receive))
    await sink.wait_for(lambda lines: len(lines) > 0)
    new = make_config(carbon=[f"127.0.0.1:{sink.port}"], percent_threshold=[50],
                      legacy_namespace=False, flush_interval=30)
    await reloads[0].send(new)
    await trio.sleep(1)
    await send_udp(addrs.first("udp"), b"t:1|ms\nt:2|ms\nc:1|c")
    await sink.wait_for(lambda lines: any(x.startswith(b"stats.timers.t.") for x in lines))
    paths = {x.split()[0] for x in sink.lines}
    assert b"stats.timers.t.upper_50" in paths and b"stats.timers.t.upper_90" not in paths
    assert b"stats.counters.c.count" in paths
    stamps = sorted({int(x.split()[2]) for x in sink.lines})
    assert all(b - a == 10 for a, b in itertools.pairwise(stamps))  # the interval needs a restart


async def ask_mgmt(address: str, command: bytes) -> str:
    stream = await trio.open_tcp_stream(*host_port(address))
    async with stream:
        await stream.send_all(command + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection closed after {reply!r}"
            reply += chunk
    return reply.decode()


async def test_worker_listen_socket_feeds_the_same_ledger_and_is_listed(
        nursery, sink: TrioSink, wall_clock, autojump_clock) -> None:
    """One process (W = 1) binds worker 0's socket itself; what it reads there is
    aggregated with the main port's lines, through the same intake path (token auth
    included), and ``workers`` names the port it really got."""
    config = make_config(carbon=[f"127.0.0.1:{sink.port}"], worker_listen="udp://127.0.0.1:0",
                         auth="token", auth_tokens=["s3cret"])
    addrs = await start(nursery, config, wall_clock)
    reply = await ask_mgmt(addrs.mgmt, b"workers")
    words = reply.split()
    assert words[:3] == ["workers:", "1", "blake2b64"] and len(words) == 4, reply
    port = int(words[3])
    assert port not in (0, host_port(addrs.first("udp"))[1])
    assert [k for k, _ in addrs.intake] == ["udp"]  # the worker's socket is not a listener
    await send_udp(addrs.first("udp"), b"s3cret.hits:1|c")
    await send_udp(f"127.0.0.1:{port}", b"s3cret.hits:10|c\ns3cret.hits:100|c", b"hits:5|c")
    await sink.wait_for(lambda lines: bool(sink.values(b"stats_counts.hits")))
    assert sink.values(b"stats_counts.hits") == [111.0]


async def test_without_worker_listen_workers_lists_no_ports(nursery, wall_clock,
                                                             autojump_clock) -> None:
    addrs = await start(nursery, make_config(), wall_clock)
    assert await ask_mgmt(addrs.mgmt, b"workers") == "workers: 1 blake2b64\n"
    assert "workers" in await ask_mgmt(addrs.mgmt, b"help")


async def test_worker_listen_port_in_use_is_a_config_error(nursery, wall_clock) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=rf"cannot bind worker 0's udp://127.0.0.1:{port}: "
                                              "Address already in use") as info:
            await serve(make_config(worker_listen=f"udp://127.0.0.1:{port}"),
                        wall_clock=wall_clock)
        assert info.value.key == "worker_listen"
    finally:
        taken.close()
