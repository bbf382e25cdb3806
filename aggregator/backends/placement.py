"""Splits rendered Graphite lines by the Carbon node(s) that store each path.

Each line ``path value timestamp`` is placed on its own, by its path, as carbon-relay does.
Paths repeat from flush to flush, so the node tuple of every path is cached: after the
first flush a line costs one split and one dict lookup instead of a hash and a bisect.

A changed ring (a reload) gets a new `Placement`; `plan_ring_change` says which nodes
stay, which are new and which leave.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

import attrs

from common.ring import CarbonNode, Ring

#: Paths whose placement is remembered; past it the cache starts over. 1M paths of ~80
#: bytes is ~150 MB, which is the scale where an operator is running several aggregators.
MAX_CACHED_PATHS: Final = 1_000_000


class Placement:
    """Routes blocks of lines onto a ring.

    Args:
        ring: the Carbon ring (a new `Placement` is built when the ring changes).
    """

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self._single = ring.nodes[0] if len(ring.nodes) == 1 else None
        self._cache: dict[bytes, tuple[CarbonNode, ...]] = {}

    def split(self, block: bytes) -> dict[CarbonNode, bytes]:
        """Group the lines of ``block`` (newline-terminated) by destination node.

        A line with replication factor R appears in the block of each of its R nodes.
        """
        if self._single is not None:
            return {self._single: block} if block else {}
        cache = self._cache
        nodes_for = self.ring.nodes_for
        groups: dict[CarbonNode, list[bytes]] = {}
        for line in block.splitlines(keepends=True):
            path = line.split(b" ", 1)[0]
            nodes = cache.get(path)
            if nodes is None:
                if len(cache) >= MAX_CACHED_PATHS:
                    cache.clear()
                nodes = cache[path] = nodes_for(path)
            for node in nodes:
                group = groups.get(node)
                if group is None:
                    groups[node] = [line]
                else:
                    group.append(line)
        return {node: b"".join(lines) for node, lines in groups.items()}


@attrs.frozen
class RingChange:
    """How the nodes of one ring become another's, each list in its ring's order.

    Args:
        kept: in both rings (their senders and connections stay).
        added: only in the new ring (new senders).
        retired: only in the old ring (their senders drain what they hold, then close).
    """

    kept: tuple[CarbonNode, ...]
    added: tuple[CarbonNode, ...]
    retired: tuple[CarbonNode, ...]


def plan_ring_change(old: Ring, new: Ring) -> RingChange:
    """Compare two rings' nodes (a node is its host, port and instance)."""
    before, after = set(old.nodes), set(new.nodes)
    return RingChange(kept=tuple(n for n in new.nodes if n in before),
                      added=tuple(n for n in new.nodes if n not in before),
                      retired=tuple(n for n in old.nodes if n not in after))
