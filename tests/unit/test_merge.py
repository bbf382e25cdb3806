"""ringtool.merge on Whisper files written by the real whisper package, checked against an
independent model built from ``whisper.fetch`` and ``whisper.aggregate``."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pytest
import whisper
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ringtool.merge import (
    MergeResult,
    Verification,
    WhisperFormatError,
    apply_writes,
    copy_result,
    plan_merge,
    verify_merge,
)
from ringtool.whisperfile import POINT, parse_header
from support.whisperfiles import Round, Schema, build, fetch_archives, info, series

NOW = 1_700_000_033  # deliberately not aligned to any step
METHODS = ["average", "sum", "last", "max", "min", "avg_zero", "absmax", "absmin"]
SCHEMAS: list[Schema] = [
    ((10, 12),),
    ((10, 12), (60, 10)),
    ((10, 6), (30, 8), (120, 6)),
    ((60, 10), (300, 12)),
    ((20, 9), (60, 10)),
    ((300, 12),),
    ((10, 40), (120, 30)),
]
Archives = dict[int, list[tuple[int, float | None]]]


# -- the model ---------------------------------------------------------------------------------

def model(src: bytes, dst: bytes, now: int) -> tuple[Archives, MergeResult]:
    """What the merge should leave in ``dst`` and count, from whisper's reader alone."""
    theirs, mine = fetch_archives(src, now=now), fetch_archives(dst, now=now)
    meta = info(dst)
    method, xff = str(meta["aggregationMethod"]), float(meta["xFilesFactor"])  # type: ignore[arg-type]
    lookup = {step: dict(points) for step, points in theirs.items()}
    out: Archives = {}
    filled = same = conflicts = 0
    for step, points in mine.items():
        merged = []
        for t, have in points:
            offered = lookup.get(step, {}).get(t)
            if offered is None:
                offered = resampled(theirs, lookup, step, t, method, xff)
            if offered is not None and have is None:
                filled += 1
                have = offered
            elif offered is not None:
                same += have == offered
                conflicts += have != offered
            merged.append((t, have))
        out[step] = merged
    skipped = 0
    for step, points in theirs.items():
        for t, value in points:
            if value is None:
                continue
            kept = any(t >= d[0][0] for d in mine.values())
            taken = any(t >= d[0][0] for s, d in mine.items() if s % step == 0)
            finer = any(t >= p[0][0] for s, p in theirs.items() if s < step)
            skipped += kept and not taken and not finer
    return out, MergeResult(created=False, filled=filled, conflicts=conflicts, same=same,
                            skipped_coarse=skipped)


def resampled(theirs: Archives, lookup: dict[int, dict[int, float | None]], step: int, t: int,
              method: str, xff: float) -> float | None:
    """whisper's propagation of the finest source archive that divides ``step`` and covers t."""
    for fine in sorted(s for s in theirs if s < step and step % s == 0):
        if t < theirs[fine][0][0]:
            continue
        neighbors = [lookup[fine].get(t + k * fine) for k in range(step // fine)]
        known = [v for v in neighbors if v is not None]
        if known and float(len(known)) / float(len(neighbors)) >= xff:
            return float(whisper.aggregate(method, known, neighbors))
        return None
    return None


def merged(src: bytes, dst: bytes, now: int = NOW) -> tuple[bytes, MergeResult]:
    plan = plan_merge(src, dst, now=now)
    return apply_writes(dst, plan.writes), plan.result


def newest(data: bytes, step: int, count: int, now: int = NOW) -> list[float | None]:
    return [v for _, v in fetch_archives(data, now=now)[step][-count:]]


# -- properties --------------------------------------------------------------------------------

_value = st.one_of(st.just(0.0), st.integers(-5, 5).map(float),
                   st.floats(-1e9, 1e9, allow_nan=False))


@attrs.frozen
class Spec:
    """A generated file: its schema, write rounds, method and xFilesFactor."""

    schema: Schema
    rounds: list[Round]
    method: str
    xff: float

    def build(self) -> bytes:
        return build(self.schema, self.rounds, method=self.method, xff=self.xff)


@st.composite
def whisper_spec(draw: st.DrawFn, schema: Schema | None = None) -> Spec:
    schema = schema or draw(st.sampled_from(SCHEMAS))
    max_retention = schema[-1][0] * schema[-1][1]
    rounds: list[Round] = []
    for before in sorted(draw(st.lists(st.integers(0, 100) | st.integers(0, 3000), min_size=1,
                                       max_size=3)),
                         reverse=True):
        at = NOW - before
        if draw(st.booleans()):  # dense: every finest slot, with holes
            step, count = schema[0]
            holes = draw(st.lists(st.booleans(), min_size=count, max_size=count))
            value = draw(_value)
            points = [(at - k * step, value + k) for k, hole in enumerate(holes) if not hole]
        else:
            points = [(at - age % max_retention, v) for age, v in draw(
                st.lists(st.tuples(st.integers(0, 4000), _value), max_size=30))]
        rounds.append((at, points))
    return Spec(schema, rounds, draw(st.sampled_from(METHODS)),
                draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])))


