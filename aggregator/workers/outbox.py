"""The sending side of a worker's exchange: what this worker owes each peer, until it is sent.

Lines read here for another worker wait in that peer's batch until `BATCH_BYTES` of them
wait or `BATCH_SECONDS` pass, then go out in messages of at most `MAX_MESSAGE_BYTES` (see
`aggregator.workers.codec`). Every message for a peer (lines, flush marks, name counts) goes
through one FIFO queue per peer (a `ChunkQueue`), so a mark never overtakes the lines sent
before it. A peer whose socket is full (EAGAIN, ENOBUFS: back-pressure), or not there (still
starting, or restarting), is retried every `BATCH_SECONDS` while anything waits for it (nothing
runs while nothing waits: an idle worker never wakes); its lines wait in the queue and
are delivered when it is back. Past `MAX_PENDING_BYTES` the oldest lines for it are dropped
and counted (reason ``worker_down`` while it is away, ``exchange_full`` otherwise). No send
error ends a worker: any other one drops that message, counted.

The lines sent to each peer go into the shared `WorkerRecords` as they leave, so the
supervisor can say how many at most died unread with a killed peer.

SHELL.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import Counter
from collections.abc import Iterable
from typing import Final

import trio

from common.logging import log_event
from common.queue import ChunkQueue

from ..ledger import Accumulator
from .codec import DATA, MARK, MAX_MESSAGE_BYTES, data_line_count, decode_mark, pack_data
from .context import WorkerContext

LOGGER = logging.getLogger(__name__)

#: Forwarded lines for a peer are sent once this many bytes wait (or `BATCH_SECONDS` have
#: passed); a batch is cut into messages of at most `MAX_MESSAGE_BYTES` (`pack_data`).
BATCH_BYTES: Final = 60_000
#: How long forwarded lines may wait for their batch to fill.
BATCH_SECONDS: Final = 0.002
#: Queued for one peer before its oldest lines are dropped.
MAX_PENDING_BYTES: Final = 64 * 1024 * 1024
#: The kernel's sending buffer; a Unix datagram can be at most this (less 32 bytes), so it
#: must hold a `MAX_MESSAGE_BYTES` message (`set_send_buffer`).
EXCHANGE_SEND_BUFFER_BYTES: Final = 4 * 1024 * 1024
#: Send errors that mean "the peer cannot take it now": the message stays queued and is
#: retried (back-pressure); the queue's bound turns a lasting one into counted drops.
_RETRY_ERRNOS: Final = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.ENOMEM, errno.EINTR})
#: Send errors that mean "the peer is not there" (starting, restarting, or dead).
_DOWN_ERRNOS: Final = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.ECONNRESET})
#: Cut or failed messages (on either side of the exchange) are logged on the first and then
#: every this many.
LOG_EVERY: Final = 100


def set_send_buffer(sock: socket.socket) -> None:
    """Give the exchange socket its `EXCHANGE_SEND_BUFFER_BYTES` sending buffer.

    Raises:
        RuntimeError: the kernel granted less than one message needs.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, EXCHANGE_SEND_BUFFER_BYTES)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < MAX_MESSAGE_BYTES + 64:
        raise RuntimeError("the exchange socket's send buffer cannot hold one exchange "
                           f"message ({MAX_MESSAGE_BYTES} bytes): raise net.core.wmem_max")


