"""Tests for proxy.routing: which aggregator gets a line, and datagram packing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.auth import TokenAuth
from common.protocol import LineParser
from common.shard import GOLDEN_WORKER_VECTORS, shard_index, worker_index
from proxy.routing import BAD, MAIN, Router, count_lines, pack_lines

LINE = st.from_regex(rb"[a-zA-Z0-9_. /;=#:|@,+-]{1,60}", fullmatch=True)


def routed(router: Router) -> list[list[bytes]]:
    """Every aggregator's pending lines, unpacked."""
    return [[line for chunk in pending for line in chunk.split(b"\n")]
            for pending in router.pending]


def test_route_sends_each_line_to_shard_index_of_its_name() -> None:
    router = Router(3, max_chunk_bytes=1432)
    lines = [b"api.requests:1|c", b"hosts.web-01.cpu.load:0.5|g", b"db.query:12|ms|@0.1"]
    router.route(b"\n".join(lines))
    for line in lines:
        index = shard_index(line.split(b":")[0], 3)
        assert line in router.pending[index]
    assert router.statistics().received_lines == 3


@pytest.mark.parametrize("spelling", [b"a b.c", b"a_b.c", b"a\tb.c", b"a  b.c", b"a+_b.c"])
def test_route_spellings_of_one_graphite_path_go_to_one_aggregator(spelling: bytes) -> None:
    router = Router(7, max_chunk_bytes=1432)
    assert router.index_of(spelling + b":1|c") == shard_index(b"a_b.c", 7)


@pytest.mark.parametrize("line", [b"req:1|c|#env:prod", b"req;dc=eu:1|c", b"req:1|c|#a:b,c:d",
                                  b"req:1|c"])
def test_route_tags_do_not_change_the_aggregator(line: bytes) -> None:
    router = Router(5, max_chunk_bytes=1432)
    assert router.index_of(line) == shard_index(b"req", 5)


def test_route_forwards_lines_unchanged() -> None:
    router = Router(1, max_chunk_bytes=1432)
    packet = b"a b/c:1|c|#k:v\r\nweird+name:2|g"
    router.route(packet)
    assert router.pending[0] == [b"a b/c:1|c|#k:v\r", b"weird+name:2|g"]


def test_route_counts_lines_without_usable_name_as_bad() -> None:
    router = Router(2, max_chunk_bytes=1432)
    router.route(b"nocolon\n+++:1|c\n:1|c\ngood:1|c\n")
    assert router.statistics().dropped_lines["bad_line"] == 3
    assert router.statistics().received_lines == 4
    assert sum(len(p) for p in router.pending) == 1


def test_route_skips_empty_lines_without_counting() -> None:
    router = Router(2, max_chunk_bytes=1432)
    router.route(b"\n\na:1|c\n\n")
    router.route(b":1|c\n\n")  # caches nothing for the empty key
    router.route(b"\n")
    stats = router.statistics()
    assert (stats.received_lines, stats.dropped_lines["bad_line"]) == (2, 1)


def test_route_drops_line_longer_than_a_datagram_as_too_long() -> None:
    router = Router(1, max_chunk_bytes=100)
    long_line = b"x" * 100 + b":1|c"
    router.route(long_line + b"\nshort:1|c")
    assert router.statistics().dropped_lines["line_too_long"] == 1
    assert router.pending[0] == [b"short:1|c"]


def test_route_with_auth_strips_tokens_and_refuses_others() -> None:
    auth = TokenAuth(["tok"])
    router = Router(1, max_chunk_bytes=1432, auth=auth)
    router.route(b"tok.a:1|c\nbad.b:1|c\nc:1|c")
    assert router.pending[0] == [b"a:1|c"]
    assert auth.statistics().refused == 2
    stats = router.statistics()  # received_lines counts the refused ones too
    assert stats.received_lines - stats.dropped_lines["auth"] == 1


def test_route_hashes_unsanitized_name_when_aggregators_do_not_sanitize() -> None:
    # With key_name_sanitize off the aggregator still writes the sanitised Graphite name.
    router = Router(7, max_chunk_bytes=1432, sanitize=False)
    assert router.index_of(b"a b.c:1|c") == shard_index(b"a_b.c", 7)


@given(st.lists(LINE, max_size=30), st.integers(min_value=1, max_value=6))
def test_route_agrees_with_name_of_for_any_line(lines: list[bytes], n: int) -> None:
    router = Router(n, max_chunk_bytes=65_536)
    parser = LineParser()
    for line in lines:
        name = parser.name_of(line)
        expected = shard_index(name, n) if name and b":" in line else BAD
        assert router.index_of(line) == expected
        assert router.index_of(line) == expected  # cached