@st.composite
def sibling(draw: st.DrawFn, spec: Spec) -> Spec:
    """A file like ``spec``'s with some points dropped and some changed (the same series on
    two nodes), under the same schema and possibly another method."""
    rounds: list[Round] = []
    for at, points in spec.rounds:
        kept = [(t, v + 1 if draw(st.integers(0, 9)) == 0 else v)
                for t, v in points if draw(st.booleans())]
        rounds.append((at, kept))
    return Spec(spec.schema, rounds, draw(st.sampled_from([spec.method, *METHODS])),
                spec.xff)


def check_merge(src: bytes, dst: bytes, now: int = NOW) -> MergeResult:
    """Every property of one merge; returns its result."""
    plan = plan_merge(src, dst, now=now)
    after = apply_writes(dst, plan.writes)
    header_size = parse_header(dst).archives[0].offset
    assert all(offset >= header_size for offset, _ in plan.writes)
    assert len(after) == len(dst)
    expected, counts = model(src, dst, now)
    assert fetch_archives(after, now=now) == expected
    assert plan.result == counts
    before, theirs = fetch_archives(dst, now=now), fetch_archives(src, now=now)
    for step, points in before.items():  # no destination point changes
        got = dict(expected[step])
        assert all(got[t] == v for t, v in points if v is not None)
        if step in theirs:  # every same-step source point is there or a conflict
            had = dict(points)
            for t, v in theirs[step]:
                if v is not None and t in got:
                    assert got[t] == v or (had[t] is not None and had[t] != v)
    again = plan_merge(src, after, now=now)
    assert again.writes == [] and again.result.filled == 0
    assert verify_merge(src, after, now=now) == Verification(
        present=counts.same + counts.filled, conflicts=counts.conflicts, missing=0)
    if plan.writes:
        assert not verify_merge(src, dst, now=now).ok
    return plan.result


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_same_schema_merge_matches_the_model(data: st.DataObject) -> None:
    src = data.draw(whisper_spec())
    related = data.draw(st.booleans())
    dst = data.draw(sibling(src) if related else whisper_spec(src.schema))
    result = check_merge(src.build(), dst.build(), now=NOW + data.draw(st.integers(0, 200)))
    assert result.skipped_coarse == 0
    record(result, "sibling" if related else "unrelated")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(whisper_spec(), whisper_spec(), st.integers(0, 200))
def test_any_schemas_merge_matches_the_model(src: Spec, dst: Spec, later: int) -> None:
    record(check_merge(src.build(), dst.build(), now=NOW + later),
           "same schema" if src.schema == dst.schema else "other schema")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(whisper_spec(), st.sampled_from(SCHEMAS), st.sampled_from(METHODS),
       st.sampled_from([0.0, 0.5, 1.0]), st.integers(0, 60))
def test_history_into_a_fresh_file_of_another_schema(src: Spec, schema: Schema, method: str,
                                                     xff: float, since: int) -> None:
    """The new owner's carbon created the file from its own schema and wrote the points of
    the last ``since`` seconds; the old owner's history fills the rest."""
    fresh = [(NOW - age, float(age)) for age in range(0, since, 10)]
    dst = build(schema, [(NOW, fresh)], method=method, xff=xff)
    record(check_merge(src.build(), dst), "fresh")


