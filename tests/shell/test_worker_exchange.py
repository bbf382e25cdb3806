"""The flush barrier between two workers, in one process over real Unix datagram sockets.

A packet belongs to the interval of the worker that read it: lines and ``packets_received``
of one packet are reported in the same flush, even when the packet is read between a
worker's mark and its swap, or a peer's lines arrive after that peer's mark.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest
import trio

import aggregator.worker as worker_module
from aggregator.exchange import DATA, MARK, decode_mark, encode_data, encode_mark
from aggregator.ledger import Aggregator, FlushSnapshot, LedgerOptions
from aggregator.worker import Exchange
from aggregator.workerenv import WorkerContext
from common.shard import worker_index

INTERVAL = 3.0  # the barrier waits at most a third of it


def _names_of(owner: int, count: int) -> list[bytes]:
    names = (f"owned.{i}".encode() for i in range(10_000))
    return [n for n in names if worker_index(n, 2) == owner][:count]


@pytest.fixture
def pair() -> Iterator[tuple[Exchange, Exchange]]:
    name = f"tallyd-test-{uuid.uuid4().hex}"
    exchanges = []
    for index in (0, 1):
        context = WorkerContext(index=index, count=2, exchange=name, generation=0,
                                sockets=(), mgmt=None)
        aggregator = Aggregator(LedgerOptions(report_internal=index == 0))
        exchanges.append(Exchange(context, aggregator, INTERVAL))
    yield exchanges[0], exchanges[1]
    for exchange in exchanges:
        exchange.close()


def _received(snapshot: FlushSnapshot) -> tuple[float, float]:
    counters = snapshot.counters
    return counters[b"statsd.packets_received"], counters[b"statsd.metrics_received"]


async def _flush(exchange: Exchange, sequence: int, out: dict[int, FlushSnapshot]) -> None:
    await exchange.before_swap(sequence)
    out[exchange.context.index] = exchange.aggregator.swap(sequence, INTERVAL)
    exchange.after_swap(sequence)


async def test_a_packet_read_after_the_mark_counts_with_its_lines_in_the_next_flush(
        pair: tuple[Exchange, Exchange]) -> None:
    ex0, ex1 = pair
    to0 = _names_of(0, 2)
    to1 = _names_of(1, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ex0.run)
        nursery.start_soon(ex1.run)
        # Before the flush: worker 1 reads a packet, one line its own, two for worker 0.
        ex1.handle(b"\n".join([to0[0] + b":1|c", to0[1] + b":5|ms", to1[0] + b":2|c"]))
        await trio.sleep(0.05)

        first: dict[int, FlushSnapshot] = {}
        # Worker 1 reaches the flush first; worker 0 is late and only gets there after
        # worker 1 has read another packet, whose lines sit behind worker 1's mark.
        async with trio.open_nursery() as flushing:
            flushing.start_soon(_flush, ex1, 10, first)
            await trio.sleep(0.05)
            assert ex1._held is not None  # worker 1 is waiting for worker 0's mark
            ex1.handle(b"\n".join([to0[0] + b":10|c", to1[0] + b":20|c"]))
            await trio.sleep(0.05)
            await _flush(ex0, 10, first)

        assert _received(first[0]) == (1, 3)
        assert first[0].counters[to0[0]] == 1
        assert list(first[0].timers[to0[1]]) == [5.0]
        assert first[1].counters[to1[0]] == 2

        second: dict[int, FlushSnapshot] = {}
        async with trio.open_nursery() as flushing:
            flushing.start_soon(_flush, ex0, 11, second)
            flushing.start_soon(_flush, ex1, 11, second)
        assert _received(second[0]) == (1, 2)
        assert second[0].counters[to0[0]] == 10
        assert second[1].counters[to1[0]] == 20

        nursery.cancel_scope.cancel()


async def test_intake_of_a_worker_that_does_not_report_is_never_lost(
        pair: tuple[Exchange, Exchange]) -> None:
    ex0, ex1 = pair
    to1 = _names_of(1, 1)
    total = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ex0.run)
        nursery.start_soon(ex1.run)
        reported = 0.0
        for sequence in range(20, 26):
            for _ in range(sequence % 3 + 1):
                ex1.handle(to1[0] + b":1|c")
                total += 1
            flushed: dict[int, FlushSnapshot] = {}
            async with trio.open_nursery() as flushing:
                flushing.start_soon(_flush, ex1, sequence, flushed)
                await trio.sleep(0.01)
                ex1.handle(to1[0] + b":1|c")  # between worker 1's mark and its swap
                total += 1
                flushing.start_soon(_flush, ex0, sequence, flushed)
            reported += _received(flushed[0])[0]
        last: dict[int, FlushSnapshot] = {}
        async with trio.open_nursery() as flushing:
            flushing.start_soon(_flush, ex0, 26, last)
            flushing.start_soon(_flush, ex1, 26, last)
        reported += _received(last[0])[0]
        assert reported == total
        nursery.cancel_scope.cancel()


async def test_gauges_keep_the_order_they_were_read_in_across_the_barrier(
        pair: tuple[Exchange, Exchange]) -> None:
    """Gauges are not held with the next interval's lines: the last value read wins, on
    whichever worker it was read and on whichever side of a mark."""
    ex0, ex1 = pair
    g = _names_of(1, 1)[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ex0.run)
        nursery.start_soon(ex1.run)
        out: dict[int, FlushSnapshot] = {}
        # Worker 1 (the owner) has marked and reads g:1; worker 0 reads g:2 later, before
        # its own mark, and forwards it.
        async with trio.open_nursery() as flushing:
            flushing.start_soon(_flush, ex1, 10, out)
            await trio.sleep(0.05)
            ex1.handle(g + b":1|g\n" + g + b":+1|g")
            await trio.sleep(0.01)
            ex0.handle(g + b":2|g")
            await trio.sleep(0.05)
            await _flush(ex0, 10, out)
        assert ex1.aggregator.gauges[g] == 2.0
        # Worker 0 has marked and forwards g:3 (deferred at worker 1); worker 1 then reads
        # g:4 itself.
        async with trio.open_nursery() as flushing:
            flushing.start_soon(_flush, ex0, 11, out)
            await trio.sleep(0.05)
            ex0.handle(g + b":3|g")
            await trio.sleep(0.02)
            ex1.handle(g + b":4|g")
            await trio.sleep(0.02)
            await _flush(ex1, 11, out)
        assert ex1.aggregator.gauges[g] == 4.0
        nursery.cancel_scope.cancel()


async def test_a_skipped_flush_keeps_the_peers_intake(pair: tuple[Exchange, Exchange]) -> None:
    """Worker 0 misses flush 10 (its previous flush overran): worker 1's mark 10 carried its
    counts, and they are reported with flush 11 instead of dropped with the stale mark."""
    ex0, ex1 = pair
    own1 = _names_of(1, 1)[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ex0.run)
        nursery.start_soon(ex1.run)
        for _ in range(5):
            ex1.handle(own1 + b":1|c")
        out: dict[int, FlushSnapshot] = {}
        await _flush(ex1, 10, out)  # the barrier times out: worker 0 never comes
        ex1.handle(own1 + b":1|c")
        async with trio.open_nursery() as flushing:
            flushing.start_soon(_flush, ex0, 11, out)
            flushing.start_soon(_flush, ex1, 11, out)
        nursery.cancel_scope.cancel()
    assert _received(out[0]) == (6, 6)


async def test_messages_not_from_a_peer_are_counted_and_dropped(
        pair: tuple[Exchange, Exchange]) -> None:
    ex0, ex1 = pair
    to0 = _names_of(0, 1)[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ex0.run)
        nursery.start_soon(ex1.run)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
            for junk in (b"D", b"M\x00", b"S", b"Zzz", b"", b"D\x00\x07" + to0 + b":1|c"):
                stranger.sendto(junk, ex0.context.address(0))
        ex1.handle(to0 + b":1|c")
        await trio.sleep(0.05)
        assert ex0.dropped["malformed"] == 6
        assert ex0.aggregator.ledger.counters[to0] == 1  # still serving its peer
        nursery.cancel_scope.cancel()


async def test_the_final_flush_waits_for_nothing(pair: tuple[Exchange, Exchange]) -> None:
    """On the way out nothing is held for a next interval that will not be flushed."""
    ex0, ex1 = pair
    to0 = _names_of(0, 1)[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ex0.run)
        nursery.start_soon(ex1.run)
        out: dict[int, FlushSnapshot] = {}
        async with trio.open_nursery() as flushing:
            flushing.start_soon(_flush, ex1, 10, out)
            await trio.sleep(0.05)
            ex1.handle(to0 + b":7|c")  # after worker 1's mark: deferred at worker 0
            await trio.sleep(0.05)
            ex0.finish()
            await _flush(ex0, 10, out)
        assert out[0].counters[to0] == 7
        nursery.cancel_scope.cancel()


async def test_a_full_queue_for_an_absent_peer_drops_lines_but_keeps_marks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "MAX_PENDING_BYTES", 2_000)
    context = WorkerContext(index=0, count=2, exchange=f"tallyd-test-{uuid.uuid4().hex}",
                            generation=0, sockets=(), mgmt=None)
    ex0 = Exchange(context, Aggregator(LedgerOptions()), INTERVAL)
    try:
        line = b"x" * 95  # 100-byte data messages, one line each
        for flush in range(3):
            for _ in range(15):
                ex0._enqueue(1, encode_data(0, [line]))
            ex0._enqueue(1, encode_mark(0, flush, 0, 0, 0))
        assert ex0.peer_down[1]
        queued = list(ex0._queue[1])
        assert [decode_mark(m)[1] for m in queued if m[:1] == MARK] == [0, 1, 2]
        assert queued[-1][:1] == MARK and queued[0][:1] == MARK  # in their places
        data = [m for m in queued if m[:1] == DATA]
        assert ex0.dropped["worker_down"] == 45 - len(data) > 0
        assert sum(map(len, queued)) <= 2_000
    finally:
        ex0.close()


async def test_lines_after_the_mark_of_a_flush_the_receiver_never_had_are_not_held(
        pair: tuple[Exchange, Exchange]) -> None:
    """Worker 0 starts late (or skips a flush): worker 1's mark for flush 10 reaches it, but
    its own first flush is 11. What worker 1 forwards after that mark is in flush 11."""
    ex0, ex1 = pair
    to0 = _names_of(0, 1)[0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ex0.run)
        nursery.start_soon(ex1.run)
        out: dict[int, FlushSnapshot] = {}
        await _flush(ex1, 10, out)  # alone: worker 0 has no flush 10
        ex1.handle(to0 + b":3|c")
        await trio.sleep(0.05)
        async with trio.open_nursery() as flushing:
            flushing.start_soon(_flush, ex1, 11, out)
            await trio.sleep(0.05)
            ex1.handle(to0 + b":4|c")  # after worker 1's mark 11: flush 12
            await trio.sleep(0.05)
            await _flush(ex0, 11, out)
        assert out[0].counters[to0] == 3
        assert _received(out[0]) == (1, 1)
        async with trio.open_nursery() as flushing:
            flushing.start_soon(_flush, ex0, 12, out)
            flushing.start_soon(_flush, ex1, 12, out)
        assert out[0].counters[to0] == 4
        assert _received(out[0]) == (1, 1)
        nursery.cancel_scope.cancel()
