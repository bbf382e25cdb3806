"""The flush barrier between two workers, in one process over real Unix datagram sockets.

A packet belongs to the interval of the worker that read it: lines and ``packets_received``
of one packet are reported in the same flush, even when the packet is read between a
worker's mark and its swap, or a peer's lines arrive after that peer's mark.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
import trio

import aggregator.workers.outbox as outbox_module
from aggregator.config import AggregatorConfig
from aggregator.ledger import Accumulator, FlushSnapshot, LedgerOptions
from aggregator.server import serve
from aggregator.workers.codec import (
    DATA,
    DATA_HEADER_BYTES,
    MARK,
    MAX_MESSAGE_BYTES,
    decode_mark,
    encode_data,
    encode_mark,
)
from aggregator.workers.context import WorkerContext, WorkerRecords, make_runtime_dir
from aggregator.workers.exchange import Exchange
from common.config import config_from_mapping
from common.shard import worker_index

INTERVAL = 3.0  # the barrier waits at most a third of it
#: Long enough for a datagram to cross and be read; far shorter than the barrier's bound.
SETTLE = 0.05

Pair = tuple[Exchange, Exchange]
Flushed = dict[int, FlushSnapshot]


def _names_of(owner: int, count: int) -> list[bytes]:
    names = (f"owned.{i}".encode() for i in range(10_000))
    return [n for n in names if worker_index(n, 2) == owner][:count]


def _context(index: int, runtime_dir: str,
             records: WorkerRecords | None = None) -> WorkerContext:
    return WorkerContext(index=index, count=2, runtime_dir=runtime_dir, generation=0,
                         sockets=(), mgmt=None, records=records)


@pytest.fixture
def runtime_dir() -> Iterator[str]:
    """A private directory for the sockets, short enough for a Unix socket path."""
    path = make_runtime_dir(2)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def pair(runtime_dir: str) -> Iterator[Pair]:
    exchanges = [Exchange(_context(i, runtime_dir),
                          Accumulator(LedgerOptions(report_internal=i == 0)), INTERVAL)
                 for i in (0, 1)]
    yield exchanges[0], exchanges[1]
    for exchange in exchanges:
        exchange.close()


@asynccontextmanager
async def running(pair: Pair) -> AsyncIterator[None]:
    """Both exchanges receiving and sending, until the block ends."""
    async with trio.open_nursery() as nursery:
        for exchange in pair:
            nursery.start_soon(exchange.run)
        yield
        nursery.cancel_scope.cancel()


async def _eventually(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait until ``predicate()`` holds (datagrams cross between the two exchanges'
    receive loops; under load that takes more than `SETTLE`)."""
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 (state of another task, no event for it)
            await trio.sleep(0.005)


def _received(snapshot: FlushSnapshot) -> tuple[float, float]:
    counters = snapshot.counters
    return counters[b"statsd.packets_received"], counters[b"statsd.metrics_received"]


async def _flush(exchange: Exchange, sequence: int, out: Flushed) -> None:
    """What `Flusher.flush` does around the swap."""
    await exchange.before_swap(sequence)
    out[exchange.context.index] = exchange.accumulator.swap(sequence, INTERVAL)
    exchange.after_swap(sequence)


async def _flush_both(pair: Pair, sequence: int, out: Flushed) -> None:
    async with trio.open_nursery() as flushing:
        for exchange in pair:
            flushing.start_soon(_flush, exchange, sequence, out)


async def _uneven_flush(first: Exchange, second: Exchange, sequence: int, out: Flushed,
                        meanwhile: Callable[[], None]) -> None:
    """``first`` reaches the flush and waits at the barrier; ``meanwhile`` reads packets;
    then ``second`` reaches the flush."""
    async with trio.open_nursery() as flushing:
        flushing.start_soon(_flush, first, sequence, out)
        await trio.sleep(SETTLE)
        meanwhile()
        await trio.sleep(SETTLE)
        await _flush(second, sequence, out)


