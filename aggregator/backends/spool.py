"""A node's disk spool: output that did not fit in memory, kept in order on disk.

Layout: one directory per Carbon node; one file per spooled chunk, named
``<sequence>-<lines>.chunk`` (the sequence keeps the order across restarts, the line count
lets the spool report its size in lines without reading the files). A chunk is written to
a temporary name and renamed, so a crash never leaves half a chunk behind.

The spool is bounded (``max_bytes``): when a new chunk would pass the bound, the oldest
files are deleted and their lines counted as dropped (reason ``spool_full``).

SHELL (file I/O). Writes are synchronous: a chunk is at most a few hundred kilobytes
written to the page cache, well under a millisecond, and only happens while a node is down
or slow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

_NAME: Final = re.compile(r"^(\d{16})-(\d+)\.chunk$")


class Spool:
    """The spooled chunks of one node, oldest first.

    Args:
        directory: created if missing; chunks already there (from an earlier run) are kept
            and sent first.
        max_bytes: the most disk the spool may use.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._files: list[tuple[int, int, int]] = []  # (sequence, lines, bytes), oldest first
        for entry in directory.iterdir():
            match = _NAME.match(entry.name)
            if match is None:
                if entry.name.endswith(".tmp"):
                    entry.unlink(missing_ok=True)  # a write cut short by a crash
                continue
            self._files.append((int(match[1]), int(match[2]), entry.stat().st_size))
        self._files.sort()
        self._next = self._files[-1][0] + 1 if self._files else 0
        self.bytes = sum(size for _, _, size in self._files)
        self.lines = sum(lines for _, lines, _ in self._files)

    def _path(self, sequence: int, lines: int) -> Path:
        return self.directory / f"{sequence:016d}-{lines}.chunk"

    def __len__(self) -> int:
        return len(self._files)

    def append(self, chunk: bytes) -> int:
        """Store ``chunk`` as the newest; return how many lines were dropped to make room."""
        if len(chunk) > self.max_bytes:
            return chunk.count(b"\n")  # could never fit: keep what is spooled
        dropped = 0
        while self._files and self.bytes + len(chunk) > self.max_bytes:
            dropped += self._remove_oldest()
        lines = chunk.count(b"\n")
        path = self._path(self._next, lines)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(chunk)
        os.replace(tmp, path)
        self._files.append((self._next, lines, len(chunk)))
        self._next += 1
        self.bytes += len(chunk)
        self.lines += lines
        return dropped

    def peek(self) -> bytes | None:
        """The oldest chunk, or None when the spool is empty (it stays spooled until
        `commit`)."""
        if not self._files:
            return None
        sequence, lines, _ = self._files[0]
        return self._path(sequence, lines).read_bytes()

    def commit(self) -> None:
        """The oldest chunk was delivered: forget it."""
        self._remove_oldest()

    def _remove_oldest(self) -> int:
        sequence, lines, size = self._files.pop(0)
        self._path(sequence, lines).unlink(missing_ok=True)
        self.bytes -= size
        self.lines -= lines
        return lines
