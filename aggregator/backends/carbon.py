"""The aggregator's Carbon output: one sender per ring node, each line placed by its path.

SHELL (owns the senders; placement itself is the pure `aggregator.backends.placement`).
"""

from __future__ import annotations

from pathlib import Path

from common.ring import CarbonNode, Ring

from ..config import AggregatorConfig
from .placement import Placement
from .sender import CarbonSender, SenderStatistics
from .spool import Spool


def node_component(node: CarbonNode) -> str:
    """A Carbon node as one Graphite path component: ``127_0_0_1_2003_a``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(node))


class CarbonOutput:
    """Places each line on the Carbon ring and hands it to that node's sender."""

    def __init__(self, config: AggregatorConfig) -> None:
        ring = Ring.from_nodes(config.carbon, hash_type=config.ring_hash,
                               replication_factor=config.replication_factor)
        self.placement = Placement(ring)
        spool_root = Path(config.carbon_spool_dir) if config.carbon_spool_dir else None
        self.senders: dict[CarbonNode, CarbonSender] = {
            node: CarbonSender(
                node, buffer_bytes=config.carbon_buffer_bytes,
                connect_timeout=config.carbon_connect_timeout,
                write_timeout=config.carbon_write_timeout,
                spool=(Spool(spool_root / node_component(node), config.carbon_spool_max_bytes)
                       if spool_root is not None else None),
                replay_lines_per_second=config.carbon_replay_lines_per_second)
            for node in ring.nodes
        }
        self._last: dict[CarbonNode, SenderStatistics] = {}

    def offer(self, payload: bytes) -> None:
        for node, block in self.placement.split(payload).items():
            self.senders[node].offer(block)

    async def wait_delivered(self) -> None:
        for sender in self.senders.values():
            await sender.wait_idle()

    def spill_to_spool(self) -> int:
        return sum(sender.spill_to_spool() for sender in self.senders.values())

    def graphite_stats(self) -> dict[str, float]:
        """Etsy's four graphite backend figures, summed or worst-of over the nodes."""
        stats = [s.statistics() for s in self.senders.values()]
        return {
            "graphiteStats.last_exception": round(max(s.last_exception for s in stats)),
            "graphiteStats.last_flush": round(min(s.last_flush for s in stats)),
            "graphiteStats.flush_time": round(max(s.flush_time_ms for s in stats)),
            "graphiteStats.flush_length": sum(s.flush_length for s in stats),
        }

    def self_metrics(self, identity: str) -> dict[str, float]:
        """Per-node figures for this flush, under ``tallyd.<identity>.carbon.<node>.``:
        counts since the previous flush, and the current levels."""
        out: dict[str, float] = {}
        for node, sender in self.senders.items():
            now = sender.statistics()
            before = self._last.get(node)
            self._last[node] = now
            head = f"tallyd.{identity}.carbon.{node_component(node)}."
            out[head + "sent_lines"] = now.sent_lines - (before.sent_lines if before else 0)
            out[head + "reconnects"] = now.reconnects - (before.reconnects if before else 0)
            for reason in ("buffer_full", "spool_full", "shutdown"):
                out[head + "dropped_lines." + reason] = (
                    now.dropped.get(reason, 0) - (before.dropped.get(reason, 0) if before else 0))
            out[head + "buffered_lines"] = now.buffered_lines
            out[head + "spooled_lines"] = now.spooled_lines
            out[head + "connected"] = int(now.connected)
        return out
