"""The admin TCP server against a live aggregator: health, stats, delete, quit."""

from __future__ import annotations

import json
import uuid
from functools import partial

import trio

from aggregator.admin import AggregatorAdmin, WorkerAdminPeers, open_worker_admin
from aggregator.config import AggregatorConfig
from aggregator.ledger import Aggregator
from aggregator.server import serve
from common.admin_server import answer, run_admin_server
from common.config import config_from_mapping
from common.listener import IntakeStatistics


async def ask(stream: trio.SocketStream, command: bytes, end: bytes) -> str:
    await stream.send_all(command)
    reply = b""
    while not reply.endswith(end):
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection closed after {reply!r}"
        reply += chunk
    return reply.decode()


async def test_admin_commands_on_live_aggregator(nursery, wall_clock, autojump_clock) -> None:
    config = config_from_mapping(AggregatorConfig, {"listen": ["udp://127.0.0.1:0"],
                                                    "mgmt_port": 0, "health_status": "down"})
    addrs = await nursery.start(partial(serve, config, wall_clock=wall_clock))
    host, port = addrs.first("udp").rsplit(":", 1)
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as s:
        await s.sendto(b"app.a:1|c\napp.b:2|c\nbad\ng:5|g\nt:3|ms", (host, int(port)))
    await trio.sleep(0.1)
    mhost, mport = addrs.mgmt.rsplit(":", 1)
    stream = await trio.open_tcp_stream(mhost, int(mport))
    async with stream:
        assert await ask(stream, b"health", b"\n") == "health: down\n"
        assert await ask(stream, b"health up\n", b"\n") == "health: up\n"
        stats = await ask(stream, b"stats\n", b"END\n\n")
        assert "messages.bad_lines_seen: 1\n" in stats and stats.startswith("uptime: ")
        counters = await ask(stream, b"counters\n", b"END\n\n")
        assert '"app.a": 1.0' in counters and '"app.b": 2.0' in counters
        assert '"statsd.packets_received": 1' in counters  # counted live, as Etsy does
        assert '"statsd.bad_lines_seen": 1' in counters
        assert '"t": [\n    3.0\n  ]' in await ask(stream, b"timers\n", b"END\n\n")
        assert await ask(stream, b"delcounters app.*\n", b"END\n\n") in (
            "deleted: app.a\ndeleted: app.b\nEND\n\n", "deleted: app.b\ndeleted: app.a\nEND\n\n")
        assert await ask(stream, b"delgauges nope\n", b"END\n\n") == (
            "metric nope not found\nEND\n\n")
        assert '"app.a"' not in await ask(stream, b"counters\n", b"END\n\n")
        config_reply = await ask(stream, b"config\n", b"\"info\"\n")  # log_level is last
        assert config_reply.startswith("\n") and "\nflush_interval: 10.0\n" in config_reply
        assert await ask(stream, b"nonsense\n", b"\n") == "ERROR\n"
        await stream.send_all(b"quit\n")
        assert await stream.receive_some(10) == b""


async def test_joined_commands_answer_error_when_a_worker_is_away(nursery) -> None:
    """Worker 0 asks its peers; one that is not there (restarting) makes a clear ERROR,
    never a partial dump; a peer that answers is joined."""
    config = config_from_mapping(AggregatorConfig, {"listen": ["udp://127.0.0.1:0"]})
    own = Aggregator(config.ledger_options)
    own.ingest(b"own.c:1|c")
    peer = Aggregator(config.ledger_options)
    peer.ingest(b"peer.c:4|c\npeer.t:9|ms")
    peer_admin = AggregatorAdmin(config, peer, None, IntakeStatistics())
    name = f"\0tallyd-test-admin-{uuid.uuid4().hex}"
    listener = await open_worker_admin(name + "-1")
    await nursery.start(run_admin_server, [listener], peer_admin)

    admin = AggregatorAdmin(config, own, None, IntakeStatistics())
    peers = WorkerAdminPeers({1: name + "-1"}, timeout=2)
    reply, _ = await answer("counters", admin, peers)
    dump = json.loads(reply.removesuffix("END\n\n"))
    assert dump["own.c"] == 1 and dump["peer.c"] == 4
    reply, _ = await answer("deltimers peer.t own.t", admin, peers)
    assert reply == "deleted: peer.t\nmetric own.t not found\nEND\n\n"
    assert "peer.t" not in peer.ledger.timers

    away = WorkerAdminPeers({1: name + "-1", 2: name + "-2"}, timeout=2)
    reply, _ = await answer("counters", admin, away)
    assert reply.startswith("ERROR worker 2 unreachable: ") and reply.endswith("\n")
    assert (await answer("health", admin, away))[0] == "health: up\n"  # not joined


async def test_a_peer_that_breaks_off_makes_an_error_not_a_silent_close(nursery) -> None:
    config = config_from_mapping(AggregatorConfig, {"listen": ["udp://127.0.0.1:0"]})
    admin = AggregatorAdmin(config, Aggregator(config.ledger_options), None, IntakeStatistics())
    address = f"\0tallyd-test-admin-{uuid.uuid4().hex}-1"
    listener = await open_worker_admin(address)

    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.receive_some(100)
        await stream.send_all(b'{"half": ')
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, hang_up, [listener])
    reply, close = await answer("counters", admin, WorkerAdminPeers({1: address}, timeout=2))
    assert (reply, close) == ("ERROR worker 1 closed the connection\n", False)
