"""`serve`: runs one aggregator process until told to stop.

Wiring, all inside one nursery owned by `serve`:

    intake sockets --handle(packet)--> Accumulator (the ledger, single-threaded)
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

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Protocol

import attrs
import trio

from common.address import format_host_port
from common.auth import TokenAuth, make_auth
from common.errors import ConfigError
from common.listener import (
    BoundAddresses,
    BoundSocket,
    DatagramReader,
    IntakeCounters,
    adopt_socket,
    bind_listeners,
    close_listener,
    run_datagram_listener,
)
from common.logging import log_event, set_level
from common.mgmt_server import open_mgmt_listeners, run_mgmt_server
from common.netstat import udp_socket_drops
from common.streams import StreamConnections, run_stream_listener

from .backends.carbon import CarbonOutput
from .backends.console import ConsoleOutput
from .backends.render import GraphiteRenderer
from .config import AggregatorConfig, identity_from_hostname
from .flusher import Flusher, final_flush_plan, flush_sequence
from .ledger import Accumulator
from .mgmt import AggregatorMgmt, WorkerMgmtPeers, open_worker_mgmt
from .workers.context import WorkerContext
from .workers.exchange import Exchange

LOGGER = logging.getLogger(__name__)

#: How often kept bad lines are logged (each period logs at most `MAX_KEPT_ERRORS`).
BAD_LINE_LOG_PERIOD_SECONDS = 1.0



async def _run_reloads(
    reload_trigger: Callable[[], Awaitable[AggregatorConfig]],
    config: AggregatorConfig,
    flusher: Flusher,
    aggregator: Accumulator,
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
        aggregator.reconfigure(current.ledger_options)
        set_level(current.log_level)
        log_event(LOGGER, "reloaded", applied=",".join(applied) or "none",
                  restart_required=",".join(ignored) or "none",
                  level=logging.WARNING if ignored else logging.INFO)


async def _report_bad_lines(aggregator: Accumulator) -> None:
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



async def serve(
    config: AggregatorConfig,
    *,
    task_status: trio.TaskStatus[BoundAddresses] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    reload_trigger: Callable[[], Awaitable[AggregatorConfig]] | None = None,
    wall_clock: Callable[[], float] = time.time,
    worker: WorkerContext | None = None,
) -> None:
    """Run an aggregator until ``shutdown_trigger`` returns (or forever), then stop gracefully.

    Args:
        config: the configuration.
        task_status: receives the `BoundAddresses` once every socket is bound.
        shutdown_trigger: awaited; when it returns, the graceful stop begins.
        reload_trigger: awaited repeatedly; each config it returns is applied (the
            reloadable settings; the others are logged as needing a restart).
        wall_clock: epoch seconds (tests inject a fake one).
        worker: set when this process is one worker of several (`aggregator.supervisor`
            bound the sockets); None for a single-process aggregator.

    Raises:
        ConfigError: when a socket cannot be bound or the ring is invalid.
    """
    first = worker is None or worker.index == 0
    options = attrs.evolve(config.ledger_options, report_internal=first)
    aggregator = Accumulator(options)
    carbon = CarbonOutput(config) if config.carbon else None
    console = ConsoleOutput() if config.console else None
    outputs: list[Any] = [o for o in (carbon, console) if o is not None]
    intake = IntakeCounters()
    identity = config.identity or identity_from_hostname(socket.gethostname())
    exchange: Exchange | None = None
    admin_peers: WorkerMgmtPeers | None = None
    if worker is None:
        bound = bind_listeners(config.listen, reuse_port=config.reuse_port,
                               receive_buffer_bytes=config.udp_receive_buffer_bytes)
        try:
            mgmt_listeners = await open_mgmt_listeners(config.mgmt_address, config.mgmt_port)
        except ConfigError:
            for b in bound:
                close_listener(b)
            raise
    else:
        bound = [adopt_socket(url, sock)
                 for url, sock in zip(config.listen, worker.sockets, strict=True)]
        mgmt_listeners = ([trio.SocketListener(trio.socket.from_stdlib_socket(worker.mgmt))]
                          if worker.mgmt is not None else [])
        identity = f"{identity}-w{worker.index}"
        if worker.index:
            mgmt_listeners.append(await open_worker_mgmt(worker.admin_address(worker.index)))
        else:
            admin_peers = WorkerMgmtPeers({i: worker.admin_address(i)
                                            for i in range(1, worker.count)})
    auth = make_auth(config.auth, config.auth_tokens, config.auth_revoked_tokens)

    def handle_batch(datagrams: list[bytes]) -> None:
        handle(b"\n".join(datagrams), packets=len(datagrams))

    def refused(reason: str, lines: int) -> None:
        # Lines the intake refused before parsing (too long, cut): received and bad.
        aggregator.add_intake(0, lines, lines)
        aggregator.bad_lines_total += lines

    connections = StreamConnections(
        max_connections=config.max_tcp_connections, stats=intake,
        idle_timeout_seconds=config.tcp_idle_timeout_seconds,
        table=worker.connections if worker is not None else None)

    admin = AggregatorMgmt(config, aggregator, carbon, intake, auth)

    def internal_values() -> dict[str, float]:
        values: dict[str, float] = {}
        if carbon is not None:
            if first:
                values.update(carbon.graphite_stats())
            if flusher.self_metrics:
                values.update(carbon.self_metrics(identity))
        if exchange is not None and flusher.self_metrics:
            values.update(exchange_metrics(exchange, identity))
        if flusher.self_metrics:
            values.update(aggregator.drop_metrics(f"tallyd.{identity}.ledger."))
        if auth is not None and flusher.self_metrics:
            refused = auth.statistics().refused_lines
            head = f"tallyd.{identity}.auth.refused_lines."
            values.update({head + reason: refused[reason]
                           for reason in ("missing", "invalid", "revoked")})
        return values

    mgmt = ""
    if mgmt_listeners and mgmt_listeners[0].socket.family != socket.AF_UNIX:
        mgmt_host, mgmt_port = mgmt_listeners[0].socket.getsockname()[:2]
        mgmt = format_host_port(mgmt_host, mgmt_port)
    addresses = BoundAddresses(intake=tuple((b.url.scheme, b.address) for b in bound), mgmt=mgmt)
    try:
        if worker is not None:
            # Made in the try whose finally closes it: its socket file never stays behind.
            exchange = Exchange(worker, aggregator, config.flush_interval)
        handle: Intake = exchange.handle if exchange is not None else aggregator.ingest
        if auth is not None:
            handle = authenticated(handle, auth)
        handle = noting_arrival(handle, aggregator)
        flusher = Flusher(aggregator, GraphiteRenderer(config.naming), outputs,
                          config.flush_interval, internal_values=internal_values,
                          coordinator=exchange)
        flusher.self_metrics = config.self_metrics
        async with trio.open_nursery() as nursery:
            for output in outputs:
                if isinstance(output, CarbonOutput):
                    for sender in output.senders.values():
                        nursery.start_soon(sender.run)
                else:
                    nursery.start_soon(output.run)
            if mgmt_listeners:
                await nursery.start(partial(run_mgmt_server, mgmt_listeners, admin,
                                            peers=admin_peers))
            if exchange is not None:
                nursery.start_soon(exchange.run)
            intake_scope = trio.CancelScope()

            async def run_intake() -> None:
                with intake_scope:
                    async with trio.open_nursery() as inner:
                        for b in bound:
                            if b.url.is_stream:
                                inner.start_soon(partial(
                                    run_stream_listener, b, handle,
                                    max_line_bytes=config.max_line_bytes,
                                    connections=connections, refused=refused))
                            else:
                                inner.start_soon(partial(run_datagram_listener, b, handle,
                                                         handle_batch=handle_batch,
                                                         stats=intake, refused=refused))

            nursery.start_soon(run_intake)
            flush_scope = trio.CancelScope()

            async def run_flusher() -> None:
                with flush_scope:
                    await flusher.run(wall_clock=wall_clock)

            nursery.start_soon(run_flusher)
            nursery.start_soon(_report_bad_lines, aggregator)
            if reload_trigger is not None:
                nursery.start_soon(_run_reloads, reload_trigger, config, flusher, aggregator)
            if worker is None:
                log_listening(config, bound, addresses.mgmt)
            log_event(LOGGER, "started" if worker is None else "worker_started",
                      worker=worker.index if worker else 0, pid=os.getpid(),
                      generation=worker.generation if worker else 0,
                      flush_interval=config.flush_interval,
                      carbon=",".join(str(n) for n in config.carbon) or "none",
                      ring=carbon.placement.ring.fingerprint() if carbon else "none")
            task_status.started(addresses)

            if shutdown_trigger is None:
                await trio.sleep_forever()
            await shutdown_trigger()

            admin.health = "down"
            with trio.move_on_after(config.graceful_timeout) as deadline:
                flush_scope.cancel()
                stamp, wait = final_flush_plan(wall_clock(), config.flush_interval,
                                               config.graceful_timeout)
                log_event(LOGGER, "stopping", graceful_timeout=config.graceful_timeout,
                          final_flush_timestamp=stamp, waiting_seconds=f"{wait:.1f}")
                # Intake stays open (health says down, so proxies stop sending) until the
                # interval ends: its final flush then carries the interval's own timestamp.
                while (left := stamp - wall_clock()) > 0 and wait > 0:  # noqa: ASYNC110
                    await trio.sleep(left)
                intake_scope.cancel()
                for b in bound:
                    if not b.url.is_stream:
                        reader = DatagramReader(b, stats=intake, refused=refused)
                        while reader.drain(handle, 10_000) == 10_000:
                            pass
                sequence = flush_sequence(stamp, config.flush_interval) if wait > 0 else None
                if exchange is not None:
                    exchange.finish()
                await flusher.flush(stamp, sequence=sequence)
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
        if exchange is not None:
            exchange.close()
        if worker is None:
            for b in bound:
                close_listener(b)


class Intake(Protocol):
    """The aggregator's intake callback: a block of lines, and how many datagrams it joins."""

    def __call__(self, packet: bytes, *, packets: int = 1) -> None: ...


