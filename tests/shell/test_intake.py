"""The intake in serve(): datagram truncation, refused stream lines, connection limits,
the unixgram queue warning. Real loopback sockets, fake time."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
from test_aggregator_serve import host_port, make_config, start

import common.listener
import common.streams
from common.address import ListenURL
from common.connections import ConnectionTable, create_connection_table
from common.errors import ConfigError
from common.listener import LOG_PER_SECOND, DatagramReader, IntakeCounters, bind_listener
from common.logging import RateLimiter
from common.streams import (
    SWEEP_SECONDS,
    StreamConnection,
    StreamConnections,
    run_stream_listener,
    serve_stream,
)
from harness.triosink import TrioSink


def internal(sink: TrioSink, measure: str) -> float:
    return sum(sink.values(b"stats_counts.statsd." + measure.encode()))


async def test_unix_datagram_over_64k_is_read_whole(nursery, sink: TrioSink, wall_clock,
                                                    tmp_path: Path, autojump_clock) -> None:
    path = f"{tmp_path}/g.sock"
    config = make_config(listen=[f"unixgram://{path}"], carbon=[f"127.0.0.1:{sink.port}"])
    await start(nursery, config, wall_clock)
    datagram = b"\n".join([b"big.count:1|c"] * 10_000) + b"\nx:10|c"  # 140 kB
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        client.sendto(datagram, path)
    await sink.wait_for(lambda lines: bool(sink.values(b"stats_counts.big.count")))
    assert sink.values(b"stats_counts.big.count") == [10_000.0]
    assert sink.values(b"stats_counts.x") == [10.0]  # not "x:1" cut from "x:10|c"
    assert internal(sink, "metrics_received") == 10_001
    assert internal(sink, "bad_lines_seen") == 0


@pytest.mark.parametrize("scheme", ["udp", "unixgram"])
def test_truncated_datagram_keeps_whole_lines_and_counts_the_cut_one(scheme: str,
                                                                     tmp_path: Path) -> None:
    url = (ListenURL(scheme, host="127.0.0.1") if scheme == "udp"
           else ListenURL(scheme, path=f"{tmp_path}/t.sock"))
    bound = bind_listener(url)
    refused: list[tuple[str, int]] = []
    stats = IntakeCounters()
    reader = DatagramReader(bound, stats=stats, refused=lambda r, n: refused.append((r, n)),
                            buffer_bytes=26)
    target = bound.sock.getsockname()
    try:
        with socket.socket(bound.sock.family, socket.SOCK_DGRAM) as client:
            client.sendto(b"aa:1|c\nbb:2|c\ncc:3|c\ndd:44|c\nee:5|c\n", target)  # 36 bytes
            client.sendto(b"ok:1|c", target)
            got = reader.receive(10)
    finally:
        common.listener.close_listener(bound)
    assert got == [b"aa:1|c\nbb:2|c\ncc:3|c\n", b"ok:1|c"]  # "dd:44" cut to "dd:44": never parsed
    assert stats.truncated_datagrams == 1
    assert refused == [("truncated", 1)]


async def test_overlong_stream_line_over_many_reads_is_counted(nursery, sink: TrioSink,
                                                               wall_clock,
                                                               autojump_clock) -> None:
    config = make_config(listen=["tcp://127.0.0.1:0"], carbon=[f"127.0.0.1:{sink.port}"],
                         max_line_bytes=1000)
    addrs = await start(nursery, config, wall_clock)
    stream = await trio.open_tcp_stream(*host_port(addrs.first("tcp")))
    async with stream:
        await stream.send_all(b"good:1|c\nlong:")
        for _ in range(5):  # five reads at least: each waits for the next send
            await stream.send_all(b"1" * 600)
            await trio.sleep(0.1)
        await stream.send_all(b"|c\ngood:1|c\n")
    await sink.wait_for(lambda lines: bool(sink.values(b"stats_counts.good")))
    assert sink.values(b"stats_counts.good") == [2.0]
    assert internal(sink, "bad_lines_seen") == 1
    assert internal(sink, "metrics_received") == 3


async def connect_and_send(address: str, line: bytes) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(*host_port(address))
    await stream.send_all(line)
    return stream


async def closed_by_server(stream: trio.SocketStream) -> bool:
    with trio.move_on_after(0.05):
        return await stream.receive_some(10) == b""
    return False


async def test_full_daemon_evicts_the_longest_idle_connection(nursery, sink: TrioSink,
                                                              wall_clock,
                                                              autojump_clock) -> None:
    config = make_config(listen=["tcp://127.0.0.1:0"], carbon=[f"127.0.0.1:{sink.port}"],
                         max_tcp_connections=2)
    addrs = await start(nursery, config, wall_clock)
    tcp = addrs.first("tcp")
    oldest = await connect_and_send(tcp, b"c:1|c\n")
    await trio.sleep(0.5)
    busy = await connect_and_send(tcp, b"c:1|c\n")
    await trio.sleep(2)  # both idle now, "oldest" the longest
    await busy.send_all(b"c:1|c\n")
    await trio.sleep(0.01)
    newcomer = await connect_and_send(tcp, b"c:1|c\n")
    await trio.sleep(0.1)
    assert await closed_by_server(oldest)
    assert not await closed_by_server(busy)
    # "busy" sent 0.1 s ago: not evictable, so a fourth client is refused.
    late = await connect_and_send(tcp, b"lost:1|c\n")
    assert await closed_by_server(late)
    await newcomer.send_all(b"c:1|c\n")
    await sink.wait_for(lambda lines: bool(sink.values(b"stats_counts.c")))
    assert sink.values(b"stats_counts.c") == [5.0]
    for s in (oldest, busy, newcomer, late):
        await s.aclose()


async def test_idle_connection_is_closed_after_the_timeout(nursery, sink: TrioSink, wall_clock,
                                                           autojump_clock) -> None:
    config = make_config(listen=["tcp://127.0.0.1:0"], carbon=[f"127.0.0.1:{sink.port}"],
                         tcp_idle_timeout_seconds=30)
    addrs = await start(nursery, config, wall_clock)
    idle = await connect_and_send(addrs.first("tcp"), b"c:1|c\nhalf:")
    await trio.sleep(20)
    assert not await closed_by_server(idle)
    await trio.sleep(11)
    assert await closed_by_server(idle)
    await idle.aclose()
    await sink.wait_for(lambda lines: bool(sink.values(b"stats_counts.c")))
    await sink.wait_for(lambda lines: internal(sink, "bad_lines_seen") >= 1)
    assert internal(sink, "bad_lines_seen") == 1  # "half:", cut by the close: not parsed
    assert not sink.values(b"stats_counts.half")


def test_short_unix_dgram_queue_is_warned_about(tmp_path: Path, monkeypatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    values = {"net/unix/max_dgram_qlen": 10}
    monkeypatch.setattr(common.listener, "read_sysctl", lambda name: values.get(name))
    caplog.set_level(logging.WARNING)
    bound = bind_listener(ListenURL("unixgram", path=f"{tmp_path}/q.sock"))
    common.listener.close_listener(bound)
    warned = [r for r in caplog.records if r.getMessage() == "unix_dgram_queue_short"]
    assert len(warned) == 1
    fields = warned[0].fields  # type: ignore[attr-defined]
    assert fields["sysctl"] == "net.unix.max_dgram_qlen"
    assert fields["value"] == 10
    values["net/unix/max_dgram_qlen"] = 4096
    caplog.clear()
    common.listener.close_listener(bind_listener(ListenURL("unixgram", path=f"{tmp_path}/r.sock")))
    assert not [r for r in caplog.records if r.getMessage() == "unix_dgram_queue_short"]




class Hung(Exception):
    """Raised by the alarm below: the call under test blocked."""


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail a call that blocks for 10 s (rather than hang the suite)."""
    def ring(signum: int, frame: object) -> None:
        raise Hung

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, 10)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_live_unix_listener_with_a_full_queue_is_refused_at_once(tmp_path: Path,
                                                                 alarm: None) -> None:
    path = f"{tmp_path}/busy.sock"
    clients: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(path)
        live.listen(0)
        try:
            while True:  # fill its accept queue: a blocking connect would now wait forever
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                clients.append(c)
                c.connect(path)
        except BlockingIOError:
            pass
        finally:
            try:
                with pytest.raises(ConfigError, match="another process is listening"):
                    bind_listener(ListenURL("unix", path=path))
            finally:
                for c in clients:
                    c.close()
    assert os.path.exists(path)


