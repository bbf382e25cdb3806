"""Delivery of flushed Graphite plaintext to one Carbon node over a long-lived TCP connection.

`CarbonSender` keeps one connection open across flushes (Etsy statsd opens one per flush),
and never makes its caller wait: `offer` appends the bytes to a bounded in-memory buffer
and returns at once. A task (`run`) moves the buffer to the socket:

* connect with a timeout; on failure back off exponentially (0.1 s doubling to 30 s) with
  jitter, so many aggregators restarting together do not hammer a recovering Carbon;
* write each chunk with a write deadline; a Carbon that stalls is disconnected and the
  chunk is sent again on the next connection (resending a Graphite point is harmless:
  the same path, timestamp and value overwrite themselves);
* watch the connection for EOF while idle, so a Carbon restart is noticed before the next
  flush is written into a dead socket;
* when the buffer would exceed its limit, the oldest chunks are dropped and counted
  (``dropped_lines``, reason ``buffer_full``): recent data is the most useful. The chunk
  being written and the newest one are kept, so memory stays below the limit plus one
  chunk, and no line is both counted as dropped and delivered.

SHELL.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from typing import Final

import attrs
import trio

from common.logging import log_event
from common.ring import CarbonNode

LOGGER = logging.getLogger(__name__)

BACKOFF_START_SECONDS: Final = 0.1
BACKOFF_MAX_SECONDS: Final = 30.0
#: Drops are logged at most this often per node, with the count since the last log line.
DROP_LOG_PERIOD_SECONDS: Final = 10.0


@attrs.frozen
class SenderStatistics:
    """A snapshot of one sender's counters (lines are newline-terminated records)."""

    node: str
    connected: bool
    sent_lines: int
    sent_bytes: int
    buffered_lines: int
    buffered_bytes: int
    dropped_lines: int
    reconnects: int
    connect_failures: int
    last_flush: float
    last_exception: float
    flush_time_ms: float
    flush_length: int


class CarbonSender:
    """Buffers output for one Carbon node and keeps a connection to it.

    Args:
        node: where to connect.
        buffer_bytes: the most output held while the node is slow or down.
        connect_timeout: seconds for a TCP connect.
        write_timeout: seconds a write may stall.
    """

    def __init__(self, node: CarbonNode, *, buffer_bytes: int, connect_timeout: float,
                 write_timeout: float) -> None:
        self.node = node
        self.buffer_bytes = buffer_bytes
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._queued_lines = 0
        self._wakeup = trio.Event()
        self._empty = trio.Event()
        self._empty.set()
        self.connected = False
        self.sent_lines = 0
        self.sent_bytes = 0
        self.dropped_lines = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.last_flush = time.time()
        self.last_exception = 0.0
        self.flush_time_ms = 0.0
        self.flush_length = 0
        self._dropped_logged = 0
        self._sending = False
        self._drop_logged_at = -DROP_LOG_PERIOD_SECONDS

    def offer(self, payload: bytes) -> None:
        """Queue ``payload`` (whole lines) for delivery; never blocks."""
        if not payload:
            return
        self._queue.append(payload)
        self._queued_bytes += len(payload)
        self._queued_lines += payload.count(b"\n")
        # Drop the oldest chunks, but never the one being written (it is partly on the wire)
        # nor the newest: the bound is buffer_bytes plus one flush chunk.
        while self._queued_bytes > self.buffer_bytes:
            index = 1 if self._sending else 0
            if len(self._queue) - index <= 1:
                break
            dropped = self._queue[index]
            del self._queue[index]
            self._queued_bytes -= len(dropped)
            lines = dropped.count(b"\n")
            self._queued_lines -= lines
            self.dropped_lines += lines
        if self.dropped_lines > self._dropped_logged:
            now = time.monotonic()
            if now - self._drop_logged_at >= DROP_LOG_PERIOD_SECONDS:
                log_event(LOGGER, "carbon_dropped", level=logging.WARNING, node=str(self.node),
                          reason="buffer_full", lines=self.dropped_lines - self._dropped_logged,
                          total=self.dropped_lines, limit_bytes=self.buffer_bytes)
                self._dropped_logged, self._drop_logged_at = self.dropped_lines, now
        if self._queue:
            self._empty = trio.Event() if self._empty.is_set() else self._empty
            self._wakeup.set()

    @property
    def pending_lines(self) -> int:
        return self._queued_lines

    async def wait_empty(self) -> None:
        """Return once everything offered so far has been written to the socket."""
        await self._empty.wait()

    def statistics(self) -> SenderStatistics:
        return SenderStatistics(
            node=str(self.node), connected=self.connected, sent_lines=self.sent_lines,
            sent_bytes=self.sent_bytes, buffered_lines=self._queued_lines,
            buffered_bytes=self._queued_bytes, dropped_lines=self.dropped_lines,
            reconnects=self.reconnects, connect_failures=self.connect_failures,
            last_flush=self.last_flush, last_exception=self.last_exception,
            flush_time_ms=self.flush_time_ms, flush_length=self.flush_length)

    async def run(self) -> None:
        """Connect and deliver until cancelled."""
        backoff = BACKOFF_START_SECONDS
        while True:
            stream = await self._connect()
            if stream is None:
                await trio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            backoff = BACKOFF_START_SECONDS
            self.connected = True
            self.reconnects += 1
            log_event(LOGGER, "carbon_connected", node=str(self.node))
            error = await self._serve_connection(stream)
            self.connected = False
            self.last_exception = time.time()
            log_event(LOGGER, "carbon_disconnected", level=logging.WARNING,
                      node=str(self.node), reason=error)
            await trio.sleep(backoff * random.uniform(0.5, 1.0))

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

    async def _deliver(self, stream: trio.SocketStream) -> None:
        while True:
            if not self._queue:
                self._empty.set()
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            chunk = self._queue[0]
            started = time.perf_counter()
            self._sending = True
            try:
                with trio.fail_after(self.write_timeout):
                    await stream.send_all(chunk)
            finally:
                self._sending = False
            self._queue.popleft()
            self._queued_bytes -= len(chunk)
            lines = chunk.count(b"\n")
            self._queued_lines -= lines
            self.sent_lines += lines
            self.sent_bytes += len(chunk)
            self.flush_time_ms = (time.perf_counter() - started) * 1000
            self.flush_length = len(chunk)
            self.last_flush = time.time()
