"""Tests for ringtool.plan: per-file decisions from real inventories and two rings."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import attrs
import pytest

from common.ring import CarbonNode, Ring
from ringtool.plan import (
    Move,
    PlanSummary,
    PlanTally,
    format_move,
    format_summary,
    plan_file,
    plan_inventory,
)

A, B, C, D = (CarbonNode(f"10.0.0.{i}", 2003, x) for i, x in enumerate("abcd", 1))
NAMES = [f"svc{i % 37}.host{i}.requests.count" for i in range(3000)]


@attrs.frozen
class Entry:
    name: str
    size: int


def ring(*nodes: CarbonNode, r: int = 1, mode: str = "carbon_ch") -> Ring:
    return Ring.from_nodes(nodes, hash_type=mode, replication_factor=r)


def placed(r: Ring, names: Iterable[str] = NAMES) -> dict[CarbonNode, list[Entry]]:
    """The inventories a cluster written by ``r`` holds: each name on each of its owners."""
    held: dict[CarbonNode, list[Entry]] = {node: [] for node in r.nodes}
    for i, name in enumerate(names):
        for node in r.nodes_for(name):
            held[node].append(Entry(name, 100 + i))
    return held


def plan_all(held: dict[CarbonNode, list[Entry]], old: Ring, new: Ring
             ) -> tuple[list[Move], PlanSummary]:
    tally = PlanTally()
    moves = [m for node, entries in held.items()
             for m in plan_inventory(node, entries, old=old, new=new, tally=tally)]
    return moves, tally.summary()


def test_adding_a_node_moves_about_a_quarter_all_to_the_new_node() -> None:
    old, new = ring(A, B, C), ring(A, B, C, D)
    moves, summary = plan_all(placed(old), old, new)
    assert 0.15 < len(moves) / len(NAMES) < 0.35
    assert {m.targets for m in moves} == {(D,)}
    assert all(not m.source_stays for m in moves)
    assert all(new.node_for(m.name) == D and old.node_for(m.name) == m.source for m in moves)
    assert summary.files == len(NAMES)
    assert summary.moves == len(moves) and summary.copies == 0
    assert {p.target for p in summary.pairs} == {D}


def test_removing_a_node_drains_it_and_moves_nothing_else() -> None:
    old, new = ring(A, B, C), ring(A, C)
    held = placed(old)
    moves, summary = plan_all(held, old, new)
    assert sorted(m.name for m in moves) == sorted(e.name for e in held[B])
    assert {m.source for m in moves} == {B}
    assert all(m.targets == (new.node_for(m.name),) for m in moves)
    assert {s.node for s in summary.stays} == {A, C}


def test_replication_two_moves_to_every_new_owner_and_copies_to_new_replicas() -> None:
    old, new = ring(A, B, C, r=2), ring(A, B, C, D, r=2)
    held = placed(old)
    moves, summary = plan_all(held, old, new)
    for m in moves:
        owners = new.nodes_for(m.name)
        if m.source_stays:  # the holder stays an owner; the joined owner gets a copy
            assert m.source in owners and m.targets == tuple(
                o for o in owners if o not in old.nodes_for(m.name))
        else:
            assert m.source not in owners and m.targets == owners
    # After the plan every owner has (or receives) every name it owns.
    after: dict[str, set[CarbonNode]] = {}
    for node, entries in held.items():
        for e in entries:
            if node in new.nodes_for(e.name):
                after.setdefault(e.name, set()).add(node)
    for m in moves:
        after.setdefault(m.name, set()).update(m.targets)
    assert all(after[n] == set(new.nodes_for(n)) for n in NAMES)
    assert summary.transfer_files == sum(len(m.targets) for m in moves)


def test_raising_the_replication_factor_copies_and_never_moves() -> None:
    old, new = ring(A, B, C), ring(A, B, C, r=2)
    moves, summary = plan_all(placed(old), old, new)
    assert len(moves) == len(NAMES)
    assert all(m.source_stays and m.targets == (new.nodes_for(m.name)[1],) for m in moves)
    assert summary.copies == len(NAMES) and summary.moves == 0
    assert "copy" in format_move(moves[0])


def test_stray_copies_are_found_even_when_the_ring_does_not_change() -> None:
    r = ring(A, B, C)
    held = placed(r)
    stray = held[A][0]  # a copy left on B by an earlier, unfinished move
    held[B].append(stray)
    moves, summary = plan_all(held, r, r)
    assert moves == [Move(name=stray.name, size=stray.size, source=B, targets=(A,))]
    assert summary.moves == 1 and summary.files == len(NAMES) + 1


def test_a_stray_already_on_a_new_owner_stays() -> None:
    # R=2 with a new node D: once D has its copy, re-planning moves nothing to or from D.
    old, new = ring(A, B, C, r=2), ring(A, B, C, D, r=2)
    name = next(n for n in NAMES if D in new.nodes_for(n))
    assert plan_file(name, 1, D, old=old, new=new) is None


def test_summary_sums_files_and_bytes_per_pair_and_stays() -> None:
    old, new = ring(A, B), ring(A, B, C, r=2)
    held = placed(old)
    moves, summary = plan_all(held, old, new)
    pairs = {(p.source, p.target): (p.files, p.bytes) for p in summary.pairs}
    for (source, target), (files, size) in pairs.items():
        chosen = [m for m in moves if m.source == source and target in m.targets]
        assert files == len(chosen) and size == sum(m.size for m in chosen)
    stays = {s.node: (s.files, s.bytes) for s in summary.stays}
    total_held = sum(len(v) for v in held.values())
    assert sum(f for f, _ in stays.values()) + summary.moves + summary.copies == total_held
    assert summary.transfer_bytes == sum(m.size * len(m.targets) for m in moves)
    lines = format_summary(summary)
    assert lines[0].startswith(f"files {total_held}:")
    assert len(lines) == 1 + len(summary.pairs) + len(summary.stays)
    assert summary.to_json()["transfer_files"] == summary.transfer_files


def test_nodes_are_compared_by_ring_identity_not_port() -> None:
    # The same cache reached on another port (a proxy in front of it) is the same owner.
    a_proxy = CarbonNode(A.host, 2103, A.instance)
    old, new = ring(A, B), ring(a_proxy, B)
    name = next(n for n in NAMES if new.node_for(n) == a_proxy)
    assert plan_file(name, 1, A, old=old, new=new) is None


def test_plan_inventory_is_lazy() -> None:
    r_old, r_new = ring(A, B), ring(A, B, C)

    def endless() -> Iterator[Entry]:
        i = 0
        while True:
            yield Entry(f"x.{i}", 1)
            i += 1

    moves = plan_inventory(A, endless(), old=r_old, new=r_new, tally=PlanTally())
    first = next(iter(moves))
    assert first.targets == (r_new.node_for(first.name),)


@pytest.mark.parametrize("mode", ["carbon_ch", "fnv1a_ch", "ketama"])
def test_every_mode_moves_only_onto_the_added_node(mode: str) -> None:
    old, new = ring(A, B, C, mode=mode), ring(A, B, C, D, mode=mode)
    moves, _ = plan_all(placed(old), old, new)
    assert moves and {m.targets for m in moves} == {(D,)}


def test_move_json_names_nodes_as_written() -> None:
    move = Move(name="a.b", size=5, source=A, targets=(B, C))
    assert move.to_json() == {"name": "a.b", "size": 5, "kind": "move",
                              "source": "10.0.0.1:2003:a",
                              "targets": ["10.0.0.2:2003:b", "10.0.0.3:2003:c"]}
    assert format_move(move) == "move\ta.b\t10.0.0.1:2003:a -> 10.0.0.2:2003:b,10.0.0.3:2003:c\t5"


def test_replacing_a_dead_replica_copies_every_name_it_owns_back_to_it() -> None:
    # R=2: b died and came back empty under the same identity; OLD = the ring without b.
    full, without_b = ring(A, B, C, D, r=2), ring(A, C, D, r=2)
    held = placed(full)
    held[B] = []
    moves, summary = plan_all(held, without_b, full)
    assert summary.moves == 0  # nothing is deleted anywhere
    copied = {m.name for m in moves if B in m.targets}
    assert copied == {n for n in NAMES if B in full.nodes_for(n)}
    assert all(m.source_stays and m.source in full.nodes_for(m.name) for m in moves)


def test_a_salvaged_disk_under_a_spare_identity_is_drained_into_the_ring() -> None:
    salvage = CarbonNode("10.0.0.9", 2003, "salvage")
    r = ring(A, B, C)
    held = placed(r)
    held[salvage] = held[B]  # b's old disk, mounted elsewhere
    held[B] = held[B][:10]   # what the replacement received since it started
    moves, summary = plan_all(held, ring(A, B, C, salvage), r)
    assert {m.source for m in moves} == {salvage}
    assert all(m.targets == (B,) and not m.source_stays for m in moves)
    assert summary.moves == len(held[salvage])
