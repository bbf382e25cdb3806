"""The aggregator's Carbon output: one sender per ring node, each line placed by its path.

SHELL (owns the senders; placement itself is the pure `aggregator.backends.placement`).
"""

from __future__ import annotations

from pathlib import Path

import trio

from common.ring import CarbonNode, Ring
from common.stats import Reading, path_component, read

from ..config import AggregatorConfig
from . import EtsyStatus, Leftover
from .placement import Placement
from .sender import CarbonSender, SenderStatistics
from .spool import Spool


class CarbonOutput:
    """The Carbon `aggregator.backends.Backend`: places each line on the Carbon ring and
    hands it to that node's sender."""

    def __init__(self, config: AggregatorConfig) -> None:
        ring = Ring.from_nodes(config.carbon, hash_type=config.ring_hash,
                               replication_factor=config.replication_factor,
                               tag_key=config.ring_tag_key)
        self.placement = Placement(ring)
        spool_root = Path(config.carbon_spool_dir) if config.carbon_spool_dir else None
        self.senders: dict[CarbonNode, CarbonSender] = {
            node: CarbonSender(
                node, buffer_bytes=config.carbon_buffer_bytes,
                connect_timeout=config.carbon_connect_timeout,
                write_timeout=config.carbon_write_timeout,
                spool=(Spool(spool_root / path_component(str(node)),
                             config.carbon_spool_max_bytes)
                       if spool_root is not None else None),
                replay_lines_per_second=config.carbon_replay_lines_per_second)
            for node in ring.nodes
        }

    def offer(self, payload: bytes) -> None:
        for node, block in self.placement.split(payload).items():
            self.senders[node].offer(block)

    async def run(self) -> None:
        """Run every node's sender until cancelled."""
        async with trio.open_nursery() as nursery:
            for sender in self.senders.values():
                nursery.start_soon(sender.run)

    async def wait_delivered(self) -> None:
        for sender in self.senders.values():
            await sender.wait_idle()

    def close(self) -> Leftover:
        """Move what is still in memory to each node's spool (without one, it is lost)."""
        spooled = sum(sender.spill_to_spool() for sender in self.senders.values())
        lost = sum(sender.dropped["shutdown"] for sender in self.senders.values())
        return Leftover(spooled_lines=spooled, lost_lines=lost)

    def statistics(self) -> dict[CarbonNode, SenderStatistics]:
        """Every node's sender snapshot."""
        return {node: sender.statistics() for node, sender in self.senders.items()}

    def readings(self) -> list[Reading]:
        """Every node's figures, as ``aggregator.carbon.<node>.<measure>``."""
        return [reading for node, stats in self.statistics().items()
                for reading in read("aggregator", "carbon", stats,
                                    instance=path_component(str(node)))]

    def etsy_status(self) -> EtsyStatus:
        """Etsy's four graphite backend figures, over every node: the oldest node's last
        flush, the latest exception, the slowest write (ms) and the bytes of all."""
        stats = self.statistics().values()
        return EtsyStatus("graphite", "graphiteStats", {
            "last_flush": round(min(s.last_flush_time for s in stats)),
            "last_exception": round(max(s.last_exception_time for s in stats)),
            "flush_time": round(max(s.flush_time_ms for s in stats)),
            "flush_length": sum(s.flush_length for s in stats),
        }, flush_order=("last_exception", "last_flush", "flush_time", "flush_length"))
