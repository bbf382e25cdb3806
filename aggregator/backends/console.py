"""Prints every flush to standard output as Graphite plaintext (handy under docker-compose).

Writes happen in a worker thread so a slow terminal or pipe never blocks the event loop;
the queue between is bounded and, when it overflows, the oldest flushes are dropped and
counted rather than growing without limit.

SHELL.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import BinaryIO, Final

import trio

#: Output held for a slow stdout before the oldest is dropped.
MAX_QUEUED_BYTES: Final = 64 * 1024 * 1024


class ConsoleOutput:
    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._wakeup = trio.Event()
        self.dropped_bytes = 0

    def offer(self, payload: bytes) -> None:
        self._queue.append(payload)
        self._queued += len(payload)
        while self._queued > MAX_QUEUED_BYTES:
            dropped = self._queue.popleft()
            self._queued -= len(dropped)
            self.dropped_bytes += len(dropped)
        self._wakeup.set()

    def _write(self, payload: bytes) -> None:
        self.stream.write(payload)
        self.stream.flush()

    async def drain(self) -> None:
        """Write everything queued."""
        while self._queue:
            payload = self._queue.popleft()
            self._queued -= len(payload)
            await trio.to_thread.run_sync(self._write, payload)

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self.drain()
