"""What a ring change moves: per Whisper file held by a node, stay, move or copy.

Rules, for a file ``name`` held by node H (read from H's real inventory, so stray copies left
by earlier moves or by a relay that placed differently are found like any other), with OLD
and NEW rings; nodes are compared by their ring identity ``(host, instance)``:

1. H is not among NEW's owners of ``name``: a **move** from H to each NEW owner. The source
   copy is deleted afterwards (by ``rebalance --delete-source``, once every owner verified).
   A node only in OLD is drained this way: none of its files has it as an owner.
2. H is a NEW owner and NEW names owners that were not OLD owners (the replication factor was
   raised, or a node joined a replica set): a **copy** from H to each of them that is not H.
   H keeps its copy. Each OLD owner that is still a NEW owner offers a copy; the merge on the
   destination is idempotent, so the second one costs a transfer and changes nothing.
3. Otherwise the file **stays**.

Every decision is made from one file and the two rings, so an inventory is planned while it
is streamed: memory is the tally, O(node pairs), never O(files). `plan_inventory` yields the
moves and copies of one node's inventory and counts what stays; `PlanTally.summary` gives
files and bytes per (source, target) pair and per staying node.

The same rules with OLD = NEW are ``check``'s: a file on a node that is not among its
owners is misplaced (rule 1), rule 2 never fires.

Pure: no I/O, clock or logging. The inventories come from the agents (`ringtool.rebalance`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import attrs

from common.ring import CarbonNode, Ring


class HeldFile(Protocol):
    """One entry of a node's inventory (`ringtool.client.FileEntry` is one)."""

    @property
    def name(self) -> str:
        """The metric name (``a.b.c`` for ``a/b/c.wsp``)."""

    @property
    def size(self) -> int:
        """The file's size in bytes."""


@attrs.frozen
class Move:
    """One file to transfer from ``source`` into each of ``targets``.

    Attributes:
        name: the metric name.
        size: the source file's size in bytes (as listed).
        source: the node holding it.
        targets: the NEW owners to merge it into, in ring order (primary first).
        source_stays: True for a copy (the source is a NEW owner: never deleted), False for
            a move (the source copy is deleted once every target verified, if asked).
    """

    name: str
    size: int
    source: CarbonNode
    targets: tuple[CarbonNode, ...]
    source_stays: bool = False

    @property
    def kind(self) -> str:
        """``"copy"`` or ``"move"``."""
        return "copy" if self.source_stays else "move"

    def to_json(self) -> dict[str, Any]:
        """The move as one ``plan --json`` line's ``move`` object."""
        return {"name": self.name, "size": self.size, "kind": self.kind,
                "source": str(self.source), "targets": [str(t) for t in self.targets]}


def plan_file(name: str, size: int, holder: CarbonNode, *, old: Ring, new: Ring) -> Move | None:
    """The transfer the file ``name`` on ``holder`` needs, or None when it stays.

    Args:
        name: the metric name of the file.
        size: its size in bytes.
        holder: the node it is on.
        old: the ring that placed it (decides copies only, rule 2).
        new: the ring it must end up on.

    Returns:
        A `Move` (rule 1), a copy (rule 2: ``source_stays``), or None (rule 3).
    """
    owners = new.nodes_for(name)
    if all(owner.identity != holder.identity for owner in owners):
        return Move(name=name, size=size, source=holder, targets=owners)
    before = {node.identity for node in old.nodes_for(name)}
    if holder.identity not in before:
        return None  # a stray already in place: the OLD owners offer the copies
    joined = tuple(owner for owner in owners
                   if owner.identity not in before and owner.identity != holder.identity)
    if not joined:
        return None
    return Move(name=name, size=size, source=holder, targets=joined, source_stays=True)


@attrs.frozen
class PairTotal:
    """Files and bytes going from ``source`` to ``target``."""

    source: CarbonNode
    target: CarbonNode
    files: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"source": str(self.source), "target": str(self.target),
                "files": self.files, "bytes": self.bytes}


@attrs.frozen
class NodeTotal:
    """Files and bytes that stay on ``node``."""

    node: CarbonNode
    files: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"node": str(self.node), "files": self.files, "bytes": self.bytes}


