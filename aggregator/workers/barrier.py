"""The flush barrier between workers, as a state machine: events in, decisions out.

Each flush is a barrier (`aggregator.workers.codec` describes the messages): a worker marks
the flush to every peer, waits (boundedly) for every peer's mark, swaps its ledger, then
worker 0 waits for every peer's name count. `Barrier` holds what that needs, and nothing
else: the shell (`aggregator.workers.exchange`) tells it what happened (lines read here,
lines, marks and name counts received, a flush begun, swapped, rendered, the final flush
coming) and applies what it answers. Most answers are an `Admit`: blocks of lines to
aggregate now and intake counts to add now; whatever is not admitted is held here until
the event that admits it.

The rules:

1. Between its mark and its swap a worker's own lines belong to the next interval: they
   are held, with their intake counts, and admitted by `end_swap`.
2. Lines a peer sent after its mark for a flush this worker has still to swap belong to
   the next interval too: they are deferred until this worker's swap of that flush. Lines
   sent after the mark of a flush this worker never had (it started late, or skipped it)
   are in the interval now open and are admitted at once.
3. Gauges are never held (the last value set is the gauge's value, whatever the
   interval): they are admitted at once, in the order they were read.
4. A mark or a name count arriving after its flush's wait is over is late. A late mark's
   intake counts (and those of marks of flushes this worker skipped) go into the interval
   now open, on worker 0; a late name count is replaced by the peer's latest one.
5. From `finish` on (the final flush) nothing is held: there is no next interval.

It also keeps the count the supervisor's shared record needs: the lines this worker took
in (read, or received) that are in no rendered flush yet.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, TypeAlias

import attrs

from .codec import split_gauges

#: Intake counts: (packets, lines, bad lines).
Intake: TypeAlias = tuple[int, int, int]
NO_INTAKE: Final[Intake] = (0, 0, 0)


@attrs.frozen
class Admit:
    """What the shell applies to the ledger now: aggregate ``lines`` (blocks of lines,
    in order, not counted as intake here), then add ``intake``."""

    lines: tuple[bytes, ...] = ()
    intake: Intake = NO_INTAKE


_NOTHING = Admit()


@attrs.frozen
class Closed:
    """The end of a wait: what to admit, and how many peers' messages did not come."""

    admit: Admit
    missing: int


def _sum_intake(counts: Sequence[Intake]) -> Intake:
    return (sum(c[0] for c in counts), sum(c[1] for c in counts), sum(c[2] for c in counts))


