"""``tallyd-ring plan`` and ``rebalance``: stream every node's inventory through its agent,
plan each file (`ringtool.plan`), and for ``rebalance`` execute the moves agent to agent.

How a move runs (one file, held by source S, NEW owners T1..Tn):

1. Each Ti's agent is asked to ``pull`` the file from S's agent: Ti fetches it and merges it
   into its own copy (or creates it) under the lock carbon takes, then verifies the result.
   The data goes from S to Ti directly, never through this tool.
2. A Ti's answer is checked: ``verification.missing`` must be 0 (every source point is on
   Ti, with the same value or, counted as a conflict, Ti's own).
3. Only when every Ti verified, and only with ``--delete-source``, is S's copy deleted. A
   copy to a new replica (S stays an owner) is never deleted.

Anything else fails the move with its reason (an agent unreachable, a verification with
missing points, a corrupt source, ...) and deletes nothing. There is no state file: a
re-run plans again from the real inventories, and the merge is idempotent (points already
present are ``same``, never added again), so it finishes an interrupted job without counting
anything twice.

Bounded memory for millions of files: the inventories are read once, node after node, at
full speed (an agent's server drops a listing its client stops reading for 30 s), and each
move is spooled to a temporary file (`ringtool.movelist`); that pass also gives the totals
the progress bar's ETA needs. Then one task reads the moves back into a memory channel of
`CHANNEL_MOVES_PER_WORKER` x workers, and the workers take from it. A shared token bucket
(`RateLimit`) spaces the moves so the bytes transferred stay under ``--rate`` on average.

SHELL: trio, the agents' HTTP (`ringtool.client`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, Protocol

import attrs
import trio

from common.ring import CarbonNode, Ring

from .client import AgentError
from .movelist import MoveList
from .plan import HeldFile, Move, PlanSummary, PlanTally, plan_file

#: Moves queued per worker between the inventory reader and the workers: enough that a
#: worker never waits for the reader, few enough that memory does not grow with the files.
CHANNEL_MOVES_PER_WORKER: Final = 8
DEFAULT_WORKERS: Final = 4
#: Failures listed one by one in the report; beyond this they are only counted, so a
#: cluster-wide outage on millions of files does not grow memory without bound.
MAX_LISTED_FAILURES: Final = 10_000


class Agent(Protocol):
    """What the commands use of an agent (`ringtool.client.AgentClient` is one)."""

    def iter_files(self) -> AsyncIterator[HeldFile]: ...
    async def version(self) -> dict[str, Any]: ...
    async def exists(self, name: str) -> bool: ...
    async def pull(self, name: str, source_url: str) -> dict[str, Any]: ...
    async def delete(self, name: str) -> bool: ...


@attrs.frozen
class Site:
    """A node, where its agent listens, and the client that talks to it."""

    node: CarbonNode
    url: str
    agent: Agent


def find_site(sites: Sequence[Site], node: CarbonNode) -> Site:
    """The site of ``node``, matched by ring identity.

    Raises:
        KeyError: for a node no site has (a bug: every ring node has an agent).
    """
    for site in sites:
        if site.node.identity == node.identity:
            return site
    raise KeyError(node)


@attrs.frozen
class Failure:
    """One move (or inventory) that failed, and why."""

    name: str
    source: CarbonNode
    target: CarbonNode | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "source": str(self.source),
                "target": None if self.target is None else str(self.target),
                "reason": self.reason}

    def __str__(self) -> str:
        where = f"{self.source} -> {self.target}" if self.target else str(self.source)
        return f"{self.name} ({where}): {self.reason}"


@attrs.define
class Outcome:
    """What a rebalance did (mutable while it runs; read at the end)."""

    moves_verified: int = 0
    transfers_verified: int = 0
    bytes_transferred: int = 0
    created: int = 0
    filled: int = 0
    conflicts: int = 0
    deleted: int = 0
    failed: int = 0
    failures: list[Failure] = attrs.field(factory=list)

    def fail(self, failure: Failure) -> None:
        self.failed += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(failure)

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in attrs.asdict(self, recurse=False).items()
                if key != "failures"} | {"failures": [f.to_json() for f in self.failures]}


class RateLimit:
    """A token bucket on bytes: `take` waits until ``size`` bytes fit under the rate.

    A file bigger than a second's worth goes when the bucket is full and leaves a debt the
    next ones wait for, so the average stays at the rate whatever the file sizes.
    """

    def __init__(self, bytes_per_second: float | None) -> None:
        self._rate = bytes_per_second
        self._tokens = bytes_per_second or 0.0
        self._stamp = trio.current_time()
        self._lock = trio.Lock()

    async def take(self, size: int) -> None:
        if self._rate is None:
            return
        async with self._lock:
            now = trio.current_time()
            self._tokens = min(self._rate, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens < 0:
                await trio.sleep(-self._tokens / self._rate)
            self._tokens -= size


async def iter_moves(sites: Sequence[Site], *, old: Ring, new: Ring, tally: PlanTally,
                     on_error: Callable[[Failure], None]) -> AsyncIterator[Move]:
    """Every move and copy, streamed from each site's inventory in turn.

    A listing that fails (agent unreachable, listing cut) is reported to ``on_error`` as a
    `Failure` named ``*`` and the next site is read.
    """
    for site in sites:
        try:
            async for entry in site.agent.iter_files():
                move = plan_file(entry.name, entry.size, site.node, old=old, new=new)
                if move is None:
                    tally.count_stay(site.node, entry.size)
                else:
                    tally.count_move(move)
                    yield move
        except AgentError as exc:
            on_error(Failure(name="*", source=site.node, target=None,
                             reason=f"inventory: {exc}"))


def check_answer(answer: dict[str, Any]) -> tuple[str | None, dict[str, int]]:
    """A pull's answer: why it is not verified (None when it is) and its figures."""
    verification = answer.get("verification")
    if not isinstance(verification, dict):
        return "the agent's answer has no verification", {}
    figures = {key: int(answer.get(key, 0)) for key in ("filled", "conflicts", "same")}
    figures["created"] = int(bool(answer.get("created")))
    missing = int(verification.get("missing", -1))
    if missing != 0:
        return f"verification: {missing} source points missing on the destination", figures
    figures["conflicts"] = int(verification.get("conflicts", figures["conflicts"]))
    return None, figures


