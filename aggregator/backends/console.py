"""Prints every flush to standard output as Graphite plaintext (handy under docker-compose).

Writes happen in a worker thread so a slow terminal or pipe never blocks the event loop;
the queue between (a `common.queue.ChunkQueue`) is bounded and, when it overflows, the
oldest flushes are dropped and counted rather than growing without limit.

SHELL.
"""

from __future__ import annotations

import sys
from typing import BinaryIO, Final

import attrs
import trio

from common.queue import ChunkQueue
from common.stats import Reading, counter, level, read

from . import EtsyStatus, Leftover

#: Output held for a slow stdout before the oldest is dropped.
MAX_QUEUED_BYTES: Final = 64 * 1024 * 1024


@attrs.frozen
class ConsoleStatistics:
    """A snapshot of the console output."""

    buffered_bytes: int = level(help="bytes waiting to be written to standard output")
    dropped_bytes: int = counter(help="bytes dropped because standard output was too slow")


class ConsoleOutput:
    """The console `aggregator.backends.Backend`.

    Args:
        stream: where lines go (default: standard output).
    """

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self._queue = ChunkQueue(MAX_QUEUED_BYTES)
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.dropped_bytes = 0

    def offer(self, payload: bytes) -> None:
        if not payload:
            return
        self.dropped_bytes += sum(len(chunk) for chunk in self._queue.append(payload))
        if self._idle.is_set():
            self._idle = trio.Event()
        self._wakeup.set()

    def _write(self, payload: bytes) -> None:
        self.stream.write(payload)
        self.stream.flush()

    async def run(self) -> None:
        """Write what is queued, oldest first, until cancelled."""
        while True:
            if not self._queue:
                self._idle.set()
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            # Out of the queue before it is written: the bound applies to what waits, and a
            # close() during the write finds only what was never started.
            payload = self._queue.popleft()
            await trio.to_thread.run_sync(self._write, payload)

    async def wait_delivered(self) -> None:
        """Return once everything offered so far has been written."""
        await self._idle.wait()

    def close(self) -> Leftover:
        """At shutdown: what is still queued is not written (the console keeps nothing)."""
        self.dropped_bytes += sum(len(chunk) for chunk in self._queue.clear())
        return Leftover(spooled_lines=0, lost_lines=0)

    def statistics(self) -> ConsoleStatistics:
        return ConsoleStatistics(buffered_bytes=self._queue.total_bytes,
                                 dropped_bytes=self.dropped_bytes)

    def readings(self) -> list[Reading]:
        return read("aggregator", "console", self.statistics())

    def etsy_status(self) -> EtsyStatus | None:
        return None
