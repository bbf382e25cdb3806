"""The flush barrier's state machine: events in, decisions (`Admit`) out.

Each case is a script of events fed to worker 0 or worker 1 of two, and the decision
expected after each one (the lines to aggregate now, the intake to add now).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from aggregator.workers.barrier import NO_INTAKE, Admit, Barrier

Step = tuple[Callable[[Barrier], Any], Any]


def _begin(flush: int) -> Callable[[Barrier], Admit]:
    return lambda b: b.begin_flush(flush)


def _own(lines: bytes, packets: int = 1) -> Callable[[Barrier], Admit]:
    return lambda b: b.read_own(lines, packets, lines.count(b"\n") + 1 if lines else 0)


def _from_peer(lines: bytes, sender: int = 1) -> Callable[[Barrier], Admit]:
    return lambda b: b.receive_lines(sender, lines.count(b"\n") + 1, lines)


def _mark(flush: int, intake: tuple[int, int, int], sender: int = 1
          ) -> Callable[[Barrier], Admit]:
    return lambda b: b.receive_mark(sender, flush, intake)


def _close(flush: int) -> Callable[[Barrier], tuple[Admit, int]]:
    def close(b: Barrier) -> tuple[Admit, int]:
        closed = b.close_marks(flush)
        return closed.admit, closed.missing
    return close


def _swap(flush: int) -> Callable[[Barrier], Admit]:
    return lambda b: b.end_swap(flush)


def _finish(b: Barrier) -> Admit:
    return b.finish()


def _lines(*blocks: bytes, intake: tuple[int, int, int] = NO_INTAKE) -> Admit:
    return Admit(blocks, intake)


CASES: dict[str, tuple[int, list[Step]]] = {
    "own lines outside a flush are admitted with their intake": (0, [
        (_own(b"a:1|c\nb:2|c", packets=2), _lines(b"a:1|c\nb:2|c", intake=(2, 2, 0))),
    ]),
    "own lines after the mark wait for the swap, counts too": (0, [
        (_begin(10), Admit()),
        (_own(b"a:1|c"), Admit()),
        (_mark(10, (0, 0, 0)), Admit()),
        (_close(10), (Admit(), 0)),
        (_swap(10), _lines(b"a:1|c", intake=(1, 1, 0))),
    ]),
    "a gauge read after the mark is admitted at once": (0, [
        (_begin(10), Admit()),
        (_own(b"g:1|g\na:1|c"), _lines(b"g:1|g")),
        (_swap(10), _lines(b"a:1|c", intake=(1, 2, 0))),
    ]),
    "peer lines before its mark are admitted at once": (0, [
        (_from_peer(b"a:1|c"), _lines(b"a:1|c")),
    ]),
    "peer lines after its mark wait for this worker's swap of that flush": (0, [
        (_mark(10, (3, 4, 1)), Admit()),
        (_from_peer(b"a:1|c\ng:2|g"), _lines(b"g:2|g")),
        (_begin(10), Admit()),
        (_close(10), (_lines(intake=(3, 4, 1)), 0)),
        (_swap(10), _lines(b"a:1|c", intake=(0, 0, 0))),
    ]),
    "held own lines come before deferred peer lines at the swap": (0, [
        (_begin(10), Admit()),
        (_mark(10, (1, 1, 0)), Admit()),
        (_from_peer(b"p:1|ms"), Admit()),
        (_own(b"o:2|ms"), Admit()),
        (_close(10), (_lines(intake=(1, 1, 0)), 0)),
        (_swap(10), _lines(b"o:2|ms", b"p:1|ms", intake=(1, 1, 0))),
    ]),
    "peer lines after the mark of a flush this worker never had are not held": (0, [
        (_mark(10, (0, 0, 0)), Admit()),
        (_begin(11), Admit()),
        (_close(11), (Admit(), 1)),
        (_swap(11), Admit()),
        (_from_peer(b"a:3|c"), _lines(b"a:3|c")),
    ]),
    "lines deferred after a mark of a skipped flush are released at the next begin": (0, [
        (_mark(10, (0, 0, 0)), Admit()),
        (_from_peer(b"a:3|c"), Admit()),
        (_begin(11), _lines(b"a:3|c")),
    ]),
    "worker 0 counts the intake of a skipped flush's marks in the next": (0, [
        (_mark(10, (5, 5, 0)), Admit()),
        (_mark(11, (1, 1, 0)), Admit()),
        (_begin(11), Admit()),
        (_close(11), (_lines(intake=(6, 6, 0)), 0)),
    ]),
    "worker 0 counts a late mark's intake at once": (0, [
        (_begin(10), Admit()),
        (_close(10), (Admit(), 1)),
        (_mark(10, (2, 3, 1)), _lines(intake=(2, 3, 1))),
    ]),
    "another worker takes no intake from marks": (1, [
        (_mark(10, (2, 3, 1), sender=0), Admit()),
        (_begin(10), Admit()),
        (_close(10), (Admit(), 0)),
        (_begin(11), Admit()),
        (_close(11), (Admit(), 1)),
        (_mark(11, (2, 3, 1), sender=0), Admit()),
    ]),
    "after finish nothing is held and what waited is admitted": (0, [
        (_mark(10, (0, 0, 0)), Admit()),
        (_from_peer(b"a:7|c"), Admit()),
        (_begin(10), Admit()),
        (_finish, _lines(b"a:7|c")),
        (_own(b"b:1|c"), _lines(b"b:1|c", intake=(1, 1, 0))),
        (_from_peer(b"c:1|c"), _lines(b"c:1|c")),
    ]),
}


@pytest.mark.parametrize("index, steps", CASES.values(), ids=list(CASES))
def test_barrier_decides_each_event_as_scripted(index: int, steps: list[Step]) -> None:
    barrier = Barrier(index, [1 - index])
    for number, (event, expected) in enumerate(steps):
        assert event(barrier) == expected, f"step {number}"


def test_marks_in_holds_once_every_peer_marked() -> None:
    barrier = Barrier(0, [1, 2])
    assert not barrier.marks_in(10)
    barrier.receive_mark(1, 10, NO_INTAKE)
    assert not barrier.marks_in(10)
    barrier.receive_mark(2, 10, NO_INTAKE)
    assert barrier.marks_in(10) and not barrier.marks_in(11)


NAMES_CASES: dict[str, tuple[list[tuple[int, int, int]], int, tuple[int, int]]] = {
    "every count in time": ([(1, 10, 5), (2, 10, 7)], 3, (15, 0)),
    "a missing count is replaced by the peer's latest": ([(1, 9, 4), (1, 10, 5), (2, 9, 6)],
                                                         3, (14, 1)),
    "a peer never heard from adds nothing": ([(1, 10, 5)], 3, (8, 1)),
    "a late count for a closed flush is only the peer's latest": ([(1, 8, 2)], 0, (2, 2)),
}


@pytest.mark.parametrize("received, own, expected", NAMES_CASES.values(), ids=list(NAMES_CASES))
def test_close_names_totals_every_worker(received: list[tuple[int, int, int]], own: int,
                                         expected: tuple[int, int]) -> None:
    barrier = Barrier(0, [1, 2])
    barrier.close_names(8, 0)
    for sender, flush, names in received:
        barrier.receive_names(sender, flush, names)
    assert barrier.names_in(10) == (expected[1] == 0)
    assert barrier.close_names(10, own) == expected


def test_unrendered_lines_follow_the_swap_cut_and_the_render() -> None:
    barrier = Barrier(1, [0])
    barrier.read_own(b"a:1|c\nb:1|c", 1, 2)
    barrier.begin_flush(10)
    barrier.read_own(b"c:1|c", 1, 1)  # held: in the next flush
    barrier.receive_mark(0, 10, NO_INTAKE)
    barrier.receive_lines(0, 2, b"d:1|c\ne:1|c")  # deferred: in the next flush
    barrier.close_marks(10)
    barrier.end_swap(10)
    assert barrier.unrendered_lines == 5
    barrier.rendered()
    assert barrier.unrendered_lines == 3


def test_holding_is_between_the_mark_and_the_swap() -> None:
    barrier = Barrier(0, [1])
    assert not barrier.holding
    barrier.begin_flush(1)
    assert barrier.holding
    barrier.end_swap(1)
    assert not barrier.holding
    barrier.begin_flush(2)
    barrier.finish()
    assert not barrier.holding
