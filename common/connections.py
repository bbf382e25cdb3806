"""The daemon-wide count of open stream connections, shared by a daemon's processes.

``max_tcp_connections`` is the daemon's limit: the worker processes of an aggregator
accept from one shared listening socket, so the count they check must be one count. It
lives in a small shared memory file (a memfd the supervisor creates and every worker maps),
one slot per process:

    slot i = (open connections of process i, of them idle long enough to be evicted)

Each process writes only its own slot; the daemon's count is the sum of the slots. A
reservation (check the sum, add one) runs under an exclusive ``flock`` on the file, so two
processes accepting at the same moment cannot both take the last place. A ``flock`` belongs
to an open file description, and the descriptor the supervisor passes down is one
description shared by every worker (a lock on it would exclude nobody): each process
reopens the file (`ConnectionTable.attach`, `clear_connection_slot`) and locks its own.

A process that dies takes its connections with it: its slot is cleared when it is replaced
(`clear_connection_slot`, by the supervisor, and again by the new process).

The second field lets a full process that has nothing to evict itself leave a new
connection in the shared accept queue for a process that has (see
`common.streams.run_stream_listener`).

SHELL (shared memory, file locks).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from typing import Final

#: One slot: open connections, evictable connections (native int64, aligned).
_SLOT: Final = struct.Struct("=qq")


def create_connection_table(slots: int) -> int:
    """A new shared table for ``slots`` processes, all zero; return its file descriptor
    (to pass to the processes, e.g. in ``pass_fds``)."""
    fd = os.memfd_create("tallyd-connections", os.MFD_CLOEXEC)
    os.ftruncate(fd, _SLOT.size * slots)
    return fd


def _reopen(fd: int) -> int:
    """A new open file description of the file behind ``fd``: a ``flock`` on it excludes
    the other processes, which a lock on the inherited (shared) description would not."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)


def clear_connection_slot(fd: int, index: int) -> None:
    """Zero the slot of process ``index`` (it died, and its connections with it)."""
    own = _reopen(fd)
    try:
        with mmap.mmap(own, 0) as table:
            _locked_pack(own, table, index, 0, 0)
    finally:
        os.close(own)


def _locked_pack(fd: int | None, table: mmap.mmap, index: int, open_: int, idle: int) -> None:
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        _SLOT.pack_into(table, index * _SLOT.size, open_, idle)
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)


class ConnectionTable:
    """One process's view of the daemon-wide connection count.

    Use `local` for a daemon of one process, `attach` in each process of several.
    """

    def __init__(self, table: mmap.mmap, fd: int | None, index: int) -> None:
        self._table = table
        self._fd = fd
        self.index = index
        self.slots = len(table) // _SLOT.size
        self._offset = index * _SLOT.size
        self.open = 0
        self._idle = 0
        _locked_pack(fd, table, index, 0, 0)

    @classmethod
    def local(cls) -> ConnectionTable:
        """A table of one slot, in this process only."""
        return cls(mmap.mmap(-1, _SLOT.size), None, 0)

    @classmethod
    def attach(cls, fd: int, index: int) -> ConnectionTable:
        """Map the shared table behind ``fd`` as process ``index`` (its slot starts at 0).

        The file is reopened: this process locks its own open file description (the
        module docstring says why); it stays open as long as the process."""
        own = _reopen(fd)
        try:
            return cls(mmap.mmap(own, 0), own, index)
        except BaseException:
            os.close(own)
            raise

    @property
    def lock_fd(self) -> int | None:
        """The descriptor this process locks (None: a table of this process only)."""
        return self._fd

    def _totals(self) -> tuple[int, int]:
        unpack = _SLOT.unpack_from
        total = idle = 0
        for i in range(self.slots):
            o, e = unpack(self._table, i * _SLOT.size)
            total += o
            if i != self.index:
                idle += e
        return total, idle

    def total(self) -> int:
        """Connections open in the whole daemon."""
        return self._totals()[0]

    def evictable_elsewhere(self) -> int:
        """Evictable connections the other processes reported at their last sweep."""
        return self._totals()[1]

    def reserve(self, limit: int) -> bool:
        """Take one place if the daemon has fewer than ``limit`` open; say whether it did."""
        fd = self._fd
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if self.total() >= limit:
                return False
            self.open += 1
            _SLOT.pack_into(self._table, self._offset, self.open, self._idle)
            return True
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def release(self) -> None:
        """Give one place back (a connection of this process closed)."""
        self.open -= 1
        _SLOT.pack_into(self._table, self._offset, self.open, self._idle)

    def report_evictable(self, count: int) -> None:
        """Publish how many of this process's connections could be evicted now."""
        if count != self._idle:
            self._idle = count
            _SLOT.pack_into(self._table, self._offset, self.open, count)
