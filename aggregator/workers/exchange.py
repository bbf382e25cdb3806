"""One worker of a multi-process aggregator: the sockets between workers, and the flush
barrier's shell (its rules, which lines wait for which swap, are `aggregator.workers.barrier`;
this module moves the bytes and applies its decisions to the ledger).

Every worker binds a Unix datagram socket in the supervisor's private runtime directory
(``<runtime_dir>/x<index>``, see `aggregator.workers.context`) and sends its peers their lines
(see `aggregator.workers.codec`) through its `Outbox` (`aggregator.workers.outbox`: the
batches, the per-peer queues, their retries and drops). This module receives the peers'
messages. No receive error ends a worker: a message no peer could have sent is dropped,
counted.

Each worker keeps its part of the shared `WorkerRecords` current: the lines it took in
since its last rendered flush, and the lines it received from each peer (the outbox keeps
those it sent), so the supervisor can say how much at most died with it when it is killed.

SHELL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

import attrs
import trio

from common.listener import set_receive_buffer
from common.logging import log_event
from common.stats import counter, level

from ..ledger import Accumulator
from .barrier import NO_INTAKE, Admit, Barrier
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
)
from .context import WorkerContext
from .outbox import LOG_EVERY, Outbox, set_send_buffer

LOGGER = logging.getLogger(__name__)

#: The kernel's receiving buffer of the exchange socket.
EXCHANGE_BUFFER_BYTES: Final = 32 * 1024 * 1024
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

    def __init__(self, context: WorkerContext, accumulator: Accumulator, interval: float) -> None:
        self.context = context
        self.accumulator = accumulator
        self.peers = [i for i in range(context.count) if i != context.index]
        self.splitter = Splitter(accumulator.parser, context.index, context.count,
                                 checked=accumulator.ingest_checked)
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
        try:
            set_send_buffer(self.sock)
        except RuntimeError:
            self.sock.close()
            raise
        # One buffer for every message received; a message is never longer (MSG_TRUNC
        # tells when something longer was cut to it).
        self._receive_buffer = bytearray(MAX_MESSAGE_BYTES)
        self.barrier = Barrier(context.index, self.peers)
        # For the shared record: the lines received from each peer.
        self.records = context.records
        # The pair counters run since the supervisor started: a restarted worker goes on
        # from its predecessor's (`WorkerRecords.record_death`).
        records = self.records
        self._received: dict[int, int] = {
            p: records.received(context.index, p) if records else 0 for p in self.peers}
        self._arrived = trio.Event()
        #: Lines dropped, by reason; messages dropped whole, by reason (on both sides: the
        #: outbox counts into them too).
        self.dropped: Counter[str] = Counter()
        self.dropped_messages: Counter[str] = Counter()
        self.outbox = Outbox(context, self.peers, self.sock, accumulator,
                             dropped=self.dropped, dropped_messages=self.dropped_messages)
        self.received_lines = 0
        # Worker 0 answers the mgmt ``stats``: its last_msg_seen follows the peers' reads too.
        self._notes_arrivals = context.index == 0

    def close(self) -> None:
        """At the final stop: what is still here is lost, and said (nothing follows):
        peers' lines unread in this socket (sent after the final barrier gave up on
        them), lines queued for a peer gone at the final flush, and the intake counts in
        marks that never reached worker 0."""
        unread = self._drain_unread()
        unsent, unsent_intake = self.outbox.unsent()
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
            self.outbox.forwarded_lines, self.received_lines,
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

    def _note_taken(self) -> None:
        if self.records is not None:
            self.records.set_taken(self.context.index, self.barrier.unrendered_lines)

    def _admit(self, admit: Admit) -> None:
        """Apply a decision of the barrier to the ledger."""
        for lines in admit.lines:
            self.accumulator.ingest(lines, intake=False)
        if admit.intake != NO_INTAKE:
            self.accumulator.add_intake(*admit.intake)

    # Intake side ------------------------------------------------------------------------
    def handle(self, packet: bytes, packets: int = 1) -> None:
        """The intake callback: aggregate own lines, batch the others for their owners.

        Own lines cost what they cost with one worker (`Accumulator.ingest_sharded`: one
        pass, no copy); only while the barrier holds own lines (between this worker's
        mark and its swap) is the packet split first, for the barrier to hold them.

        Args:
            packets: how many datagrams ``packet`` joins.
        """
        barrier = self.barrier
        splitter = self.splitter
        if barrier.holding:
            own, foreign, count = splitter.split(packet)
            self.accumulator.count_received(count)
            admit = barrier.read_own(own, packets, count)
            self._note_taken()  # the shared record first: a kill may come at any moment
            self._admit(admit)
            self.outbox.forward(foreign.items())
            return
        records = self.records
        bound = 0
        if records is not None:  # a bound first (empty lines count): a kill may come
            bound = packet.count(b"\n") + 1
            records.set_taken(self.context.index, barrier.unrendered_lines + bound)
        lines = self.accumulator.ingest_sharded(packet, splitter.foreign, splitter.route,
                                                packets=packets)
        barrier.read_inline(lines)
        if records is not None and lines != bound:  # else the bound was exact
            records.set_taken(self.context.index, barrier.unrendered_lines)
        self.outbox.forward_pending(splitter.pending)

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
        if self.dropped_messages["truncated"] % LOG_EVERY == 1:
            log_event(LOGGER, "exchange_message_truncated", level=logging.ERROR,
                      worker=self.context.index, bytes=size, limit=MAX_MESSAGE_BYTES,
                      total=self.dropped_messages["truncated"])

    def _on_message(self, message: bytes) -> None:
        kind = message[:1]
        if kind == DATA:
            sender, lines, payload = decode_data(message)
            self._check_sender(sender)
            if self._notes_arrivals:  # a peer read a message just now (mgmt stats)
                self.accumulator.note_arrival(time.time())
            self.received_lines += lines
            self._received[sender] += lines
            admit = self.barrier.receive_lines(sender, lines, payload)
            if self.records is not None:
                self.records.set_received(self.context.index, sender, self._received[sender])
                self._note_taken()
            self._admit(admit)
        elif kind == MARK:
            sender, flush, packets, lines, bad = decode_mark(message)
            self._check_sender(sender)
            if packets and self._notes_arrivals:
                # The peer read a message since its previous mark: at most one flush
                # interval before now (its own lines it sends nobody).
                self.accumulator.note_arrival(time.time())
            self._admit(self.barrier.receive_mark(sender, flush, (packets, lines, bad)))
            self._arrived.set()
        elif kind == STATS:
            sender, flush, names = decode_stats(message)
            self._check_sender(sender)
            self.barrier.receive_names(sender, flush, names)
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
            await self.outbox.run()

    async def _receive_loop(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            self._receive_all()
            await trio.lowlevel.checkpoint()

    # Flush barrier ----------------------------------------------------------------------
    async def _wait(self, arrived: Callable[[int], bool], flush: int) -> None:
        """Receive until ``arrived(flush)`` holds, for at most the barrier's bound."""
        with trio.move_on_after(self.barrier_seconds):
            while not arrived(flush):
                self._receive_all()
                if arrived(flush):
                    break
                self._arrived = trio.Event()
                await self._arrived.wait()

    def _log_timeout(self, what: str, flush: int, missing: int) -> None:
        if missing:
            log_event(LOGGER, "worker_barrier_timeout", level=logging.WARNING, what=what,
                      flush=flush, missing=missing, worker=self.context.index)

    async def before_swap(self, sequence: int) -> None:
        """Mark the flush to every peer, wait for theirs; worker 0 adds their intake.

        Packets read during the wait belong to the next interval: their own lines and
        counts are held for `after_swap`, their other lines follow the mark to the peers,
        which hold them until their own swap.
        """
        self._admit(self.barrier.begin_flush(sequence))
        counts = self.accumulator.take_intake() if self.context.index else (0, 0, 0)
        mark = encode_mark(self.context.index, sequence, *counts)
        for peer in self.peers:
            self.outbox.close_batch(peer)
            self.outbox.enqueue(peer, mark)
        await self._wait(self.barrier.marks_in, sequence)
        closed = self.barrier.close_marks(sequence)
        self._log_timeout("mark", sequence, closed.missing)
        self._admit(closed.admit)

    def after_swap(self, sequence: int) -> None:
        """Aggregate, in the interval just opened, what waited for the swap: own lines read
        after this worker's mark, and peers' lines sent after theirs."""
        self._admit(self.barrier.end_swap(sequence))

    def rendered(self, sequence: int) -> None:
        """The flush is rendered and handed to the outputs: what it held is no longer
        this worker's to lose."""
        self.barrier.rendered()
        self._note_taken()

    def finish(self) -> None:
        """Before the final flush: nothing waits for a next interval any more. What was
        deferred is aggregated now, what arrives is aggregated at once, and the barrier
        waits longer for slow peers (what they send after it would be lost)."""
        self.barrier_seconds = max(self.barrier_seconds, FINAL_BARRIER_SECONDS)
        self._admit(self.barrier.finish())

    async def num_stats(self, sequence: int, own: int) -> int | None:
        """Worker 0: the total name count over all workers; the others send theirs."""
        if self.context.index != 0:
            self.outbox.enqueue(0, encode_stats(self.context.index, sequence, own))
            return None
        await self._wait(self.barrier.names_in, sequence)
        total, missing = self.barrier.close_names(sequence, own)
        self._log_timeout("names", sequence, missing)
        return total

