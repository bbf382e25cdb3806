"""Whisper files written and read by the real ``whisper`` package, for the merge's tests.

The tests build their inputs with ``whisper.create`` + ``whisper.update_many`` (the same
writer carbon uses) and check results with ``whisper.fetch``, so the reference for what a
file holds is whisper's own reader, never ``ringtool.whisperfile``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import whisper

#: A schema: (secondsPerPoint, points) per archive, finest first.
Schema = Sequence[tuple[int, int]]
#: One round of writes: the ``now`` they are written at, and (timestamp, value) points.
Round = tuple[int, Sequence[tuple[int, float]]]


def build(schema: Schema, rounds: Iterable[Round], *, method: str = "average",
          xff: float = 0.5) -> bytes:
    """The bytes of a file created with ``schema`` and written round by round."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "m.wsp")
        whisper.create(path, list(schema), xFilesFactor=xff, aggregationMethod=method)
        for now, points in rounds:
            if points:
                whisper.update_many(path, [(int(t), float(v)) for t, v in points], now=now)
        return Path(path).read_bytes()


def series(schema: Schema, values: Sequence[float | None], *, now: int,
           method: str = "average", xff: float = 0.5) -> bytes:
    """A file whose finest archive holds ``values`` on its newest slots (oldest first, None
    for a hole), written at ``now`` (whisper propagates them to the coarser archives)."""
    step = schema[0][0]
    last = now - now % step
    first = last - (len(values) - 1) * step
    points = [(first + k * step, value) for k, value in enumerate(values) if value is not None]
    return build(schema, [(now, points)], method=method, xff=xff)


def fetch_archives(data: bytes, *, now: int) -> dict[int, list[tuple[int, float | None]]]:
    """Each archive's window as ``whisper.fetch`` reads it as of ``now``: step -> the
    (timestamp, value) of every slot, oldest first."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "m.wsp")
        Path(path).write_bytes(data)
        out: dict[int, list[tuple[int, float | None]]] = {}
        for archive in whisper.info(path)["archives"]:
            step = archive["secondsPerPoint"]
            fetched = whisper.fetch(path, now - archive["retention"], now, now=now,
                                    archiveToSelect=step)
            assert fetched is not None
            (start, _end, got_step), values = fetched
            assert got_step == step
            out[step] = [(start + k * step, value) for k, value in enumerate(values)]
        return out


def info(data: bytes) -> dict[str, object]:
    """``whisper.info`` of the file."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "m.wsp")
        Path(path).write_bytes(data)
        result: dict[str, object] = whisper.info(path)
        return result