@given(st.lists(LINE, max_size=200), st.integers(min_value=60, max_value=400))
def test_pack_lines_reproduces_input_in_order_and_respects_limit(
    lines: list[bytes], limit: int
) -> None:
    chunks = pack_lines(lines, limit)
    assert all(0 < len(c) <= limit for c in chunks)
    assert [line for c in chunks for line in c.split(b"\n")] == lines
    assert sum(count_lines(c) for c in chunks) == len(lines)


@given(st.lists(LINE, min_size=1, max_size=200), st.integers(min_value=60, max_value=300))
def test_pack_lines_fills_each_chunk_greedily(lines: list[bytes], limit: int) -> None:
    chunks = pack_lines(lines, limit)
    for chunk, following in itertools.pairwise(chunks):
        next_line = following.split(b"\n")[0]
        assert len(chunk) + 1 + len(next_line) > limit


def test_pack_lines_refuses_element_over_limit() -> None:
    with pytest.raises(ValueError):
        pack_lines([b"a" * 10, b"b" * 20], 15)


@given(st.lists(st.lists(LINE, max_size=40), max_size=8), st.integers(min_value=2, max_value=4),
       st.integers(min_value=60, max_value=300))
def test_take_chunks_keeps_per_aggregator_order_across_packets(
    packets: list[list[bytes]], n: int, limit: int
) -> None:
    router = Router(n, max_chunk_bytes=limit)
    sent: list[list[bytes]] = [[] for _ in range(n)]
    for packet in packets:
        router.route(b"\n".join(packet))
        for index in range(n):
            sent[index] += router.take_chunks(index, keep_tail=True)
    for index in range(n):
        sent[index] += router.take_chunks(index, keep_tail=False)
    assert not router.has_pending()
    parser = LineParser()
    for index in range(n):
        expected = [line for packet in packets for line in packet
                    if b":" in line and parser.name_of(line)
                    and shard_index(parser.name_of(line), n) == index]
        assert all(len(c) <= limit for c in sent[index])
        assert [line for c in sent[index] for line in c.split(b"\n")] == expected


def test_take_chunks_keep_tail_holds_back_last_partial_datagram() -> None:
    router = Router(1, max_chunk_bytes=20)
    router.route(b"aaaa:1|c\nbbbb:1|c\ncccc:1|c")
    assert router.take_chunks(0, keep_tail=True) == [b"aaaa:1|c\nbbbb:1|c"]
    assert router.pending[0] == [b"cccc:1|c"]
    assert router.take_chunks(0, keep_tail=True) == []
    assert router.take_chunks(0, keep_tail=False) == [b"cccc:1|c"]
    assert routed(router) == [[]]


@pytest.mark.parametrize("module", ["common/shard.py", "common/auth.py", "proxy/routing.py",
                                    "proxy/membership.py", "proxy/config.py",
                                    "proxy/schedule.py"])
def test_core_module_imports_no_io(module: str) -> None:
    import ast
    from pathlib import Path

    source = (Path(__file__).resolve().parents[2] / module).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "socket", "time", "logging", "os", "asyncio"}, imported


@pytest.mark.parametrize(("packets", "refused", "expected"), [
    ([], [], (0, 0, {"bad_line": 0, "line_too_long": 0, "auth": 0})),
    ([b"a:1|c\nb:1|c"], [], (1, 2, {"bad_line": 0, "line_too_long": 0, "auth": 0})),
    ([b"a:1|c\nnocolon", b":1|c"], [], (2, 3, {"bad_line": 2, "line_too_long": 0, "auth": 0})),
    ([b"x" * 40 + b":1|c\na:1|c"], [], (1, 2, {"bad_line": 0, "line_too_long": 1, "auth": 0})),
    ([b"a:1|c"], [("line_too_long", 2), ("truncated", 1)],
     (1, 4, {"bad_line": 1, "line_too_long": 2, "auth": 0})),
])
def test_statistics_count_packets_lines_and_refusals_by_reason(
    packets: list[bytes], refused: list[tuple[str, int]],
    expected: tuple[int, int, dict[str, int]],
) -> None:
    router = Router(2, max_chunk_bytes=32)
    for packet in packets:
        router.route(packet)
    for reason, lines in refused:
        router.count_refused(reason, lines)
    stats = router.statistics()
    assert (stats.received_packets, stats.received_lines, stats.dropped_lines) == expected


def test_statistics_with_auth_count_refused_lines_as_received_and_dropped() -> None:
    router = Router(1, max_chunk_bytes=1432, auth=TokenAuth(["tok"], revoked=["old"]))
    router.route(b"tok.a:1|c\nold.b:1|c\nc:1|c\nx.d:1|c")
    stats = router.statistics()
    assert (stats.received_packets, stats.received_lines) == (1, 4)
    assert stats.dropped_lines == {"bad_line": 0, "line_too_long": 0, "auth": 3}


