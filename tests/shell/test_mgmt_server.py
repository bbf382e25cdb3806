"""The admin TCP server against a live aggregator: health, stats, delete, quit."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Sequence
from functools import partial

import attrs
import pytest
import trio

from aggregator.backends.carbon import CarbonOutput
from aggregator.components import Components
from aggregator.config import AggregatorConfig
from aggregator.ledger import Accumulator
from aggregator.mgmt import AggregatorMgmt, WorkerMgmtPeers, open_worker_mgmt
from aggregator.server import serve
from common.config import config_from_mapping
from common.listener import IntakeCounters
from common.mgmt import COMMANDS, STATELESS_COMMANDS, handle_command
from common.mgmt_server import REFUSED_REPLY, MgmtLimits, answer, run_mgmt_server
from proxy.config import ProxyConfig
from proxy.server import serve as proxy_serve


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
                                                    "mgmt_port": 0, "http": "127.0.0.1:0",
                                                    "health_status": "down"})
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
        assert await ask(stream, b"nonsense\n", b"\n") == (
            "ERROR unknown command 'nonsense': try help (stats, counters, timers, gauges, "
            "delcounters, deltimers, delgauges, health, workers, config, quit)\n")
        await stream.send_all(b"quit\n")
        assert await stream.receive_some(10) == b""


async def test_joined_commands_answer_error_when_a_worker_is_away(nursery) -> None:
    """Worker 0 asks its peers; one that is not there (restarting) makes a clear ERROR,
    never a partial dump; a peer that answers is joined."""
    config = config_from_mapping(AggregatorConfig, {"listen": ["udp://127.0.0.1:0"]})
    own = Accumulator(config.ledger_options)
    own.ingest(b"own.c:1|c")
    peer = Accumulator(config.ledger_options)
    peer.ingest(b"peer.c:4|c\npeer.t:9|ms")
    peer_admin = AggregatorMgmt(config, Components(peer, IntakeCounters()))
    name = f"\0tallyd-test-admin-{uuid.uuid4().hex}"
    listener = await open_worker_mgmt(name + "-1")
    await nursery.start(run_mgmt_server, [listener], peer_admin)

    admin = AggregatorMgmt(config, Components(own, IntakeCounters()))
    peers = WorkerMgmtPeers({1: name + "-1"}, timeout=2)
    reply, _ = await answer("counters", admin, peers)
    dump = json.loads(reply.removesuffix("END\n\n"))
    assert dump["own.c"] == 1 and dump["peer.c"] == 4
    reply, _ = await answer("deltimers peer.t own.t", admin, peers)
    assert reply == "deleted: peer.t\nmetric own.t not found\nEND\n\n"
    assert "peer.t" not in peer.ledger.timers

    away = WorkerMgmtPeers({1: name + "-1", 2: name + "-2"}, timeout=2)
    reply, _ = await answer("counters", admin, away)
    assert reply.startswith("ERROR worker 2 unreachable: ") and reply.endswith("\n")
    assert (await answer("health", admin, away))[0] == "health: up\n"  # not joined


async def test_a_peer_that_breaks_off_makes_an_error_not_a_silent_close(nursery) -> None:
    config = config_from_mapping(AggregatorConfig, {"listen": ["udp://127.0.0.1:0"]})
    admin = AggregatorMgmt(config, Components(Accumulator(config.ledger_options),
                                                IntakeCounters()))
    address = f"\0tallyd-test-admin-{uuid.uuid4().hex}-1"
    listener = await open_worker_mgmt(address)

    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.receive_some(100)
        await stream.send_all(b'{"half": ')
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, hang_up, [listener])
    reply, close = await answer("counters", admin, WorkerMgmtPeers({1: address}, timeout=2))
    assert (reply, close) == ("ERROR worker 1 closed the connection\n", False)


# -- limits: idle, slow and stuck clients, a full server ------------------------------------


@attrs.define
class _Target:
    """A daemon with a ``stats`` answer of ``stats_rows`` rows."""

    health: str = "up"
    commands: Sequence[str] = STATELESS_COMMANDS
    stats_rows: int = 1

    def stats_lines(self) -> Sequence[tuple[str, object]]:
        return [(f"row{i:07d}", "x" * 50) for i in range(self.stats_rows)]

    def config_lines(self) -> Sequence[tuple[str, object]]:
        return []

    def dump(self, kind: str) -> str | None:
        return None

    def delete(self, kind: str, names: Sequence[str]) -> list[str] | None:
        return None


@attrs.define
class _Recorder(_Target):
    """A daemon with every command, that deletes any name and remembers which."""

    commands: Sequence[str] = COMMANDS
    deleted: list[str] = attrs.Factory(list)

    def delete(self, kind: str, names: Sequence[str]) -> list[str] | None:
        self.deleted += names
        return list(names)


@attrs.define
class _SlowPeers:
    """One worker peer that takes ``seconds`` to answer (a busy worker, a big dump)."""

    seconds: float
    asked: list[str] = attrs.Factory(list)

    async def ask(self, command: str) -> list[tuple[int, str]]:
        self.asked.append(command)
        await trio.sleep(self.seconds)
        return [(1, "uptime: 1\nEND\n\n")]


async def _start_server(nursery: trio.Nursery, target: _Target, limits: MgmtLimits,
                        peers: _SlowPeers | None = None) -> tuple[str, int]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(run_mgmt_server, listeners, target, peers=peers,
                                limits=limits))
    return listeners[0].socket.getsockname()[:2]  # type: ignore[no-any-return]


async def _read_to_close(stream: trio.SocketStream) -> str:
    """Everything the server sends until it closes ``stream``."""
    got = b""
    while chunk := await stream.receive_some(65536):
        got += chunk
    return got.decode()


async def _closed_at(stream: trio.SocketStream) -> float:
    """When the server closed ``stream`` (whatever it had sent before)."""
    while await stream.receive_some(65536):
        pass
    return trio.current_time()


LIMITS = MgmtLimits(max_connections=8, idle_seconds=60, command_seconds=10, write_seconds=10)


async def test_a_silent_connection_is_closed_after_the_idle_timeout(
        nursery, autojump_clock) -> None:
    host, port = await _start_server(nursery, _Target(), LIMITS)
    async with await trio.open_tcp_stream(host, port) as silent, \
            await trio.open_tcp_stream(host, port) as asking:
        start = trio.current_time()
        assert await ask(asking, b"health\n", b"\n") == "health: up\n"
        await trio.sleep(50)
        assert await ask(asking, b"health\n", b"\n") == "health: up\n"  # a command resets it
        assert await _closed_at(silent) - start == pytest.approx(60, abs=0.1)
        assert await _closed_at(asking) - start == pytest.approx(110, abs=0.1)


async def test_a_command_sent_a_byte_a_second_is_closed_at_the_command_deadline(
        nursery, autojump_clock) -> None:
    host, port = await _start_server(nursery, _Target(), LIMITS)
    async with await trio.open_tcp_stream(host, port) as slow:
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(60):
                await slow.send_all(b"x")
                await trio.sleep(1)
        assert trio.current_time() - start == pytest.approx(11, abs=0.1)
        assert await _closed_at(slow) - start < 12
    # A command split over chunks within the deadline is answered.
    async with await trio.open_tcp_stream(host, port) as split:
        await split.send_all(b"hea")
        await trio.sleep(5)
        assert await ask(split, b"lth\n", b"\n") == "health: up\n"


async def test_a_client_that_reads_nothing_is_closed_at_the_write_deadline(
        nursery, autojump_clock) -> None:
    host, port = await _start_server(nursery, _Target(stats_rows=200_000), LIMITS)
    async with await trio.open_tcp_stream(host, port) as stuck:
        stuck.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        start = trio.current_time()
        await stuck.send_all(b"stats\n")
        await trio.sleep(30)
        got = 0
        while chunk := await stuck.receive_some(65536):
            got += len(chunk)
        assert got < 200_000 * 60  # cut off, never the whole answer
        assert trio.current_time() - start == pytest.approx(30, abs=0.1)


async def test_a_full_admin_port_serves_the_newcomer_and_closes_the_longest_idle(
        nursery, autojump_clock) -> None:
    """64 (here 8) silent or dribbling connections cannot lock out a health probe: each new
    connection closes the one that has gone longest without a command."""
    host, port = await _start_server(nursery, _Target(), LIMITS)
    async with contextlib.AsyncExitStack() as stack:
        hogs = []
        for i in range(2 * LIMITS.max_connections):
            hog = await stack.enter_async_context(await trio.open_tcp_stream(host, port))
            if i % 2:
                await hog.send_all(b"x")  # a slow-loris: some bytes, never a line
            hogs.append(hog)
            await trio.sleep(0.5)
        # An operator who asked a moment ago is not the longest idle.
        operator = await stack.enter_async_context(await trio.open_tcp_stream(host, port))
        await trio.sleep(0.5)
        assert await ask(operator, b"health\n", b"\n") == "health: up\n"
        for _ in range(3 * LIMITS.max_connections):
            async with await trio.open_tcp_stream(host, port) as probe:
                start = trio.current_time()
                assert await ask(probe, b"health\n", b"\n") == "health: up\n"
                assert trio.current_time() - start < 0.01
        assert await ask(operator, b"health\n", b"\n") == "health: up\n"
        # The first hogs were evicted as the others came (the oldest first); the rest met
        # their own deadline: 10 s for a dribbled command, 60 s for a silent one.
        closed = [0.0] * len(hogs)

        async def watch(i: int) -> None:
            closed[i] = await _closed_at(hogs[i])

        async with trio.open_nursery() as watchers:
            for i in range(len(hogs)):
                watchers.start_soon(watch, i)
        evicted = [i for i, at in enumerate(closed) if at < start + 1]
        assert evicted == list(range(len(evicted))) and len(evicted) >= LIMITS.max_connections
        for i in range(len(evicted), len(hogs)):
            timeout = LIMITS.command_seconds if i % 2 else LIMITS.idle_seconds
            assert closed[i] == pytest.approx(i * 0.5 + timeout, abs=0.1)


async def test_a_command_split_across_reads_runs_whole(nursery, autojump_clock) -> None:
    """A read that ends inside a line is not a command, even when it starts with one's name:
    ``delcounters api.req`` + ``uests`` deletes api.requests (not the prefix), ``health`` +
    `` down`` sets the health (not ``health``, then an unknown command)."""
    target = _Recorder()
    host, port = await _start_server(nursery, target, LIMITS)
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(b"delcounters api.req")
        await trio.sleep(1)
        assert target.deleted == []
        assert await ask(stream, b"uests\n", b"END\n\n") == "deleted: api.requests\nEND\n\n"
        assert target.deleted == ["api.requests"]
        await stream.send_all(b"health")
        await trio.sleep(LIMITS.quiet_seconds / 2)  # the rest comes before the quiet moment
        assert await ask(stream, b" down\n", b"\n") == "health: down\n"
        # Nothing else was answered in between (an ERROR line would come first here).
        assert await ask(stream, b"health\n", b"\n") == "health: down\n"
        assert target.health == "down"


async def test_echo_n_health_is_answered_with_or_without_the_close(
        nursery, autojump_clock) -> None:
    """Etsy takes each chunk as a command: ``echo -n health | nc`` (which closes) and a probe
    that sends ``health`` and waits both get their answer; a delete without its newline runs
    only at the close."""
    target = _Recorder()
    host, port = await _start_server(nursery, target, LIMITS)
    async with await trio.open_tcp_stream(host, port) as probe:
        start = trio.current_time()
        assert await ask(probe, b"health", b"\n") == "health: up\n"
        assert trio.current_time() - start == pytest.approx(LIMITS.quiet_seconds, abs=0.01)
        assert await ask(probe, b"  stats", b"END\n\n") == "row0000000: " + "x" * 50 + "\nEND\n\n"
    async with await trio.open_tcp_stream(host, port) as echo:
        await echo.send_all(b"health")
        await echo.send_eof()
        assert await _read_to_close(echo) == "health: up\n"
    async with await trio.open_tcp_stream(host, port) as echo:
        await echo.send_all(b"delcounters x")
        await trio.sleep(5)  # no quiet-moment run for a delete
        assert target.deleted == []
        await echo.send_eof()
        assert await _read_to_close(echo) == "deleted: x\nEND\n\n"
        assert target.deleted == ["x"]


async def test_a_connection_answering_is_not_evicted_for_a_newcomer(
        nursery, autojump_clock) -> None:
    """Its slot is busy from the moment its command is taken: the newcomer evicts an idle
    connection that asked later (by its connect time), never the one mid-reply."""
    limits = attrs.evolve(LIMITS, max_connections=2)
    peers = _SlowPeers(seconds=10)
    host, port = await _start_server(nursery, _Target(), limits, peers)
    async with await trio.open_tcp_stream(host, port) as answering:
        await trio.sleep(1)
        async with await trio.open_tcp_stream(host, port) as idle:
            await trio.sleep(1)
            async with trio.open_nursery() as inner:
                replies: list[str] = []

                async def ask_stats() -> None:
                    replies.append(await ask(answering, b"stats\n", b"END\n\n"))

                inner.start_soon(ask_stats)
                await trio.sleep(1)  # the peer is still answering
                async with await trio.open_tcp_stream(host, port) as newcomer:
                    assert await ask(newcomer, b"health\n", b"\n") == "health: up\n"
                assert await _closed_at(idle) == pytest.approx(3, abs=0.1)
            assert replies == ["row0000000: " + "x" * 50 + "\nworker.1.uptime: 1\nEND\n\n"]
            assert trio.current_time() == pytest.approx(12, abs=0.1)


async def test_when_every_connection_is_answering_the_newcomer_is_refused_in_one_line(
        nursery, autojump_clock) -> None:
    limits = attrs.evolve(LIMITS, max_connections=2)
    peers = _SlowPeers(seconds=10)
    host, port = await _start_server(nursery, _Target(), limits, peers)
    async with await trio.open_tcp_stream(host, port) as first, \
            await trio.open_tcp_stream(host, port) as second:
        replies: list[str] = []
        async with trio.open_nursery() as inner:
            for stream in (first, second):
                inner.start_soon(
                    lambda s=stream: _append(replies, ask(s, b"stats\n", b"END\n\n")))
            await trio.sleep(1)
            async with await trio.open_tcp_stream(host, port) as newcomer:
                await newcomer.send_all(b"health\n")  # unread: the close must not lose the line
                assert await _read_to_close(newcomer) == REFUSED_REPLY
        assert replies == ["row0000000: " + "x" * 50 + "\nworker.1.uptime: 1\nEND\n\n"] * 2
        assert peers.asked == ["stats", "stats"]


async def _append(replies: list[str], reply: Awaitable[str]) -> None:
    replies.append(await reply)


async def test_stats_prints_etsys_plain_graphite_lines_over_the_nodes_and_the_per_node_ones(
        ) -> None:
    config = config_from_mapping(AggregatorConfig, {
        "listen": ["udp://127.0.0.1:0"], "carbon": ["127.0.0.1:2003", "127.0.0.2:2003"]})
    carbon = CarbonOutput(config)
    now = time.time()
    first, second = carbon.senders.values()
    first.last_flush, second.last_flush = now - 3, now - 30
    first.last_exception, second.last_exception = now - 100, now - 7
    first.flush_time_ms, second.flush_time_ms = 12.0, 4.0
    first.flush_length, second.flush_length = 1000, 234
    admin = AggregatorMgmt(config, Components(Accumulator(config.ledger_options),
                                              IntakeCounters(), backends=[carbon]))
    reply, _ = handle_command("stats", admin)
    rows = dict(row.split(": ", 1) for row in reply.removesuffix("END\n\n").splitlines())
    assert abs(int(rows["graphite.last_flush"]) - 30) <= 1  # the node furthest behind
    assert abs(int(rows["graphite.last_exception"]) - 7) <= 1  # the latest exception
    assert rows["graphite.flush_time"] == "12"  # the slowest, ms
    assert rows["graphite.flush_length"] == "1234"  # every node's bytes
    assert rows["aggregator.carbon.127_0_0_1_2003.last_flush"] in ("2", "3", "4")  # per node, kept
    assert rows["aggregator.carbon.127_0_0_2_2003.last_exception"] in ("6", "7", "8")
    # With no exception at all, Etsy prints seconds since the epoch.
    first.last_exception = second.last_exception = 0.0
    rows = dict(row.split(": ", 1)
                for row in handle_command("stats", admin)[0].removesuffix("END\n\n").splitlines())
    assert abs(int(rows["graphite.last_exception"]) - now) <= 2
    assert rows["aggregator.carbon.127_0_0_1_2003.last_exception"] == "never"


async def test_a_live_proxys_help_lists_what_works_and_the_rest_answers_why(nursery) -> None:
    config = config_from_mapping(ProxyConfig, {"listen": ["udp://127.0.0.1:0"],
                                               "aggregator": ["127.0.0.1:9"], "mgmt_port": 0,
                                               "http": "127.0.0.1:0"})
    addrs = await nursery.start(partial(proxy_serve, config))
    mhost, mport = addrs.mgmt.rsplit(":", 1)
    async with await trio.open_tcp_stream(mhost, int(mport)) as stream:
        assert await ask(stream, b"help\n", b"\n\n") == (
            "Commands: stats, health, config, quit\n\n")
        for command in ("counters", "timers", "gauges", "delcounters a", "deltimers",
                        "delgauges b"):
            name = command.split()[0]
            assert await ask(stream, command.encode() + b"\n", b"\n") == (
                f"ERROR {name}: not available here (this daemon holds no metric values)\n")
        assert await ask(stream, b"bogus\n", b"\n") == (
            "ERROR unknown command 'bogus': try help (stats, health, config, quit)\n")
        assert (await ask(stream, b"stats\n", b"END\n\n")).startswith("uptime: ")
