"""ringtool.whisperfile against the real whisper package: headers, which points count, and
strict refusal of corrupt files."""

from __future__ import annotations

import math
import struct

import pytest
import whisper
from hypothesis import given, settings
from hypothesis import strategies as st

from ringtool.whisperfile import (
    AGGREGATION_METHODS,
    METADATA,
    POINT,
    WhisperFormatError,
    aggregate,
    parse_header,
    read_archive,
    read_archives,
)
from support.whisperfiles import build, fetch_archives, info, series

NOW = 1_700_000_033  # deliberately not aligned to any step
SCHEMAS = [
    ((10, 12),),
    ((10, 12), (60, 10)),
    ((10, 6), (30, 8), (120, 6)),
    ((60, 10), (300, 12)),
    ((20, 9), (60, 10)),
]


def values_of(data: bytes, now: int) -> dict[int, list[tuple[int, float | None]]]:
    """Our reader's view in the shape of `fetch_archives`."""
    _, archives = read_archives(data, now=now)
    return {s.step: [(s.first + k * s.step, v) for k, v in enumerate(s.values)]
            for s in archives}


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("method", sorted(AGGREGATION_METHODS.values()))
def test_header_matches_whisper_info(schema: tuple[tuple[int, int], ...], method: str) -> None:
    data = build(schema, [], method=method, xff=0.25)
    header = parse_header(data)
    expected = info(data)
    assert header.aggregation == method == expected["aggregationMethod"]
    assert header.max_retention == expected["maxRetention"]
    assert header.x_files_factor == expected["xFilesFactor"]
    assert [(a.offset, a.seconds_per_point, a.points) for a in header.archives] == [
        (a["offset"], a["secondsPerPoint"], a["points"])
        for a in expected["archives"]]  # type: ignore[attr-defined]
    assert header.file_size == len(data)


_round = st.tuples(
    st.integers(0, 4000),  # how long before NOW the round is written
    st.lists(st.tuples(st.integers(0, 3700), st.one_of(
        st.just(0.0), st.integers(-5, 5).map(float),
        st.floats(-1e9, 1e9, allow_nan=False))), max_size=40))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SCHEMAS), st.lists(_round, min_size=1, max_size=3),
       st.integers(0, 900))
def test_reader_agrees_with_whisper_fetch(schema: tuple[tuple[int, int], ...],
                                          rounds: list[tuple[int, list[tuple[int, float]]]],
                                          later: int) -> None:
    """Rounds written at earlier nows leave stale laps and expired points; read at a later
    now, both readers see the same points (and a stored 0.0 as a value)."""
    max_retention = schema[-1][0] * schema[-1][1]
    built = []
    for before, points in sorted(rounds, key=lambda r: -r[0]):
        at = NOW - before
        built.append((at, [(at - age % max_retention, v) for age, v in points]))
    data = build(schema, built)
    for now in (NOW, NOW + later):
        assert values_of(data, now) == fetch_archives(data, now=now)


def test_zero_is_a_value_and_holes_are_none() -> None:
    data = series(((10, 6),), [0.0, None, 3.0, None, None, 0.0], now=NOW)
    (archive,) = read_archives(data, now=NOW)[1]
    assert archive.values == [0.0, None, 3.0, None, None, 0.0]
    assert archive.point_count() == 3


def test_never_written_archive_has_no_points_whatever_its_slots_hold() -> None:
    data = bytearray(build(((10, 6),), []))
    header = parse_header(bytes(data))
    offset = header.archives[0].offset
    last = NOW - NOW % 10
    # A timestamp in slot 2 that would be valid if slot 0 held a base.
    POINT.pack_into(data, offset + 2 * POINT.size, last, 5.0)
    (archive,) = read_archives(bytes(data), now=NOW)[1]
    assert archive.base == 0 and archive.values == [None] * 6
    assert fetch_archives(bytes(data), now=NOW)[10] == [(t, None) for t, _ in
                                                          values_of(bytes(data), NOW)[10]]


def test_stale_lap_and_expired_points_read_as_none() -> None:
    old = NOW - 45
    data = series(((10, 6),), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], now=old)
    (archive,) = read_archives(data, now=NOW)[1]
    # 45 s later, the window moved by 5 slots: only the newest old point remains.
    assert archive.values == [v for _, v in fetch_archives(data, now=NOW)[10]]
    assert archive.point_count() == 1
    assert archive.values[0] == 6.0