def record(result: MergeResult, kind: str) -> None:
    """What the example exercised (``--hypothesis-show-statistics``)."""
    event(kind)
    for name, count in result.to_json().items():
        if name != "created":
            event(f"{kind}: {name} {'> 0' if count else '= 0'}")


# -- the cases that matter, by hand ------------------------------------------------------------

TABLE_DST: Sequence[float | None] = [10, 11, 12, None, 14, None, None, None, 1.0, 0.0]


@pytest.mark.parametrize("schema", [((10, 10),), ((10, 10), (60, 10))])
def test_research_table_case_fills_only_holes(schema: Schema) -> None:
    """carbon.md 3.2: carbonate gives [100, 11, 12, 103, 104, ...] and whisper-fill.py
    [100, 11, 12, None, 14, ...]; ours fills the holes and nothing else."""
    dst = series(schema, TABLE_DST, now=NOW)
    src = series(schema, [100.0 + k for k in range(10)], now=NOW)
    after, result = merged(src, dst)
    assert newest(after, 10, 10) == [10, 11, 12, 103, 14, 105, 106, 107, 1.0, 0.0]
    if len(schema) == 1:
        assert (result.filled, result.conflicts, result.same) == (4, 6, 0)
    check_merge(src, dst)


def test_one_slot_holes_and_zeros() -> None:
    dst = series(((10, 8),), [0.0, None, 0.0, None, 0.0, None, 0.0, None], now=NOW)
    src = series(((10, 8),), [5.0] * 8, now=NOW)
    after, result = merged(src, dst)
    assert newest(after, 10, 8) == [0.0, 5.0, 0.0, 5.0, 0.0, 5.0, 0.0, 5.0]
    assert (result.filled, result.conflicts, result.same) == (4, 4, 0)


def test_identical_files_write_nothing() -> None:
    data = series(((10, 12), (60, 10)), [1.0, None, 2.0, 3.0], now=NOW)
    plan = plan_merge(data, data, now=NOW)
    assert plan.writes == []
    assert plan.result.same == parse_points(data) and plan.result.filled == 0


def parse_points(data: bytes) -> int:
    return sum(v is not None for points in fetch_archives(data, now=NOW).values()
               for _, v in points)


def test_fresh_destination_takes_everything() -> None:
    src = series(((10, 12), (60, 10)), [float(k) for k in range(12)], now=NOW)
    dst = build(((10, 12), (60, 10)), [])
    after, result = merged(src, dst)
    assert fetch_archives(after, now=NOW) == fetch_archives(src, now=NOW)
    assert result.filled == parse_points(src)


def test_leftovers_in_a_never_written_archive_stay_invisible() -> None:
    dst = bytearray(build(((10, 6),), []))
    offset = parse_header(bytes(dst)).archives[0].offset
    last = NOW - NOW % 10
    for slot in range(1, 6):  # stamps that would be valid under the base the merge picks
        POINT.pack_into(dst, offset + slot * POINT.size, last - 50 + slot * 10, 99.0)
    src = series(((10, 6),), [1.0, None, None, None, None, None], now=NOW)
    after, _ = merged(src, bytes(dst))
    assert newest(after, 10, 6) == [1.0, None, None, None, None, None]
    check_merge(src, bytes(dst))


def test_stale_destination_slot_counts_as_a_hole() -> None:
    dst = series(((10, 6),), [7.0] * 6, now=NOW - 30)  # three slots are a lap old now
    src = series(((10, 6),), [1.0] * 6, now=NOW)
    after, result = merged(src, dst)
    assert newest(after, 10, 6) == [7.0, 7.0, 7.0, 1.0, 1.0, 1.0]
    assert (result.filled, result.conflicts) == (3, 3)


