"""Tests for common.queue.ChunkQueue: the bounded drop-oldest queue every output uses."""

from __future__ import annotations

from common.queue import ChunkQueue


def test_append_within_bound_evicts_nothing_and_counts_lines() -> None:
    q = ChunkQueue(10)
    assert q.append(b"a\nb\n") == []
    assert q.append(b"cd\n") == []
    assert (len(q), q.total_bytes, q.total_lines) == (2, 7, 3)
    assert list(q) == [b"a\nb\n", b"cd\n"]


def test_over_the_bound_the_oldest_chunks_are_evicted_first() -> None:
    q = ChunkQueue(8)
    q.append(b"1111\n")
    q.append(b"22\n")
    assert q.append(b"333\n") == [b"1111\n"]
    assert list(q) == [b"22\n", b"333\n"]
    assert (q.total_bytes, q.total_lines) == (7, 2)


def test_without_keep_newest_a_chunk_larger_than_the_bound_is_evicted_too() -> None:
    q = ChunkQueue(4)
    assert q.append(b"0123456789\n") == [b"0123456789\n"]
    assert (len(q), q.total_bytes, q.total_lines) == (0, 0, 0)


def test_keep_newest_holds_the_newest_chunk_past_the_bound() -> None:
    q = ChunkQueue(4, keep_newest=True)
    q.append(b"aa\n")
    assert q.append(b"0123456789\n") == [b"aa\n"]
    assert list(q) == [b"0123456789\n"]


def test_pinned_head_is_never_evicted() -> None:
    q = ChunkQueue(8)
    q.append(b"head\n")
    q.pinned = 1
    assert q.append(b"next\n") == [b"next\n"]  # 10 bytes: "head" is pinned, "next" goes
    assert q.append(b"x\n") == []
    assert list(q) == [b"head\n", b"x\n"]
    q.pinned = 0
    assert q.popleft() == b"head\n"


def test_kept_chunks_stay_in_place_while_others_around_them_go() -> None:
    q = ChunkQueue(6, keep=lambda c: c.startswith(b"M"), keep_newest=True)
    for chunk in (b"D1111\n", b"M\n", b"D2222\n", b"D3\n"):
        q.append(chunk)
    assert list(q) == [b"M\n", b"D3\n"]
    assert q.total_bytes == 5


def test_push_front_restores_order_without_evicting() -> None:
    q = ChunkQueue(4)
    q.append(b"c\n")
    q.push_front([b"aaaa\n", b"b\n"])
    assert list(q) == [b"aaaa\n", b"b\n", b"c\n"]
    assert q.total_bytes == 9
    assert q.evict() == [b"aaaa\n"]
    assert list(q) == [b"b\n", b"c\n"]


def test_custom_line_counter() -> None:
    q = ChunkQueue(100, lines=lambda c: int(c[:1]))
    q.extend([b"3abc", b"2de"])
    assert q.total_lines == 5
    q.popleft()
    assert q.total_lines == 2
    assert q.clear() == [b"2de"]
    assert (len(q), q.total_bytes, q.total_lines) == (0, 0, 0)


def test_take_returns_the_chunk_with_the_lines_it_counted() -> None:
    q = ChunkQueue(100)
    q.extend([b"a\nb\n", b"c\n"])
    assert q.take() == (b"a\nb\n", 2)
    assert (q.total_bytes, q.total_lines) == (2, 1)