async def execute_move(move: Move, sites: Sequence[Site], *, delete_source: bool,
                       outcome: Outcome) -> bool:
    """Pull ``move``'s file into every target, check each verification, then (when asked,
    and only when all verified) delete the source copy. Returns whether it all verified."""
    source = find_site(sites, move.source)
    verified = True
    for target in move.targets:
        try:
            answer = await find_site(sites, target).agent.pull(move.name, source.url)
        except AgentError as exc:
            outcome.fail(Failure(move.name, move.source, target, f"pull: {exc}"))
            verified = False
            continue
        problem, figures = check_answer(answer)
        if problem is not None:
            outcome.fail(Failure(move.name, move.source, target, problem))
            verified = False
            continue
        outcome.transfers_verified += 1
        outcome.bytes_transferred += move.size
        outcome.created += figures["created"]
        outcome.filled += figures["filled"]
        outcome.conflicts += figures["conflicts"]
    if not verified:
        return False
    outcome.moves_verified += 1
    if delete_source and not move.source_stays:
        try:
            if await source.agent.delete(move.name):
                outcome.deleted += 1
        except AgentError as exc:
            outcome.fail(Failure(move.name, move.source, None, f"delete: {exc}"))
            return False
    return True


async def run_rebalance(sites: Sequence[Site], *, old: Ring, new: Ring, delete_source: bool,
                        workers: int = DEFAULT_WORKERS, rate: float | None = None,
                        on_planned: Callable[[PlanSummary], None] | None = None,
                        on_done: Callable[[Move, bool], None] | None = None
                        ) -> tuple[PlanSummary, Outcome]:
    """Plan every move from OLD to NEW, then execute them with ``workers`` at once.

    Args:
        sites: every node of OLD and NEW with its agent.
        old: the ring the data was written with.
        new: the ring it must end up on.
        delete_source: delete each moved file's source copy once every owner verified.
        workers: moves in flight at once.
        rate: bytes per second over all transfers (None: unlimited).
        on_planned: called with the plan's totals once every inventory is read.
        on_done: called after each move with whether it verified (progress).

    Returns:
        The plan's totals, and what was done.
    """
    outcome = Outcome()
    tally = PlanTally()
    limit = RateLimit(rate)
    with MoveList([site.node for site in sites]) as planned:
        async for move in iter_moves(sites, old=old, new=new, tally=tally,
                                     on_error=outcome.fail):
            await planned.add(move)
        summary = tally.summary()
        if on_planned is not None:
            on_planned(summary)
        send, receive = trio.open_memory_channel[Move](CHANNEL_MOVES_PER_WORKER * workers)

        async def read() -> None:
            async with send:
                async for move in planned.moves():
                    await send.send(move)

        async def work(moves: trio.MemoryReceiveChannel[Move]) -> None:
            async with moves:
                async for move in moves:
                    await limit.take(move.size * len(move.targets))
                    ok = await execute_move(move, sites, delete_source=delete_source,
                                            outcome=outcome)
                    if on_done is not None:
                        on_done(move, ok)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            async with receive:
                for _ in range(workers):
                    nursery.start_soon(work, receive.clone())
    return summary, outcome


def format_outcome(summary: PlanSummary, outcome: Outcome, *, seconds: float) -> list[str]:
    """The summary lines of ``rebalance``: totals, rate, then each failure."""
    rate = outcome.bytes_transferred / max(seconds, 1e-9) / 1_000_000
    lines = [
        f"rebalance: {outcome.moves_verified}/{summary.moves + summary.copies} files verified "
        f"({outcome.transfers_verified} transfers, {outcome.bytes_transferred} bytes, "
        f"{rate:.2f} MB/s over {seconds:.1f}s); created {outcome.created}, filled "
        f"{outcome.filled} points, conflicts {outcome.conflicts}, deleted {outcome.deleted}",
    ]
    if outcome.failed:
        lines.append(f"FAILED: {outcome.failed}" + ("" if outcome.failed == len(
            outcome.failures) else f" ({len(outcome.failures)} listed)"))
        lines += [f"  {failure}" for failure in outcome.failures]
    if outcome.conflicts:
        lines.append(f"note: {outcome.conflicts} points differed; the destination's values "
                     "were kept (docs/rebalance.md, Merge semantics)")
    return lines