def test_live_unixgram_socket_file_is_refused(tmp_path: Path, alarm: None) -> None:
    path = f"{tmp_path}/live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as live:
        live.bind(path)
        with pytest.raises(ConfigError, match="another process is listening"):
            bind_listener(ListenURL("unixgram", path=path))
    assert os.path.exists(path)


def stale_socket_file(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # closed without unlinking: what a killed daemon leaves


def test_stale_file_removed_meanwhile_by_another_is_no_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = f"{tmp_path}/stale.sock"
    stale_socket_file(path)
    unlink = os.unlink

    def raced(target: str) -> None:
        unlink(target)  # another process removed it first
        unlink(target)

    monkeypatch.setattr(os, "unlink", raced)
    bound = bind_listener(ListenURL("unix", path=path))
    monkeypatch.undo()
    common.listener.close_listener(bound)


def test_stale_file_that_cannot_be_removed_is_a_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = f"{tmp_path}/stale.sock"
    stale_socket_file(path)

    def refused(target: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "unlink", refused)
    with pytest.raises(ConfigError, match="cannot remove the stale socket file"):
        bind_listener(ListenURL("unix", path=path))


def test_socket_file_is_removed_before_the_socket_closes(tmp_path: Path) -> None:
    path = f"{tmp_path}/own.sock"
    seen: list[bool] = []

    class Watched(socket.socket):
        def close(self) -> None:
            seen.append(os.path.exists(path))
            super().close()

    bound = bind_listener(ListenURL("unix", path=path))
    watched = Watched(fileno=bound.sock.detach())
    common.listener.close_listener(attrs.evolve(bound, sock=watched))
    assert seen == [False]  # never a moment with the file there and nobody answering
    assert not os.path.exists(path)


@pytest.mark.parametrize("ending", ["reset", "eof"])
async def test_connection_reset_mid_line_refuses_the_cut_tail(ending: str,
                                                              autojump_clock) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname()[:2])
        accepted, _ = server.accept()
    accepted.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(accepted))
    with client:
        client.sendall(b"ok:1|c\nx:1|c")  # "x:1|c|@0.1" lost its "|@0.1": counts 10x
        if ending == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handled: list[bytes] = []
    refused: list[tuple[str, int]] = []
    async with stream:
        await serve_stream(stream, handled.append, max_line_bytes=1000, stats=IntakeCounters(),
                           refused=lambda reason, n: refused.append((reason, n)))
    if ending == "reset":
        assert handled == [b"ok:1|c\n"]
        assert refused == [("truncated", 1)]
    else:  # a clean end of stream: the client ended its last line there
        assert handled == [b"ok:1|c\n", b"x:1|c"]
        assert refused == []


