"""The aggregator's HTTP admin (`common.admin.routes.AdminSource`): /status, /metrics,
/readyz and /route/<name> from its live components.

With several workers, worker 0 serves the HTTP port (the supervisor bound it) and asks
every other worker for its figures over the management peers (their ``stats`` answer,
`aggregator.mgmt.WorkerMgmtPeers`); /status adds the workers' totals and Carbon figures
up, /metrics labels each worker's figures with ``worker``. A worker that does not answer
is named in ``not_ready`` (``worker_<i>_unreachable``) and left out. /route/<name> asks
the worker that owns the name (``route NAME`` on its management socket) for its values.

`run_accounting` reads the kernel's drop count of this process's UDP sockets every flush
interval and, where the HTTP port is served, samples the totals for the rates.

SHELL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import quote

import trio

from common.admin.prometheus import format_metrics
from common.admin.status import (
    RateTracker,
    StatusFacts,
    Totals,
    add_totals,
    build_status,
    config_fingerprint,
)
from common.cli import package_version
from common.config import format_toml
from common.httproutes import HTTPError
from common.listener import BoundSocket
from common.mgmt import END
from common.mgmt_server import PeerUnavailable
from common.netstat import udp_drops_total
from common.stats import Reading, path_component

from .accounting import aggregator_totals, carbon_instances, carbon_members, parse_stats_text
from .components import Components
from .config import AggregatorConfig, plain_value
from .flusher import Flusher, next_boundary
from .lookup import lookup_name
from .mgmt import AggregatorMgmt, WorkerMgmtPeers

LOGGER = logging.getLogger(__name__)

#: How long /status and /metrics wait for the other workers' figures, all asked at once:
#: well under a client's timeout (the cluster report's is 5 s), so one stalled worker is
#: named in not_ready instead of making the whole aggregator look unreachable.
PEER_STATUS_TIMEOUT: Final = 1.0

SECRET_KEYS = ("auth_tokens", "auth_revoked_tokens")


class AggregatorAdmin:
    """What the aggregator's admin routes read.

    Args:
        identity: the aggregator's identity (its workers' self-metric names add ``-w<i>``).
        workers: W.
        peers: worker 0's way to the other workers (None: a single process, or not 0).
        index: this process's worker index (0 for a single process).
        wall_clock: epoch seconds.
    """

    def __init__(self, config: AggregatorConfig, components: Components, mgmt: AggregatorMgmt,
                 flusher: Flusher, *, identity: str, workers: int = 1,
                 peers: WorkerMgmtPeers | None = None, index: int = 0,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.components = components
        self.mgmt = mgmt
        self.flusher = flusher
        self.identity = identity
        self.workers = workers
        self.peers = peers
        self.index = index
        self.wall_clock = wall_clock
        self.started = wall_clock()
        self.serving = False
        self.rates = RateTracker()
        self.unreachable: list[int] = []
        #: Every Carbon node of a ring in force so far: (name, host:port) by instance.
        self.known_carbon: dict[str, tuple[str, str]] = {}
        self.carbon_nodes()
        self.config_fingerprint = config_fingerprint(
            format_toml(config, plain=plain_value), SECRET_KEYS)

    def reconfigure(self, config: AggregatorConfig) -> None:
        """A reload applied ``config``: /status shows its fingerprint and interval."""
        self.config = config
        self.carbon_nodes()  # the ring in force until the boundary: remembered by name
        self.config_fingerprint = config_fingerprint(
            format_toml(config, plain=plain_value), SECRET_KEYS)

    # -- the parts --------------------------------------------------------------------------

    def carbon_nodes(self) -> list[tuple[str, str, str]]:
        """The ring's nodes as ``(name, host:port, instance)``; each is remembered (by
        instance) so that once a reload retires it, its member keeps its name."""
        carbon = self.components.carbon
        if carbon is None:
            return []
        nodes = [(str(node), f"{node.host}:{node.port}", path_component(str(node)))
                 for node in carbon.placement.ring.nodes]
        self.known_carbon.update((instance, (name, address))
                                 for name, address, instance in nodes)
        return nodes

    def ring_fingerprint(self) -> str:
        carbon = self.components.carbon
        return carbon.placement.ring.fingerprint() if carbon is not None else "none"

    async def parts(self) -> list[tuple[int, list[Reading], dict[str, object]]]:
        """``(worker, readings, figures by name)`` of this process and every other worker
        that answers (the others' readings rebuilt on this one's, by name)."""
        own = self.components.readings()
        out: list[tuple[int, list[Reading], dict[str, object]]] = [
            (0, own, {r.name: r.value for r in own})]
        if self.peers is None:
            self.unreachable = []
            return out
        shape = {r.name: r for r in own}
        replies: dict[int, str] = {}
        peers = self.peers

        async def ask(index: int) -> None:
            with contextlib.suppress(PeerUnavailable):
                replies[index] = await peers.ask_one(index, "stats")

        # Every worker at once, under one deadline: a stalled worker costs the answer
        # PEER_STATUS_TIMEOUT at most, and is named (not_ready) instead of failing it.
        with trio.move_on_after(PEER_STATUS_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for index in peers.addresses:
                    nursery.start_soon(ask, index)
        for index in peers.addresses:
            if index not in replies:
                continue
            values = parse_stats_text(replies[index])
            readings = [_like(shape[name], value) for name, value in values.items()
                        if name in shape]
            out.append((index, readings, dict(values)))
        self.unreachable = [index for index in peers.addresses if index not in replies]
        return out

    def totals_of(self, parts: Sequence[tuple[int, list[Reading], dict[str, object]]]
                  ) -> Totals:
        return add_totals(aggregator_totals(values, carbon_nodes=carbon_instances(values))
                          for _, _, values in parts)

    # -- AdminSource --------------------------------------------------------------------

    def not_ready(self) -> list[str]:
        reasons = []
        if not self.serving:
            reasons.append("starting")
        if self.mgmt.health != "up":
            reasons.append("health_down")
        if not self.components.backends:
            reasons.append("no_output")
        carbon = self.components.carbon
        if carbon is not None and not any(s.connected for s in carbon.senders.values()):
            reasons.append("no_carbon_node_connected")
        reasons += [f"worker_{i}_unreachable" for i in self.unreachable]
        return reasons

    async def status(self) -> dict[str, Any]:
        parts = await self.parts()
        totals = self.totals_of(parts)
        facts = StatusFacts(
            role="aggregator", identity=self.identity, version=package_version(),
            pid=os.getpid(), started=self.started, health=self.mgmt.health,
            not_ready=self.not_ready(), flush_interval=float(self.config.flush_interval),
            membership_fingerprint=self.ring_fingerprint(),
            config_fingerprint=self.config_fingerprint,
            members=carbon_members(self.carbon_nodes(), [values for _, _, values in parts],
                                   known=self.known_carbon),
            workers=self.workers, totals=totals)
        figures: list[Reading] = []
        for index, readings, _ in parts:
            if index == 0:
                figures += readings
            else:
                figures += [_renamed(r, f"worker.{index}.{r.name}") for r in readings]
        return build_status(facts, figures, now=self.wall_clock(), rates=self.rates.rates())

    async def metrics(self) -> bytes:
        parts = await self.parts()
        several = self.workers > 1
        return format_metrics(({"worker": str(index)} if several else {}, reading)
                              for index, readings, _ in parts for reading in readings)

    def local_route(self, name: str) -> dict[str, Any] | None:
        """Where ``name`` goes as this process sees it (its values only if it owns it)."""
        carbon = self.components.carbon
        now = self.wall_clock()
        return lookup_name(
            name, accumulator=self.components.accumulator, naming=self.flusher.renderer.naming,
            ring=carbon.placement.ring if carbon is not None else None, workers=self.workers,
            timestamp=int(next_boundary(now, self.config.flush_interval)),
            interval=self.config.flush_interval, here=self.index)

    async def route(self, name: str) -> dict[str, Any] | None:
        found = self.local_route(name)
        if found is None:
            raise HTTPError(400, "bad_name", "no usable metric name")
        owner = found["worker"]
        if self.peers is None or owner == self.index:
            return found
        if owner not in self.peers.addresses:
            found["values_note"] = f"worker {owner} is not known to worker {self.index}"
            return found
        try:
            reply = await self.peers.ask_one(owner, f"route {quote(name, safe='')}")
            theirs = json.loads(reply.removesuffix(END).strip())
        except (PeerUnavailable, ValueError):
            found["values_note"] = f"worker {owner} did not answer"
            return found
        return theirs if isinstance(theirs, dict) and "paths" in theirs else found

    # -- the interval task --------------------------------------------------------------

    def read_kernel_drops(self, sockets: Sequence[BoundSocket]) -> None:
        """The kernel's drop count of the UDP sockets this process reads."""
        self.components.intake.kernel_drops = udp_drops_total(
            b.sock for b in sockets if b.url.scheme == "udp")


