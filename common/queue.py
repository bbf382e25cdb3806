"""A FIFO of byte chunks bounded in bytes that, when full, gives up its oldest chunks.

Every output queue of tallyd works this way (a Carbon sender, the console, a proxy's
forwarder, the worker exchange): appending never blocks and never fails; when the queued
bytes pass the bound, the oldest chunks leave the queue and are handed back to the caller,
who counts them as dropped under its own reason (or moves them to a disk spool). Three
rules protect chunks from eviction:

* the first ``pinned`` chunks (the one being written to a socket right now);
* chunks for which ``keep(chunk)`` is true (the exchange's small control messages);
* with ``keep_newest``, the newest chunk (so a burst larger than the bound still delivers
  its latest data rather than nothing).

The bound may thus be passed by the protected chunks; memory stays bounded by the limit
plus those. ``lines`` counts the records of a chunk (newline-terminated by default), so the
queue knows its length in lines without rescanning.

Pure: no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator


def count_newlines(chunk: bytes) -> int:
    return chunk.count(b"\n")


class ChunkQueue:
    """Byte chunks, oldest first, bounded by ``max_bytes``.

    Args:
        max_bytes: the bound; passing it evicts the oldest evictable chunks.
        lines: the number of records in a chunk.
        keep: chunks for which it is true are never evicted.
        keep_newest: never evict the newest chunk.
    """

    def __init__(self, max_bytes: int, *, lines: Callable[[bytes], int] = count_newlines,
                 keep: Callable[[bytes], bool] | None = None,
                 keep_newest: bool = False) -> None:
        self.max_bytes = max_bytes
        self.keep_newest = keep_newest
        #: How many chunks at the head are in flight and must not be evicted (the writer
        #: sets it before a write and resets it after).
        self.pinned = 0
        self._count = lines
        self._keep = keep
        self._chunks: deque[bytes] = deque()
        self._bytes = 0
        self._lines = 0

    @property
    def total_bytes(self) -> int:
        return self._bytes

    @property
    def total_lines(self) -> int:
        return self._lines

    def __len__(self) -> int:
        return len(self._chunks)

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def append(self, chunk: bytes) -> list[bytes]:
        """Queue ``chunk`` at the tail; return the chunks evicted to stay within the bound."""
        self._add(chunk)
        self._chunks.append(chunk)
        return self.evict()

    def extend(self, chunks: Iterable[bytes]) -> list[bytes]:
        """Queue several chunks, then evict once; return the chunks evicted."""
        for chunk in chunks:
            self._add(chunk)
            self._chunks.append(chunk)
        return self.evict()

    def push_front(self, chunks: Iterable[bytes]) -> None:
        """Put chunks back at the head, in their order (ones that could not be delivered).
        Nothing is evicted: they are the oldest, and the next append applies the bound."""
        items = list(chunks)
        for chunk in items:
            self._add(chunk)
        self._chunks.extendleft(reversed(items))

    def peek(self) -> bytes:
        """The oldest chunk (IndexError when empty)."""
        return self._chunks[0]

    def popleft(self) -> bytes:
        """Take the oldest chunk out (IndexError when empty). ``pinned`` is the caller's
        to set and reset around a write; this does not change it."""
        return self.take()[0]

    def take(self) -> tuple[bytes, int]:
        """`popleft`, with the chunk's line count (counted once, here)."""
        chunk = self._chunks.popleft()
        return chunk, self._remove(chunk)

    def clear(self) -> list[bytes]:
        """Take every chunk out, oldest first."""
        chunks = list(self._chunks)
        self._chunks.clear()
        self._bytes = self._lines = 0
        self.pinned = 0
        return chunks

    def evict(self) -> list[bytes]:
        """Evict the oldest evictable chunks until the bound holds (or nothing more may go);
        return them, oldest first."""
        if self._bytes <= self.max_bytes:
            return []
        queue = self._chunks
        pinned = [queue.popleft() for _ in range(min(self.pinned, len(queue)))]
        kept: list[bytes] = []
        evicted: list[bytes] = []
        while self._bytes > self.max_bytes and queue and not (self.keep_newest
                                                               and len(queue) <= 1):
            chunk = queue.popleft()
            if self._keep is not None and self._keep(chunk):
                kept.append(chunk)
                continue
            self._remove(chunk)
            evicted.append(chunk)
        queue.extendleft(reversed(kept))
        queue.extendleft(reversed(pinned))
        return evicted

    def _add(self, chunk: bytes) -> None:
        self._bytes += len(chunk)
        self._lines += self._count(chunk)

    def _remove(self, chunk: bytes) -> int:
        lines = self._count(chunk)
        self._bytes -= len(chunk)
        self._lines -= lines
        return lines
