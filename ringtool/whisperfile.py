"""The Whisper file format, read from bytes: header, archives and which stored points count.

Layout (whisper 1.1.10, all big-endian): a 16-byte metadata block ``!2LfL``
(aggregationType, maxRetention, xFilesFactor, archiveCount), one 12-byte ``!3L`` block per
archive (offset, secondsPerPoint, points), then each archive's ring buffer of 12-byte
``!Ld`` points (uint32 timestamp, float64 value), finest archive first, back to back.

**Which points count** (the rules whisper's own reader applies, so that our model and
``whisper.fetch`` agree):

* An archive whose first slot holds timestamp 0 has never been written: it has no points.
  Otherwise that timestamp is the archive's *base*: the slot of an aligned timestamp ``t``
  is ``((t - base) // step) % points``.
* A slot holds a point only when its stored timestamp is exactly the one that slot stands
  for; anything else is a stale leftover of an earlier lap and reads as "no point". There is
  no null marker: a stored 0.0 is a value.
* As of ``now`` an archive covers the ``points`` aligned timestamps ``t`` with
  ``now - retention < t <= now`` (what ``whisper.fetch`` returns for that archive); a slot
  counts only when its timestamp is among them, so a point older than the retention, or
  dated in the future, is no point.

`read_archive` turns one archive into a `Series`: its values in time order over that window,
one entry per step, ``None`` where there is no point. `parse_header` is strict, because the
merge writes into files at offsets it computes from the header: a truncated file, offsets
or sizes that do not add up, a zero step or point count, archives out of finest-first
order, an unknown aggregation type or an xFilesFactor outside [0, 1] raise
`WhisperFormatError` with a ``reason``.

Pure: bytes in, values out (the shell reads and writes the files).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from typing import Final

import attrs

from common.errors import StatsdError

METADATA: Final = struct.Struct("!2LfL")
ARCHIVE_INFO: Final = struct.Struct("!3L")
POINT: Final = struct.Struct("!Ld")
POINT_SIZE: Final = POINT.size

#: whisper's aggregationType numbers (whisper.aggregationTypeToMethod).
AGGREGATION_METHODS: Final = {
    1: "average", 2: "sum", 3: "last", 4: "max", 5: "min", 6: "avg_zero", 7: "absmax",
    8: "absmin",
}
#: The largest timestamp a point can hold (uint32).
MAX_TIMESTAMP: Final = 2**32 - 1


class WhisperFormatError(StatsdError):
    """A Whisper file that cannot be read safely (truncated, inconsistent, corrupt).

    Attributes:
        reason: a short snake_case name: ``truncated``, ``bad_size``, ``no_archives``,
            ``unknown_aggregation``, ``bad_xff``, ``zero_step``, ``zero_points``,
            ``bad_offset``, ``archives_not_ordered``, ``step_not_multiple``,
            ``retention_not_increasing``, ``bad_max_retention``.
        detail: what was found, for people.
        side: ``"source"`` or ``"destination"`` when a merge knows which file it was, else
            None.
    """

    def __init__(self, reason: str, detail: str = "", *, side: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.side = side
        text = f"{side} {reason}" if side else reason
        if detail:
            text += f": {detail}"
        super().__init__(text)

    def on(self, side: str) -> WhisperFormatError:
        """The same error, saying which file of a merge it was about."""
        return WhisperFormatError(self.reason, self.detail, side=side)


@attrs.frozen
class ArchiveInfo:
    """One archive's entry in the header."""

    offset: int
    seconds_per_point: int
    points: int

    @property
    def retention(self) -> int:
        """Seconds covered: step times points."""
        return self.seconds_per_point * self.points

    @property
    def size(self) -> int:
        """Bytes of the archive's ring buffer."""
        return self.points * POINT_SIZE

    def window(self, now: int) -> tuple[int, int]:
        """The oldest and newest timestamp this archive covers as of ``now``."""
        step = self.seconds_per_point
        last = now - now % step
        return last - (self.points - 1) * step, last


@attrs.frozen
class Header:
    """A parsed, validated Whisper header."""

    aggregation_type: int
    max_retention: int
    x_files_factor: float
    archives: tuple[ArchiveInfo, ...]

    @property
    def aggregation(self) -> str:
        """The aggregation method's whisper name (``average``, ``sum``, ...)."""
        return AGGREGATION_METHODS[self.aggregation_type]

    @property
    def file_size(self) -> int:
        """The size a file with this header has."""
        last = self.archives[-1]
        return last.offset + last.size


@attrs.frozen(eq=False)
class Series:
    """One archive's points as of ``now``, in time order.

    Attributes:
        archive: the archive.
        first: the timestamp of ``values[0]``; entry ``j`` is ``first + j * step``.
        values: one per slot of the window, None where the slot holds no point.
        base: the timestamp in the archive's first slot (0: never written).
        first_index: the ring slot of ``first`` (meaningless when ``base`` is 0).
    """

    archive: ArchiveInfo
    first: int
    values: list[float | None]
    base: int
    first_index: int

    @property
    def step(self) -> int:
        """Seconds per point."""
        return self.archive.seconds_per_point

    def slot_offset(self, j: int) -> int:
        """The file offset of window entry ``j`` (only when ``base`` is not 0)."""
        archive = self.archive
        return archive.offset + ((self.first_index + j) % archive.points) * POINT_SIZE

    def point_count(self) -> int:
        """How many slots hold a point."""
        return len(self.values) - self.values.count(None)


