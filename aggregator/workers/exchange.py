"""One worker of a multi-process aggregator: the exchange between workers and the flush barrier.

Every worker binds a Unix datagram socket in the supervisor's private runtime directory
(``<runtime_dir>/x<index>``, see `aggregator.workers.context`) and sends its peers their lines
(see `aggregator.workers.codec`), in messages of at most `MAX_MESSAGE_BYTES`. Outgoing messages
go through one FIFO queue per peer, so a mark never overtakes the lines sent before it. A
peer whose socket is full (EAGAIN, ENOBUFS: back-pressure), or not there (still starting,
or restarting), is retried every few milliseconds; its lines wait in the queue and are
delivered when it is back. Past `MAX_PENDING_BYTES` the oldest lines for it are dropped
and counted (reason ``worker_down`` while it is away, ``exchange_full`` otherwise). No
send or receive error ends a worker: any other one drops that message, counted.

Each worker keeps its part of the shared `WorkerRecords` current: the lines it took in
since its last rendered flush, and the lines it sent to and received from each peer, so
the supervisor can say how much at most died with it when it is killed.

SHELL.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from common.listener import set_receive_buffer
from common.logging import log_event
from common.stats import counter, level

from ..ledger import Accumulator
from .codec import (
    DATA,
    DATA_HEADER_BYTES,
    MARK,
    MAX_MESSAGE_BYTES,
    STATS,
    Splitter,
    data_line_count,
    decode_data,
    decode_mark,
    decode_stats,
    encode_mark,
    encode_stats,
    pack_data,
    split_gauges,
)
from .context import WorkerContext

LOGGER = logging.getLogger(__name__)

#: Forwarded lines for a peer are sent once this many bytes wait (or `BATCH_SECONDS` have
#: passed); a batch is cut into messages of at most `MAX_MESSAGE_BYTES` (`pack_data`).
BATCH_BYTES: Final = 60_000
#: How long forwarded lines may wait for their batch to fill.
BATCH_SECONDS: Final = 0.002
#: Queued for one peer before its oldest lines are dropped.
MAX_PENDING_BYTES: Final = 64 * 1024 * 1024
#: Kernel buffers of the exchange sockets.
EXCHANGE_BUFFER_BYTES: Final = 32 * 1024 * 1024
#: The kernel's sending buffer; a Unix datagram can be at most this (less 32 bytes), so it
#: must hold a `MAX_MESSAGE_BYTES` message (checked at start).
EXCHANGE_SEND_BUFFER_BYTES: Final = 4 * 1024 * 1024
#: Send errors that mean "the peer cannot take it now": the message stays queued and is
#: retried (back-pressure); the queue's bound turns a lasting one into counted drops.
_RETRY_ERRNOS: Final = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.ENOMEM, errno.EINTR})
#: Send errors that mean "the peer is not there" (starting, restarting, or dead).
_DOWN_ERRNOS: Final = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.ECONNRESET})
#: Cut or failed messages are logged on the first and then every this many.
_LOG_EVERY: Final = 100
#: The longest a flush waits for a peer's mark or name count (and at most a third of the
#: interval): a dead or stuck worker delays the others' flushes by at most this. What a
#: slow peer sends after the wait is counted in the next interval (marks) or replaced by
#: its previous value (name counts).
MAX_BARRIER_SECONDS: Final = 1.0
#: The same bound for the final flush at shutdown, when there is no next interval to take
#: what comes late, and no next flush to delay.
FINAL_BARRIER_SECONDS: Final = 2.0


@attrs.frozen
class ExchangeStatistics:
    """A snapshot of one worker's exchange, since this worker started."""

    forwarded_lines: int = counter(help="lines read here and sent to the worker owning them")
    received_lines: int = counter(help="lines received from the other workers")
    dropped_lines: dict[str, int] = counter(
        help="lines that never reached their owner, by reason (worker_down, exchange_full, "
             "too_large, truncated, send_failed)")
    dropped_messages: dict[str, int] = counter(
        help="exchange messages dropped whole, by reason (malformed, truncated, send_failed)")


