"""CarbonSender against a real loopback listener: overflow, spool, paced replay, spill."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import trio

from aggregator.backends.sender import CarbonSender
from aggregator.backends.spool import Spool
from common.ring import CarbonNode
from harness.port import free_port
from harness.triosink import TrioSink


def chunk(tag: str, lines: int = 10) -> bytes:
    return b"".join(f"{tag}.{i} 1 10\n".encode() for i in range(lines))


def make_sender(port: int, **kw: object) -> CarbonSender:
    opts: dict[str, object] = {"buffer_bytes": 1 << 20, "connect_timeout": 1.0,
                               "write_timeout": 5.0}
    opts.update(kw)
    return CarbonSender(CarbonNode("127.0.0.1", port), **opts)  # type: ignore[arg-type]


async def test_overflow_without_spool_drops_oldest_keeps_newest(autojump_clock) -> None:
    sender = make_sender(free_port(), buffer_bytes=2 * len(chunk("a")))
    for tag in "abcd":
        sender.offer(chunk(tag))
    stats = sender.statistics()
    assert stats.dropped == {"buffer_full": 20}
    assert stats.buffered_lines == 20
    assert list(sender._queue) == [chunk("c"), chunk("d")]


async def test_overflow_goes_to_spool_and_is_sent_first(nursery, tmp_path: Path,
                                                        autojump_clock) -> None:
    port = free_port()
    sender = make_sender(port, buffer_bytes=len(chunk("a")), spool=Spool(tmp_path, 1 << 20))
    for tag in "abc":
        sender.offer(chunk(tag))
    assert sender.statistics().spooled_lines == 20 and sender.statistics().buffered_lines == 10
    nursery.start_soon(sender.run)
    await trio.sleep(3)  # connect attempts fail meanwhile
    sink = TrioSink(port=port)
    await nursery.start(partial(trio.serve_tcp, sink.handler, port, host="127.0.0.1"))
    with trio.fail_after(120):
        await sender.wait_idle()
    await sink.wait_for(lambda lines: len(lines) == 30)
    assert [line.split()[0] for line in sink.lines[::10]] == [b"a.0", b"b.0", b"c.0"]
    stats = sender.statistics()
    assert (stats.sent_lines, stats.spooled_lines, stats.dropped) == (30, 0, {})
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 (a test's tmp dir)


async def test_backlog_is_replayed_at_the_configured_pace(nursery, sink: TrioSink,
                                                          autojump_clock) -> None:
    sender = make_sender(sink.port, replay_lines_per_second=100)
    for tag in "abcde":
        sender.offer(chunk(tag, 50))
    started = trio.current_time()
    nursery.start_soon(sender.run)
    await sink.wait_for(lambda lines: len(lines) == 250)
    await sender.wait_idle()
    assert trio.current_time() - started >= 2.0  # 250 lines at 100/s, paced per chunk
    sender.offer(chunk("live", 50))  # caught up: live data goes at once
    live_start = trio.current_time()
    await sink.wait_for(lambda lines: len(lines) == 300)
    assert trio.current_time() - live_start < 0.5


async def test_spill_keeps_unsent_output_for_next_start(tmp_path: Path, autojump_clock) -> None:
    sender = make_sender(free_port(), spool=Spool(tmp_path, 1 << 20))
    sender.offer(chunk("a"))
    sender.offer(chunk("b"))
    assert sender.spill_to_spool() == 20
    again = make_sender(free_port(), spool=Spool(tmp_path, 1 << 20))
    assert again.pending_lines == 20
    no_spool = make_sender(free_port())
    no_spool.offer(chunk("c"))
    assert no_spool.spill_to_spool() == 0 and no_spool.dropped == {"shutdown": 10}


async def test_carbon_restart_is_noticed_and_later_flushes_arrive(nursery, autojump_clock) -> None:
    first = TrioSink()
    async with trio.open_nursery() as server_nursery:
        listeners = await server_nursery.start(partial(trio.serve_tcp, first.handler, 0,
                                                       host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        sender = make_sender(port)
        nursery.start_soon(sender.run)
        sender.offer(chunk("a"))
        await first.wait_for(lambda lines: len(lines) == 10)
        server_nursery.cancel_scope.cancel()
    await trio.sleep(1)
    assert not sender.connected
    second = TrioSink(port=port)
    await nursery.start(partial(trio.serve_tcp, second.handler, port, host="127.0.0.1"))
    sender.offer(chunk("b"))
    await second.wait_for(lambda lines: len(lines) == 10)
    assert sender.statistics().reconnects == 1
