"""One worker of a multi-process aggregator: the exchange between workers and the flush barrier.

Every worker binds a Unix datagram socket in the abstract namespace
(``@<exchange>-<index>``) and sends its peers their lines (see `aggregator.exchange`).
Outgoing messages go through one FIFO queue per peer, so a mark never overtakes the
lines sent before it. A peer whose socket is full, or not there (still starting, or
restarting), is retried every few milliseconds; its lines wait in the queue and are
delivered when it is back. Past `MAX_PENDING_BYTES` the oldest lines for it are dropped
and counted (reason ``worker_down`` while it is away, ``exchange_full`` otherwise).

SHELL.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Final

import trio

from common.listener import set_receive_buffer
from common.logging import log_event

from .exchange import (
    DATA,
    MARK,
    STATS,
    Splitter,
    decode_data,
    decode_mark,
    decode_stats,
    encode_data,
    encode_mark,
    encode_stats,
    split_gauges,
)
from .ledger import Aggregator
from .workerenv import WorkerContext

LOGGER = logging.getLogger(__name__)

#: Forwarded lines are batched up to this size per message (Unix datagrams may be larger,
#: but smaller messages keep the receiver's per-message work short).
BATCH_BYTES: Final = 60_000
#: How long forwarded lines may wait for their batch to fill.
BATCH_SECONDS: Final = 0.002
#: Queued for one peer before its oldest lines are dropped.
MAX_PENDING_BYTES: Final = 64 * 1024 * 1024
#: Kernel buffers of the exchange sockets.
EXCHANGE_BUFFER_BYTES: Final = 32 * 1024 * 1024
#: The longest a flush waits for a peer's mark or name count (and at most a third of the
#: interval): a dead or stuck worker delays the others' flushes by at most this. What a
#: slow peer sends after the wait is counted in the next interval (marks) or replaced by
#: its previous value (name counts).
MAX_BARRIER_SECONDS: Final = 1.0
#: The same bound for the final flush at shutdown, when there is no next interval to take
#: what comes late, and no next flush to delay.
FINAL_BARRIER_SECONDS: Final = 2.0


class Exchange:
    """Moves lines and flush marks between this worker and its peers."""

    def __init__(self, context: WorkerContext, aggregator: Aggregator, interval: float) -> None:
        self.context = context
        self.aggregator = aggregator
        self.peers = [i for i in range(context.count) if i != context.index]
        self.splitter = Splitter(aggregator.parser, context.index, context.count)
        self.barrier_seconds = min(MAX_BARRIER_SECONDS, interval / 3)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(context.address(context.index))
        self.sock.setblocking(False)
        set_receive_buffer(self.sock, EXCHANGE_BUFFER_BYTES)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
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
        self.dropped: Counter[str] = Counter()
        self.peer_down: dict[int, bool] = {}
        self.forwarded_lines = 0
        self.received_lines = 0

    def close(self) -> None:
        self.sock.close()

    # Intake side ------------------------------------------------------------------------
    def handle(self, packet: bytes, packets: int = 1) -> None:
        """The intake callback: keep own lines, batch the others for their owners.

        Args:
            packets: how many datagrams ``packet`` joins.
        """
        own, foreign, count = self.splitter.split(packet)
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
            self.forwarded_lines += len(lines)
            self._enqueue(peer, encode_data(self.context.index, lines))
            self._batch[peer] = []
            self._batch_bytes[peer] = 0

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
                self.dropped[reason] += decode_data(old)[1].count(b"\n") + 1
            queue.extendleft(reversed(kept))
        self._pump(peer)

    def _pump(self, peer: int) -> None:
        queue = self._queue[peer]
        address = self.context.address(peer)
        while queue:
            message = queue[0]
            try:
                self.sock.sendto(message, address)
            except BlockingIOError:
                return  # the peer's buffer is full: retried by run()
            except OSError as e:
                if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    raise
                # The peer is not (yet, or no longer) there: keep its lines queued, within
                # MAX_PENDING_BYTES, and deliver them when it is back.
                if not self.peer_down.get(peer):
                    self.peer_down[peer] = True
                    log_event(LOGGER, "worker_peer_down", level=logging.WARNING,
                              worker=self.context.index, peer=peer)
                return
            if self.peer_down.get(peer):
                self.peer_down[peer] = False
                log_event(LOGGER, "worker_peer_up", worker=self.context.index, peer=peer)
            queue.popleft()
            self._queued_bytes[peer] -= len(message)

    # Receiving side ---------------------------------------------------------------------
    def _receive_all(self) -> None:
        recv = self.sock.recv
        while True:
            try:
                message = recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            try:
                self._on_message(message)
            except (struct.error, ValueError):
                # Not from a peer: the abstract namespace has no permissions, any local
                # process can send here. Dropped, counted, never fatal.
                self.dropped["malformed"] += 1
                log_event(LOGGER, "exchange_message_malformed", level=logging.WARNING,
                          worker=self.context.index, bytes=len(message))

    def _on_message(self, message: bytes) -> None:
        kind = message[:1]
        if kind == DATA:
            sender, payload = decode_data(message)
            self._check_sender(sender)
            self.received_lines += payload.count(b"\n") + 1
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
        held, self._held = self._held or [], None
        self.aggregator.add_intake(self._held_packets, self._held_lines, 0)
        self._held_packets = self._held_lines = 0
        for own in held:
            self.aggregator.ingest(own, intake=False)
        self._release(lambda after: after <= sequence)
        self._open_marks = {p: f for p, f in self._open_marks.items() if f > sequence}

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
