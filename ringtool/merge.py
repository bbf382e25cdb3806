"""Merging one Whisper file's history into another: which source points go where.

`plan_merge` compares a source file with a destination file (both as bytes) and returns the
writes that bring the source's points into the destination, plus what they did;
`verify_merge` runs the same comparison afterwards and reports any source point the
destination still lacks. The rules (docs/rebalance.md, "Merge semantics"):

1. **The destination's points win.** A destination slot that holds a point keeps it; a stored
   0.0 is a value like any other (StatsD counters flush many zeros), not a hole. Where both
   files have a point they are counted ``same`` or ``conflicts`` and nothing is written.
2. **Every hole is filled**, one-slot holes included, and only holes: the first point after a
   hole is never touched (no fence post). A slot counts as a hole when whisper would read no
   point there: never written, or holding a stale point of an earlier lap, or outside the
   archive's retention as of ``now`` (see `ringtool.whisperfile`).
3. **Each destination archive is merged from the source archive of the same step.** A slot
   that archive has no point for (or, with different schemas, when the source has no archive
   of that step) is filled from the *finest* source archive whose step divides the
   destination's step and which covers the slot's time, by aggregating the source points in
   ``[t, t + step)`` with the *destination's* aggregation method and only when
   known/total >= the destination's xFilesFactor: exactly what whisper's own propagation
   would have computed had those points been written into the destination
   (`ringtool.whisperfile.aggregate`). A coarser source archive is never used to fill a
   finer destination archive (that would write one aggregate as many fine points and corrupt
   sums); a source point only such an archive holds is counted in ``skipped_coarse``.
4. **Writes set the timestamp** with the value, so whisper reads the slot as valid. In an
   archive never written before (its first slot holds timestamp 0) the whole ring buffer is
   written at once, laid out from the first point written, so no stale leftover can turn
   valid under the new base.

Nothing is propagated from a filled fine archive into the destination's coarser archives:
those are merged from the source's coarser archives by the same rules, which already hold
the aggregates. (A coarse destination slot that carbon had already aggregated from a few
fresh points keeps that value: rule 1.)

A merge is idempotent: the second run finds no hole the source can fill, so it writes
nothing and counts ``filled == 0``. `verify_merge` is that second run, counting instead of
writing.

Pure: bytes in, writes out (`ringtool.mergefile` does the locking and the I/O).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import attrs

from ringtool.whisperfile import (
    POINT_SIZE,
    Series,
    WhisperFormatError,
    aggregate,
    pack_point,
    read_archives,
)

__all__ = ["MergePlan", "MergeResult", "Verification", "WhisperFormatError", "apply_writes",
           "copy_result", "plan_merge", "verify_merge"]

#: One write into the destination: file offset, bytes.
Write = tuple[int, bytes]
_EMPTY_POINT = bytes(POINT_SIZE)


@attrs.frozen
class MergeResult:
    """What a merge did (or, from `plan_merge`, will do once its writes are applied).

    Attributes:
        created: the destination did not exist and was written as a copy of the source
            (``filled`` then counts the source's points).
        filled: destination slots that took the source's point.
        conflicts: slots where both files have a point and the values differ (destination's
            kept).
        same: slots where both files have the same point.
        skipped_coarse: source points not written because only a coarser archive than the
            destination keeps for their time had them.
    """

    created: bool
    filled: int
    conflicts: int
    same: int
    skipped_coarse: int

    def to_json(self) -> dict[str, int | bool]:
        """The fields, for the agent's JSON answers."""
        return attrs.asdict(self)


@attrs.frozen
class Verification:
    """After a merge: is every source point in the destination?

    Attributes:
        present: source points found with the same value.
        conflicts: source points where the destination has a different value.
        missing: source points the destination lacks (0 after a merge).
    """

    present: int
    conflicts: int
    missing: int

    @property
    def ok(self) -> bool:
        """True when no source point is missing."""
        return self.missing == 0

    def to_json(self) -> dict[str, int | bool]:
        """The fields and ``ok``, for the agent's JSON answers."""
        return {"present": self.present, "conflicts": self.conflicts, "missing": self.missing,
                "ok": self.ok}


class MergePlan(NamedTuple):
    """`plan_merge`'s answer: the writes (offset, bytes) for the destination, in offset
    order and not overlapping, and what they do."""

    writes: list[Write]
    result: MergeResult


@attrs.define
class _Counts:
    filled: int = 0
    conflicts: int = 0
    same: int = 0


def plan_merge(src: bytes, dst: bytes, *, now: int) -> MergePlan:
    """The writes that merge ``src``'s points into ``dst`` (rules in the module docstring).

    Args:
        src: the source file.
        dst: the destination file, as read under the lock the writes will be made under.
        now: unix seconds; decides which slots are inside each archive's retention.

    Returns:
        The writes and the counts; no writes when there is nothing to fill.

    Raises:
        WhisperFormatError: when either file is corrupt (``side`` says which); nothing should
            then be written.
    """
    return _merge(src, dst, now=now, with_writes=True)


def verify_merge(src: bytes, dst: bytes, *, now: int) -> Verification:
    """Whether every point of ``src`` is in ``dst`` (or ``dst`` has its own value there).

    Raises:
        WhisperFormatError: when either file is corrupt (``side`` says which).
    """
    result = _merge(src, dst, now=now, with_writes=False).result
    return Verification(present=result.same, conflicts=result.conflicts, missing=result.filled)


def copy_result(src: bytes, *, now: int) -> MergeResult:
    """What creating a missing destination as a copy of ``src`` does.

    Raises:
        WhisperFormatError: when ``src`` is corrupt.
    """
    try:
        _, series = read_archives(src, now=now)
    except WhisperFormatError as error:
        raise error.on("source") from None
    filled = sum(archive.point_count() for archive in series)
    return MergeResult(created=True, filled=filled, conflicts=0, same=0, skipped_coarse=0)


def apply_writes(data: bytes, writes: list[Write]) -> bytes:
    """``data`` with ``writes`` applied (what the shell's pwrites do to the file)."""
    out = bytearray(data)
    for offset, chunk in writes:
        out[offset:offset + len(chunk)] = chunk
    return bytes(out)


def _merge(src: bytes, dst: bytes, *, now: int, with_writes: bool) -> MergePlan:
    try:
        _, src_series = read_archives(src, now=now)
    except WhisperFormatError as error:
        raise error.on("source") from None
    try:
        dst_header, dst_series = read_archives(dst, now=now)
    except WhisperFormatError as error:
        raise error.on("destination") from None
    counts = _Counts()
    writes: list[Write] = []
    for archive in dst_series:
        offered = _offered(archive, src_series, dst_header.aggregation,
                           dst_header.x_files_factor)
        fills = _compare(archive.values, offered, counts)
        if with_writes and fills:
            writes.extend(_archive_writes(archive, fills))
    writes.sort()
    result = MergeResult(created=False, filled=counts.filled, conflicts=counts.conflicts,
                         same=counts.same,
                         skipped_coarse=_skipped_coarse(src_series, dst_series))
    return MergePlan(writes, result)


def _offered(dst: Series, sources: list[Series], method: str,
             xff: float) -> list[float | None]:
    """What the source offers for each slot of the destination archive ``dst``."""
    step, count = dst.step, len(dst.values)
    offered: list[float | None] = [None] * count
    for source in sources:
        if source.step == step:
            # Both windows end at the same slot (same step, same now).
            shift = (dst.first - source.first) // step
            if shift >= 0:
                offered = source.values[shift:]
            else:
                offered[-shift:] = source.values
            break
    finer = [source for source in sources
             if source.step < step and step % source.step == 0]
    end = count
    for source in finer:  # finest (shortest window) first
        start = max(0, min(end, _ceil_div(source.first - dst.first, step)))
        _fill_from_finer(dst, source, offered, start, end, method, xff)
        end = start
    return offered


def _fill_from_finer(dst: Series, source: Series, offered: list[float | None], start: int,
                     end: int, method: str, xff: float) -> None:
    """Aggregate ``source`` into the slots ``start:end`` the same-step archive left empty."""
    ratio = dst.step // source.step
    values = source.values
    for j in range(start, end):
        if offered[j] is not None:
            continue
        index = (dst.first + j * dst.step - source.first) // source.step
        neighbors = values[index:index + ratio]
        known = len(neighbors) - neighbors.count(None)
        if known == 0 or float(known) / float(ratio) < xff:
            continue
        neighbors.extend([None] * (ratio - len(neighbors)))  # slots in the future
        offered[j] = aggregate(method, neighbors)


def _compare(have: list[float | None], offered: list[float | None],
             counts: _Counts) -> list[tuple[int, float]]:
    """Count same/conflicts and return the holes the source fills (index, value)."""
    fills: list[tuple[int, float]] = []
    same = conflicts = 0
    for j, (mine, theirs) in enumerate(zip(have, offered, strict=True)):
        if theirs is None:
            continue
        if mine is None:
            fills.append((j, theirs))
        elif mine == theirs or (math.isnan(mine) and math.isnan(theirs)):
            same += 1
        else:
            conflicts += 1
    counts.filled += len(fills)
    counts.same += same
    counts.conflicts += conflicts
    return fills


def _archive_writes(dst: Series, fills: list[tuple[int, float]]) -> list[Write]:
    """The writes that put ``fills`` into the archive, coalesced into contiguous runs."""
    archive, step, first = dst.archive, dst.step, dst.first
    if dst.base == 0:
        # Never written: lay the ring out from the first fill (it becomes the base) and
        # write all of it, clearing whatever leftovers the buffer held.
        start = fills[0][0]
        records = [_EMPTY_POINT] * archive.points
        for j, value in fills:
            records[(j - start) % archive.points] = pack_point(first + j * step, value)
        return [(archive.offset, b"".join(records))]
    # Fills come in time order: each run of consecutive slots is one write, or two where
    # it wraps around the end of the ring buffer.
    writes: list[Write] = []
    start = 0
    for end in range(1, len(fills) + 1):
        if end < len(fills) and fills[end][0] == fills[end - 1][0] + 1:
            continue
        run = fills[start:end]
        room = archive.points - (dst.first_index + run[0][0]) % archive.points
        for part in (run[:room], run[room:]):
            if part:
                writes.append((dst.slot_offset(part[0][0]), b"".join(
                    [pack_point(first + j * step, value) for j, value in part])))
        start = end
    return writes


def _skipped_coarse(sources: list[Series], dsts: list[Series]) -> int:
    """Source points whose time the destination keeps only in finer archives (or ones whose
    step is no multiple of theirs), and that no finer source archive covers."""
    covered_from = min(dst.first for dst in dsts)  # the destination keeps times >= this
    skipped = 0
    finer_from: int | None = None  # a finer source archive covers times >= this
    for source in sources:
        bounds = [dst.first for dst in dsts if dst.step % source.step == 0]
        if finer_from is not None:
            bounds.append(finer_from)
        lo = max(0, _ceil_div(covered_from - source.first, source.step))
        hi = len(source.values)
        if bounds:
            hi = min(hi, max(0, _ceil_div(min(bounds) - source.first, source.step)))
        if hi > lo:
            window = source.values[lo:hi]
            skipped += len(window) - window.count(None)
        finer_from = source.first if finer_from is None else min(finer_from, source.first)
    return skipped


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
