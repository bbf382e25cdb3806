"""ringtool.mergefile on real files: carbon's flock, creating a missing destination against a
carbon that creates it meanwhile, corrupt files left alone."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ringtool import mergefile
from ringtool.merge import MergeResult, Verification, copy_result
from ringtool.mergefile import merge_into, read_locked, verify_file
from ringtool.whisperfile import WhisperFormatError
from support.whisperfiles import build, fetch_archives, series

NOW = 1_700_000_033
SCHEMA = ((10, 12), (60, 10))
SRC = series(SCHEMA, [float(k) for k in range(12)], now=NOW)
#: A destination with its own recent points and holes.
DST = series(SCHEMA, [None] * 9 + [50.0, None, 0.0], now=NOW)
#: How long a merge that should be waiting is given to (wrongly) finish.
WAIT_SECONDS = 0.3

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def lock_holder() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """Start a process holding ``flock(LOCK_EX)`` on a file (as carbon does while it writes);
    write a line to its stdin to release it."""
    started: list[subprocess.Popen[str]] = []

    def hold(path: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        return proc

    try:
        yield hold
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=10)


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


def points(data: bytes) -> dict[int, list[tuple[int, float | None]]]:
    return fetch_archives(data, now=NOW)


def test_missing_destination_is_created_as_a_copy(tmp_path: Path) -> None:
    dst = tmp_path / "a" / "b" / "c.wsp"
    result = merge_into(dst, SRC, now=NOW)
    assert result == copy_result(SRC, now=NOW) and result.created and result.filled > 0
    assert dst.read_bytes() == SRC
    assert dst.stat().st_mode & 0o777 == mergefile.CREATED_FILE_MODE
    assert os.listdir(dst.parent) == ["c.wsp"]  # no temporary file left behind


def test_existing_destination_is_merged_in_place(tmp_path: Path) -> None:
    dst = tmp_path / "c.wsp"
    dst.write_bytes(DST)
    inode = dst.stat().st_ino
    result = merge_into(dst, SRC, now=NOW)
    assert not result.created and result.filled > 0 and result.conflicts == 2
    assert dst.stat().st_ino == inode
    assert [v for _, v in points(dst.read_bytes())[10]] == [
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 50.0, 10.0, 0.0]
    assert merge_into(dst, SRC, now=NOW).filled == 0
    assert verify_file(dst, SRC, now=NOW) == Verification(
        present=result.same + result.filled, conflicts=2, missing=0)


def test_verify_and_read_of_a_missing_file(tmp_path: Path) -> None:
    verification = verify_file(tmp_path / "none.wsp", SRC, now=NOW)
    assert verification.missing == copy_result(SRC, now=NOW).filled and not verification.ok
    with pytest.raises(FileNotFoundError):
        read_locked(tmp_path / "none.wsp")


def test_merge_waits_for_a_writer_holding_the_lock(
        tmp_path: Path, lock_holder: Callable[[Path], subprocess.Popen[str]]) -> None:
    dst = tmp_path / "c.wsp"
    dst.write_bytes(DST)
    holder = lock_holder(dst)
    merging, merged = in_thread(lambda: merge_into(dst, SRC, now=NOW))
    reading, read = in_thread(lambda: read_locked(dst))
    merging.join(WAIT_SECONDS)
    reading.join(0)
    assert merging.is_alive() and reading.is_alive()  # both wait for the writer
    assert dst.read_bytes() == DST
    release(holder)
    merging.join(10)
    reading.join(10)
    assert merged[0].filled > 0
    assert read[0] in (DST, dst.read_bytes())  # read before or after the merge, never during


def pause_planning(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make merge_into stop between its read and its plan: the first event is set once it
    is there (holding the lock), and it goes on when the second is set (or after 10 s)."""
    planned, go_on = threading.Event(), threading.Event()
    real_plan = mergefile.plan_merge

    def slow_plan(src: bytes, data: bytes, *, now: int) -> Any:
        planned.set()
        go_on.wait(10)
        return real_plan(src, data, now=now)

    monkeypatch.setattr(mergefile, "plan_merge", slow_plan)
    return planned, go_on


def test_writer_waits_for_the_whole_merge(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the merge's read and its writes, a carbon flock(LOCK_EX) cannot get in."""
    dst = tmp_path / "c.wsp"
    dst.write_bytes(DST)
    planned, go_on = pause_planning(monkeypatch)
    merging, merged = in_thread(lambda: merge_into(dst, SRC, now=NOW))
    try:
        assert planned.wait(10)
        probe = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\ntry:\n"
                 "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
                 "    print('locked')\nelse:\n    print('free')\n")
        out = subprocess.run([sys.executable, "-c", probe, str(dst)], capture_output=True,
                             text=True, check=True, timeout=30).stdout
        assert out == "locked\n"
    finally:
        go_on.set()
        merging.join(10)
    assert merged[0].filled > 0


WHISPER_WRITER = """
import sys, whisper
whisper.LOCK = True  # what carbon sets from WHISPER_LOCK_WRITES = True
print("writing", flush=True)
whisper.update_many(sys.argv[1], [(int(sys.argv[2]), 77.0)], now=int(sys.argv[3]))
"""