class Outbox:
    """Batches, queues and sends this worker's messages to its peers.

    Args:
        context: this worker's place, its peers' addresses and the shared record.
        peers: the other workers' indexes.
        sock: the exchange's bound socket, sent from.
        accumulator: this worker's ledger, for a line no message can carry and for the
            intake counts of a mark to worker 0 that could not be sent.
        dropped: the exchange's count of lines dropped, by reason (added to here).
        dropped_messages: the exchange's count of messages dropped whole, by reason.
    """

    def __init__(self, context: WorkerContext, peers: list[int], sock: socket.socket,
                 accumulator: Accumulator, *, dropped: Counter[str],
                 dropped_messages: Counter[str]) -> None:
        self.context = context
        self.peers = peers
        self.sock = sock
        self.accumulator = accumulator
        self.dropped = dropped
        self.dropped_messages = dropped_messages
        self.records = context.records
        # The pair counters run since the supervisor started: a restarted worker goes on
        # from its predecessor's (`WorkerRecords.record_death`).
        records = self.records
        self._sent: dict[int, int] = {
            p: records.sent(context.index, p) if records else 0 for p in peers}
        self._batch: dict[int, list[bytes]] = {p: [] for p in peers}
        self._batch_bytes: dict[int, int] = dict.fromkeys(peers, 0)
        # Past the bound the oldest lines go; marks and name counts (a few bytes, and what
        # the peer's intake counts travel in) stay, ahead of the lines that remain, and so
        # does the newest message.
        self._queue: dict[int, ChunkQueue] = {
            p: ChunkQueue(MAX_PENDING_BYTES, lines=_lines_of, keep=_is_control,
                          keep_newest=True) for p in peers}
        self.peer_down: dict[int, bool] = {}
        self.forwarded_lines = 0
        #: Whether `run` is due to close the batches and retry the queues (`_wake`): set
        #: while a batch waits or a queue holds a message; else `run` sleeps on the event.
        self._due = False
        self._wakeup = trio.Event()

    def forward(self, foreign: Iterable[tuple[int, list[bytes]]]) -> None:
        """Batch each peer's lines; a batch that is full is sent at once, the others
        within `BATCH_SECONDS`."""
        for peer, lines in foreign:
            batch = self._batch[peer]
            batch.extend(lines)
            self._batch_bytes[peer] += sum(map(len, lines)) + len(lines)
            if self._batch_bytes[peer] >= BATCH_BYTES:
                self.close_batch(peer)
            elif not self._due:
                self._wake()

    def forward_pending(self, pending: dict[int, list[bytes]]) -> None:
        """`forward` for lists the caller keeps (`Splitter.pending`): their lines are
        moved into the batches, and the lists left empty."""
        for peer, lines in pending.items():
            if lines:
                self._batch[peer] += lines
                self._batch_bytes[peer] += sum(map(len, lines)) + len(lines)
                lines.clear()
                if self._batch_bytes[peer] >= BATCH_BYTES:
                    self.close_batch(peer)
                elif not self._due:
                    self._wake()

    def close_batch(self, peer: int) -> None:
        """Queue the lines batched for ``peer``, in messages, and send what it can take."""
        lines = self._batch[peer]
        if lines:
            self._batch[peer] = []
            self._batch_bytes[peer] = 0
            messages, oversized = pack_data(self.context.index, lines)
            self.forwarded_lines += len(lines) - len(oversized)
            for line in oversized:
                self._keep_oversized(line)
            for message in messages:
                self.enqueue(peer, message)

    def _keep_oversized(self, line: bytes) -> None:
        """A line too long for an exchange message of its own. Longer than
        ``max_line_bytes``, it is refused wherever it is parsed: here, as a bad line, as in
        a single process. Otherwise (``max_line_bytes`` set above the message size) it
        cannot reach its owner and is dropped, counted (``too_large``)."""
        if len(line) > self.accumulator.parser.max_line_bytes:
            self.accumulator.ingest(line, intake=False)
            return
        self.dropped["too_large"] += 1
        if self.dropped["too_large"] % LOG_EVERY == 1:
            log_event(LOGGER, "exchange_line_too_large", level=logging.WARNING,
                      worker=self.context.index, bytes=len(line),
                      limit=MAX_MESSAGE_BYTES, total=self.dropped["too_large"])

    def enqueue(self, peer: int, message: bytes) -> None:
        """Queue ``message`` behind what waits for ``peer``, and send what it can take."""
        evicted = self._queue[peer].append(message)
        if evicted:
            reason = "worker_down" if self.peer_down.get(peer) else "exchange_full"
            self.dropped[reason] += sum(map(data_line_count, evicted))
        self._pump(peer)

    def _pump(self, peer: int) -> None:
        queue = self._queue[peer]
        address = self.context.address(peer)
        while queue:
            message = queue.peek()
            try:
                self.sock.sendto(message, address)
            except OSError as e:
                if e.errno in _RETRY_ERRNOS:
                    if not self._due:
                        self._wake()  # the peer's queue is full: retried by run()
                    return
                if e.errno in _DOWN_ERRNOS:
                    # The peer is not (yet, or no longer) there: keep its lines queued,
                    # within MAX_PENDING_BYTES, and deliver them when it is back.
                    if not self.peer_down.get(peer):
                        self.peer_down[peer] = True
                        log_event(LOGGER, "worker_peer_down", level=logging.WARNING,
                                  worker=self.context.index, peer=peer)
                    if not self._due:
                        self._wake()
                    return
                # Anything else (EMSGSIZE cannot happen: messages are bounded, and the
                # send buffer was checked to hold one): this message is dropped, counted,
                # and the worker goes on.
                queue.popleft()
                self._count_send_failure(message, e)
                if peer == 0 and message[:1] == MARK:
                    # The intake counts it carried travel with the next mark instead.
                    _, _, packets, lines, bad = decode_mark(message)
                    self.accumulator.add_intake(packets, lines, bad)
                continue
            if message[:1] == DATA:
                self._sent[peer] += data_line_count(message)
                if self.records is not None:
                    self.records.set_sent(self.context.index, peer, self._sent[peer])
            if self.peer_down.get(peer):
                self.peer_down[peer] = False
                log_event(LOGGER, "worker_peer_up", worker=self.context.index, peer=peer)
            queue.popleft()

    def _count_send_failure(self, message: bytes, error: OSError) -> None:
        self.dropped_messages["send_failed"] += 1
        if message[:1] == DATA:
            self.dropped["send_failed"] += data_line_count(message)
        if self.dropped_messages["send_failed"] % LOG_EVERY == 1:
            log_event(LOGGER, "exchange_send_failed", level=logging.ERROR,
                      worker=self.context.index, error=errno.errorcode.get(error.errno or 0,
                                                                           str(error.errno)),
                      bytes=len(message), total=self.dropped_messages["send_failed"])

    def _wake(self) -> None:
        """Have `run` close the batches and retry the queues `BATCH_SECONDS` from now."""
        self._due = True
        self._wakeup.set()

    async def run(self) -> None:
        """Send the batches and retry the queued messages, until cancelled.

        Wakes only when something waits: `BATCH_SECONDS` after a batch got its first
        lines or a send had to wait (and again every `BATCH_SECONDS` while a queue still
        holds a message). An idle worker does not wake at all.
        """
        while True:
            await self._wakeup.wait()
            await trio.sleep(BATCH_SECONDS)
            self._due = False
            self._wakeup = trio.Event()
            for peer in self.peers:
                self.close_batch(peer)
                self._pump(peer)  # re-arms while the peer's queue is not empty

    def unsent(self) -> tuple[int, int]:
        """``(lines batched or queued for a peer, intake lines in the marks queued for
        worker 0)``: what is lost if the worker stops now."""
        lines = (sum(q.total_lines for q in self._queue.values())
                 + sum(map(len, self._batch.values())))
        intake = sum(decode_mark(m)[3] for m in self._queue.get(0, ()) if m[:1] == MARK)
        return lines, intake


def _is_control(message: bytes) -> bool:
    """Marks and name counts: never dropped from a peer's queue."""
    return message[:1] != DATA


def _lines_of(message: bytes) -> int:
    return data_line_count(message) if message[:1] == DATA else 0
