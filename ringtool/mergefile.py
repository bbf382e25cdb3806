"""Merging into, verifying and reading Whisper files on disk, under carbon's lock.

carbon-cache with ``WHISPER_LOCK_WRITES = True`` takes ``flock(LOCK_EX)`` on a file for each
write. `merge_into` holds ``LOCK_EX`` on the destination for the whole read, compute and
write, so carbon's writes wait for the merge and the merge never interleaves with them (the
hole carbonate and buckytools leave between their fetch and their update). Everything goes
through one file handle: a second ``open`` + ``flock`` of the same file, even in this
process, would wait on the first. `verify_file` and `read_locked` read under ``LOCK_SH``.

A missing destination is created as a copy of the source: written to a temporary file in
the same directory, fsynced, then hard-linked to its name. ``os.link`` fails with EEXIST when
carbon (or another merge) created the file meanwhile; the merge then goes into that file.
The source is checked before anything is written, and a destination that does not parse is
never written to: both raise `WhisperFormatError`.

Synchronous: the agent runs these in a worker thread (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from ringtool.merge import MergeResult, Verification, copy_result, plan_merge, verify_merge
from ringtool.whisperfile import WhisperFormatError, parse_header

__all__ = ["merge_into", "read_locked", "verify_file"]

#: Mode of a destination created as a copy (carbon's files are 0644 under the usual umask).
CREATED_FILE_MODE: Final = 0o644
#: Bytes per read call.
READ_CHUNK_BYTES: Final = 1 << 20


def merge_into(dst: Path, src: bytes, *, now: int) -> MergeResult:
    """Merge the Whisper file ``src`` into the file ``dst`` (`ringtool.merge` rules), or
    create ``dst`` as a copy of ``src`` when there is none.

    Args:
        dst: the destination path; missing parent directories are created.
        src: the source file's bytes.
        now: unix seconds; decides which slots are inside each archive's retention.

    Returns:
        What the merge did (``created`` when ``dst`` was written as a copy).

    Raises:
        WhisperFormatError: ``src`` or the existing ``dst`` is corrupt (``side`` says which);
            nothing was written.
        OSError: the file system refused.
    """
    try:
        parse_header(src)
    except WhisperFormatError as error:
        raise error.on("source") from None
    while True:
        try:
            fd = os.open(dst, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if _create_copy(dst, src):
                return copy_result(src, now=now)
            continue  # someone created it meanwhile: merge into theirs
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _still_named(fd, dst):
                continue  # deleted or replaced while we waited for the lock
            plan = plan_merge(src, _read_all(fd), now=now)
            for offset, chunk in plan.writes:
                _write_all(fd, chunk, offset)
            if plan.writes:
                os.fsync(fd)
            return plan.result
        finally:
            os.close(fd)  # releases the lock


def verify_file(dst: Path, src: bytes, *, now: int) -> Verification:
    """Whether every point of ``src`` is in the file ``dst``, read under ``LOCK_SH``.

    A missing ``dst`` lacks every source point (``missing`` counts them).

    Raises:
        WhisperFormatError: ``src`` or ``dst`` is corrupt (``side`` says which).
        OSError: the file cannot be read.
    """
    try:
        data = read_locked(dst)
    except FileNotFoundError:
        copied = copy_result(src, now=now)
        return Verification(present=0, conflicts=0, missing=copied.filled)
    return verify_merge(src, data, now=now)


def read_locked(path: Path) -> bytes:
    """The whole file, read under ``flock(LOCK_SH)`` (so never half-written by carbon).

    Raises:
        FileNotFoundError: there is no such file.
        OSError: it cannot be read.
    """
    with _locked(path, os.O_RDONLY, fcntl.LOCK_SH) as fd:
        return _read_all(fd)


@contextlib.contextmanager
def _locked(path: Path, flags: int, operation: int) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, operation)
        yield fd
    finally:
        os.close(fd)


def _create_copy(dst: Path, src: bytes) -> bool:
    """Write ``src`` as ``dst`` unless ``dst`` appears meanwhile (then False)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, CREATED_FILE_MODE)
            _write_all(fd, src, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, dst)
        except FileExistsError:
            return False
    finally:
        os.unlink(temp)
    _fsync_directory(dst.parent)
    return True


def _still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, READ_CHUNK_BYTES, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
