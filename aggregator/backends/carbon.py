"""The aggregator's Carbon output: one sender per ring node, each line placed by its path.

The ring can change while the aggregator runs (a reload, `aggregator.reload`):
`CarbonOutput.change_ring` is called at a flush boundary, between two flushes, so every line
of one flush is placed on one ring. Nodes in both rings keep their senders (and their
connections and backlogs); added nodes get new senders; a retired node's sender keeps
delivering what it holds (in memory and in its spool), then closes (``event=carbon_retired``),
or after `RETIRED_DRAIN_SECONDS` gives the rest to its spool (kept on disk, sent if the node
rejoins the ring, as after a restart) or, without a spool, up (counted, reason
``shutdown``). Every node that was ever in the ring keeps its figures, so counters never go
backwards; a node that rejoins gets its old sender back.

SHELL (owns the senders; placement itself is the pure `aggregator.backends.placement`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import attrs
import trio

from common.logging import log_event
from common.ring import CarbonNode, Ring
from common.stats import Reading, path_component, read

from ..config import AggregatorConfig, carbon_ring
from . import EtsyStatus, Leftover
from .placement import Placement, RingChange, plan_ring_change
from .sender import CarbonSender, SenderStatistics
from .spool import Spool

LOGGER = logging.getLogger(__name__)

#: How long a retired node's sender may take to deliver its backlog. A live node drains
#: in well under a second; five minutes lets a node that was down when it left the ring
#: come back and take what was meant for it before the rest is spooled or given up.
RETIRED_DRAIN_SECONDS: Final = 300.0


@attrs.define
class Retirement:
    """A retired node's drain: ``scope`` ends it early when the node rejoins the ring;
    ``done`` is set once it ended, either way."""

    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)

    def recall(self) -> None:
        self.scope.cancel()
        self.done.set()


class CarbonOutput:
    """The Carbon `aggregator.backends.Backend`: places each line on the Carbon ring and
    hands it to that node's sender.

    Attributes:
        placement: the ring in force and its path cache.
        senders: the senders of the ring's nodes, in ring order.
    """

    def __init__(self, config: AggregatorConfig) -> None:
        self._config = config
        self._spool_root = Path(config.carbon_spool_dir) if config.carbon_spool_dir else None
        ring = carbon_ring(config)
        self.placement = Placement(ring)
        self.senders: dict[CarbonNode, CarbonSender] = {
            node: self._make_sender(node) for node in ring.nodes}
        #: Every sender ever made, by node, in the order they were made (figures).
        self._every: dict[CarbonNode, CarbonSender] = dict(self.senders)
        #: Retired nodes still delivering.
        self._retiring: dict[CarbonNode, Retirement] = {}
        #: The scope of each running sender task.
        self._running: dict[CarbonNode, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    def _make_sender(self, node: CarbonNode) -> CarbonSender:
        config, root = self._config, self._spool_root
        return CarbonSender(
            node, buffer_bytes=config.carbon_buffer_bytes,
            connect_timeout=config.carbon_connect_timeout,
            write_timeout=config.carbon_write_timeout,
            spool=(Spool(root / path_component(str(node)), config.carbon_spool_max_bytes)
                   if root is not None else None),
            replay_lines_per_second=config.carbon_replay_lines_per_second)

    def offer(self, payload: bytes) -> None:
        for node, block in self.placement.split(payload).items():
            self.senders[node].offer(block)

    async def run(self) -> None:
        """Run every node's sender (and the retired ones' drains) until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for node in (*self.senders, *self._retiring):
                    self._start(node)
                for node, retirement in self._retiring.items():
                    nursery.start_soon(self._drain, node, retirement)
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def _start(self, node: CarbonNode) -> None:
        if self._nursery is None or node in self._running:
            return  # `run` starts it
        scope = self._running[node] = trio.CancelScope()
        self._nursery.start_soon(self._run_sender, self._every[node], scope)

    async def _run_sender(self, sender: CarbonSender, scope: trio.CancelScope) -> None:
        with scope:
            await sender.run()

    def change_ring(self, ring: Ring) -> RingChange:
        """Place every line offered from now on on ``ring`` (call it between two flushes).

        Returns:
            which nodes stayed, were added and retired.

        Raises:
            OSError: an added node's spool directory cannot be made; the ring in force
                stays, unchanged.
        """
        change = plan_ring_change(self.placement.ring, ring)
        # Every new sender first (a spool directory may fail): then nothing has changed yet.
        self._every.update({node: self._make_sender(node) for node in change.added
                            if node not in self._every})
        for node in change.added:
            retirement = self._retiring.pop(node, None)
            if retirement is not None:
                retirement.recall()  # it rejoins while still delivering: it just goes on
            self._start(node)  # a new sender, or one that had closed when it retired
        for node in change.retired:
            retirement = self._retiring[node] = Retirement()
            if self._nursery is not None:
                self._nursery.start_soon(self._drain, node, retirement)
        self.senders = {node: self._every[node] for node in ring.nodes}
        self.placement = Placement(ring)
        return change

    def change_ring_at_boundary(self, ring: Ring, sequence: int, timestamp: int, *,
                                worker: int = 0) -> None:
        """`change_ring` as the flusher's boundary action for a reloaded ring
        (`aggregator.flusher.Flusher.at_next_boundary`): flush ``sequence``, stamped
        ``timestamp``, was the last placed on the old ring. Logs ``event=ring_changed``
        with both fingerprints (``worker``: this process's index, for the log)."""
        old = self.placement.ring.fingerprint()
        if ring.fingerprint() == old:
            return  # a later reload brought the ring in force back before the boundary
        try:
            change = self.change_ring(ring)
        except OSError as e:
            log_event(LOGGER, "ring_change_failed", level=logging.ERROR, old=old,
                      new=ring.fingerprint(), worker=worker, error=str(e))
            return
        log_event(LOGGER, "ring_changed", old=old, new=ring.fingerprint(), sequence=sequence,
                  last_timestamp=timestamp, worker=worker, kept=len(change.kept),
                  added=",".join(str(n) for n in change.added) or "none",
                  retired=",".join(str(n) for n in change.retired) or "none")

    async def _drain(self, node: CarbonNode, retirement: Retirement) -> None:
        """Let a retired node's sender deliver what it holds, then close it."""
        sender = self._every[node]
        with retirement.scope:
            with trio.move_on_after(RETIRED_DRAIN_SECONDS) as deadline:
                await sender.wait_idle()
            # No checkpoint from here on: a node that rejoins now finds it closed.
            del self._retiring[node]
            retirement.done.set()
            self._running.pop(node).cancel()
            kept = sender.spill_to_spool()
            stats = sender.statistics()
            log_event(LOGGER, "carbon_retired", node=str(node),
                      drained=not deadline.cancelled_caught,
                      sent_lines=stats.sent_lines, spooled_lines=kept,
                      dropped_lines=sum(stats.dropped_lines.values()),
                      level=logging.WARNING if deadline.cancelled_caught else logging.INFO)

    def _delivering(self) -> list[CarbonSender]:
        """The senders that may still hold output: the ring's and the retiring ones."""
        return [*self.senders.values(), *(self._every[node] for node in self._retiring)]

    async def wait_delivered(self) -> None:
        """Return once the ring's senders are idle and every retired node's sender has
        closed (delivered, or given up at its deadline)."""
        for sender in self.senders.values():
            await sender.wait_idle()
        for node, retirement in list(self._retiring.items()):
            await retirement.done.wait()
            if node in self.senders:  # it rejoined meanwhile
                await self.senders[node].wait_idle()

    def close(self) -> Leftover:
        """Move what is still in memory to each node's spool (without one, it is lost)."""
        spooled = sum(sender.spill_to_spool() for sender in self._delivering())
        lost = sum(sender.dropped["shutdown"] for sender in self._every.values())
        return Leftover(spooled_lines=spooled, lost_lines=lost)

    def statistics(self) -> dict[CarbonNode, SenderStatistics]:
        """The snapshot of every node's sender, retired nodes' included."""
        return {node: sender.statistics() for node, sender in self._every.items()}

    def readings(self) -> list[Reading]:
        """Every node's figures, as ``aggregator.carbon.<node>.<measure>``."""
        return [reading for node, stats in self.statistics().items()
                for reading in read("aggregator", "carbon", stats,
                                    instance=path_component(str(node)))]

    def etsy_status(self) -> EtsyStatus:
        """Etsy's four graphite backend figures, over every node of the ring: the oldest
        node's last flush, the latest exception, the slowest write (ms) and the bytes of
        all."""
        stats = [sender.statistics() for sender in self.senders.values()]
        return EtsyStatus("graphite", "graphiteStats", {
            "last_flush": round(min(s.last_flush_time for s in stats)),
            "last_exception": round(max(s.last_exception_time for s in stats)),
            "flush_time": round(max(s.flush_time_ms for s in stats)),
            "flush_length": sum(s.flush_length for s in stats),
        }, flush_order=("last_exception", "last_flush", "flush_time", "flush_length"))