async def test_a_packet_read_after_the_mark_counts_with_its_lines_in_the_next_flush(
        pair: Pair) -> None:
    ex0, ex1 = pair
    to0 = _names_of(0, 2)
    to1 = _names_of(1, 1)
    async with running(pair):
        # Before the flush: worker 1 reads a packet, one line its own, two for worker 0.
        ex1.handle(b"\n".join([to0[0] + b":1|c", to0[1] + b":5|ms", to1[0] + b":2|c"]))
        await trio.sleep(SETTLE)

        # Worker 1 reaches the flush first; worker 0 is late and only gets there after
        # worker 1 has read another packet, whose lines sit behind worker 1's mark.
        def late_packet() -> None:
            assert ex1.barrier.holding  # worker 1 is waiting for worker 0's mark
            ex1.handle(b"\n".join([to0[0] + b":10|c", to1[0] + b":20|c"]))

        first: Flushed = {}
        await _uneven_flush(ex1, ex0, 10, first, late_packet)
        assert _received(first[0]) == (1, 3)
        assert first[0].counters[to0[0]] == 1
        assert list(first[0].timers[to0[1]]) == [5.0]
        assert first[1].counters[to1[0]] == 2

        second: Flushed = {}
        await _flush_both(pair, 11, second)
        assert _received(second[0]) == (1, 2)
        assert second[0].counters[to0[0]] == 10
        assert second[1].counters[to1[0]] == 20


async def test_intake_of_a_worker_that_does_not_report_is_never_lost(pair: Pair) -> None:
    ex0, ex1 = pair
    to1 = _names_of(1, 1)[0]
    total = 0
    reported = 0.0

    def one_packet() -> None:
        nonlocal total
        ex1.handle(to1 + b":1|c")
        total += 1

    async with running(pair):
        for sequence in range(20, 26):
            for _ in range(sequence % 3 + 1):
                one_packet()
            flushed: Flushed = {}
            # One packet between worker 1's mark and its swap.
            await _uneven_flush(ex1, ex0, sequence, flushed, one_packet)
            reported += _received(flushed[0])[0]
        last: Flushed = {}
        await _flush_both(pair, 26, last)
        reported += _received(last[0])[0]
    assert reported == total


async def test_gauges_keep_the_order_they_were_read_in_across_the_barrier(pair: Pair) -> None:
    """Gauges are not held with the next interval's lines: the last value read wins, on
    whichever worker it was read and on whichever side of a mark."""
    ex0, ex1 = pair
    g = _names_of(1, 1)[0]
    out: Flushed = {}
    async with running(pair):
        # Worker 1 (the owner) has marked and reads g:1; worker 0 reads g:2 later, before
        # its own mark, and forwards it.
        def owner_then_peer() -> None:
            ex1.handle(g + b":1|g\n" + g + b":+1|g")
            ex0.handle(g + b":2|g")

        await _uneven_flush(ex1, ex0, 10, out, owner_then_peer)
        assert ex1.accumulator.gauges[g] == 2.0

        # Worker 0 has marked and forwards g:3 (held at worker 1 with the next interval's
        # lines, but not as a gauge); worker 1 then reads g:4 itself.
        async with trio.open_nursery() as flushing:
            flushing.start_soon(_flush, ex0, 11, out)
            await trio.sleep(SETTLE)
            ex0.handle(g + b":3|g")
            await trio.sleep(SETTLE)
            ex1.handle(g + b":4|g")
            await _flush(ex1, 11, out)
        assert ex1.accumulator.gauges[g] == 4.0


async def test_a_skipped_flush_keeps_the_peers_intake(pair: Pair) -> None:
    """Worker 0 misses flush 10 (its previous flush overran): worker 1's mark 10 carried its
    counts, and they are reported with flush 11 instead of dropped with the stale mark."""
    ex1 = pair[1]
    own1 = _names_of(1, 1)[0]
    out: Flushed = {}
    async with running(pair):
        for _ in range(5):
            ex1.handle(own1 + b":1|c")
        await _flush(ex1, 10, out)  # the barrier times out: worker 0 never comes
        ex1.handle(own1 + b":1|c")
        await _flush_both(pair, 11, out)
    assert _received(out[0]) == (6, 6)


