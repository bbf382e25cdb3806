"""`serve`: runs one aggregator process until told to stop.

Wiring, all inside one nursery owned by `serve`:

    intake sockets --handle(packet)--> Aggregator (the ledger, single-threaded)
    Flusher (every interval) --swap--> render --> CarbonOutput --> one CarbonSender per node
                                               `-> ConsoleOutput
    admin TCP (Etsy management protocol), bad-line reporter, signals (from the CLI)

Graceful stop (SIGTERM, or ``shutdown_trigger`` returning): report health down, read what
the kernel already queued on the datagram sockets, close intake, run a final flush stamped
with the interval in progress, and wait for the outputs to deliver it, the whole sequence
bounded by ``graceful_timeout`` seconds.

SHELL.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from common.admin_server import run_admin_server
from common.errors import ConfigError
from common.listener import (
    BoundSocket,
    IntakeStatistics,
    bind_listener,
    close_listener,
    drain_datagrams,
    run_datagram_listener,
    run_stream_listener,
)
from common.logging import log_event, set_level
from common.netstat import udp_socket_drops
from common.ring import CarbonNode, Ring

from .backends.console import ConsoleOutput
from .backends.graphite import CarbonSender, SenderStatistics
from .config import AggregatorConfig, identity_from_hostname
from .flush import GraphiteRenderer
from .flusher import Flusher
from .ledger import Aggregator
from .placement import Placement
from .spool import Spool

LOGGER = logging.getLogger(__name__)

#: How often kept bad lines are logged (each period logs at most `MAX_KEPT_ERRORS`).
BAD_LINE_LOG_PERIOD_SECONDS = 1.0


@attrs.frozen
class BoundAddresses:
    """What `serve` bound, for tests and scripts: ``(kind, address)`` per intake socket."""

    intake: tuple[tuple[str, str], ...]
    mgmt: str

    def first(self, kind: str) -> str:
        return next(address for k, address in self.intake if k == kind)


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


class AggregatorAdmin:
    """The aggregator as the management protocol sees it."""

    def __init__(self, config: AggregatorConfig, aggregator: Aggregator,
                 carbon: CarbonOutput | None, intake: IntakeStatistics) -> None:
        self.config = config
        self.aggregator = aggregator
        self.carbon = carbon
        self.intake = intake
        self.health = config.health_status
        self.started = time.time()
        self.last_msg_seen = self.started

    def stats_lines(self) -> Sequence[tuple[str, object]]:
        now = time.time()
        agg = self.aggregator
        lines: list[tuple[str, object]] = [
            ("uptime", round(now - self.started)),
            ("messages.last_msg_seen", round(now - self.last_msg_seen)),
            ("messages.bad_lines_seen", agg.bad_lines_total),
            ("intake.stream_connections", self.intake.stream_connections),
            ("intake.stream_connections_refused", self.intake.stream_connections_refused),
        ]
        if self.carbon is not None:
            for sender in self.carbon.senders.values():
                s = sender.statistics()
                lines += [
                    (f"graphite.{s.node}.connected", int(s.connected)),
                    (f"graphite.{s.node}.sent_lines", s.sent_lines),
                    (f"graphite.{s.node}.buffered_lines", s.buffered_lines),
                    (f"graphite.{s.node}.spooled_lines", s.spooled_lines),
                    (f"graphite.{s.node}.dropped_lines", s.dropped_lines),
                    (f"graphite.{s.node}.reconnects", s.reconnects),
                    (f"graphite.{s.node}.last_flush", round(now - s.last_flush)),
                    (f"graphite.{s.node}.last_exception",
                     round(now - s.last_exception) if s.last_exception else "never"),
                ]
        return lines

    def config_lines(self) -> Sequence[tuple[str, object]]:
        from .config import plain_value

        return [(f.name, json.dumps(plain_value(f.name, getattr(self.config, f.name))))
                for f in attrs.fields(AggregatorConfig)]

    def dump(self, kind: str) -> str | None:
        agg = self.aggregator
        data: dict[bytes, Any]
        if kind == "counters":
            data = agg.ledger.counters
        elif kind == "gauges":
            data = agg.gauges
        else:
            data = {k: list(v) for k, v in agg.ledger.timers.items()}
            data.update({k: [] for k in agg.known_timers if k not in data})
        return json.dumps({k.decode("ascii", "replace"): v for k, v in data.items()},
                          indent=2, sort_keys=True)

    def delete(self, kind: str, names: Sequence[str]) -> list[str]:
        deleted = self.aggregator.delete(kind, [n.encode() for n in names])
        return [d.decode("ascii", "replace") for d in deleted]


async def _run_reloads(
    reload_trigger: Callable[[], Awaitable[AggregatorConfig]],
    config: AggregatorConfig,
    flusher: Flusher,
    aggregator: Aggregator,
) -> None:
    """Apply each reloaded config: the reloadable settings now, the rest after a restart."""
    current = config
    while True:
        new = await reload_trigger()
        changed = [f for f in attrs.fields(AggregatorConfig)
                   if getattr(new, f.name) != getattr(current, f.name)]
        applied = [f.name for f in changed if f.metadata["reloadable"]]
        ignored = [f.name for f in changed if not f.metadata["reloadable"]]
        current = attrs.evolve(current, **{name: getattr(new, name) for name in applied})
        flusher.renderer = GraphiteRenderer(current.naming)
        flusher.self_metrics = current.self_metrics
        aggregator.options = current.ledger_options
        set_level(current.log_level)
        log_event(LOGGER, "reloaded", applied=",".join(applied) or "none",
                  restart_required=",".join(ignored) or "none",
                  level=logging.WARNING if ignored else logging.INFO)


async def _report_bad_lines(aggregator: Aggregator) -> None:
    reported = 0
    while True:
        await trio.sleep(BAD_LINE_LOG_PERIOD_SECONDS)
        for error in aggregator.take_errors():
            log_event(LOGGER, "bad_line", level=logging.WARNING, reason=error.reason,
                      line=error.line[:200], detail=error.detail)
        total = aggregator.bad_lines_total
        if total > reported:
            log_event(LOGGER, "bad_lines", level=logging.WARNING, count=total - reported,
                      total=total)
            reported = total


def bind_all(config: AggregatorConfig) -> list[BoundSocket]:
    bound: list[BoundSocket] = []
    try:
        for url in config.listen:
            bound.append(bind_listener(url, receive_buffer_bytes=config.udp_receive_buffer_bytes))
    except ConfigError:
        for b in bound:
            close_listener(b)
        raise
    return bound


async def serve(
    config: AggregatorConfig,
    *,
    task_status: trio.TaskStatus[BoundAddresses] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    reload_trigger: Callable[[], Awaitable[AggregatorConfig]] | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> None:
    """Run an aggregator until ``shutdown_trigger`` returns (or forever), then stop gracefully.

    Args:
        config: the configuration.
        task_status: receives the `BoundAddresses` once every socket is bound.
        shutdown_trigger: awaited; when it returns, the graceful stop begins.
        reload_trigger: awaited repeatedly; each config it returns is applied (the
            reloadable settings; the others are logged as needing a restart).
        wall_clock: epoch seconds (tests inject a fake one).

    Raises:
        ConfigError: when a socket cannot be bound or the ring is invalid.
    """
    aggregator = Aggregator(config.ledger_options)
    carbon = CarbonOutput(config) if config.carbon else None
    console = ConsoleOutput() if config.console else None
    outputs: list[Any] = [o for o in (carbon, console) if o is not None]
    intake = IntakeStatistics()
    bound = bind_all(config)
    mgmt_listeners = await trio.open_tcp_listeners(config.mgmt_port, host=config.mgmt_address)
    admin = AggregatorAdmin(config, aggregator, carbon, intake)

    def handle(packet: bytes) -> None:
        aggregator.ingest(packet)

    identity = config.identity or identity_from_hostname(socket.gethostname())

    def internal_values() -> dict[str, float]:
        if carbon is None:
            return {}
        values = carbon.graphite_stats()
        if flusher.self_metrics:
            values.update(carbon.self_metrics(identity))
        return values

    flusher = Flusher(aggregator, GraphiteRenderer(config.naming), outputs,
                      config.flush_interval, internal_values=internal_values)
    flusher.self_metrics = config.self_metrics
    mgmt_host, mgmt_port = mgmt_listeners[0].socket.getsockname()[:2]
    addresses = BoundAddresses(
        intake=tuple((b.url.scheme, b.address) for b in bound),
        mgmt=f"{mgmt_host}:{mgmt_port}",
    )
    try:
        async with trio.open_nursery() as nursery:
            for output in outputs:
                if isinstance(output, CarbonOutput):
                    for sender in output.senders.values():
                        nursery.start_soon(sender.run)
                else:
                    nursery.start_soon(output.run)
            await nursery.start(run_admin_server, mgmt_listeners, admin)
            intake_scope = trio.CancelScope()

            async def run_intake() -> None:
                with intake_scope:
                    async with trio.open_nursery() as inner:
                        for b in bound:
                            if b.url.is_stream:
                                inner.start_soon(partial(
                                    run_stream_listener, b, handle,
                                    max_line_bytes=config.max_line_bytes,
                                    max_connections=config.max_tcp_connections, stats=intake))
                            else:
                                inner.start_soon(run_datagram_listener, b, handle)

            nursery.start_soon(run_intake)
            flush_scope = trio.CancelScope()

            async def run_flusher() -> None:
                with flush_scope:
                    await flusher.run(wall_clock=wall_clock)

            nursery.start_soon(run_flusher)
            nursery.start_soon(_report_bad_lines, aggregator)
            if reload_trigger is not None:
                nursery.start_soon(_run_reloads, reload_trigger, config, flusher, aggregator)
            for kind, address in addresses.intake:
                log_event(LOGGER, "listening", kind=kind, address=address)
            log_event(LOGGER, "listening", kind="mgmt", address=addresses.mgmt)
            for b in bound:
                if b.url.scheme == "udp":
                    log_event(LOGGER, "udp_receive_buffer", address=b.address,
                              bytes=b.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), drops=udp_socket_drops(b.sock))
            log_event(LOGGER, "started", flush_interval=config.flush_interval,
                      carbon=",".join(str(n) for n in config.carbon) or "none",
                      ring=carbon.placement.ring.fingerprint() if carbon else "none")
            task_status.started(addresses)

            if shutdown_trigger is None:
                await trio.sleep_forever()
            await shutdown_trigger()

            log_event(LOGGER, "stopping", graceful_timeout=config.graceful_timeout)
            admin.health = "down"
            with trio.move_on_after(config.graceful_timeout) as deadline:
                flush_scope.cancel()
                intake_scope.cancel()
                for b in bound:
                    if not b.url.is_stream:
                        while drain_datagrams(b.sock, handle, 10_000) == 10_000:
                            pass
                await flusher.flush(flusher.final_timestamp(wall_clock()))
                if carbon is not None:
                    await carbon.wait_delivered()
                if console is not None:
                    await console.drain()
            spooled = carbon.spill_to_spool() if carbon is not None else 0
            lost = sum(s.dropped["shutdown"] for s in carbon.senders.values()) if carbon else 0
            log_event(LOGGER, "stopped", deadline_hit=deadline.cancelled_caught,
                      spooled_lines=spooled, lost_lines=lost,
                      level=logging.WARNING if lost else logging.INFO)
            nursery.cancel_scope.cancel()
    finally:
        for b in bound:
            close_listener(b)