def _like(shape: Reading, value: object) -> Reading:
    """``shape`` with another process's value."""
    plain: int | float | str = value if isinstance(value, int | float | str) else str(value)
    return Reading(shape.name, plain, shape.kind, shape.help, shape.role, shape.component,
                   shape.instance, shape.measure, shape.key)


def _renamed(reading: Reading, name: str) -> Reading:
    return Reading(name, reading.value, reading.kind, reading.help, reading.role,
                   reading.component, reading.instance, reading.measure, reading.key)


async def run_accounting(admin: AggregatorAdmin, sockets: Sequence[BoundSocket], *,
                         sample: bool) -> None:
    """Every flush interval (at its boundary): read the kernel drops of ``sockets``; with
    ``sample``, sample the totals for the /status rates. Until cancelled.

    The first sample waits for the first boundary: the other workers may still be starting
    now (asking them would mark them unreachable in /readyz until the next sample)."""
    interval = admin.config.flush_interval
    admin.read_kernel_drops(sockets)
    while True:
        boundary = next_boundary(admin.wall_clock(), interval)
        while (left := boundary - admin.wall_clock()) > 0:  # noqa: ASYNC110 (a deadline)
            await trio.sleep(left)
        admin.read_kernel_drops(sockets)
        if sample:
            admin.rates.sample(admin.wall_clock(), admin.totals_of(await admin.parts()))
