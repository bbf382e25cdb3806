"""The line parser: valid and invalid lines, fed whole, byte by byte and with trailing garbage."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import ParseError
from common.framing import LineBuffer
from common.protocol import (
    COUNTER,
    GAUGE,
    GAUGE_DELTA,
    HISTOGRAM,
    SET,
    TIMER,
    LineParser,
    parse_number,
    sanitize_key,
)

VALID = [
    (b"a:1|c", [(COUNTER, b"a", 1.0, 1.0)]),
    (b"a:1|c|@0.1", [(COUNTER, b"a", 1.0, 0.1)]),
    (b"a:1|c|@1e-1", [(COUNTER, b"a", 1.0, 0.1)]),
    (b"a:1|c|@ 0.5", [(COUNTER, b"a", 1.0, 0.5)]),
    (b"a:1|c|@+0.5", [(COUNTER, b"a", 1.0, 0.5)]),
    (b"a:1|c|@2", [(COUNTER, b"a", 1.0, 2.0)]),
    (b"a:1|c|@0.5|extra", [(COUNTER, b"a", 1.0, 0.5)]),
    (b"a:1|c\r", [(COUNTER, b"a", 1.0, 1.0)]),
    (b"a:-1.5|c", [(COUNTER, b"a", -1.5, 1.0)]),
    (b"a:0x1F|c", [(COUNTER, b"a", 31.0, 1.0)]),
    (b"a:1e3|c", [(COUNTER, b"a", 1000.0, 1.0)]),
    (b"a: 5 |c", [(COUNTER, b"a", 5.0, 1.0)]),
    (b"g:7|g", [(GAUGE, b"g", 7.0, 1.0)]),
    (b"g:+7|g", [(GAUGE_DELTA, b"g", 7.0, 1.0)]),
    (b"g:-7|g", [(GAUGE_DELTA, b"g", -7.0, 1.0)]),
    (b"g: +7|g", [(GAUGE, b"g", 7.0, 1.0)]),
    (b"t:320|ms|@0.5", [(TIMER, b"t", 320.0, 0.5)]),
    (b"t:0|ms", [(TIMER, b"t", 0.0, 1.0)]),
    (b"t:-0|ms", [(TIMER, b"t", -0.0, 1.0)]),
    (b"h:-3|h", [(HISTOGRAM, b"h", -3.0, 1.0)]),
    (b"d:-3|d", [(HISTOGRAM, b"d", -3.0, 1.0)]),
    (b"d:2.5|d|@0.5|#env:prod", [(HISTOGRAM, b"d;env=prod", 2.5, 0.5)]),
    (b"d:1|d\r", [(HISTOGRAM, b"d", 1.0, 1.0)]),
    (b"s:alice|s", [(SET, b"s", b"alice", 1.0)]),
    (b"s:|s", [(SET, b"s", b"0", 1.0)]),
    (b"s:abc|s\r", [(SET, b"s", b"abc", 1.0)]),
    (b"m:1|c:2|c:3|ms", [(COUNTER, b"m", 1.0, 1.0), (COUNTER, b"m", 2.0, 1.0),
                         (TIMER, b"m", 3.0, 1.0)]),
    (b"r:1|c|#env:prod,az:b", [(COUNTER, b"r;env=prod;az=b", 1.0, 1.0)]),
    (b"r:1|c|#k:v;w;z", [(COUNTER, b"r;k=v_w;z", 1.0, 1.0)]),
    (b"r:1|c|#a:b:c", [(COUNTER, b"r;a=bc", 1.0, 1.0)]),
    (b"r:1|c|#flag", [(COUNTER, b"r;flag", 1.0, 1.0)]),
    (b"r:1|c|#", [(COUNTER, b"r", 1.0, 1.0)]),
    (b"r:1|c|#a:1|#b:2", [(COUNTER, b"r;a=1", 1.0, 1.0)]),
    (b"t7;x=y:1|c|#k:v", [(COUNTER, b"t7;x=y;k=v", 1.0, 1.0)]),
    (b"fo/o:1|c", [(COUNTER, b"fo-o", 1.0, 1.0)]),
    (b"multi   space:1|c", [(COUNTER, b"multi_space", 1.0, 1.0)]),
    ("ünï©ødé:1|c".encode(), [(COUNTER, b"nd", 1.0, 1.0)]),
    ("a\u00a0b:1|c".encode(), [(COUNTER, b"a_b", 1.0, 1.0)]),
    (b"__proto__:1|c", [(COUNTER, b"__proto__", 1.0, 1.0)]),
]

INVALID = [
    (b"nocolon", "missing_value"),
    (b"foo|c", "missing_value"),
    (b"a:1", "missing_type"),
    (b"a:1|x", "unknown_type"),
    (b"a:1|C", "unknown_type"),
    (b"a:1|MS", "unknown_type"),
    (b"a:1|", "unknown_type"),
    (b"a:1|c|0.5", "bad_sample_rate"),
    (b"a:1|c|@", "bad_sample_rate"),
    (b"a:1|c|@0", "bad_sample_rate"),
    (b"a:1|c|@-1", "bad_sample_rate"),
    (b"a:1|c|@abc", "bad_sample_rate"),
    (b"a:1|c|@Infinity", "bad_sample_rate"),
    (b"a:1|c|@nan", "bad_sample_rate"),
    (b"a:1|c|@0x1", "bad_sample_rate"),
    (b"a:abc|c", "bad_value"),
    (b"a:|c", "bad_value"),
    (b"a: |c", "bad_value"),
    (b"a:1_000|c", "bad_value"),
    (b"a:Infinity|g", "bad_value"),
    (b"a:NaN|g", "bad_value"),
    (b"a:1e400|g", "bad_value"),
    (b"a:1,5|c", "bad_value"),
    (b"a:-0x1F|c", "bad_value"),
    (b"t:-5|ms", "negative_timer"),
    (b"t:-5|ms\r", "negative_timer"),
    (b":2|c", "empty_key"),
    (b"+++:1|c", "empty_key"),
    (b";k=v:1|c", "empty_key"),
    (b"a:1|D", "unknown_type"),
    (b"_e{5,4}:title|text", "dogstatsd_event"),
    (b"_e{5,4}:title|text|d:1700000000|h:host|p:low|t:info|#k:v", "dogstatsd_event"),
    (b"_sc|db.up|0", "dogstatsd_service_check"),
    (b"_sc|db.up|2|d:1700000000|h:host|#k:v|m:down: since 10:00", "dogstatsd_service_check"),
]


@pytest.mark.parametrize(("line", "expected"), VALID)
def test_parse_line_returns_samples_for_valid_line(line: bytes, expected: list) -> None:
    samples, errors = LineParser().parse_line(line)
    assert errors == []
    assert samples == expected


@pytest.mark.parametrize(("line", "reason"), INVALID)
def test_parse_line_reports_reason_for_invalid_line(line: bytes, reason: str) -> None:
    samples, errors = LineParser().parse_line(line)
    assert samples == []
    assert [e.reason for e in errors] == [reason]
    assert errors[0].line == line


def test_parse_line_keeps_valid_segments_beside_bad_ones() -> None:
    samples, errors = LineParser().parse_line(b"k:1|c:oops|c:2|x:3|ms")
    assert samples == [(COUNTER, b"k", 1.0, 1.0), (TIMER, b"k", 3.0, 1.0)]
    assert [e.reason for e in errors] == ["bad_value", "unknown_type"]


def test_parse_line_refuses_line_over_limit() -> None:
    parser = LineParser(max_line_bytes=10)
    assert parser.parse_line(b"a:1|c")[1] == []
    assert [e.reason for e in parser.parse_line(b"abcdefgh:1|c")[1]] == ["line_too_long"]


def test_parse_line_without_sanitizing_keeps_raw_key() -> None:
    parser = LineParser(sanitize=False)
    assert parser.parse_line(b"fo/o bar:1|c")[0] == [(COUNTER, b"fo/o bar", 1.0, 1.0)]
    assert [e.reason for e in parser.parse_line(b"+++:1|c")[1]] == ["empty_key"]


def test_name_of_excludes_tags_and_merges_spellings() -> None:
    parser = LineParser()
    assert parser.name_of(b"a b:1|c") == parser.name_of(b"a_b:1|c") == b"a_b"
    assert parser.name_of(b"a\tb:1|c") == b"a_b"
    assert parser.name_of(b"req;env=prod:1|c") == b"req"
    assert parser.name_of(b"req:1|c|#env:prod") == b"req"
    assert parser.name_of(b"+++:1|c") == b""
    assert LineParser(sanitize=False).name_of(b"fo/o:1|c") == b"fo-o"


@pytest.mark.parametrize(("raw", "clean"), [
    (b"fo/o", b"fo-o"), (b"b ar", b"b_ar"), (b"foo+bar", b"foobar"), (b"a#b@c,d%e", b"abcde"),
    (b"tab\there", b"tab_here"), (b" lead", b"_lead"), (b"trail ", b"trail_"),
    (b"..dots..", b"..dots.."), (b"k;a=b", b"k;a=b"), ("ünï©ødé".encode(), b"nd"),
    (b"\xff\xfeab", b"ab"),
])
def test_sanitize_key_matches_etsy_table(raw: bytes, clean: bytes) -> None:
    assert sanitize_key(raw) == clean


def test_parse_number_reads_js_forms() -> None:
    assert parse_number(b"0x1f") == 31.0
    assert parse_number(b"0b101") == 5.0
    assert parse_number(b"0o17") == 15.0
    assert parse_number(b".5") == 0.5
    assert parse_number(b"5.") == 5.0
    assert parse_number(b"0x") is None
    assert parse_number(b"inf") is None


def _through_buffer(packet: bytes, chunk_size: int) -> list[bytes]:
    buffer = LineBuffer()
    blocks = []
    for i in range(0, len(packet), chunk_size):
        block = buffer.feed(packet[i : i + chunk_size])
        if block:
            blocks.append(block)
    tail = buffer.flush()
    return [line for b in [*blocks, tail] for line in b.split(b"\n") if line]


@pytest.mark.parametrize(("line", "expected"), VALID)
def test_valid_line_survives_byte_by_byte_framing_and_trailing_garbage(
        line: bytes, expected: list) -> None:
    parser = LineParser()
    stream = line.rstrip(b"\r") + b"\n" + b"garbage without newline"
    lines = _through_buffer(stream, 1)
    assert lines[0] == line.rstrip(b"\r")
    samples, errors = parser.parse_line(lines[0])
    assert errors == []
    assert samples == expected
    assert [e.reason for e in parser.parse_line(lines[1])[1]] == ["missing_value"]


@given(st.binary(max_size=300))
def test_parser_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    parser = LineParser(max_line_bytes=200)
    for line in data.split(b"\n"):
        samples, errors = parser.parse_line(line)
        assert all(isinstance(e, ParseError) for e in errors)
        for kind, key, value, rate in samples:
            assert key
            assert rate > 0 and math.isfinite(rate)
            if kind != SET:
                assert math.isfinite(value)  # type: ignore[arg-type]


_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=20)
_value = st.integers(min_value=0, max_value=10**9)


@given(_name, _value, st.sampled_from(["c", "g", "ms", "h", "d"]))
def test_parser_round_trips_generated_valid_lines(name: str, value: int, kind: str) -> None:
    line = f"{name}:{value}|{kind}".encode()
    samples, errors = LineParser().parse_line(line)
    assert errors == []
    assert len(samples) == 1
    assert samples[0][1] == name.encode()
    assert samples[0][2] == float(value)


def test_only_keys_of_lines_that_parse_are_cached() -> None:
    parser = LineParser()
    bad = [b"bad", b"k1:x|c", b"k2:1|q", b"k3:1|c|@0", b"k4:1", b"+++:1|c", b"_e{1,1}:a|b",
           b"_sc|a|0", b"k5:1|c|#t:1" + b"x" * 70_000]
    for line in bad:
        assert parser.parse_line(line)[0] == []
        assert parser.line_name(line) == b""
        parser.name_of(line)
    assert parser.keys == {} and parser.cached_bytes == 0
    assert parser.parse_line(b"k1:oops|c:1|c")[0] == [(COUNTER, b"k1", 1.0, 1.0)]
    assert parser.parse_line(b"a b:1|c|#t:1")[0] == [(COUNTER, b"a_b;t=1", 1.0, 1.0)]
    assert parser.keys == {b"k1": b"k1", b"a b:t:1": b"a_b;t=1"}
    assert parser.line_name(b"k6:1|c") == b"k6" and b"k6" in parser.keys


def test_key_cache_stays_within_its_byte_bound() -> None:
    parser = LineParser(cache_bytes=50_000)
    for i in range(1_000):
        key = b"%04d" % i + b"k" * 1_000
        assert parser.parse_line(key + b":1|c")[1] == []
        assert parser.cached_bytes <= 50_000
        assert parser.keys[key] == key  # the line just parsed is cached
    assert 0 < len(parser.keys) <= 50_000 // 1_000
    assert parser.cached_bytes == sum(83 + len(k) for k in parser.keys)
    nothing = LineParser(cache_bytes=0)
    nothing.parse_line(b"a:1|c")
    assert nothing.keys == {}


def test_key_cache_estimate_covers_what_entries_really_cost() -> None:
    import tracemalloc

    parser = LineParser()
    lines = [b"app.service%d.requests:1|c" % i for i in range(20_000)]
    lines += [b"app service%d:1|c" % i for i in range(20_000)]  # a stored key of its own
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for line in lines:
        parser.parse_line(line)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(parser.keys) == 40_000
    assert 0.7 * used <= parser.cached_bytes <= 1.3 * used