async def test_lines_after_the_mark_of_a_flush_the_receiver_never_had_are_not_held(
        pair: Pair) -> None:
    """Worker 0 starts late (or skips a flush): worker 1's mark for flush 10 reaches it, but
    its own first flush is 11. What worker 1 forwards after that mark is in flush 11."""
    ex0, ex1 = pair
    to0 = _names_of(0, 1)[0]
    out: Flushed = {}
    async with running(pair):
        await _flush(ex1, 10, out)  # alone: worker 0 has no flush 10
        ex1.handle(to0 + b":3|c")
        await trio.sleep(SETTLE)
        # After worker 1's mark 11: flush 12.
        await _uneven_flush(ex1, ex0, 11, out, lambda: ex1.handle(to0 + b":4|c"))
        assert out[0].counters[to0] == 3
        assert _received(out[0]) == (1, 1)
        await _flush_both(pair, 12, out)
        assert out[0].counters[to0] == 4
        assert _received(out[0]) == (1, 1)


async def test_messages_not_from_a_peer_are_counted_and_dropped(pair: Pair) -> None:
    ex0, ex1 = pair
    to0 = _names_of(0, 1)[0]
    async with running(pair):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
            for junk in (b"D", b"M\x00", b"S", b"Zzz", b"", b"D\x00\x07" + to0 + b":1|c"):
                stranger.sendto(junk, ex0.context.address(0))
        ex1.handle(to0 + b":1|c")
        await _eventually(lambda: ex0.accumulator.ledger.counters.get(to0) == 1)
        assert ex0.dropped_messages["malformed"] == 6  # read before the peer's line
        assert ex0.accumulator.ledger.counters[to0] == 1  # still serving its peer


async def test_the_final_flush_waits_for_nothing(pair: Pair) -> None:
    """On the way out nothing is held for a next interval that will not be flushed."""
    ex0, ex1 = pair
    to0 = _names_of(0, 1)[0]
    out: Flushed = {}

    async with running(pair):
        async with trio.open_nursery() as flushing:
            flushing.start_soon(_flush, ex1, 10, out)
            await trio.sleep(SETTLE)
            ex1.handle(to0 + b":7|c")  # after worker 1's mark: would wait at worker 0
            await trio.sleep(SETTLE)
            ex0.finish()
            await _flush(ex0, 10, out)
    assert out[0].counters[to0] == 7


async def test_a_full_queue_for_an_absent_peer_drops_lines_but_keeps_marks(
        monkeypatch: pytest.MonkeyPatch, runtime_dir: str) -> None:
    monkeypatch.setattr(outbox_module, "MAX_PENDING_BYTES", 2_000)
    ex0 = Exchange(_context(0, runtime_dir), Accumulator(LedgerOptions()), INTERVAL)
    try:
        line = b"x" * (100 - DATA_HEADER_BYTES)  # 100-byte data messages, one line each
        for flush in range(3):
            for _ in range(15):
                ex0.outbox.enqueue(1, encode_data(0, [line]))
            ex0.outbox.enqueue(1, encode_mark(0, flush, 0, 0, 0))
        assert ex0.outbox.peer_down[1]
        queued = list(ex0.outbox._queue[1])
        assert [decode_mark(m)[1] for m in queued if m[:1] == MARK] == [0, 1, 2]
        assert queued[-1][:1] == MARK and queued[0][:1] == MARK  # in their places
        data = [m for m in queued if m[:1] == DATA]
        assert ex0.dropped["worker_down"] == 45 - len(data) > 0
        assert sum(map(len, queued)) <= 2_000
    finally:
        ex0.close()


