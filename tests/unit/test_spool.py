"""The disk spool: order, bounds, restart, crash leftovers."""

from __future__ import annotations

from pathlib import Path

from aggregator.backends.spool import Spool


def chunk(tag: str, lines: int = 2) -> bytes:
    return b"".join(f"{tag}.{i} 1 10\n".encode() for i in range(lines))


def test_chunks_come_back_oldest_first_until_committed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "n", 1 << 20)
    spool.append(chunk("a"))
    spool.append(chunk("b", 3))
    assert (len(spool), spool.lines) == (2, 5)
    assert spool.peek() == chunk("a")
    assert spool.peek() == chunk("a")
    spool.commit()
    assert spool.peek() == chunk("b", 3)
    spool.commit()
    assert spool.peek() is None and spool.lines == 0 and spool.bytes == 0


def test_bound_drops_oldest_and_reports_lines(tmp_path: Path) -> None:
    size = len(chunk("a"))
    spool = Spool(tmp_path, 2 * size)
    assert spool.append(chunk("a")) == 0
    assert spool.append(chunk("b")) == 0
    assert spool.append(chunk("c")) == 2
    assert spool.peek() == chunk("b")
    assert spool.append(b"x" * (3 * size) + b"\n") == 1  # could never fit: only it is lost
    assert spool.peek() == chunk("b") and spool.lines == 4


def test_restart_keeps_order_and_sizes_and_removes_partial_writes(tmp_path: Path) -> None:
    first = Spool(tmp_path, 1 << 20)
    first.append(chunk("a"))
    first.append(chunk("b"))
    (tmp_path / "0000000000000009-1.tmp").write_bytes(b"half")
    (tmp_path / "README").write_text("not a chunk")
    second = Spool(tmp_path, 1 << 20)
    assert (len(second), second.lines) == (2, 4)
    assert not (tmp_path / "0000000000000009-1.tmp").exists()
    second.append(chunk("c"))
    assert [second.peek(), second.commit(), second.peek(), second.commit(), second.peek()] == [
        chunk("a"), None, chunk("b"), None, chunk("c")]