def authenticated(handle: Intake, auth: TokenAuth) -> Intake:
    """Wrap the intake callback: tokens are checked and stripped before anything else."""
    def handle_authenticated(packet: bytes, *, packets: int = 1) -> None:
        handle(auth.filter_packet(packet), packets=packets)

    return handle_authenticated


def noting_arrival(handle: Intake, aggregator: Accumulator) -> Intake:
    """Wrap the intake callback: note when the last message arrived (admin ``stats``)."""
    def handle_noted(packet: bytes, *, packets: int = 1) -> None:
        aggregator.last_message_time = time.time()
        handle(packet, packets=packets)

    return handle_noted


def log_listening(config: AggregatorConfig, bound: Sequence[BoundSocket], mgmt: str) -> None:
    """The ``event=listening`` lines scripts and tests read to find the bound ports."""
    for b in bound:
        log_event(LOGGER, "listening", kind=b.url.scheme, address=b.address)
    log_event(LOGGER, "listening", kind="mgmt", address=mgmt)
    for b in bound:
        if b.url.scheme == "udp":
            log_event(LOGGER, "udp_receive_buffer", address=b.address,
                      bytes=b.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                      drops=udp_socket_drops(b.sock))


def exchange_metrics(exchange: Exchange, identity: str) -> dict[str, float]:
    """A worker's exchange figures (totals since start), under ``tallyd.<identity>.``."""
    head = f"tallyd.{identity}.exchange."
    return {
        head + "forwarded_lines": exchange.forwarded_lines,
        head + "received_lines": exchange.received_lines,
        **{head + "dropped_lines." + reason: exchange.dropped[reason]
           for reason in ("worker_down", "exchange_full", "too_large", "truncated",
                          "send_failed")},
        **{head + "dropped_messages." + reason: exchange.dropped_messages[reason]
           for reason in ("malformed", "truncated", "send_failed")},
        f"tallyd.{identity}.worker.generation": exchange.context.generation,
        **exchange.worker_deaths(f"tallyd.{identity}.workers."),
    }
