"""The proxy's HTTP admin (`common.admin.routes.AdminSource`), its loss accounting and its
self-metrics.

Totals (`common.admin.status`), since start, of this process:

* ``lines_in``: lines received (the router's ``received_lines``, refused ones included),
  less the proxy's own self-metric lines (``self_lines``);
* ``lines_out``: lines handed to the kernel for the aggregators, less ``self_lines``;
* ``buffered_lines``: lines waiting, held by a list change (counted in ``lines_in`` too),
  in the router (not yet packed, or a kept-back tail) and in every forwarder's queue;
* ``dropped_lines``: every drop by reason (the router's and the forwarders'), and
  ``kernel_overflow`` (datagrams the kernel dropped on the intake sockets).

``members`` lists the aggregators of the list in force, then those a list change removed
(state ``retired``), so every line of the totals is attributed to a member.

So ``lines_in == lines_out + sum(dropped_lines) + buffered_lines`` (``kernel_overflow``
aside: those datagrams' lines were never read). Self-metric lines travel like any line; a
dropped one is counted with the client lines' drops.

Self-metrics (`run_self_metrics`): every interval, each counter and level of the readings
``proxy.<component>.<rest>`` is sent as the gauge line
``tallyd.proxy.<identity>.<component>.<rest>:<value>|g`` through the proxy's own routing,
so it lands on the aggregator that owns its name like any client's line.

SHELL.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import trio

from common.admin.prometheus import format_metrics
from common.admin.status import (
    KERNEL_OVERFLOW,
    Member,
    RateTracker,
    StatusFacts,
    Totals,
    build_status,
    config_fingerprint,
)
from common.cli import package_version
from common.config import format_toml
from common.listener import BoundSocket
from common.netstat import udp_drops_total
from common.protocol import LineParser
from common.shard import worker_index
from common.stats import Reading, counter, numeric, read

from .config import ProxyConfig, plain_value
from .mgmt import ProxyMgmt
from .pipeline import Pipeline
from .routing import BAD, count_lines

SECRET_KEYS = ("auth_tokens", "auth_revoked_tokens")
#: A member removed by a list change: its state in /status, and its index (no position in
#: the list in force, so a report by position never sums it with a live aggregator's).
RETIRED_STATE: Final = "retired"
RETIRED_INDEX: Final = -1


def proxy_identity(config: ProxyConfig, process_index: int) -> str:
    """The proxy's name in its self-metrics and /status: ``identity`` or the host name;
    process i of several (``--processes``) appends ``-p<i>``."""
    base = config.identity or "".join(c if c.isalnum() or c in "-_" else "_"
                                      for c in socket.gethostname().split(".")[0])
    return f"{base}-p{process_index}" if config.processes > 1 else base


def interval_of(config: ProxyConfig) -> float:
    """The ``flush_interval`` /status shows: the proxy's setting of that name (the
    aggregators' interval, the period of its self-metrics and rates)."""
    return float(config.flush_interval)


def format_self_lines(identity: str, readings: Sequence[Reading], *, token: str = "") -> bytes:
    """The self-metric gauge lines of ``readings`` (module docstring); with ``token`` (auth
    on), each starts ``<token>.`` as a client's would, and the proxy strips it."""
    head = f"{token}." if token else ""
    lines = []
    for name, value in numeric(readings).items():
        role, _, rest = name.partition(".")
        number = int(value) if float(value).is_integer() else value
        lines.append(f"{head}tallyd.{role}.{identity}.{rest}:{number}|g")
    return "\n".join(lines).encode()


@attrs.frozen
class SelfMetricsStatistics:
    """The proxy's own lines."""

    self_lines: int = counter(help="self-metric lines the proxy sent through its routing")