def parse_header(data: bytes | memoryview) -> Header:
    """The header of a Whisper file, checked against the file's size.

    Args:
        data: the whole file.

    Returns:
        The header; every archive lies inside ``data``, back to back after the header.

    Raises:
        WhisperFormatError: for anything whisper.create would not have written.
    """
    size = len(data)
    if size < METADATA.size:
        raise WhisperFormatError("truncated", f"{size} bytes, no room for the metadata")
    aggregation_type, max_retention, xff, count = METADATA.unpack_from(data, 0)
    if aggregation_type not in AGGREGATION_METHODS:
        raise WhisperFormatError("unknown_aggregation", f"aggregationType {aggregation_type}")
    if not 0.0 <= xff <= 1.0:
        raise WhisperFormatError("bad_xff", f"xFilesFactor {xff}")
    if count == 0:
        raise WhisperFormatError("no_archives", "archiveCount 0")
    header_size = METADATA.size + count * ARCHIVE_INFO.size
    if size < header_size:
        raise WhisperFormatError("truncated", f"{size} bytes, {count} archives need "
                                              f"{header_size} for the header")
    archives = tuple(ArchiveInfo(*fields) for fields in
                     ARCHIVE_INFO.iter_unpack(memoryview(data)[METADATA.size:header_size]))
    expected_offset = header_size
    previous: ArchiveInfo | None = None
    for number, archive in enumerate(archives):
        _check_archive(number, archive, previous, expected_offset)
        expected_offset = archive.offset + archive.size
        previous = archive
    if max_retention != archives[-1].retention:
        raise WhisperFormatError("bad_max_retention", f"maxRetention {max_retention}, the "
                                 f"coarsest archive keeps {archives[-1].retention}")
    if size != expected_offset:
        reason = "truncated" if size < expected_offset else "bad_size"
        raise WhisperFormatError(reason, f"{size} bytes, the header describes "
                                         f"{expected_offset}")
    return Header(aggregation_type, max_retention, xff, archives)


def _check_archive(number: int, archive: ArchiveInfo, previous: ArchiveInfo | None,
                   expected_offset: int) -> None:
    step = archive.seconds_per_point
    if step == 0:
        raise WhisperFormatError("zero_step", f"archive {number}: secondsPerPoint 0")
    if archive.points == 0:
        raise WhisperFormatError("zero_points", f"archive {number}: points 0")
    if archive.offset != expected_offset:
        raise WhisperFormatError("bad_offset", f"archive {number}: offset {archive.offset}, "
                                               f"expected {expected_offset}")
    if previous is None:
        return
    if step <= previous.seconds_per_point:
        raise WhisperFormatError("archives_not_ordered", f"archive {number}: step {step} after "
                                 f"{previous.seconds_per_point}")
    if step % previous.seconds_per_point:
        raise WhisperFormatError("step_not_multiple", f"archive {number}: step {step} is no "
                                 f"multiple of {previous.seconds_per_point}")
    if archive.retention <= previous.retention:
        raise WhisperFormatError("retention_not_increasing", f"archive {number}: retention "
                                 f"{archive.retention} after {previous.retention}")


def read_archive(data: bytes | memoryview, archive: ArchiveInfo, *, now: int) -> Series:
    """One archive's points as of ``now`` (see the module docstring for which count).

    Args:
        data: the whole file (already checked by `parse_header`).
        archive: one of its archives.
        now: unix seconds; decides the archive's window.

    Returns:
        The archive's window in time order.
    """
    step, points = archive.seconds_per_point, archive.points
    first, last = archive.window(now)
    view = memoryview(data)[archive.offset:archive.offset + archive.size]
    base = POINT.unpack_from(view, 0)[0]
    if base == 0:
        return Series(archive, first, [None] * points, 0, 0)
    first_index = ((first - base) // step) % points
    split = first_index * POINT_SIZE
    stored = itertools.chain(POINT.iter_unpack(view[split:]), POINT.iter_unpack(view[:split]))
    expected = range(first, last + 1, step)
    values = [value if stamp == want else None
              for (stamp, value), want in zip(stored, expected, strict=True)]
    return Series(archive, first, values, base, first_index)


def read_archives(data: bytes | memoryview, *, now: int) -> tuple[Header, list[Series]]:
    """The header and every archive of a file, as of ``now``.

    Raises:
        WhisperFormatError: for a file `parse_header` refuses.
    """
    header = parse_header(data)
    return header, [read_archive(data, archive, now=now) for archive in header.archives]


def aggregate(method: str, neighbors: Sequence[float | None]) -> float | None:
    """What whisper's propagation computes from one interval's finer points.

    Args:
        method: a whisper aggregation method name.
        neighbors: the finer slots of the interval in time order, None where unknown.

    Returns:
        The aggregate, or None when no point is known. (The xFilesFactor check is the
        caller's.) Each method is whisper 1.1.10's ``aggregate``: the mean, sum, last, max or
        min of the known points; ``avg_zero`` the mean over every slot with unknown ones as 0;
        ``absmax``/``absmin`` the first known point of largest/smallest magnitude.
    """
    known = [value for value in neighbors if value is not None]
    if not known:
        return None
    if method == "average":
        return float(sum(known)) / float(len(known))
    if method == "sum":
        return float(sum(known))
    if method == "last":
        return known[-1]
    if method == "max":
        return max(known)
    if method == "min":
        return min(known)
    if method == "avg_zero":
        return float(sum(value or 0.0 for value in neighbors)) / float(len(neighbors))
    if method == "absmax":
        return max(known, key=abs)
    if method == "absmin":
        return min(known, key=abs)
    raise ValueError(f"unknown aggregation method {method!r}")


def pack_point(timestamp: int, value: float) -> bytes:
    """One stored point."""
    return POINT.pack(timestamp, value)