@attrs.frozen
class WorkerStatistics:
    """This worker's place."""

    generation: int = level(help="how many times this worker index was restarted")


@attrs.frozen
class WorkersStatistics:
    """Worker 0's view of every worker's deaths (from the supervisor's shared record)."""

    deaths: int = counter(help="workers that died since the supervisor started")
    lost_lines_at_most: int = counter(
        help="the most lines those deaths can have lost (the sum of their bounds)")


class Exchange:
    """Moves lines and flush marks between this worker and its peers."""

    def __init__(self, context: WorkerContext, aggregator: Accumulator, interval: float) -> None:
        self.context = context
        self.aggregator = aggregator
        self.peers = [i for i in range(context.count) if i != context.index]
        self.splitter = Splitter(aggregator.parser, context.index, context.count)
        self.barrier_seconds = min(MAX_BARRIER_SECONDS, interval / 3)
        self.address = context.address(context.index)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            # A previous worker with this index (killed, now restarted) left its socket.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)
            self.sock.bind(self.address)
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        set_receive_buffer(self.sock, EXCHANGE_BUFFER_BYTES)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, EXCHANGE_SEND_BUFFER_BYTES)
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < MAX_MESSAGE_BYTES + 64:
            self.sock.close()
            raise RuntimeError("the exchange socket's send buffer cannot hold one exchange "
                               f"message ({MAX_MESSAGE_BYTES} bytes): raise net.core.wmem_max")
        # One buffer for every message received; a message is never longer (MSG_TRUNC
        # tells when something longer was cut to it).
        self._receive_buffer = bytearray(MAX_MESSAGE_BYTES)
        # For the shared record: lines taken in since start (read here, or received from
        # a peer), how many of them were in flushes already rendered, where the last swap
        # cut, and the lines sent to / received from each peer.
        self.records = context.records
        self._taken = self._rendered_upto = self._swap_base = 0
        # The pair counters run since the supervisor started: a restarted worker goes on
        # from its predecessor's (`WorkerRecords.record_death`).
        records = self.records
        self._sent: dict[int, int] = {
            p: records.sent(context.index, p) if records else 0 for p in self.peers}
        self._received: dict[int, int] = {
            p: records.received(context.index, p) if records else 0 for p in self.peers}
        self._batch: dict[int, list[bytes]] = {p: [] for p in self.peers}
        self._batch_bytes: dict[int, int] = dict.fromkeys(self.peers, 0)
        self._queue: dict[int, deque[bytes]] = {p: deque() for p in self.peers}
        self._queued_bytes: dict[int, int] = dict.fromkeys(self.peers, 0)
        self._marks: dict[int, dict[int, tuple[int, int, int]]] = {}
        self._stats: dict[int, dict[int, int]] = {}
        # The last flush whose barrier is over (marks / name counts arriving for it or an
        # earlier one are late), and each peer's latest name count (the fallback when its
        # count for a flush is late).
        self._marks_closed = -1
        self._stats_closed = -1
        self._last_names: dict[int, int] = {}
        # Between a mark and the swap that follows it, lines belong to the next interval:
        # each peer's latest mark still open here, the lines peers sent after it (with the
        # flush they follow), and this worker's own lines read while it waits.
        self._open_marks: dict[int, int] = {}
        # The flush this worker is in or about to start (-1 before its first).
        self._pending = -1
        self._deferred: deque[tuple[int, bytes]] = deque()
        self._held: list[bytes] | None = None
        self._finishing = False
        self._held_packets = self._held_lines = 0
        self._arrived = trio.Event()
        #: Lines dropped, by reason; messages dropped whole, by reason.
        self.dropped: Counter[str] = Counter()
        self.dropped_messages: Counter[str] = Counter()
        self.peer_down: dict[int, bool] = {}
        self.forwarded_lines = 0
        self.received_lines = 0
        # Worker 0 answers admin ``stats``: its last_msg_seen follows the peers' reads too.
        self._notes_arrivals = context.index == 0

    def close(self) -> None:
        """At the final stop: what is still here is lost, and said (nothing follows):
        peers' lines unread in this socket (sent after the final barrier gave up on
        them), lines queued for a peer gone at the final flush, and the intake counts in
        marks that never reached worker 0."""
        unread = self._drain_unread()
        unsent = sum(data_line_count(m) for q in self._queue.values() for m in q
                     if m[:1] == DATA) + sum(map(len, self._batch.values()))
        unsent_intake = sum(decode_mark(m)[3] for m in self._queue.get(0, ())
                            if m[:1] == MARK)
        if unread or unsent or unsent_intake:
            log_event(LOGGER, "exchange_closed", level=logging.WARNING,
                      worker=self.context.index, unread_lines=unread, unsent_lines=unsent,
                      unsent_intake_lines=unsent_intake)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address)

    def _drain_unread(self) -> int:
        """Read what waits in the socket without blocking; the lines of its data messages
        (by their headers)."""
        lines = 0
        buffer = self._receive_buffer
        while True:
            try:
                size = self.sock.recv_into(buffer, MAX_MESSAGE_BYTES,
                                           socket.MSG_TRUNC | socket.MSG_DONTWAIT)
            except OSError:  # empty (EAGAIN), or unreadable: nothing more to count
                return lines
            if buffer[:1] == DATA and size >= DATA_HEADER_BYTES:
                lines += data_line_count(bytes(buffer[:DATA_HEADER_BYTES]))

    def statistics(self) -> ExchangeStatistics:
        return ExchangeStatistics(
            self.forwarded_lines, self.received_lines,
            {r: self.dropped[r] for r in ("worker_down", "exchange_full", "too_large",
                                          "truncated", "send_failed")},
            {r: self.dropped_messages[r] for r in ("malformed", "truncated", "send_failed")})

    def worker_statistics(self) -> WorkerStatistics:
        return WorkerStatistics(self.context.generation)

    def workers_statistics(self) -> WorkersStatistics | None:
        """Every worker's deaths: on worker 0 with a shared record, else None."""
        if self.records is None or self.context.index != 0:
            return None
        return WorkersStatistics(self.records.deaths(), self.records.lost_at_most())

    def worker_deaths(self, head: str) -> dict[str, float]:
        """Worker 0's figures of worker deaths (from the shared record), under ``head``:
        how many, and the sum of their ``lost_at_most`` bounds."""
        if self.records is None or self.context.index != 0:
            return {}
        return {head + "deaths": self.records.deaths(),
                head + "lost_lines_at_most": self.records.lost_at_most()}

    def _note_taken(self) -> None:
        if self.records is not None:
            self.records.set_taken(self.context.index, self._taken - self._rendered_upto)

    # Intake side ------------------------------------------------------------------------
    def handle(self, packet: bytes, packets: int = 1) -> None:
        """The intake callback: keep own lines, batch the others for their owners.

        Args:
            packets: how many datagrams ``packet`` joins.
        """
        own, foreign, count = self.splitter.split(packet)
        self._taken += count
        self._note_taken()
        if self._held is not None and not self._finishing:  # between mark and swap
            self._held_packets += packets
            self._held_lines += count
            if own:
                gauges, rest = split_gauges(own)
                if gauges:
                    self.aggregator.ingest(gauges, intake=False)
                if rest:
                    self._held.append(rest)
        else:
            self.aggregator.add_intake(packets, count, 0)
            if own:
                self.aggregator.ingest(own, intake=False)
        for peer, lines in foreign.items():
            batch = self._batch[peer]
            batch.extend(lines)
            self._batch_bytes[peer] += sum(map(len, lines)) + len(lines)
            if self._batch_bytes[peer] >= BATCH_BYTES:
                self._close_batch(peer)

    def _close_batch(self, peer: int) -> None:
        lines = self._batch[peer]
        if lines:
            self._batch[peer] = []
            self._batch_bytes[peer] = 0
            messages, oversized = pack_data(self.context.index, lines)
            self.forwarded_lines += len(lines) - len(oversized)
            for line in oversized:
                self._keep_oversized(line)
            for message in messages:
                self._enqueue(peer, message)

    def _keep_oversized(self, line: bytes) -> None:
        """A line too long for an exchange message of its own. Longer than
        ``max_line_bytes``, it is refused wherever it is parsed: here, as a bad line, as in
        a single process. Otherwise (``max_line_bytes`` set above the message size) it
        cannot reach its owner and is dropped, counted (``too_large``)."""
        if len(line) > self.aggregator.parser.max_line_bytes:
            self.aggregator.ingest(line, intake=False)
            return
        self.dropped["too_large"] += 1
        if self.dropped["too_large"] % _LOG_EVERY == 1:
            log_event(LOGGER, "exchange_line_too_large", level=logging.WARNING,
                      worker=self.context.index, bytes=len(line),
                      limit=MAX_MESSAGE_BYTES, total=self.dropped["too_large"])

    def _enqueue(self, peer: int, message: bytes) -> None:
        queue = self._queue[peer]
        queue.append(message)
        self._queued_bytes[peer] += len(message)
        if self._queued_bytes[peer] > MAX_PENDING_BYTES:
            # Drop the oldest lines; marks and name counts (a few bytes, and what the peer's
            # intake counts travel in) stay, ahead of the lines that remain.
            reason = "worker_down" if self.peer_down.get(peer) else "exchange_full"
            kept: list[bytes] = []
            while self._queued_bytes[peer] > MAX_PENDING_BYTES and len(queue) > 1:
                old = queue.popleft()
                if old[:1] != DATA:
                    kept.append(old)
                    continue
                self._queued_bytes[peer] -= len(old)
                self.dropped[reason] += data_line_count(old)
            queue.extendleft(reversed(kept))
        self._pump(peer)

    def _pump(self, peer: int) -> None:
        queue = self._queue[peer]
        address = self.context.address(peer)
        while queue:
            message = queue[0]
            try:
                self.sock.sendto(message, address)
            except OSError as e:
                if e.errno in _RETRY_ERRNOS:
                    return  # the peer's queue is full: retried by run()
                if e.errno in _DOWN_ERRNOS:
                    # The peer is not (yet, or no longer) there: keep its lines queued,
                    # within MAX_PENDING_BYTES, and deliver them when it is back.
                    if not self.peer_down.get(peer):
                        self.peer_down[peer] = True
                        log_event(LOGGER, "worker_peer_down", level=logging.WARNING,
                                  worker=self.context.index, peer=peer)
                    return
                # Anything else (EMSGSIZE cannot happen: messages are bounded, and the
                # send buffer was checked to hold one): this message is dropped, counted,
                # and the worker goes on.
                queue.popleft()
                self._queued_bytes[peer] -= len(message)
                self._count_send_failure(message, e)
                if peer == 0 and message[:1] == MARK:
                    # The intake counts it carried travel with the next mark instead.
                    _, _, packets, lines, bad = decode_mark(message)
                    self.aggregator.add_intake(packets, lines, bad)
                continue
            if message[:1] == DATA:
                self._sent[peer] += data_line_count(message)
                if self.records is not None:
                    self.records.set_sent(self.context.index, peer, self._sent[peer])
            if self.peer_down.get(peer):
                self.peer_down[peer] = False
                log_event(LOGGER, "worker_peer_up", worker=self.context.index, peer=peer)
            queue.popleft()
            self._queued_bytes[peer] -= len(message)

    def _count_send_failure(self, message: bytes, error: OSError) -> None:
        self.dropped_messages["send_failed"] += 1
        if message[:1] == DATA:
            self.dropped["send_failed"] += data_line_count(message)
        if self.dropped_messages["send_failed"] % _LOG_EVERY == 1:
            log_event(LOGGER, "exchange_send_failed", level=logging.ERROR,
                      worker=self.context.index, error=errno.errorcode.get(error.errno or 0,
                                                                           str(error.errno)),
                      bytes=len(message), total=self.dropped_messages["send_failed"])

    # Receiving side ---------------------------------------------------------------------
    def _receive_all(self) -> None:
        buffer = self._receive_buffer
        view = memoryview(buffer)
        recv_into = self.sock.recv_into
        while True:
            try:
                # MSG_TRUNC: the real length, even of a datagram longer than the buffer.
                size = recv_into(buffer, MAX_MESSAGE_BYTES, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # never fatal; nothing else is expected here
                log_event(LOGGER, "exchange_receive_failed", level=logging.ERROR,
                          worker=self.context.index, error=str(e))
                return
            if size > MAX_MESSAGE_BYTES:
                self._count_truncated(bytes(view[:MAX_MESSAGE_BYTES]), size)
                continue
            message = bytes(view[:size])
            try:
                self._on_message(message)
            except (struct.error, ValueError):
                # Not from a peer (the socket is in the private runtime dir, so only this
                # user or root can send here; still). Dropped, counted, never fatal.
                self.dropped_messages["malformed"] += 1
                log_event(LOGGER, "exchange_message_malformed", level=logging.WARNING,
                          worker=self.context.index, bytes=len(message))

    def _count_truncated(self, head: bytes, size: int) -> None:
        """A message longer than any peer sends, cut by the kernel: counted, not parsed
        (its last line would be cut too); a data message's header says how many lines."""
        self.dropped_messages["truncated"] += 1
        if head[:1] == DATA:
            self.dropped["truncated"] += data_line_count(head)
        if self.dropped_messages["truncated"] % _LOG_EVERY == 1:
            log_event(LOGGER, "exchange_message_truncated", level=logging.ERROR,
                      worker=self.context.index, bytes=size, limit=MAX_MESSAGE_BYTES,
                      total=self.dropped_messages["truncated"])

    def _on_message(self, message: bytes) -> None:
        kind = message[:1]
        if kind == DATA:
            sender, lines, payload = decode_data(message)
            self._check_sender(sender)
            if self._notes_arrivals:  # a peer read a message just now (admin stats)
                self.aggregator.last_message_time = time.time()
            self.received_lines += lines
            self._taken += lines
            self._received[sender] += lines
            if self.records is not None:
                self.records.set_received(self.context.index, sender, self._received[sender])
                self._note_taken()
            after = self._open_marks.get(sender, -1)
            # Sent after the peer's mark for a flush this worker has still to swap: wait.
            # (After the mark of a flush it never had, it started late or skipped it, the
            # lines are in the interval now open: no wait.)
            if after > self._marks_closed and after >= self._pending and not self._finishing:
                gauges, payload = split_gauges(payload)
                if gauges:
                    self.aggregator.ingest(gauges, intake=False)
                if payload:
                    self._deferred.append((after, payload))
            else:
                self.aggregator.ingest(payload, intake=False)
        elif kind == MARK:
            sender, flush, packets, lines, bad = decode_mark(message)
            self._check_sender(sender)
            if packets and self._notes_arrivals:
                # The peer read a message since its previous mark: at most one flush
                # interval before now (its own lines it sends nobody).
                self.aggregator.last_message_time = time.time()
            if flush > self._marks_closed:
                self._marks.setdefault(flush, {})[sender] = (packets, lines, bad)
                self._open_marks[sender] = max(flush, self._open_marks.get(sender, -1))
                self._arrived.set()
            elif self.context.index == 0:
                # Its flush went ahead without this mark (the peer was slow): count the
                # peer's intake in the interval now open rather than lose it.
                self.aggregator.add_intake(packets, lines, bad)
        elif kind == STATS:
            sender, flush, names = decode_stats(message)
            self._check_sender(sender)
            self._last_names[sender] = names
            if flush > self._stats_closed:
                self._stats.setdefault(flush, {})[sender] = names
                self._arrived.set()
        else:
            raise ValueError(f"unknown message kind {kind!r}")

    def _check_sender(self, sender: int) -> None:
        if sender == self.context.index or not 0 <= sender < self.context.count:
            raise ValueError(f"no such peer {sender}")

    async def run(self) -> None:
        """Receive peers' messages and send batches, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_loop)
            while True:
                await trio.sleep(BATCH_SECONDS)
                for peer in self.peers:
                    self._close_batch(peer)
                    self._pump(peer)

    async def _receive_loop(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            self._receive_all()
            await trio.lowlevel.checkpoint()

    # Flush barrier ----------------------------------------------------------------------
    async def _wait(self, table: dict[int, dict[int, Any]], flush: int,
                    what: str) -> dict[int, Any]:
        with trio.move_on_after(self.barrier_seconds):
            while len(table.get(flush, {})) < len(self.peers):
                self._receive_all()
                if len(table.get(flush, {})) >= len(self.peers):
                    break
                self._arrived = trio.Event()
                await self._arrived.wait()
        got = table.pop(flush, {})
        for old in [t for t in table if t < flush]:
            stale = table.pop(old)
            if table is self._marks and self.context.index == 0:
                # Marks of a flush this worker skipped (its previous flush overran, or it
                # has just restarted): their intake counts go into this interval.
                for packets, lines, bad in stale.values():
                    self.aggregator.add_intake(packets, lines, bad)
        if len(got) < len(self.peers):
            log_event(LOGGER, "worker_barrier_timeout", level=logging.WARNING, what=what,
                      flush=flush, missing=len(self.peers) - len(got),
                      worker=self.context.index)
        return got

    async def before_swap(self, sequence: int) -> None:
        """Mark the flush to every peer, wait for theirs; worker 0 adds their intake.

        Packets read during the wait belong to the next interval: their own lines and
        counts are held for `after_swap`, their other lines follow the mark to the peers,
        which hold them until their own swap.
        """
        self._pending = sequence
        self._release(lambda after: after < sequence)  # marks of flushes it never had
        counts = self.aggregator.take_intake() if self.context.index else (0, 0, 0)
        mark = encode_mark(self.context.index, sequence, *counts)
        for peer in self.peers:
            self._close_batch(peer)
            self._enqueue(peer, mark)
        self._held = []
        marks = await self._wait(self._marks, sequence, "mark")
        self._marks_closed = sequence
        if self.context.index == 0:
            for packets, lines, bad in marks.values():
                self.aggregator.add_intake(packets, lines, bad)

    def after_swap(self, sequence: int) -> None:
        """Aggregate, in the interval just opened, what waited for the swap: own lines read
        after this worker's mark, and peers' lines sent after theirs."""
        # What was taken in up to here is in the flush being made, but for what waits
        # for this interval: own lines read after the mark, peers' lines after theirs.
        self._swap_base = (self._taken - self._held_lines
                           - sum(p.count(b"\n") + 1 for _, p in self._deferred))
        held, self._held = self._held or [], None
        self.aggregator.add_intake(self._held_packets, self._held_lines, 0)
        self._held_packets = self._held_lines = 0
        for own in held:
            self.aggregator.ingest(own, intake=False)
        self._release(lambda after: after <= sequence)
        self._open_marks = {p: f for p, f in self._open_marks.items() if f > sequence}

    def rendered(self, sequence: int) -> None:
        """The flush is rendered and handed to the outputs: what it held is no longer
        this worker's to lose."""
        self._rendered_upto = self._swap_base
        self._note_taken()

    def _release(self, due: Callable[[int], bool]) -> None:
        """Aggregate the deferred lines whose mark's flush is ``due``; keep the others."""
        if self._deferred:
            waiting: deque[tuple[int, bytes]] = deque()
            for after, payload in self._deferred:
                if due(after):
                    self.aggregator.ingest(payload, intake=False)
                else:
                    waiting.append((after, payload))
            self._deferred = waiting

    def finish(self) -> None:
        """Before the final flush: nothing waits for a next interval any more. What was
        deferred is aggregated now, what arrives is aggregated at once, and the barrier
        waits longer for slow peers (what they send after it would be lost)."""
        self._finishing = True
        self.barrier_seconds = max(self.barrier_seconds, FINAL_BARRIER_SECONDS)
        self._release(lambda _: True)

    async def num_stats(self, sequence: int, own: int) -> int | None:
        """Worker 0: the total name count over all workers; the others send theirs."""
        if self.context.index != 0:
            self._enqueue(0, encode_stats(self.context.index, sequence, own))
            return None
        counts = await self._wait(self._stats, sequence, "names")
        self._stats_closed = sequence
        late = {p: self._last_names[p] for p in self.peers
                if p not in counts and p in self._last_names}
        return own + sum(int(n) for n in counts.values()) + sum(late.values())