class ProxyAdmin:
    """What the proxy's admin routes read (one process of ``--processes``)."""

    def __init__(self, config: ProxyConfig, pipeline: Pipeline, mgmt: ProxyMgmt, *,
                 process_index: int = 0, wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.pipeline = pipeline
        self.mgmt = mgmt
        self.process_index = process_index
        self.identity = proxy_identity(config, process_index)
        self.wall_clock = wall_clock
        self.started = wall_clock()
        self.serving = False
        self.self_lines = 0
        self.parser = LineParser(sanitize=config.key_name_sanitize, cache_bytes=0)
        self.rates = RateTracker()
        self.config_fingerprint = config_fingerprint(
            format_toml(config, plain=plain_value), SECRET_KEYS)

    def reconfigure(self, config: ProxyConfig) -> None:
        """A reload applied ``config``: /status shows its fingerprint."""
        self.config = config
        self.config_fingerprint = config_fingerprint(
            format_toml(config, plain=plain_value), SECRET_KEYS)

    def readings(self) -> list[Reading]:
        return [*self.pipeline.readings(),
                *read("proxy", "self", SelfMetricsStatistics(self.self_lines))]

    def buffered_lines(self) -> int:
        router = self.pipeline.router
        waiting = sum(count_lines(item) for lines in router.pending for item in lines)
        return waiting + self.pipeline.held_lines + sum(
            f.queued_lines for f in [*self.pipeline.forwarders, *self.pipeline.retired])

    def totals(self) -> Totals:
        router = self.pipeline.router.statistics()
        forwarders = self.pipeline.statistics()
        dropped = dict(forwarders.dropped_lines)
        dropped[KERNEL_OVERFLOW] = self.pipeline.intake.kernel_drops
        held = self.pipeline.held_lines  # not routed yet: in lines_in and buffered_lines
        return Totals(lines_in=router.received_lines + held - self.self_lines,
                      lines_out=forwarders.sent_lines - self.self_lines,
                      buffered_lines=self.buffered_lines(), dropped_lines=dropped,
                      self_lines=self.self_lines)

    def members(self) -> list[Member]:
        """The aggregators of the list in force (``index``: their position), then those a
        list change removed (state ``retired``, index ``RETIRED_INDEX``: no position;
        reason ``draining``, then ``closed``: one member per aggregator, every removal
        summed), whose lines the totals count too."""
        out = []
        for forwarder in self.pipeline.forwarders:
            stats = forwarder.statistics()
            out.append(Member(
                kind="aggregator", index=forwarder.index, name=stats.aggregator,
                address="" if stats.address == "unresolved" else stats.address,
                state=stats.state, reason="" if stats.reason == "none" else stats.reason,
                sent_lines=stats.sent_lines, buffered_lines=stats.buffered_lines,
                buffer_capacity_lines=None, dropped_lines=dict(stats.dropped_lines)))
        for forwarder in self.pipeline.retired:
            stats = forwarder.statistics()
            out.append(Member(
                kind="aggregator", index=RETIRED_INDEX, name=stats.aggregator,
                address="" if stats.address == "unresolved" else stats.address,
                state=RETIRED_STATE, reason="draining", sent_lines=stats.sent_lines,
                buffered_lines=stats.buffered_lines, buffer_capacity_lines=None,
                dropped_lines=dict(stats.dropped_lines)))
        for closed in self.pipeline.closed.values():
            out.append(Member(
                kind="aggregator", index=RETIRED_INDEX, name=closed.name,
                address="" if closed.address == "unresolved" else closed.address,
                state=RETIRED_STATE, reason="closed", sent_lines=closed.sent_lines,
                buffer_capacity_lines=None, dropped_lines=dict(closed.dropped_lines)))
        return out

    # -- AdminSource --------------------------------------------------------------------

    def not_ready(self) -> list[str]:
        reasons = []
        if not self.serving:
            reasons.append("starting")
        if self.mgmt.health != "up":
            reasons.append("health_down")
        if not any(f.up for f in self.pipeline.forwarders):
            reasons.append("no_aggregator_up")
        return reasons

    async def status(self) -> dict[str, Any]:
        facts = StatusFacts(
            role="proxy", identity=self.identity, version=package_version(),
            pid=os.getpid(), started=self.started, health=self.mgmt.health,
            not_ready=self.not_ready(), flush_interval=interval_of(self.config),
            membership_fingerprint=self.pipeline.membership.fingerprint,
            config_fingerprint=self.config_fingerprint, members=self.members(), workers=1,
            totals=self.totals())
        return build_status(facts, self.readings(), now=self.wall_clock(),
                            rates=self.rates.rates())

    async def metrics(self) -> bytes:
        return format_metrics(({}, r) for r in self.readings())

    async def route(self, name: str) -> dict[str, Any] | None:
        router = self.pipeline.router
        index = router.index_of_key(name.encode())
        if index == BAD:
            return {"name": name, "aggregator": None, "reason": "no usable metric name"}
        forwarder = self.pipeline.forwarders[index]
        stats = forwarder.statistics()
        workers = router.workers[index]
        graphite_name = self.parser.name_of(name.encode())
        return {"name": name, "aggregator": index, "spec": stats.aggregator,
                "address": stats.address, "state": stats.state,
                "membership": self.pipeline.membership.fingerprint,
                "workers": workers or None,
                "worker": worker_index(graphite_name, workers) if workers else None}

    # -- the interval tasks ---------------------------------------------------------------

    def read_kernel_drops(self, sockets: Sequence[BoundSocket]) -> None:
        self.pipeline.intake.kernel_drops = udp_drops_total(
            b.sock for b in sockets if b.url.scheme == "udp")

    def send_self_metrics(self) -> None:
        token = self.config.auth_tokens[0] if self.config.auth == "token" else ""
        block = format_self_lines(self.identity, self.readings(), token=token)
        if block:
            self.self_lines += block.count(b"\n") + 1
            self.pipeline.handle_block(block)


async def run_proxy_intervals(admin: ProxyAdmin, sockets: Sequence[BoundSocket]) -> None:
    """Every ``flush_interval`` (read again each time: a reload may change it): read the
    kernel drops, sample the rates and, with ``self_metrics``, send the self-metrics. Until
    cancelled.

    The proxy keeps no wall-clock boundaries (its lines carry no timestamp), so the
    interval is trio's clock: an aggregator's flush holds one value of each gauge whatever
    the phase."""
    admin.read_kernel_drops(sockets)
    admin.rates.sample(trio.current_time(), admin.totals())
    deadline = trio.current_time()
    while True:
        deadline += interval_of(admin.config)
        await trio.sleep_until(deadline)
        admin.read_kernel_drops(sockets)
        if admin.config.self_metrics:
            admin.send_self_metrics()
        admin.rates.sample(trio.current_time(), admin.totals())
