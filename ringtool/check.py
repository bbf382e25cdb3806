"""``tallyd-ring check``: is every node's agent up, and is every file where the ring says?

For each node of the ring: ask its agent's version (reachable), then stream its inventory
and judge each file with `ringtool.plan.plan_file` (OLD = NEW = the ring):

* **misplaced**: the file is on a node that is not among its owners;
* **duplicated**: a misplaced copy whose owner also holds the name (asked with ``exists``),
  i.e. a move that copied and did not delete; ``rebalance --delete-source`` finishes it.

Memory is the misplaced list (what the report shows), not the inventory. A failure is
shown as the client's error text (reason, HTTP status, detail).

SHELL: the agents' HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from common.ring import CarbonNode, Ring

from .client import AgentError
from .plan import plan_file
from .rebalance import Site, find_site


@attrs.frozen
class Misplaced:
    """A file on ``node``, whose owners are ``owners``; ``duplicated_on``: the owners that
    hold it too."""

    name: str
    node: CarbonNode
    owners: tuple[CarbonNode, ...]
    duplicated_on: tuple[CarbonNode, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "node": str(self.node),
                "owners": [str(o) for o in self.owners],
                "duplicated_on": [str(o) for o in self.duplicated_on]}


@attrs.frozen
class CheckReport:
    """What ``check`` found.

    Attributes:
        agents: per node, ``(node, version answer or None, error or None)``.
        files: files listed by the reachable agents.
        misplaced: every misplaced copy (duplicated ones have ``duplicated_on``).
        errors: inventories or lookups that failed.
    """

    agents: tuple[tuple[CarbonNode, dict[str, Any] | None, str | None], ...]
    files: int
    misplaced: tuple[Misplaced, ...]
    errors: tuple[str, ...]

    @property
    def duplicated(self) -> int:
        return sum(1 for m in self.misplaced if m.duplicated_on)

    @property
    def ok(self) -> bool:
        return not self.misplaced and not self.errors and all(
            error is None for _, _, error in self.agents)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "files": self.files, "duplicated": self.duplicated,
                "agents": [{"node": str(n), "version": v, "error": e}
                           for n, v, e in self.agents],
                "misplaced": [m.to_json() for m in self.misplaced],
                "errors": list(self.errors)}


async def run_check(sites: Sequence[Site], *, ring: Ring) -> CheckReport:
    """Check every site of ``ring`` (see the module docstring).

    Each inventory is read through first (an agent drops a listing its client stops reading
    for long), then each misplaced copy's owners are asked whether they hold it too.
    """
    agents: list[tuple[CarbonNode, dict[str, Any] | None, str | None]] = []
    errors: list[str] = []
    found: list[tuple[str, CarbonNode, tuple[CarbonNode, ...]]] = []
    files = 0
    for site in sites:
        try:
            agents.append((site.node, await site.agent.version(), None))
        except AgentError as exc:
            agents.append((site.node, None, str(exc)))
            continue
        try:
            async for entry in site.agent.iter_files():
                files += 1
                move = plan_file(entry.name, entry.size, site.node, old=ring, new=ring)
                if move is not None:
                    found.append((entry.name, site.node, move.targets))
        except AgentError as exc:
            errors.append(f"inventory of {site.node}: {exc}")
    misplaced = []
    for name, node, owners in found:
        holders = []
        for owner in owners:
            try:
                if await find_site(sites, owner).agent.exists(name):
                    holders.append(owner)
            except AgentError as exc:
                errors.append(f"exists {name} on {owner}: {exc}")
        misplaced.append(Misplaced(name, node, owners, tuple(holders)))
    return CheckReport(agents=tuple(agents), files=files, misplaced=tuple(misplaced),
                       errors=tuple(errors))


def format_check(report: CheckReport) -> list[str]:
    """The text report of ``check``."""
    lines = []
    for node, version, error in report.agents:
        lines.append(f"agent {node}: " + (f"UNREACHABLE: {error}" if error else
                                          f"ok, version {(version or {}).get('version')}"))
    for m in report.misplaced:
        dup = f" DUPLICATED on {','.join(map(str, m.duplicated_on))}" if m.duplicated_on else ""
        lines.append(f"misplaced\t{m.name}\ton {m.node}, owners "
                     f"{','.join(map(str, m.owners))}{dup}")
    lines += [f"error: {e}" for e in report.errors]
    lines.append(f"check: {'ok' if report.ok else 'PROBLEMS'}: {report.files} files, "
                 f"{len(report.misplaced)} misplaced, {report.duplicated} duplicated, "
                 f"{sum(1 for _, _, e in report.agents if e)} agents unreachable")
    return lines