class Barrier:
    """One worker's side of the flush barrier.

    Args:
        index: this worker's number (worker 0 reports the intake and the name total).
        peers: the other workers' numbers.
    """

    def __init__(self, index: int, peers: Sequence[int]) -> None:
        self.index = index
        self.peers = tuple(peers)
        #: Marks and name counts received for flushes whose wait is not over, by flush
        #: then sender.
        self._marks: dict[int, dict[int, Intake]] = {}
        self._names: dict[int, dict[int, int]] = {}
        #: The last flush whose wait for marks / name counts is over.
        self._marks_closed = -1
        self._names_closed = -1
        #: Each peer's latest name count (for when its count for a flush is late).
        self._last_names: dict[int, int] = {}
        #: Each peer's latest mark whose flush this worker has not swapped yet.
        self._open_marks: dict[int, int] = {}
        #: The flush this worker is in or about to start (-1 before its first).
        self._pending = -1
        #: Peers' lines sent after their mark for a flush, with that flush.
        self._deferred: list[tuple[int, bytes]] = []
        #: Own lines read between this worker's mark and its swap (None: not in a flush).
        self._held: list[bytes] | None = None
        self._held_packets = 0
        self._held_lines = 0
        self._finishing = False
        #: Lines taken in since start; how many of them are in rendered flushes; where
        #: the last swap cut.
        self._taken = 0
        self._rendered_upto = 0
        self._swap_base = 0

    @property
    def holding(self) -> bool:
        """Whether own lines are held now (between this worker's mark and its swap)."""
        return self._held is not None and not self._finishing

    @property
    def unrendered_lines(self) -> int:
        """Lines taken in here that no rendered flush holds yet (lost if killed now)."""
        return self._taken - self._rendered_upto

    # Lines --------------------------------------------------------------------------------
    def read_own(self, own: bytes, packets: int, lines: int) -> Admit:
        """This worker read ``packets`` datagrams of ``lines`` lines; ``own`` are the ones
        it aggregates itself (the others it forwards)."""
        self._taken += lines
        if self._held is None or self._finishing:
            return Admit((own,) if own else (), (packets, lines, 0))
        self._held_packets += packets
        self._held_lines += lines
        if not own:
            return _NOTHING
        gauges, rest = split_gauges(own)
        if rest:
            self._held.append(rest)
        return Admit((gauges,)) if gauges else _NOTHING

    def read_inline(self, lines: int) -> None:
        """This worker read and aggregated (or forwarded) ``lines`` lines itself while
        nothing was held (the fused path; their intake counts went to the ledger)."""
        assert self._held is None or self._finishing, "own lines are held: read_own decides"
        self._taken += lines

    def receive_lines(self, sender: int, lines: int, payload: bytes) -> Admit:
        """A peer forwarded ``lines`` lines (``payload``) for this worker to aggregate."""
        self._taken += lines
        after = self._open_marks.get(sender, -1)
        if after > self._marks_closed and after >= self._pending and not self._finishing:
            gauges, rest = split_gauges(payload)
            if rest:
                self._deferred.append((after, rest))
            return Admit((gauges,)) if gauges else _NOTHING
        return Admit((payload,))

    # Marks and name counts ----------------------------------------------------------------
    def receive_mark(self, sender: int, flush: int, intake: Intake) -> Admit:
        """A peer's mark of ``flush``, with its intake counts since its previous mark."""
        if flush > self._marks_closed:
            self._marks.setdefault(flush, {})[sender] = intake
            self._open_marks[sender] = max(flush, self._open_marks.get(sender, -1))
            return _NOTHING
        # Its flush went ahead without this mark (the peer was slow): worker 0 counts the
        # peer's intake in the interval now open rather than lose it.
        return Admit((), intake) if self.index == 0 else _NOTHING

    def receive_names(self, sender: int, flush: int, names: int) -> None:
        """A peer's number of reported names after its swap of ``flush``."""
        self._last_names[sender] = names
        if flush > self._names_closed:
            self._names.setdefault(flush, {})[sender] = names

    def marks_in(self, flush: int) -> bool:
        """Whether every peer's mark of ``flush`` is here."""
        return len(self._marks.get(flush, ())) >= len(self.peers)

    def names_in(self, flush: int) -> bool:
        """Whether every peer's name count for ``flush`` is here."""
        return len(self._names.get(flush, ())) >= len(self.peers)

    # The flush ----------------------------------------------------------------------------
    def begin_flush(self, flush: int) -> Admit:
        """This worker marks ``flush``: from now its own lines are held. Admits what was
        deferred after marks of flushes it never had."""
        self._pending = flush
        admit = self._release(lambda after: after < flush)
        self._held = []
        return admit

    def close_marks(self, flush: int) -> Closed:
        """The wait for ``flush``'s marks is over (all came, or time ran out). Worker 0
        admits the intake of the marks that came and of marks of flushes it skipped."""
        got = self._marks.pop(flush, {})
        counts = list(got.values())
        for old in [f for f in self._marks if f < flush]:
            counts.extend(self._marks.pop(old).values())
        self._marks_closed = flush
        intake = _sum_intake(counts) if self.index == 0 else NO_INTAKE
        return Closed(Admit((), intake), len(self.peers) - len(got))

    def end_swap(self, flush: int) -> Admit:
        """This worker swapped its ledger for ``flush``: admit, in the interval just
        opened, its own lines held since its mark and peers' lines deferred after theirs."""
        deferred_lines = sum(payload.count(b"\n") + 1 for _, payload in self._deferred)
        self._swap_base = self._taken - self._held_lines - deferred_lines
        held, self._held = self._held or [], None
        intake = (self._held_packets, self._held_lines, 0)
        self._held_packets = self._held_lines = 0
        released = self._release(lambda after: after <= flush)
        self._open_marks = {p: f for p, f in self._open_marks.items() if f > flush}
        return Admit((*held, *released.lines), intake)

    def rendered(self) -> None:
        """The last swapped flush is rendered and handed to the outputs."""
        self._rendered_upto = self._swap_base

    def close_names(self, flush: int, own: int) -> tuple[int, int]:
        """Worker 0: the wait for ``flush``'s name counts is over.

        Returns:
            ``(total, missing)``: ``own`` plus every peer's count for the flush (a late
            one replaced by its latest), and how many did not come in time.
        """
        got = self._names.pop(flush, {})
        for old in [f for f in self._names if f < flush]:
            del self._names[old]
        self._names_closed = flush
        late = [self._last_names[p] for p in self.peers
                if p not in got and p in self._last_names]
        return own + sum(got.values()) + sum(late), len(self.peers) - len(got)

    def finish(self) -> Admit:
        """The final flush comes: nothing waits for a next interval any more. Admits
        everything deferred."""
        self._finishing = True
        return self._release(lambda _: True)

    def _release(self, due: Callable[[int], bool]) -> Admit:
        """Admit the deferred lines whose mark's flush is ``due``; keep the others."""
        if not self._deferred:
            return _NOTHING
        released = [payload for after, payload in self._deferred if due(after)]
        self._deferred = [(after, p) for after, p in self._deferred if not due(after)]
        return Admit(tuple(released))