async def test_a_message_longer_than_any_peer_sends_is_counted_not_parsed(pair: Pair) -> None:
    """Issue 8, item 2: the receiver's buffer is the largest message a peer sends; a longer
    one (no peer makes it) is seen whole-length (MSG_TRUNC), counted with its lines, and
    never parsed cut short."""
    ex0, ex1 = pair
    to0 = _names_of(0, 1)[0]
    lines = [to0 + b":1|c"] * (3 * MAX_MESSAGE_BYTES // len(to0 + b":1|c\n"))
    async with running(pair):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * MAX_MESSAGE_BYTES)
            other.sendto(encode_data(1, lines), ex0.context.address(0))
        ex1.handle(to0 + b":5|c")  # then a real peer's message, one line
        await _eventually(lambda: to0 in ex0.accumulator.ledger.counters)
    assert ex0.dropped_messages["truncated"] == 1
    assert ex0.dropped["truncated"] == len(lines)
    assert ex0.accumulator.ledger.counters[to0] == 5  # nothing of the cut message


class _FailingSocket:
    """Wraps the outbox's socket; ``sendto`` raises the given errors first."""

    def __init__(self, sock: socket.socket, errors: list[int]) -> None:
        self.sock = sock
        self.errors = errors

    def sendto(self, data: bytes, address: str) -> int:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, "injected")
        return self.sock.sendto(data, address)


@pytest.mark.parametrize("code", [errno.ENOBUFS, errno.EAGAIN, errno.ENOMEM])
async def test_a_full_peer_is_back_pressure_not_an_error(pair: Pair, code: int) -> None:
    """Issue 8, item 1: ENOBUFS (and EAGAIN) from sendto keep the message queued for the
    next try; nothing is lost and the worker goes on."""
    ex0, ex1 = pair
    to1 = _names_of(1, 1)[0]
    real = ex0.outbox.sock
    ex0.outbox.sock = _FailingSocket(real, [code, code])  # type: ignore[assignment]
    async with running(pair):
        ex0.handle(to1 + b":3|c")
        ex0.outbox.close_batch(1)  # the first two tries fail
        assert ex0.outbox._queue[1]
        await _eventually(lambda: to1 in ex1.accumulator.ledger.counters)  # retried by run()
    assert not ex0.outbox._queue[1]
    assert ex1.accumulator.ledger.counters[to1] == 3
    assert not ex0.dropped and not ex0.dropped_messages


async def test_any_other_send_error_drops_that_message_counted(pair: Pair) -> None:
    """Issue 8, item 1: no send error ends a worker; one that retrying cannot cure drops
    that message, counted with its lines, and the next message goes."""
    ex0, ex1 = pair
    to1 = _names_of(1, 1)[0]
    ex0.outbox.sock = _FailingSocket(  # type: ignore[assignment]
        ex0.outbox.sock, [errno.EMSGSIZE, errno.EPERM])
    async with running(pair):
        for value in (1, 2, 4):
            ex0.handle(to1 + b":%d|c" % value)
            ex0.outbox.close_batch(1)
        await _eventually(lambda: to1 in ex1.accumulator.ledger.counters)
    assert ex0.dropped_messages["send_failed"] == 2
    assert ex0.dropped["send_failed"] == 2
    assert ex1.accumulator.ledger.counters[to1] == 4


async def test_a_mark_that_fails_to_send_hands_its_intake_to_the_next_mark(
        pair: Pair) -> None:
    """metrics_received = aggregated + drops: the intake counts of a mark dropped by a send
    error are not lost with it, they go with the next mark."""
    ex0, ex1 = pair
    to0 = _names_of(0, 1)[0]
    out: Flushed = {}
    async with running(pair):
        ex1.handle(b"\n".join([to0 + b":1|c", b"bad line"]))
        ex1.outbox.close_batch(0)  # the lines go
        await _eventually(lambda: to0 in ex0.accumulator.ledger.counters)
        ex1.outbox.sock = _FailingSocket(ex1.outbox.sock, [errno.EPERM])  # type: ignore[assignment]
        await _flush_both(pair, 1, out)  # the mark of flush 1 fails
        assert ex1.dropped_messages["send_failed"] == 1
        assert _received(out[0]) == (0, 0)  # the counts were not in the failed mark's flush
        await _flush_both(pair, 2, out)
    assert _received(out[0]) == (1, 2)  # but in the next one, with their lines' flush's
    assert out[0].counters[b"statsd.bad_lines_seen"] == 1


def _closed_fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.fields for r in caplog.records  # type: ignore[attr-defined]
            if r.getMessage() == "exchange_closed"]