def test_finer_source_is_resampled_with_the_destinations_method() -> None:
    src = series(((10, 36),), [float(k) for k in range(36)], now=NOW, method="average")
    dst = build(((60, 10),), [], method="sum", xff=0.5)
    after, result = merged(src, dst)
    first = NOW - NOW % 10 - 350  # the source's oldest slot (value 0), on a minute
    assert first % 60 == 0
    got = {t: v for t, v in fetch_archives(after, now=NOW)[60] if v is not None}
    assert got == {first + 60 * m: float(sum(range(6 * m, 6 * m + 6))) for m in range(6)}
    assert result.filled == 6 and result.skipped_coarse == 0
    check_merge(src, dst)


def test_newest_interval_partly_in_the_future_is_resampled_when_xff_allows() -> None:
    """Three of the newest minute's six 10 s slots are past. The minute before the source's
    oldest slot is only partly covered (its first points expired, they were not holes), so
    it is not resampled however many points remain."""
    now = NOW - NOW % 60 + 25
    src = series(((10, 12),), [1.0] * 12, now=now)
    for xff, expected in ((0.5, [None, 6.0, 3.0]), (0.6, [None, 6.0, None])):
        dst = build(((60, 5),), [], method="sum", xff=xff)
        after, result = merged(src, dst, now)
        assert newest(after, 60, 3, now) == expected
        assert result.filled == 3 - expected.count(None)
        check_merge(src, dst, now)


def test_xff_refuses_thin_intervals() -> None:
    src = series(((10, 12),), [1.0, None, None, None, None, None] * 2, now=NOW - NOW % 60 + 59)
    dst = build(((60, 2),), [], method="average", xff=0.5)
    assert plan_merge(src, dst, now=NOW - NOW % 60 + 59).result.filled == 0
    lenient = build(((60, 2),), [], method="average", xff=0.1)
    assert plan_merge(src, lenient, now=NOW - NOW % 60 + 59).result.filled == 2


def test_coarse_source_never_fills_a_fine_archive() -> None:
    src = series(((300, 12),), [float(k) for k in range(12)], now=NOW)
    dst = build(((60, 60),), [])
    after, result = merged(src, dst)
    assert after == dst and result.filled == 0
    assert result.skipped_coarse == 12  # the hour of 5-minute points the 60s archive spans
    check_merge(src, dst)


def test_copy_result_counts_the_sources_points() -> None:
    src = series(((10, 12), (60, 10)), [1.0, None, 0.0], now=NOW)
    assert copy_result(src, now=NOW) == MergeResult(
        created=True, filled=parse_points(src), conflicts=0, same=0, skipped_coarse=0)


def test_results_to_json() -> None:
    result = MergeResult(created=False, filled=1, conflicts=2, same=3, skipped_coarse=4)
    assert result.to_json() == {"created": False, "filled": 1, "conflicts": 2, "same": 3,
                                "skipped_coarse": 4}
    bad = Verification(present=1, conflicts=0, missing=2)
    assert not bad.ok
    assert bad.to_json() == {"present": 1, "conflicts": 0, "missing": 2, "ok": False}


# -- corrupt input -----------------------------------------------------------------------------

GOOD = series(((10, 12), (60, 10)), [1.0, 2.0], now=NOW)


@pytest.mark.parametrize("bad", [b"", GOOD[:15], GOOD[:40], GOOD[:-12], GOOD + b"x",
                                 b"\0" * len(GOOD)])
@pytest.mark.parametrize("side", ["source", "destination"])
def test_corrupt_file_is_reported_with_its_side(bad: bytes, side: str) -> None:
    src, dst = (bad, GOOD) if side == "source" else (GOOD, bad)
    for call in (plan_merge, verify_merge):
        with pytest.raises(WhisperFormatError) as caught:
            call(src, dst, now=NOW)
        assert caught.value.side == side and caught.value.reason
    with pytest.raises(WhisperFormatError):
        copy_result(bad, now=NOW)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=80), st.integers(0, len(GOOD)))
@example(b"\0\0\0\1", 0)
def test_garbage_never_escapes_as_another_error(noise: bytes, at: int) -> None:
    damaged = GOOD[:at] + noise + GOOD[at + len(noise):]
    try:
        plan = plan_merge(damaged, GOOD, now=NOW)
    except WhisperFormatError as error:
        assert error.side == "source"
    else:
        assert plan.result.created is False