def test_future_points_do_not_count() -> None:
    data = series(((10, 6),), [1.0, 2.0, 3.0], now=NOW)
    header = parse_header(data)
    past = read_archive(data, header.archives[0], now=NOW - 10)
    assert past.point_count() == 2


# -- corrupt files ---------------------------------------------------------------------------

def valid_file() -> bytes:
    return series(((10, 12), (60, 10)), [1.0, None, 2.0], now=NOW)


def patched(data: bytes, offset: int, fmt: str, *values: float) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda d: b"", "truncated"),
    (lambda d: d[:10], "truncated"),
    (lambda d: d[:20], "truncated"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d + b"\0", "bad_size"),
    (lambda d: patched(d, 0, "!L", 9), "unknown_aggregation"),
    (lambda d: patched(d, 0, "!L", 0), "unknown_aggregation"),
    (lambda d: patched(d, 8, "!f", 1.5), "bad_xff"),
    (lambda d: patched(d, 8, "!f", math.nan), "bad_xff"),
    (lambda d: patched(d, 12, "!L", 0), "no_archives"),
    (lambda d: patched(d, 12, "!L", 1000), "truncated"),
    (lambda d: patched(d, 12, "!L", 1), "bad_offset"),
    (lambda d: patched(d, 16, "!L", 41), "bad_offset"),
    (lambda d: patched(d, 28, "!L", 1000), "bad_offset"),
    (lambda d: patched(d, 20, "!L", 0), "zero_step"),
    (lambda d: patched(d, 24, "!L", 0), "zero_points"),
    (lambda d: patched(d, 20, "!L", 60), "archives_not_ordered"),
    (lambda d: patched(d, 20, "!L", 120), "archives_not_ordered"),
    (lambda d: patched(d, 20, "!L", 25), "step_not_multiple"),
    (lambda d: patched(d, 36, "!L", 2), "retention_not_increasing"),
    (lambda d: patched(d, 4, "!L", 601), "bad_max_retention"),
])
def test_corrupt_header_is_refused_with_a_reason(mutate: object, reason: str) -> None:
    with pytest.raises(WhisperFormatError) as caught:
        parse_header(mutate(valid_file()))  # type: ignore[operator]
    assert caught.value.reason == reason


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_damage_is_refused_or_read_never_crashes(data: st.DataObject) -> None:
    good = valid_file()
    damaged = bytearray(good[:data.draw(st.integers(0, len(good) + 4))])
    for _ in range(data.draw(st.integers(0, 4))):
        if damaged:
            at = data.draw(st.integers(0, min(len(damaged), 64) - 1))
            damaged[at] = data.draw(st.integers(0, 255))
    try:
        header, archives = read_archives(bytes(damaged), now=NOW)
    except WhisperFormatError as error:
        assert error.reason
    else:
        assert header.file_size == len(damaged)
        assert len(archives) == len(header.archives)


def test_whisper_format_error_is_a_statsd_error_with_fields() -> None:
    from common.errors import StatsdError

    error = WhisperFormatError("truncated", "5 bytes").on("source")
    assert isinstance(error, StatsdError)
    assert (error.reason, error.detail, error.side) == ("truncated", "5 bytes", "source")
    assert "source truncated" in str(error)
    assert METADATA.size == 16


# -- aggregation -----------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(AGGREGATION_METHODS.values())),
       st.lists(st.one_of(st.none(), st.just(0.0), st.just(-0.0),
                          st.floats(-1e6, 1e6, allow_nan=False)), min_size=1, max_size=12))
def test_aggregate_is_whispers(method: str, neighbors: list[float | None]) -> None:
    known = [v for v in neighbors if v is not None]
    ours = aggregate(method, neighbors)
    if not known:
        assert ours is None
        return
    theirs = whisper.aggregate(method, known, neighbors)
    assert ours == theirs and math.copysign(1, ours) == math.copysign(1, theirs)


def test_aggregate_ties_and_avg_zero() -> None:
    assert aggregate("absmax", [-3.0, None, 3.0]) == -3.0
    assert aggregate("absmin", [2.0, -1.0, 1.0]) == -1.0
    assert aggregate("avg_zero", [4.0, None, None, 0.0]) == 1.0
    assert aggregate("last", [1.0, 2.0, None]) == 2.0
    with pytest.raises(ValueError, match="unknown"):
        aggregate("median", [1.0])
