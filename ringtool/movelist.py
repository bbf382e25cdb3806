"""The moves of a rebalance, spooled to a temporary file between planning and executing.

Why a file: an agent streams its listing over one HTTP response, and its server gives up on
a client that stops reading for ``write_timeout_seconds`` (30 s). A rebalance limited by
``--rate`` takes hours, so the listing cannot wait for the workers: the inventories are
read at full speed once, each move written here (one compact JSON line, about 100 bytes),
and the workers read the moves back. Memory stays bounded (a batch of lines at a time); the
disk holds O(moves). The same pass gives the plan's totals (for the progress bar's ETA).

A line is ``{"n": name, "z": size, "s": source index, "t": [target indices], "k": 0|1}``
with nodes as indices into the sites list of the run (``k``: the source stays, a copy).

SHELL: file I/O in a worker thread, a batch of `BATCH_LINES` per call.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Sequence
from itertools import islice
from typing import IO, Final

import trio

from common.ring import CarbonNode

from .plan import Move

#: Lines per thread hop: large enough that the hop costs nothing per move, small enough to
#: keep a batch's memory to a few hundred KiB.
BATCH_LINES: Final = 2000


def encode_move(move: Move, index: dict[tuple[str, str | None], int]) -> str:
    """``move`` as one spool line (``index``: node identity -> site index)."""
    return json.dumps({"n": move.name, "z": move.size, "s": index[move.source.identity],
                       "t": [index[t.identity] for t in move.targets],
                       "k": int(move.source_stays)}, separators=(",", ":")) + "\n"


def decode_move(line: str, nodes: Sequence[CarbonNode]) -> Move:
    """The `Move` of a spool line written by `encode_move` for the same ``nodes``."""
    raw = json.loads(line)
    return Move(name=raw["n"], size=raw["z"], source=nodes[raw["s"]],
                targets=tuple(nodes[i] for i in raw["t"]), source_stays=bool(raw["k"]))


class MoveList:
    """An anonymous temporary file of moves: `add` them all, then `moves` reads them back.

    Use as a context manager (the file is closed, and so removed, on exit).
    """

    def __init__(self, nodes: Sequence[CarbonNode]) -> None:
        self._nodes = list(nodes)
        self._index = {node.identity: i for i, node in enumerate(self._nodes)}
        self._file: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8")
        self._batch: list[str] = []
        self.count = 0

    def __enter__(self) -> MoveList:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    async def add(self, move: Move) -> None:
        """Append ``move`` (written out a batch at a time)."""
        self._batch.append(encode_move(move, self._index))
        self.count += 1
        if len(self._batch) >= BATCH_LINES:
            await self._flush()

    async def _flush(self) -> None:
        batch, self._batch = self._batch, []
        await trio.to_thread.run_sync(self._file.writelines, batch)

    async def moves(self) -> AsyncIterator[Move]:
        """Every move added, in order (call once, after the last `add`)."""
        await self._flush()
        await trio.to_thread.run_sync(self._file.seek, 0)
        while True:
            lines = await trio.to_thread.run_sync(lambda: list(islice(self._file, BATCH_LINES)))
            if not lines:
                return
            for line in lines:
                yield decode_move(line, self._nodes)