class Chunks(trio.abc.ReceiveStream):
    """A stream that returns one chunk per receive."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.chunks.pop(0) if self.chunks else b""

    async def aclose(self) -> None:
        pass


async def test_overlong_line_warnings_are_rate_limited_and_counted_exactly(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(common.streams, "_OVERLONG_LOG", RateLimiter(LOG_PER_SECOND))
    caplog.set_level(logging.WARNING)
    stats = IntakeCounters()
    refused: list[tuple[str, int]] = []
    lines = 200
    # Each read ends the overlong line before it and starts another (cut off at 20 bytes).
    await serve_stream(Chunks([b"\n" + b"y" * 50] * lines), lambda block: None,
                       max_line_bytes=20, stats=stats,
                       refused=lambda reason, n: refused.append((reason, n)))
    assert stats.overlong_stream_lines == lines
    assert sum(n for reason, n in refused if reason == "line_too_long") == lines
    warned = [r for r in caplog.records if r.getMessage() == "stream_line_too_long"]
    assert 1 <= len(warned) <= 2 * LOG_PER_SECOND  # two windows at most, on a slow machine


async def idle_connection(connections: StreamConnections, idle_seconds: float) -> StreamConnection:
    """A connection of ``connections`` (holding its place) last active ``idle_seconds`` ago."""
    assert connections.table.reserve(connections.limit)
    conn = StreamConnection(last_activity=trio.current_time() - idle_seconds)
    connections.add(conn)
    return conn


@contextlib.asynccontextmanager
async def two_processes(limit: int) -> AsyncIterator[tuple[list[StreamConnections], str]]:
    """Two "processes" (connection sets) sharing one table and one listening socket (each
    its own descriptor of it, as each worker has), accepting until the block ends."""
    fd = create_connection_table(2)
    bound = bind_listener(ListenURL("tcp", host="127.0.0.1"))
    second = attrs.evolve(bound, sock=bound.sock.dup())
    procs = [StreamConnections(max_connections=limit, table=ConnectionTable.attach(fd, i))
             for i in range(2)]
    try:
        async with trio.open_nursery() as nursery:
            for b, c in zip((bound, second), procs, strict=True):
                nursery.start_soon(partial(run_stream_listener, b, lambda block: None,
                                           max_line_bytes=1000, connections=c))
            await trio.sleep(2 * SWEEP_SECONDS)  # both have published their evictable counts
            yield procs, bound.address
            nursery.cancel_scope.cancel()
    finally:
        bound.sock.close()
        second.sock.close()
        for c in procs:
            assert c.table.lock_fd is not None
            os.close(c.table.lock_fd)
        os.close(fd)


async def test_one_newcomer_evicts_one_idle_connection_of_all_processes(autojump_clock) -> None:
    async with two_processes(limit=2) as (procs, address):
        for c in procs:
            await idle_connection(c, 10)
        with socket.create_connection(host_port(address)) as newcomer:
            await trio.sleep(0.1)  # both processes are woken for it
            assert sum(c.stats.stream_connections_evicted for c in procs) == 1
            assert sum(c.stats.stream_connections for c in procs) == 1
            assert sum(len(c.open) for c in procs) == 2
            newcomer.close()


async def test_a_process_losing_every_accept_race_keeps_deferring(autojump_clock) -> None:
    rounds = 40  # over MAX_DEFER_SECONDS / DEFER_SECONDS: a budget never reset is spent
    async with two_processes(limit=2 + rounds + 5) as (procs, address):
        full, evicting = procs
        busy = [await idle_connection(full, 0) for _ in range(2)]
        for _ in range(rounds + 5):
            await idle_connection(evicting, 10)
        await trio.sleep(2 * SWEEP_SECONDS)
        clients: list[socket.socket] = []
        try:
            for _ in range(rounds):
                for conn in busy:  # never evictable
                    conn.last_activity = trio.current_time()
                clients.append(socket.create_connection(host_port(address)))
                await trio.sleep(0.05)
        finally:
            for s in clients:
                s.close()
        refused = sum(c.stats.stream_connections_refused for c in procs)
        assert refused == 0  # every newcomer went to the process that could evict
        assert evicting.stats.stream_connections_evicted == rounds


@attrs.define
class CountingLedger:
    """The two calls `report_bad_lines` makes, counted."""

    looks: list[float] = attrs.Factory(list)
    bad_lines: int = 0

    def take_errors(self) -> list[object]:
        self.looks.append(trio.current_time())
        return []

    def statistics(self) -> CountingLedger:
        return self


async def test_bad_line_reporter_sleeps_while_idle_and_reports_a_burst_within_a_second(
        nursery, autojump_clock, caplog) -> None:
    """Idle: one look per flush interval (not one a second); after an arrival: one look a
    second later, with the burst's count; under steady traffic: one look a second."""
    from aggregator.intake import Arrivals
    from aggregator.server import report_bad_lines

    ledger, arrivals = CountingLedger(), Arrivals()
    start = trio.current_time()
    nursery.start_soon(partial(report_bad_lines, ledger, arrivals, quiet_seconds=10.0))
    await trio.sleep(100.5)
    assert [round(t - start) for t in ledger.looks] == list(range(10, 101, 10))
    caplog.set_level(logging.WARNING, logger="aggregator.server")
    ledger.looks.clear()
    arrivals.note()
    ledger.bad_lines = 3
    await trio.sleep(1.2)
    assert [round(t - start, 1) for t in ledger.looks] == [101.5]
    assert [r.getMessage() for r in caplog.records] == ["bad_lines"]
    ledger.looks.clear()
    for _ in range(50):  # 5 s of traffic
        arrivals.note()
        await trio.sleep(0.1)
    assert 4 <= len(ledger.looks) <= 5


async def test_stream_sweeper_sleeps_while_no_connection_is_open(nursery, autojump_clock) -> None:
    """It sweeps every SWEEP_SECONDS only while connections are open: an idle daemon with a
    tcp listener is not woken four times a second."""
    connections = StreamConnections(max_connections=10, idle_timeout_seconds=5.0)
    published: list[tuple[float, int]] = []
    connections.table.report_evictable = (  # type: ignore[method-assign]
        lambda n: published.append((trio.current_time(), n)))
    start = trio.current_time()
    nursery.start_soon(connections.run_sweeper)
    await trio.sleep(100)
    assert published == [(start, 0)]
    await idle_connection(connections, 0)
    await trio.sleep(10)  # swept until the idle timeout closed it, then asleep again
    assert connections.stats.stream_connections_idle_closed == 1 and not connections.open
    sweeps = len(published)
    assert 5 / SWEEP_SECONDS <= sweeps - 1 <= 5 / SWEEP_SECONDS + 2
    await trio.sleep(100)
    assert len(published) == sweeps