@attrs.frozen
class PlanSummary:
    """The whole plan in figures.

    Attributes:
        files: files listed by every node together.
        moves: files moving (source not a NEW owner), one per (file, holder).
        copies: files copied to new replicas (source stays).
        transfer_files: (file, target) transfers of moves and copies together.
        transfer_bytes: their bytes (each file's size once per target).
        pairs: per (source, target), in first-seen order.
        stays: per node holding files that stay, in first-seen order.
    """

    files: int
    moves: int
    copies: int
    transfer_files: int
    transfer_bytes: int
    pairs: tuple[PairTotal, ...]
    stays: tuple[NodeTotal, ...]

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "moves": self.moves, "copies": self.copies,
                "transfer_files": self.transfer_files, "transfer_bytes": self.transfer_bytes,
                "pairs": [p.to_json() for p in self.pairs],
                "stays": [s.to_json() for s in self.stays]}


@attrs.define
class PlanTally:
    """The running totals of a plan (mutable; one per plan, fed by `plan_inventory`)."""

    files: int = 0
    moves: int = 0
    copies: int = 0
    _pairs: dict[tuple[CarbonNode, CarbonNode], list[int]] = attrs.field(factory=dict)
    _stays: dict[CarbonNode, list[int]] = attrs.field(factory=dict)

    def count_stay(self, holder: CarbonNode, size: int) -> None:
        """One file of ``size`` bytes stays on ``holder``."""
        self.files += 1
        total = self._stays.setdefault(holder, [0, 0])
        total[0] += 1
        total[1] += size

    def count_move(self, move: Move) -> None:
        """One file is moved or copied as ``move`` says."""
        self.files += 1
        if move.source_stays:
            self.copies += 1
        else:
            self.moves += 1
        for target in move.targets:
            total = self._pairs.setdefault((move.source, target), [0, 0])
            total[0] += 1
            total[1] += move.size

    def summary(self) -> PlanSummary:
        """A frozen snapshot of the totals."""
        pairs = tuple(PairTotal(source=s, target=t, files=f, bytes=b)
                      for (s, t), (f, b) in self._pairs.items())
        stays = tuple(NodeTotal(node=n, files=f, bytes=b) for n, (f, b) in self._stays.items())
        return PlanSummary(files=self.files, moves=self.moves, copies=self.copies,
                           transfer_files=sum(p.files for p in pairs),
                           transfer_bytes=sum(p.bytes for p in pairs),
                           pairs=pairs, stays=stays)


def plan_inventory(holder: CarbonNode, entries: Iterable[HeldFile], *, old: Ring, new: Ring,
                   tally: PlanTally) -> Iterator[Move]:
    """The moves and copies of one node's inventory, one file at a time.

    Args:
        holder: the node whose inventory ``entries`` is.
        entries: its files (name and size each), consumed lazily.
        old: the ring before the change.
        new: the ring after it.
        tally: counts every file (stays included).

    Yields:
        Each `Move`, as soon as its file is read.
    """
    for entry in entries:
        move = plan_file(entry.name, entry.size, holder, old=old, new=new)
        if move is None:
            tally.count_stay(holder, entry.size)
        else:
            tally.count_move(move)
            yield move


def format_move(move: Move) -> str:
    """One text line of ``plan``: ``move NAME SOURCE -> TARGET[,TARGET] SIZE``."""
    targets = ",".join(str(t) for t in move.targets)
    return f"{move.kind}\t{move.name}\t{move.source} -> {targets}\t{move.size}"


def format_summary(summary: PlanSummary) -> list[str]:
    """The closing lines of ``plan``: totals, then per pair, then what stays."""
    lines = [f"files {summary.files}: {summary.moves} move, {summary.copies} copy, "
             f"{summary.files - summary.moves - summary.copies} stay; "
             f"{summary.transfer_files} transfers, {summary.transfer_bytes} bytes"]
    lines += [f"  {p.source} -> {p.target}: {p.files} files, {p.bytes} bytes"
              for p in summary.pairs]
    lines += [f"  stays on {s.node}: {s.files} files, {s.bytes} bytes" for s in summary.stays]
    return lines