def test_carbons_whisper_writer_waits_for_the_merge(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A whisper update with LOCK = True into a hole the merge also fills lands after the
    merge, so the live point is the one that stays."""
    dst = tmp_path / "c.wsp"
    dst.write_bytes(DST)
    hole = points(DST)[10][-2][0]
    planned, go_on = pause_planning(monkeypatch)
    merging, merged = in_thread(lambda: merge_into(dst, SRC, now=NOW))
    writer = None
    try:
        assert planned.wait(10)
        writer = subprocess.Popen([sys.executable, "-c", WHISPER_WRITER, str(dst), str(hole),
                                   str(NOW)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        with pytest.raises(subprocess.TimeoutExpired):
            writer.wait(WAIT_SECONDS)
    finally:
        go_on.set()
        merging.join(10)
        if writer is not None:
            assert writer.wait(30) == 0
            assert writer.stdout is not None
            writer.stdout.close()
    assert merged[0].filled > 0
    assert dict(points(dst.read_bytes())[10])[hole] == 77.0


def test_destination_created_meanwhile_is_merged_into(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """carbon creates the file after merge_into found none and before its link."""
    dst = tmp_path / "d" / "c.wsp"
    real_link = os.link

    def carbon_first(source: str, target: Path) -> None:
        Path(target).write_bytes(DST)  # carbon's own file, with its own points
        real_link(source, target)

    monkeypatch.setattr(mergefile.os, "link", carbon_first)
    result = merge_into(dst, SRC, now=NOW)
    monkeypatch.undo()
    assert not result.created and result.conflicts == 2 and result.filled > 0
    assert os.listdir(dst.parent) == ["c.wsp"]
    assert points(dst.read_bytes())[10][-3:][0][1] == 50.0  # carbon's point kept


def test_destination_replaced_while_waiting_for_the_lock_is_reopened(
        tmp_path: Path, lock_holder: Callable[[Path], subprocess.Popen[str]]) -> None:
    dst = tmp_path / "c.wsp"
    dst.write_bytes(DST)
    holder = lock_holder(dst)
    merging, merged = in_thread(lambda: merge_into(dst, SRC, now=NOW))
    merging.join(WAIT_SECONDS)
    replacement = tmp_path / "new.wsp"
    replacement.write_bytes(build(SCHEMA, []))
    replacement.rename(dst)  # e.g. deleted and re-created by carbon
    release(holder)
    merging.join(10)
    assert merged[0] == MergeResult(created=False, filled=copy_result(SRC, now=NOW).filled,
                                    conflicts=0, same=0, skipped_coarse=0)
    assert points(dst.read_bytes()) == points(SRC)


@pytest.mark.parametrize("corrupt", [b"", b"\0" * 100, DST[:-5], b"not a whisper file" * 9])
def test_corrupt_destination_is_never_written(tmp_path: Path, corrupt: bytes,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mergefile, "EMPTY_DESTINATION_WAIT_SECONDS", 0.1)
    dst = tmp_path / "c.wsp"
    dst.write_bytes(corrupt)
    before = dst.stat()
    with pytest.raises(WhisperFormatError) as caught:
        merge_into(dst, SRC, now=NOW)
    assert caught.value.side == "destination"
    assert dst.read_bytes() == corrupt and dst.stat().st_mtime_ns == before.st_mtime_ns
    with pytest.raises(WhisperFormatError):
        verify_file(dst, SRC, now=NOW)


def test_empty_destination_being_created_by_carbon_is_waited_for(tmp_path: Path) -> None:
    """whisper.create opens (truncating) before it flocks: an empty file is given a moment."""
    dst = tmp_path / "c.wsp"
    dst.write_bytes(b"")
    merging, merged = in_thread(lambda: merge_into(dst, SRC, now=NOW))
    merging.join(WAIT_SECONDS)
    fd = os.open(dst, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, DST, 0)
    finally:
        os.close(fd)
    merging.join(10)
    assert merged[0].conflicts == 2 and not merged[0].created


@pytest.mark.parametrize("exists", [False, True])
def test_corrupt_source_is_refused_before_anything_is_written(tmp_path: Path,
                                                              exists: bool) -> None:
    dst = tmp_path / "sub" / "c.wsp"
    if exists:
        dst.parent.mkdir()
        dst.write_bytes(DST)
    with pytest.raises(WhisperFormatError) as caught:
        merge_into(dst, SRC[:-12], now=NOW)
    assert caught.value.side == "source" and caught.value.reason == "truncated"
    assert dst.exists() == exists and (not exists or dst.read_bytes() == DST)
    assert not (tmp_path / "sub").exists() or os.listdir(tmp_path / "sub") == (
        ["c.wsp"] if exists else [])


def test_shared_holder_does_not_block_a_read(tmp_path: Path) -> None:
    dst = tmp_path / "c.wsp"
    dst.write_bytes(DST)
    fd = os.open(dst, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert read_locked(dst) == DST
    finally:
        os.close(fd)


def test_concurrent_merges_into_a_missing_file_lose_nothing(tmp_path: Path) -> None:
    """Eight merges race to create the same file, each with other slots: one creates it,
    the others merge into it, and every point is there at the end."""
    dst = tmp_path / "x" / "c.wsp"
    count = 8
    sources = [series(SCHEMA, [float(k) if k % count == n else None for k in range(12)],
                      now=NOW) for n in range(count)]
    barrier = threading.Barrier(count)

    def merge(src: bytes) -> MergeResult:
        barrier.wait(10)
        return merge_into(dst, src, now=NOW)

    threads = [in_thread(lambda src=src: merge(src)) for src in sources]
    for thread, _ in threads:
        thread.join(30)
    results = [out[0] for _, out in threads]
    assert sum(result.created for result in results) == 1
    assert [v for _, v in points(dst.read_bytes())[10]] == [float(k) for k in range(12)]
    assert os.listdir(dst.parent) == ["c.wsp"]
