"""Tests for ringtool.rebalance and ringtool.check with fake agents (real trio, fake time).

`FakeAgent` keeps ``{name: size}`` and answers like the real agent's routes; a ``pull``
copies the name from the source agent found by its URL. The real agents, carbon-caches and
Whisper merges are tests/e2e/test_ring_rebalance.py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio
import trio.lowlevel

from common.ring import CarbonNode, Ring
from ringtool.check import run_check
from ringtool.client import AgentError
from ringtool.plan import PlanSummary, PlanTally
from ringtool.rebalance import Failure, Site, iter_moves, run_rebalance

A, B, C = (CarbonNode(f"10.0.0.{i}", 2003, x) for i, x in enumerate("abc", 1))
NAMES = [f"app.s{i}.count" for i in range(300)]


@attrs.frozen
class Entry:
    name: str
    size: int


class FakeAgent:
    def __init__(self, cluster: dict[str, FakeAgent], url: str) -> None:
        self.files: dict[str, int] = {}
        self.cluster = cluster
        self.url = url
        self.down = False
        self.missing = 0  # points a pull's verification reports missing
        self.in_flight = 0
        self.max_in_flight = 0
        self.deleted: list[str] = []
        cluster[url] = self

    def _check(self) -> None:
        if self.down:
            raise AgentError("connection refused")

    async def iter_files(self) -> AsyncIterator[Entry]:
        self._check()
        for name, size in list(self.files.items()):
            await trio.lowlevel.checkpoint()
            yield Entry(name, size)

    async def version(self) -> dict[str, Any]:
        self._check()
        return {"agent": "tallyd-ring", "version": "test"}

    async def exists(self, name: str) -> bool:
        self._check()
        return name in self.files

    async def pull(self, name: str, source_url: str) -> dict[str, Any]:
        self._check()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(0.01)
            source = self.cluster[source_url]
            if source.down:
                raise AgentError("source: connection refused", )
            created = name not in self.files
            self.files[name] = source.files[name]
            return {"created": created, "filled": 10, "conflicts": 0, "same": 0,
                    "verification": {"present": 10, "conflicts": 0, "missing": self.missing}}
        finally:
            self.in_flight -= 1

    async def delete(self, name: str) -> bool:
        self._check()
        self.deleted.append(name)
        return self.files.pop(name, None) is not None


async def count_plan(sites: list[Site], *, old: Ring, new: Ring
                     ) -> tuple[PlanSummary, list[Failure]]:
    tally = PlanTally()
    failures: list[Failure] = []
    async for _ in iter_moves(sites, old=old, new=new, tally=tally, on_error=failures.append):
        pass
    return tally.summary(), failures


def ring(*nodes: CarbonNode, r: int = 1) -> Ring:
    return Ring.from_nodes(nodes, hash_type="carbon_ch", replication_factor=r)


def cluster(old: Ring, nodes: tuple[CarbonNode, ...]) -> tuple[list[Site], dict[str, FakeAgent]]:
    agents: dict[str, FakeAgent] = {}
    sites = []
    for node in nodes:
        url = f"http://{node.host}:7070"
        sites.append(Site(node, url, FakeAgent(agents, url)))
    for i, name in enumerate(NAMES):
        for owner in old.nodes_for(name):
            agents[f"http://{owner.host}:7070"].files[name] = 1000 + i
    return sites, agents


def holders(agents: dict[str, FakeAgent], name: str) -> set[str]:
    return {url for url, agent in agents.items() if name in agent.files}


def owner_urls(r: Ring, name: str) -> set[str]:
    return {f"http://{n.host}:7070" for n in r.nodes_for(name)}


async def test_rebalance_moves_verifies_and_deletes_only_when_asked() -> None:
    old, new = ring(A, B), ring(A, B, C)
    sites, agents = cluster(old, (A, B, C))
    summary, outcome = await run_rebalance(sites, old=old, new=new, delete_source=False)
    assert outcome.failed == 0 and summary.moves > 0
    assert outcome.moves_verified == summary.moves and outcome.deleted == 0
    assert all(owner_urls(new, n) <= holders(agents, n) for n in NAMES)
    # Again with --delete-source: the moved copies are found again (stray) and removed.
    summary, outcome = await run_rebalance(sites, old=old, new=new, delete_source=True)
    assert outcome.failed == 0 and outcome.deleted == summary.moves > 0
    assert all(holders(agents, n) == owner_urls(new, n) for n in NAMES)
    # Nothing is left to do.
    planned, failures = await count_plan(sites, old=new, new=new)
    assert planned.moves == planned.copies == 0 and failures == []


async def test_an_agent_down_fails_its_moves_and_nothing_of_it_is_deleted() -> None:
    old, new = ring(A, B), ring(A, B, C)
    sites, agents = cluster(old, (A, B, C))
    b = agents["http://10.0.0.2:7070"]
    before = dict(b.files)
    b.down = True
    _, outcome = await run_rebalance(sites, old=old, new=new, delete_source=True)
    assert outcome.failed >= 1
    assert any(f.source == B and "inventory" in f.reason for f in outcome.failures)
    assert b.files == before and b.deleted == []
    assert outcome.moves_verified > 0  # A's moves went on


async def test_a_target_down_fails_the_move_and_keeps_the_source() -> None:
    old, new = ring(A, B), ring(A, B, C)
    sites, agents = cluster(old, (A, B, C))
    agents["http://10.0.0.3:7070"].down = True
    summary, outcome = await run_rebalance(sites, old=old, new=new, delete_source=True)
    pulls = [f for f in outcome.failures if f.target == C]
    assert len(pulls) == summary.moves > 0 and outcome.deleted == 0
    assert all("connection refused" in f.reason for f in outcome.failures)
    assert {f.target for f in outcome.failures} == {C, None}  # None: C's own inventory


async def test_missing_points_in_the_verification_fail_and_delete_nothing() -> None:
    old, new = ring(A, B), ring(A, B, C)
    sites, agents = cluster(old, (A, B, C))
    agents["http://10.0.0.3:7070"].missing = 2
    _, outcome = await run_rebalance(sites, old=old, new=new, delete_source=True)
    assert outcome.failed > 0 and outcome.deleted == 0
    assert "2 source points missing" in outcome.failures[0].reason


async def test_replication_two_needs_every_owner_verified_before_deleting() -> None:
    old, new = ring(A, B), ring(A, B, C, r=2)
    sites, agents = cluster(old, (A, B, C))
    _, outcome = await run_rebalance(sites, old=old, new=new, delete_source=True)
    assert outcome.failed == 0
    assert all(holders(agents, n) == owner_urls(new, n) for n in NAMES)


async def test_workers_bound_the_transfers_in_flight() -> None:
    old, new = ring(A, B), ring(C)
    sites, agents = cluster(old, (A, B, C))
    _, outcome = await run_rebalance(sites, old=old, new=new, delete_source=False, workers=3)
    assert outcome.moves_verified == len(NAMES)
    assert agents["http://10.0.0.3:7070"].max_in_flight == 3


async def test_rate_limits_the_bytes_per_second(autojump_clock: trio.testing.MockClock) -> None:
    old, new = ring(A, B), ring(A, B, C)
    sites, _ = cluster(old, (A, B, C))
    planned, _ = await count_plan(sites, old=old, new=new)
    start = trio.current_time()
    await run_rebalance(sites, old=old, new=new, delete_source=False, rate=10_000)
    elapsed = trio.current_time() - start
    # The first second's worth goes at once; the rest at 10 kB/s.
    assert elapsed >= (planned.transfer_bytes - 10_000) / 10_000 * 0.95


async def test_check_finds_misplaced_duplicated_and_unreachable() -> None:
    r = ring(A, B, C)
    sites, agents = cluster(r, (A, B, C))
    name = next(n for n in NAMES if r.node_for(n) == A)
    agents["http://10.0.0.2:7070"].files[name] = 5        # duplicated: A has it too
    del agents["http://10.0.0.1:7070"].files[name]
    other = next(n for n in NAMES if r.node_for(n) == A and n != name)
    agents["http://10.0.0.3:7070"].files[other] = 5       # duplicated
    report = await run_check(sites, ring=r)
    assert not report.ok
    assert {(m.name, m.node) for m in report.misplaced} == {(name, B), (other, C)}
    assert report.duplicated == 1
    agents["http://10.0.0.3:7070"].down = True
    report = await run_check(sites, ring=r)
    assert [e for _, _, e in report.agents] == [None, None, "connection refused"]


async def test_check_is_ok_on_a_placed_cluster() -> None:
    r = ring(A, B, C, r=2)
    sites, _ = cluster(r, (A, B, C))
    report = await run_check(sites, ring=r)
    assert report.ok and report.files == 2 * len(NAMES)


async def test_moves_spooled_in_small_batches_all_come_back(monkeypatch: Any) -> None:
    monkeypatch.setattr("ringtool.movelist.BATCH_LINES", 7)
    old, new = ring(A, B), ring(C)
    sites, agents = cluster(old, (A, B, C))
    summary, outcome = await run_rebalance(sites, old=old, new=new, delete_source=True)
    assert summary.moves == outcome.moves_verified == outcome.deleted == len(NAMES)
    assert set(agents["http://10.0.0.3:7070"].files) == set(NAMES)
