"""The shared connection table: its lock excludes the other processes, so a reservation
never takes a place beyond the limit. Real processes, one memfd passed down as workers get it."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from common.connections import ConnectionTable, create_connection_table

#: A child that attaches as slot 1, says so, then tries the lock when told to.
TRY_LOCK = """
import fcntl, sys
from common.connections import ConnectionTable
table = ConnectionTable.attach(int(sys.argv[1]), 1)
print("attached", flush=True)
sys.stdin.readline()
try:
    fcntl.flock(table.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("blocked", flush=True)
else:
    print("held", flush=True)
"""

#: A child that, as slot ``argv[2]``, reserves and releases in a loop and reports the most
#: connections it saw open while it held a place.
RESERVE_LOOP = """
import sys
from common.connections import ConnectionTable
table = ConnectionTable.attach(int(sys.argv[1]), int(sys.argv[2]))
sys.stdin.readline()
most = taken = 0
for _ in range(int(sys.argv[3])):
    if table.reserve(1):
        taken += 1
        most = max(most, table.total())
        table.release()
print(most, taken, flush=True)
"""


def child(code: str, fd: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, str(fd), *args], pass_fds=(fd,),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@pytest.fixture
def table_fd() -> Iterator[int]:
    fd = create_connection_table(4)
    yield fd
    os.close(fd)


def finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    return out


def test_a_process_holding_the_lock_excludes_another(table_fd: int) -> None:
    proc = child(TRY_LOCK, table_fd)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "attached\n"
        table = ConnectionTable.attach(table_fd, 0)
        assert table.lock_fd is not None and table.lock_fd != table_fd
        fcntl.flock(table.lock_fd, fcntl.LOCK_EX)
        try:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "blocked\n"
        finally:
            fcntl.flock(table.lock_fd, fcntl.LOCK_UN)
            os.close(table.lock_fd)
    finally:
        finish(proc)


def test_concurrent_reservers_never_pass_the_limit(table_fd: int) -> None:
    procs = [child(RESERVE_LOOP, table_fd, str(i), "20000") for i in range(3)]
    try:
        for p in procs:  # all attached, then all start at once
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
    finally:
        results = [finish(p).split() for p in procs]
    assert all(int(taken) > 0 for _, taken in results)
    assert max(int(most) for most, _ in results) == 1
