"""The ring agent's side of the file system: checked paths, the walk, the locked delete.

No path leaves the data dir. A name from a request is percent-decoded, then checked by
`ringtool.datadir` (no empty components, so no ``..`` or ``.``; no absolute name, NUL, ``/``
or ``\\`` inside a component; so ``%2e%2e`` is refused as ``..`` is), and then on disk: the
real path of the file's directory must be that directory under the real data dir (no
symlinked directory on the way), and the file itself must be a regular file, never a symlink.
A merge creates missing directories one at a time, each checked the same way. The walk never
follows a symlink. (A local user who can swap a directory for a symlink between the check and
the open is not what this guards against: that user can write the data dir anyway.)

Every refusal is a `PathRefused` with a ``reason``: ``bad_name``, ``symlink``, ``not_found``,
``conflict`` (a file where a directory must go).

SHELL: file system calls; the slow ones are run in worker threads by the agent.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from common.errors import StatsdError

from .datadir import MetricNameError, name_for_path, path_for_name

#: Files per batch of the listing: one worker-thread call walks this many.
LISTING_BATCH: Final = 1000


class PathRefused(StatsdError):
    """A name or file the agent will not touch; ``reason`` says why (module docstring)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def resolve_name(root: str, quoted: str) -> tuple[str, Path]:
    """The metric name in the percent-encoded ``quoted`` and its file under ``root`` (a real
    path), its directory checked to hold no symlink.

    Raises:
        PathRefused: ``bad_name`` or ``symlink``.
    """
    try:
        name = urllib.parse.unquote(quoted, errors="strict")
        relative = path_for_name(name)
    except UnicodeDecodeError:
        raise PathRefused("bad_name", "the name is not UTF-8") from None
    except MetricNameError as exc:
        raise PathRefused("bad_name", str(exc)) from None
    path = os.path.join(root, relative)
    parent = os.path.dirname(path)
    if os.path.realpath(parent) != parent:
        raise PathRefused("symlink", f"{name}: a directory on its path is a symlink")
    return name, Path(path)


def regular_file(path: Path, name: str) -> os.stat_result:
    """The ``lstat`` of ``path``, a regular file.

    Raises:
        PathRefused: ``not_found`` (also for a directory or a device), ``symlink``.
    """
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise PathRefused("not_found", name) from None
    if stat.S_ISLNK(info.st_mode):
        raise PathRefused("symlink", f"{name}: the file is a symlink")
    if not stat.S_ISREG(info.st_mode):
        raise PathRefused("not_found", f"{name}: not a regular file")
    return info


def make_parents(root: str, path: Path, name: str) -> None:
    """Create the missing directories of ``path`` one at a time, each checked to be a real
    directory; refuse a ``path`` that exists and is not a regular file.

    Raises:
        PathRefused: ``symlink``, ``conflict``, ``not_found``.
    """
    current = root
    for part in path.relative_to(root).parts[:-1]:
        current = os.path.join(current, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(current)
        info = os.lstat(current)
        if stat.S_ISLNK(info.st_mode):
            raise PathRefused("symlink", f"{name}: a directory on its path is a symlink")
        if not stat.S_ISDIR(info.st_mode):
            raise PathRefused("conflict", f"{name}: a file is where a directory must go")
    if os.path.lexists(path):
        regular_file(path, name)


def delete_locked(path: Path) -> bool:
    """Unlink ``path`` holding ``flock(LOCK_EX)`` on it, so that a carbon write or a merge
    under way finishes first; False when it was gone (or replaced while we waited)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        mine, named = os.fstat(fd), os.lstat(path)
        if (mine.st_dev, mine.st_ino) != (named.st_dev, named.st_ino):
            return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def walk_batches(root: str, batch: int = LISTING_BATCH) -> Iterator[list[dict[str, Any]]]:
    """The series files under ``root`` as listing entries (``name``, ``size``, ``mtime``),
    ``batch`` at a time, never following a symlink. One directory is read at a time, lazily,
    so a directory of millions of files costs one batch of memory."""
    out: list[dict[str, Any]] = []
    stack = [""]
    while stack:
        relative = stack.pop()
        try:
            entries = os.scandir(os.path.join(root, relative))
        except OSError:
            continue  # removed meanwhile, or unreadable: not ours to list
        with entries:
            for entry in entries:
                path = f"{relative}/{entry.name}" if relative else entry.name
                item = _entry(entry, path, stack)
                if item is not None:
                    out.append(item)
                if len(out) >= batch:
                    yield out
                    out = []
    if out:
        yield out


def _entry(entry: os.DirEntry[str], path: str, stack: list[str]) -> dict[str, Any] | None:
    """The listing entry of a series file; a directory goes on ``stack`` instead."""
    try:
        if entry.is_dir(follow_symlinks=False):
            stack.append(path)
            return None
        name = name_for_path(path) if entry.is_file(follow_symlinks=False) else None
        if name is None:
            return None
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return None  # gone meanwhile
    return {"name": name, "size": info.st_size, "mtime": info.st_mtime}
