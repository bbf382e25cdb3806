"""Worker ledgers' pure parts: ownership split and exchange messages."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aggregator.ledger import Accumulator, LedgerOptions
from aggregator.workers.codec import (
    DATA_HEADER_BYTES,
    MAX_MESSAGE_BYTES,
    Splitter,
    data_line_count,
    decode_data,
    decode_mark,
    decode_stats,
    encode_mark,
    encode_stats,
    pack_data,
)
from common.protocol import DEFAULT_KEY_CACHE_BYTES, LineParser
from common.shard import worker_index


def test_marks_and_stats_round_trip() -> None:
    assert decode_mark(encode_mark(3, 1_700_000_010, 5, 100, 2)) == (3, 1_700_000_010, 5, 100, 2)
    assert decode_stats(encode_stats(1, 1_700_000_010, 77)) == (1, 1_700_000_010, 77)


def test_split_sends_each_line_to_its_owner_and_keeps_unusable_lines() -> None:
    splitter = Splitter(LineParser(), 0, 3)
    packet = b"a:1|c\nb:2|c\n\nc:3|ms\n+++:1|c\nbad line\na b:1|c\na_b:1|c|#k:v"
    own, foreign, count = splitter.split(packet)
    assert count == 7
    placed: dict[int, list[bytes]] = {0: own.split(b"\n") if own else [], **foreign}
    for owner, lines in placed.items():
        for line in lines:
            name = LineParser().name_of(line)
            assert owner == (worker_index(name, 3) if name else 0), line
    assert b"+++:1|c" in placed[0] and b"bad line" in placed[0]
    owners = {o for o, lines in placed.items() for line in lines
              if line.startswith((b"a b", b"a_b"))}
    assert len(owners) == 1  # one Graphite path, one owner, tags or not


@given(st.lists(st.text(alphabet="abcdefghij.", min_size=1, max_size=8), min_size=1, max_size=40),
       st.integers(min_value=1, max_value=5), st.integers(min_value=0, max_value=4))
def test_split_loses_and_duplicates_nothing(names: list[str], workers: int, me: int) -> None:
    me %= workers
    lines = [f"{n}:1|c".encode() for n in names]
    own, foreign, count = Splitter(LineParser(), me, workers).split(b"\n".join(lines))
    out = (own.split(b"\n") if own else []) + [x for v in foreign.values() for x in v]
    assert count == len(lines)
    assert sorted(out) == sorted(lines)
    assert me not in foreign


@given(st.lists(st.integers(min_value=1, max_value=300), max_size=60),
       st.integers(min_value=DATA_HEADER_BYTES + 1, max_value=400))
def test_pack_data_bounds_every_message_and_keeps_every_line(sizes: list[int],
                                                             limit: int) -> None:
    lines = [f"{i}:".encode().ljust(size, b"x")[:size] for i, size in enumerate(sizes)]
    messages, oversized = pack_data(3, lines, limit)
    assert all(len(m) <= limit for m in messages)
    sent = []
    for message in messages:
        sender, count, payload = decode_data(message)
        assert sender == 3 and count == data_line_count(message) == len(payload.split(b"\n"))
        sent += payload.split(b"\n")
    assert oversized == [x for x in lines if len(x) > limit - DATA_HEADER_BYTES]
    assert sent == [x for x in lines if len(x) <= limit - DATA_HEADER_BYTES]


def test_pack_data_cuts_a_burst_into_full_messages() -> None:
    lines = [b"burst.n%05d:1|c" % i for i in range(100_000)]  # 1.6 MB
    messages, oversized = pack_data(0, lines)
    assert not oversized
    assert all(len(m) <= MAX_MESSAGE_BYTES for m in messages)
    assert all(len(m) > MAX_MESSAGE_BYTES - 20 for m in messages[:-1])  # no tiny messages
    assert sum(data_line_count(m) for m in messages) == len(lines)


def test_the_owner_cache_is_bounded_in_bytes() -> None:
    """Long unique valid names (up to ``max_line_bytes``) cannot make the owner cache
    hold a million entries of 60 KiB: the bound is in bytes, by the parser's estimate."""
    limit = 1024 * 1024
    splitter = Splitter(LineParser(), 0, 3, cache_bytes=limit)
    for i in range(100):  # 6 MB of unique names
        name = b"long.%06d." % i + b"x" * 60_000
        own, foreign, _ = splitter.split(name + b":1|c")
        assert (0 if own else next(iter(foreign))) == worker_index(name, 3)  # still right
        held = sum(len(k) for k in splitter._owners)
        assert held <= splitter.cached_bytes <= limit
    assert splitter._owners  # it still caches what fits
    short = Splitter(LineParser(), 0, 3)
    assert short.cache_bytes == DEFAULT_KEY_CACHE_BYTES