def test_closing_counts_and_says_what_it_leaves(
        runtime_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    """At the final stop, a peer's lines still unread in the socket and the intake counts
    of marks never sent to worker 0 are said, with the unsent lines."""
    caplog.set_level(logging.WARNING)
    ex0, ex1 = (Exchange(_context(i, runtime_dir),
                         Accumulator(LedgerOptions(report_internal=i == 0)), INTERVAL)
                for i in (0, 1))
    try:
        ex1.handle(b"\n".join(n + b":1|c" for n in _names_of(0, 3)))
        ex1.outbox.close_batch(0)  # delivered to worker 0's socket: never read
        ex0.close()
        assert _closed_fields(caplog) == [{"event": "exchange_closed", "worker": 0,
                                           "unread_lines": 3, "unsent_lines": 0,
                                           "unsent_intake_lines": 0}]
        caplog.clear()
        ex1.handle(b"\n".join(n + b":1|c" for n in _names_of(0, 2)))
        ex1.outbox.close_batch(0)  # worker 0 is gone: queued
        ex1.outbox.enqueue(0, encode_mark(1, 7, *ex1.accumulator.take_intake()))
        ex1.close()
        assert _closed_fields(caplog) == [{"event": "exchange_closed", "worker": 1,
                                           "unread_lines": 0, "unsent_lines": 2,
                                           "unsent_intake_lines": 5}]
    finally:
        ex0.close()
        ex1.close()


async def test_worker_0_notes_the_messages_its_peers_read(pair: Pair) -> None:
    """Admin ``messages.last_msg_seen`` (worker 0) follows every worker's reads: a peer's
    lines arrive at once, a peer's own lines with its next mark (within an interval)."""
    ex0, ex1 = pair
    out: Flushed = {}
    async with running(pair):
        ex1.handle(_names_of(0, 1)[0] + b":1|c")  # for worker 0
        ex1.outbox.close_batch(0)
        await _eventually(lambda: ex0.accumulator.last_message_time is not None)
        ex0.accumulator.last_message_time = None
        ex1.handle(_names_of(1, 1)[0] + b":1|c")  # its own: only its mark tells
        await _flush_both(pair, 1, out)
        assert ex0.accumulator.last_message_time is not None
        ex0.accumulator.last_message_time = None
        await _flush_both(pair, 2, out)  # nothing read: a mark of no packets
    assert ex0.accumulator.last_message_time is None
    assert ex1.accumulator.last_message_time is None  # only worker 0 answers stats


def test_the_shared_record_bounds_what_a_killed_worker_held(runtime_dir: str) -> None:
    """Issue 8, item 4: what a worker took in since its last rendered flush, and what its
    peers delivered to its socket that it never read, are known after it is killed."""
    records = WorkerRecords.create(2)
    exchanges = [Exchange(_context(i, runtime_dir, records),
                          Accumulator(LedgerOptions(report_internal=i == 0)), INTERVAL)
                 for i in (0, 1)]
    ex0, ex1 = exchanges
    try:
        own1 = _names_of(1, 5)
        ex1.handle(b"\n".join(n + b":1|c" for n in own1[:2]))
        ex1.after_swap(10)
        ex1.rendered(10)  # flush 10 is out: those two lines are no longer at risk
        assert records.taken(1) == 0
        ex1.handle(own1[2] + b":1|c\n" + own1[3] + b":1|c")
        ex0.handle(b"\n".join(n + b":1|c" for n in own1))  # all for worker 1
        ex0.outbox.close_batch(1)  # delivered to its socket, never read: it is "killed" now
        assert records.record_death(1) == (2, 5)
        assert (records.deaths(), records.lost_at_most()) == (1, 7)
        # Its successor starts even (received = sent): what worker 0 delivered is not counted
        # again at its next death.
        assert records.record_death(1) == (0, 0)
        assert (records.deaths(), records.lost_at_most()) == (2, 7)
    finally:
        for exchange in exchanges:
            exchange.close()
        records.close()


def test_sender_restarts_then_the_receiver_is_killed(runtime_dir: str) -> None:
    """What a restarted sender delivered and its receiver never read is still counted: the
    pair counters run across the sender's generations, as the receiver's do."""
    records = WorkerRecords.create(2)
    to1 = _names_of(1, 6)
    ex1 = Exchange(_context(1, runtime_dir, records),
                   Accumulator(LedgerOptions()), INTERVAL)
    exchanges = [ex1]
    try:
        ex0 = Exchange(_context(0, runtime_dir, records),
                       Accumulator(LedgerOptions(report_internal=True)), INTERVAL)
        exchanges.append(ex0)
        ex0.handle(b"\n".join(n + b":1|c" for n in to1[:3]))
        ex0.outbox.close_batch(1)
        ex1._receive_all()  # all read
        ex0.close()
        assert records.record_death(0) == (3, 0)  # worker 0 dies, and is restarted
        ex0 = Exchange(_context(0, runtime_dir, records),
                       Accumulator(LedgerOptions(report_internal=True)), INTERVAL)
        exchanges.append(ex0)
        ex0.handle(b"\n".join(n + b":1|c" for n in to1[3:5]))
        ex0.outbox.close_batch(1)
        ex1._receive_all()  # read too
        ex0.handle(to1[5] + b":1|c")
        ex0.outbox.close_batch(1)  # delivered, never read: worker 1 is SIGKILLed now
        assert records.record_death(1) == (5, 1)  # 5 read, not yet flushed; 1 unread
        assert records.lost_at_most() == 3 + 6
        # Its successor starts even: nothing is counted twice at its next death.
        assert records.record_death(1) == (0, 0)
    finally:
        for exchange in exchanges:
            exchange.close()
        records.close()


async def test_a_worker_that_fails_to_start_leaves_no_exchange_socket(runtime_dir: str) -> None:
    """A worker whose start fails after its exchange would be made (here its admin socket
    cannot be bound: a directory is in the way) leaves no socket file behind."""
    os.makedirs(os.path.join(runtime_dir, "a1", "in-the-way"))
    config = config_from_mapping(AggregatorConfig, {"listen": ["udp://127.0.0.1:0"],
                                                    "mgmt_port": 0, "http": "127.0.0.1:0"})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intake:
        intake.bind(("127.0.0.1", 0))
        intake.setblocking(False)
        context = WorkerContext(index=1, count=2, runtime_dir=runtime_dir, generation=0,
                                sockets=(intake,), mgmt=None)
        with pytest.raises(IsADirectoryError):
            await serve(config, worker=context)
    assert sorted(os.listdir(runtime_dir)) == ["a1"]


def test_the_runtime_dir_is_private_and_fits_a_socket_path() -> None:
    """Issue 8, item 3: mode 0700, and a base too long for ``sun_path`` falls back to /tmp."""
    for base in (None, "/tmp/" + "x" * 120):
        path = make_runtime_dir(12, base=base)
        try:
            assert os.stat(path).st_mode & 0o777 == 0o700
            assert len(os.path.join(path, "x11")) <= 107
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.bind(os.path.join(path, "x11"))
        finally:
            shutil.rmtree(path)


async def test_an_idle_outbox_never_wakes_and_a_batch_goes_without_a_flush(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """No polling: with nothing batched or queued the outbox's loop sleeps; a line read
    for the peer reaches it within the batch delay, no flush needed."""
    ex0, ex1 = pair
    rounds = 0
    close_batch = ex0.outbox.close_batch

    def counting(peer: int) -> None:
        nonlocal rounds
        rounds += 1
        close_batch(peer)

    monkeypatch.setattr(ex0.outbox, "close_batch", counting)
    async with running(pair):
        await trio.sleep(0.5)  # 250 rounds of the batch delay
        assert rounds == 0
        name = _names_of(1, 1)[0]
        ex0.handle(name + b":3|c")
        await _eventually(lambda: ex1.received_lines == 1)
        assert ex1.accumulator.ledger.counters[name] == 3.0
        settled = rounds
        await trio.sleep(0.5)
        assert rounds == settled  # asleep again
