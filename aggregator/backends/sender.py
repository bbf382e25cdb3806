"""Delivery of flushed Graphite plaintext to one Carbon node over a long-lived TCP connection.

`CarbonSender` keeps one connection open across flushes (Etsy statsd opens one per flush),
and never makes its caller wait: `offer` appends the bytes to a bounded in-memory queue and
returns at once. A task (`run`) moves the backlog to the socket:

* connect with a timeout; on failure back off (`common.backoff`: 0.1 s doubling to 30 s,
  jittered), so many aggregators restarting together do not hammer a recovering Carbon;
* write each chunk with a write deadline; a Carbon that stalls is disconnected and the
  chunk is sent again on the next connection (resending a Graphite point is harmless:
  the same path, timestamp and value overwrite themselves);
* watch the connection for EOF while idle, so a Carbon restart is noticed before the next
  flush is written into a dead socket;
* after a reconnect, send the backlog no faster than ``replay_lines_per_second``; live
  flushes go out at full speed once the backlog is gone;
* when the queue (a `common.queue.ChunkQueue`) passes ``buffer_bytes``, its oldest chunks
  move to the disk `Spool` if there is one, or are dropped and counted (reason
  ``buffer_full``). The chunk being written and the newest one always stay, so memory is
  bounded by the limit plus one chunk, and no line is both counted as dropped and
  delivered. Spooled chunks are older than anything in memory, so they are sent first.

SHELL.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from typing import Final

import attrs
import trio

from common.backoff import backoff_delay
from common.logging import log_event
from common.queue import ChunkQueue
from common.ring import CarbonNode
from common.stats import counter, level, text

from .spool import Spool

LOGGER = logging.getLogger(__name__)

BACKOFF_START_SECONDS: Final = 0.1
BACKOFF_MAX_SECONDS: Final = 30.0
#: Drops are logged at most this often per node, with the count since the last log line.
DROP_LOG_PERIOD_SECONDS: Final = 10.0


#: Why a sender gives lines up (every reason is reported, zero or not).
DROP_REASONS: Final = ("buffer_full", "spool_full", "shutdown")


@attrs.frozen
class SenderStatistics:
    """A snapshot of one sender (lines are newline-terminated records).

    ``last_flush`` and ``last_exception`` are shown as Etsy's ``stats`` shows ``last_*``:
    seconds before the snapshot (``never`` for an exception that never happened). The
    epoch times, the last write's duration and size feed Etsy's ``graphite.*`` figures
    (`aggregator.backends.carbon.CarbonOutput.etsy_status`) and are not figures themselves.
    """

    node: str
    connected: bool = level(help="1 while a connection to the node is open")
    sent_lines: int = counter(help="lines written to the node")
    sent_bytes: int = counter(help="bytes written to the node")
    buffered_lines: int = level(help="lines waiting in memory")
    buffered_bytes: int = level(help="bytes waiting in memory")
    spooled_lines: int = level(help="lines waiting in the disk spool")
    spooled_bytes: int = level(help="bytes waiting in the disk spool")
    dropped_lines: dict[str, int] = counter(
        help="lines given up, by reason (buffer_full: memory full and no spool; spool_full: "
             "the spool made room or could not take a chunk; shutdown: left at exit, or when "
             "the node left the ring and did not drain in time, no spool)")
    reconnects: int = counter(help="connections opened after the first")
    connect_failures: int = counter(help="connection attempts that failed")
    last_flush: str = text(help="seconds since the last chunk was written")
    last_exception: str = text(help="seconds since the last connection failure, or never")
    last_flush_time: float = 0.0
    last_exception_time: float = 0.0
    flush_time_ms: float = 0.0
    flush_length: int = 0

    @property
    def dropped(self) -> dict[str, int]:
        """The reasons lines were given up for, with how many (nonzero only)."""
        return {reason: n for reason, n in self.dropped_lines.items() if n}


class CarbonSender:
    """Queues output for one Carbon node and keeps a connection to it.

    Args:
        node: where to connect.
        buffer_bytes: the most output held in memory while the node is slow or down.
        connect_timeout: seconds for a TCP connect.
        write_timeout: seconds a write may stall.
        spool: where output that does not fit in memory goes (None: it is dropped).
        replay_lines_per_second: the pace of a backlog after a reconnect (0: no limit).
    """

    def __init__(self, node: CarbonNode, *, buffer_bytes: int, connect_timeout: float,
                 write_timeout: float, spool: Spool | None = None,
                 replay_lines_per_second: int = 0) -> None:
        self.node = node
        self.buffer_bytes = buffer_bytes
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.spool = spool
        self.replay_lines_per_second = replay_lines_per_second
        self._queue = ChunkQueue(buffer_bytes, keep_newest=True)
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self.connected = False
        self.sent_lines = 0
        self.sent_bytes = 0
        self.dropped: Counter[str] = Counter()
        self.connects = 0
        self.connect_failures = 0
        self.last_flush = time.time()
        self.last_exception = 0.0
        self.flush_time_ms = 0.0
        self.flush_length = 0
        self._dropped_logged = 0
        self._drop_logged_at = -DROP_LOG_PERIOD_SECONDS
        if not self.pending_lines:
            self._idle.set()

    @property
    def pending_lines(self) -> int:
        """Lines waiting, in memory and in the spool."""
        return self._queue.total_lines + (self.spool.lines if self.spool is not None else 0)

    def offer(self, payload: bytes) -> None:
        """Queue ``payload`` (whole lines) for delivery; never blocks."""
        if not payload:
            return
        for chunk in self._queue.append(payload):
            if self.spool is not None:
                self.dropped["spool_full"] += self.spool.append(chunk)
            else:
                self.dropped["buffer_full"] += chunk.count(b"\n")
        self._log_drops()
        if self._idle.is_set():
            self._idle = trio.Event()
        self._wakeup.set()

    def _log_drops(self) -> None:
        total = sum(self.dropped.values())
        now = time.monotonic()
        if total > self._dropped_logged and now - self._drop_logged_at >= DROP_LOG_PERIOD_SECONDS:
            log_event(LOGGER, "carbon_dropped", level=logging.WARNING, node=str(self.node),
                      lines=total - self._dropped_logged, total=total,
                      reasons=",".join(f"{k}:{v}" for k, v in sorted(self.dropped.items())),
                      limit_bytes=self.buffer_bytes)
            self._dropped_logged, self._drop_logged_at = total, now

    async def wait_idle(self) -> None:
        """Return once everything offered so far (and the spool) has been written."""
        await self._idle.wait()

    def spill_to_spool(self) -> int:
        """At shutdown: move what is still in memory to the spool; return the lines kept.

        Without a spool nothing can be kept, and the lines are counted as dropped
        (reason ``shutdown``)."""
        lines = 0
        for chunk in self._queue.clear():
            count = chunk.count(b"\n")
            if self.spool is not None:
                self.dropped["spool_full"] += self.spool.append(chunk)
                lines += count
            else:
                self.dropped["shutdown"] += count
        return lines

    def statistics(self) -> SenderStatistics:
        spool = self.spool
        now = time.time()
        return SenderStatistics(
            node=str(self.node), connected=self.connected, sent_lines=self.sent_lines,
            sent_bytes=self.sent_bytes, buffered_lines=self._queue.total_lines,
            buffered_bytes=self._queue.total_bytes,
            spooled_lines=spool.lines if spool is not None else 0,
            spooled_bytes=spool.bytes if spool is not None else 0,
            dropped_lines={reason: self.dropped[reason] for reason in DROP_REASONS},
            reconnects=max(self.connects - 1, 0),
            connect_failures=self.connect_failures,
            last_flush=str(round(now - self.last_flush)),
            last_exception=(str(round(now - self.last_exception)) if self.last_exception
                            else "never"),
            last_flush_time=self.last_flush, last_exception_time=self.last_exception,
            flush_time_ms=self.flush_time_ms, flush_length=self.flush_length)

    async def run(self) -> None:
        """Connect and deliver until cancelled."""
        failures = 0
        while True:
            stream = await self._connect()
            if stream is not None:
                failures = 0
                self.connected = True
                self.connects += 1
                log_event(LOGGER, "carbon_connected", node=str(self.node),
                          backlog_lines=self.pending_lines)
                try:
                    reason = await self._serve_connection(stream)
                finally:
                    self.connected = False  # also when cancelled (a retired node's sender)
                self.last_exception = time.time()
                log_event(LOGGER, "carbon_disconnected", level=logging.WARNING,
                          node=str(self.node), reason=reason)
            failures += 1
            await trio.sleep(backoff_delay(failures, base=BACKOFF_START_SECONDS,
                                           cap=BACKOFF_MAX_SECONDS, jitter=random.random()))

    async def _connect(self) -> trio.SocketStream | None:
        try:
            with trio.fail_after(self.connect_timeout):
                return await trio.open_tcp_stream(self.node.host, self.node.port)
        except (OSError, trio.TooSlowError) as e:
            self.connect_failures += 1
            self.last_exception = time.time()
            if self.connect_failures in (1, 10, 100) or self.connect_failures % 1000 == 0:
                log_event(LOGGER, "carbon_connect_failed", level=logging.WARNING,
                          node=str(self.node), failures=self.connect_failures,
                          error=type(e).__name__, detail=str(e))
            return None

    async def _serve_connection(self, stream: trio.SocketStream) -> str:
        """Deliver on one connection until it fails; return why it ended."""
        reason = "closed_by_carbon"

        async def watch_eof(scope: trio.CancelScope) -> None:
            # Carbon never writes to us: a read that completes means the connection ended.
            try:
                await stream.receive_some(4096)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            scope.cancel()

        try:
            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(watch_eof, nursery.cancel_scope)
                await self._deliver(stream)
        except* trio.TooSlowError:
            reason = "write_timeout"
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            reason = f"{type(group.exceptions[0]).__name__}: {group.exceptions[0]}"
        return reason

    def _next_chunk(self) -> tuple[bytes, bool] | None:
        """The next chunk to write and whether it comes from the spool (oldest first)."""
        if self.spool is not None and len(self.spool):
            chunk = self.spool.peek()
            if chunk is not None:
                return chunk, True
        if self._queue:
            return self._queue.peek(), False
        return None

    def _delivered(self, chunk: bytes, from_spool: bool) -> None:
        lines = chunk.count(b"\n")
        if from_spool:
            assert self.spool is not None
            self.spool.commit()
        else:
            self._queue.popleft()
        self.sent_lines += lines
        self.sent_bytes += len(chunk)
        self.flush_length = len(chunk)
        self.last_flush = time.time()

    async def _deliver(self, stream: trio.SocketStream) -> None:
        catching_up = self.pending_lines > 0
        while True:
            item = self._next_chunk()
            if item is None:
                catching_up = False
                self._idle.set()
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            chunk, from_spool = item
            started = time.perf_counter()
            self._queue.pinned = 0 if from_spool else 1
            try:
                with trio.fail_after(self.write_timeout):
                    await stream.send_all(chunk)
            finally:
                self._queue.pinned = 0
            self.flush_time_ms = (time.perf_counter() - started) * 1000
            self._delivered(chunk, from_spool)
            if catching_up and self.replay_lines_per_second:
                await trio.sleep(chunk.count(b"\n") / self.replay_lines_per_second)