def test_statistics_is_a_snapshot_not_a_live_view() -> None:
    router = Router(1, max_chunk_bytes=1432)
    before = router.statistics()
    router.route(b"a:1|c\nnocolon")
    assert (before.received_lines, before.dropped_lines["bad_line"]) == (0, 0)
    assert router.statistics().received_lines == 2


def test_route_with_workers_sends_each_line_to_h1_then_h2_destination() -> None:
    router = Router(3, max_chunk_bytes=1432)
    assert router.set_workers(1, 4) == []
    lines = [f"name.{i}:{i}|c".encode() for i in range(300)]
    router.route_many(lines)
    assert router.destinations == [(0, MAIN), (1, 0), (1, 1), (1, 2), (1, 3), (2, MAIN)]
    for dest, pending in enumerate(router.pending):
        aggregator, worker = router.destinations[dest]
        for line in pending:
            name = line.split(b":")[0]
            assert shard_index(name, 3) == aggregator
            if worker != MAIN:
                assert worker_index(name, 4) == worker
    assert sum(map(len, router.pending)) == 300
    assert all(router.pending[dest] for dest in range(6))  # every worker got some


def test_set_workers_hands_back_pending_lines_for_where_they_were_batched() -> None:
    router = Router(2, max_chunk_bytes=1432)
    lines = [f"n{i}:1|c".encode() for i in range(50)]
    router.route_many(lines)
    mine = [line for line in lines if shard_index(line.split(b":")[0], 2) == 0]
    old = router.set_workers(0, 2)
    assert old == [(MAIN, [b"\n".join(mine)])]
    router.route_many(lines)  # after the change: to aggregator 0's two workers
    moved = router.set_workers(0, 0)
    assert sorted(worker for worker, _ in moved) == [0, 1]
    back = [line for _, chunks in moved for chunk in chunks for line in chunk.split(b"\n")]
    assert sorted(back) == sorted(mine)
    for _, chunks in moved:
        for chunk in chunks:
            assert router.worker_of_chunk(0, chunk) == MAIN  # W is 0 again
    assert router.destinations == [(0, MAIN), (1, MAIN)]


def test_worker_of_chunk_is_the_owner_of_its_first_line() -> None:
    router = Router(1, max_chunk_bytes=1432)
    router.set_workers(0, 8)
    for name, w, worker in GOLDEN_WORKER_VECTORS:
        if w == 8:
            assert router.worker_of_chunk(0, name + b":1|c\nother:2|c") == worker


@pytest.mark.parametrize("packets", [
    [b"a:1|c\n\nb:2|c", b"nocolon", b":1|c", b"x" * 120 + b":1|c\nc:1|c", b"\n"],
    [b"a:1|c", b"nocolon", b":1|c", b"", b"+++:1|c", b"b:2|c", b"a:3|c"],  # one line each
    [b"a:1|c", b"x" * 120 + b":1|c", b"b:1|c"],
])
def test_route_many_counts_like_route_for_each_packet(packets: list[bytes]) -> None:
    one, many = Router(2, max_chunk_bytes=100), Router(2, max_chunk_bytes=100)
    for packet in packets:
        one.route(packet)
    many.route_many(packets)
    assert one.statistics() == many.statistics()
    assert one.pending == many.pending


def test_reshard_routes_by_the_new_count_and_keeps_the_counters() -> None:
    router = Router(1, max_chunk_bytes=1432)
    router.set_workers(0, 2)
    names = [b"m%d" % i for i in range(40)]
    router.route(b"\n".join(name + b":1|c" for name in names) + b"\nbad")
    for index in range(len(router.destinations)):
        router.take_chunks(index, keep_tail=False)
    router.reshard(3)
    assert router.destinations == [(0, MAIN), (1, MAIN), (2, MAIN)]
    assert router.workers == [0, 0, 0]
    router.route(b"\n".join(name + b":2|c" for name in names))
    for index, lines in enumerate(router.pending):  # no cached route of the old count
        assert lines == [name + b":2|c" for name in names if shard_index(name, 3) == index]
    stats = router.statistics()
    assert (stats.received_packets, stats.received_lines) == (2, 81)
    assert stats.dropped_lines["bad_line"] == 1


def test_reshard_refuses_while_lines_are_pending() -> None:
    router = Router(2, max_chunk_bytes=1432)
    router.route(b"a:1|c")
    with pytest.raises(ValueError):
        router.reshard(3)
    with pytest.raises(ValueError):
        Router(1, max_chunk_bytes=1432).reshard(0)