_LINES = st.lists(st.tuples(
    st.sampled_from([b"a", b"b", b"c.d", b"a b", b"a_b", b"e/f", b"+++", b"\xc3\xa9x", b"g"]),
    st.sampled_from([b":1|c", b":2|c|@0.5", b":3|ms", b":-1|ms", b":4|g", b":+1|g", b":u|s",
                     b":5|h", b":1|c|#k:v", b":x|c", b"", b":1|c:2|ms", b":7|d"]),
).map(b"".join), min_size=1, max_size=30)


@given(st.lists(_LINES, min_size=1, max_size=4), st.integers(min_value=2, max_value=4),
       st.integers(min_value=0, max_value=3))
def test_the_fused_path_aggregates_what_one_worker_would(packets: list[list[bytes]],
                                                         workers: int, me: int) -> None:
    """One worker reads every packet through `Accumulator.ingest_sharded`, each owner
    aggregates what it is forwarded: together they hold exactly what one worker holds, each
    name at one worker, and each parser's key cache holds only its worker's names."""
    check_fused_path(packets, workers, me)


_COUNTER_LINES = st.lists(st.tuples(
    st.sampled_from([b"a", b"b", b"c.d", b"a b", b"a_b", b"e/f", b"\xc3\xa9x", b"g", b"h"]),
    st.sampled_from([b":1|c"] * 6 + [b":2|c", b":0.5|c", b":1e300|c", b":1|c|@0.5",
                                       b":x|c", b"", b":1|g"]),
).map(b"".join), min_size=1, max_size=30)


@given(st.lists(_COUNTER_LINES, min_size=1, max_size=4), st.integers(min_value=2, max_value=4),
       st.integers(min_value=0, max_value=3))
def test_the_fused_path_of_counter_packets_aggregates_what_one_worker_would(
        packets: list[list[bytes]], workers: int, me: int) -> None:
    """As above, with packets of counters only (the whole-packet path of
    `aggregator.ingest`, foreign names included), a bad line now and then."""
    check_fused_path(packets, workers, me)


def check_fused_path(packets: list[list[bytes]], workers: int, me: int) -> None:
    me %= workers
    one = Accumulator(LedgerOptions())
    many = [Accumulator(LedgerOptions(report_internal=i == 0)) for i in range(workers)]
    splitter = Splitter(many[me].parser, me, workers, checked=many[me].ingest_checked)
    split_check = Splitter(LineParser(), me, workers)
    lines_read = 0
    for _ in range(2):  # the second round takes the inline paths
        for lines in packets:
            packet = b"\n".join(lines)
            one.ingest(packet)
            lines_read += many[me].ingest_sharded(packet, splitter.foreign, splitter.route)
            by_owner = dict(splitter.take_pending())
            _, split_foreign, _ = split_check.split(packet)
            assert by_owner == split_foreign  # the same owners as the split path
            for owner, forwarded in by_owner.items():
                assert owner != me
                many[owner].ingest(b"\n".join(forwarded), intake=False)
    assert lines_read == one.ledger.lines
    for i, worker in enumerate(many[1:], start=1):
        many[0].add_intake(*worker.take_intake())
        assert all(worker_index(LineParser().name_of(raw), workers) == i
                   for raw in worker.parser.keys)
    assert all(worker_index(LineParser().name_of(raw), workers) == me
               for raw in many[me].parser.keys)
    single = one.swap(10, 10.0)
    parts = [w.swap(10, 10.0) for w in many]
    for field in ("counters", "timer_counts", "sets", "gauges"):
        merged: dict[bytes, object] = {}
        for part in parts:
            got = getattr(part, field)
            assert not merged.keys() & got.keys() - {b"statsd.timestamp_lag"}
            merged.update(got)
        assert merged == getattr(single, field), field
    assert {k: list(v) for p in parts for k, v in p.timers.items()} == {
        k: list(v) for k, v in single.timers.items()}
    assert sum(w.bad_lines_total for w in many) == one.bad_lines_total
