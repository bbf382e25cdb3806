"""`serve`: runs one proxy process until told to stop.

`serve` reads top to bottom, one named step each, every task in one nursery it owns:

1. `build_components`: the `proxy.pipeline.Pipeline` (membership, auth, router,
   forwarders, intake counters) and the management console that reads its statistics;
2. `bind`: the intake sockets (or the ones ``--processes`` bound already) and the admin
   port;
3. `start_components`: resolve every aggregator's address, ask the UDP ones with an admin
   port for their workers (`proxy.workers`), then run each forwarder with its health
   monitor and its resolver (DNS) in a cancel scope of its own, the tail flusher, the drop
   reporter and the admin server; then the HTTP admin (`proxy.admin`) and its interval task
   (self-metrics, kernel drops, rates);
4. `run_intake`: every intake socket, in a cancel scope of its own;
5. with ``reload_trigger``, `proxy.switch.Reloader` applies each reloaded configuration
   (a changed aggregator list at its instant);
6. `stop` (``shutdown_trigger`` returned): health goes ``down``, the intake closes after
   reading what the kernel already queued, every pending line is sent, and the forwarders
   deliver their queues, all bounded by ``graceful_timeout``; what is left is counted as
   dropped (``shutdown``).

SHELL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import attrs
import trio

from common.address import format_host_port
from common.admin.server import (
    listener_address,
    open_admin_listeners,
    parse_http_address,
    run_admin_server,
)
from common.errors import ConfigError
from common.listener import BoundAddresses, BoundSocket, bind_listeners, close_listener
from common.logging import log_event
from common.mgmt_server import open_mgmt_listeners, run_mgmt_server
from common.streams import StreamConnections, run_listeners, run_stream_listener

from .admin import ProxyAdmin, run_proxy_intervals
from .config import ProxyConfig, check_config
from .forwarders.base import SHUTDOWN, Forwarder
from .mgmt import ProxyMgmt
from .pipeline import Pipeline
from .probe import probe_forwarder, run_health_monitor
from .resolver import resolve_one, run_resolver
from .switch import Reloader

LOGGER = logging.getLogger(__name__)


@attrs.frozen
class ProxySockets:
    """What `bind` opened: the intake sockets, the admin listeners, their addresses, and
    the HTTP admin's listeners (none when ``http`` is off)."""

    intake: list[BoundSocket]
    mgmt: list[trio.SocketListener]
    addresses: BoundAddresses
    http: list[trio.SocketListener] = attrs.Factory(list)


async def serve(
    config: ProxyConfig,
    *,
    task_status: trio.TaskStatus[BoundAddresses] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    bound: list[BoundSocket] | None = None,
    process_index: int = 0,
    reload_trigger: Callable[[], Awaitable[ProxyConfig]] | None = None,
    wall_clock: Callable[[], float] = time.time,
    pending: ProxyConfig | None = None,
) -> None:
    """Run a proxy until ``shutdown_trigger`` returns (or forever), then stop gracefully.

    Args:
        config: the configuration.
        task_status: receives the `BoundAddresses` once every socket is bound.
        shutdown_trigger: awaited; when it returns, the graceful stop begins.
        bound: intake sockets already bound (``--processes``: one set per process).
        process_index: this process's number among ``config.processes`` (management port offset).
        reload_trigger: awaited repeatedly; each config it returns is applied
            (`proxy.switch.Reloader`).
        wall_clock: epoch seconds (the instant of a list change; tests inject their own).
        pending: a list change a supervisor scheduled before this process started (its
            instant in ``aggregators_from``), applied before the intake runs and never
            refused: a process started late holds, or switches at once.

    Raises:
        ConfigError: for an invalid configuration or a socket that cannot be bound.
    """
    check_config(config)
    pipeline, mgmt = build_components(config)
    admin = ProxyAdmin(config, pipeline, mgmt, process_index=process_index)
    sockets = await bind(config, bound=bound, process_index=process_index)
    reloader: Reloader | None = None
    try:
        async with trio.open_nursery() as nursery:
            scopes: dict[int, trio.CancelScope] = {}
            await start_components(nursery, config, pipeline, mgmt, sockets, scopes)
            if sockets.http:
                await nursery.start(partial(run_admin_server, sockets.http, admin,
                                            log_listening=False))
            nursery.start_soon(run_proxy_intervals, admin, sockets.intake)
            reloader = Reloader(config, pipeline, nursery=nursery, scopes=scopes,
                                start_forwarders=partial(start_forwarders, nursery, config),
                                wall_clock=wall_clock,
                                on_change=partial(show_config, mgmt, admin))
            if pending is not None:
                await reloader.apply(pending, handed=True)
            intake_scope = await nursery.start(run_intake, config, pipeline, sockets.intake)
            if reload_trigger is not None:
                nursery.start_soon(reloader.run, reload_trigger)
            log_started(config, pipeline, sockets, process_index)
            admin.serving = True
            task_status.started(sockets.addresses)
            if shutdown_trigger is None:
                await trio.sleep_forever()
            await shutdown_trigger()
            reloader.stop()
            await stop(reloader.config, pipeline, mgmt, sockets.intake, intake_scope)
            nursery.cancel_scope.cancel()
    finally:
        for b in sockets.intake:
            close_listener(b)
        for listener in sockets.http:
            listener.socket.close()
        staged = reloader.pending.added.values() if reloader and reloader.pending else ()
        for forwarder in [*pipeline.forwarders, *pipeline.retired, *staged]:
            forwarder.close()


async def bind(config: ProxyConfig, *, bound: list[BoundSocket] | None,
               process_index: int) -> ProxySockets:
    """Bind the intake sockets (unless given) and the management port (``mgmt_port`` plus the
    process's index). Raises `ConfigError`, with nothing left open, when one cannot be bound."""
    if bound is None:
        bound = bind_listeners(config.listen, reuse_port=config.reuse_port,
                               receive_buffer_bytes=config.udp_receive_buffer_bytes)
    mgmt_port = config.mgmt_port + process_index if config.mgmt_port else 0
    try:
        mgmt_listeners = await open_mgmt_listeners(config.mgmt_address, mgmt_port)
    except ConfigError:
        for b in bound:
            close_listener(b)
        raise
    try:
        http = await open_admin_listeners(http_address(config.http, process_index))
    except ConfigError:
        for b in bound:
            close_listener(b)
        for listener in mgmt_listeners:
            listener.socket.close()
        raise
    mgmt_host, mgmt_bound = mgmt_listeners[0].socket.getsockname()[:2]
    addresses = BoundAddresses(intake=tuple((b.url.scheme, b.address) for b in bound),
                               mgmt=f"{mgmt_host}:{mgmt_bound}")
    return ProxySockets(intake=bound, mgmt=mgmt_listeners, addresses=addresses, http=http)


def http_address(address: str, process_index: int) -> str:
    """Process i's HTTP admin address: PORT + i (port 0 stays 0: any free port)."""
    parsed = parse_http_address(address)
    if parsed is None or not parsed[1] or not process_index:
        return address
    host, port = parsed
    return format_host_port(host, port + process_index)


def build_components(config: ProxyConfig) -> tuple[Pipeline, ProxyMgmt]:
    """The pipeline, and the management console that reads its statistics."""
    pipeline = Pipeline(config)
    mgmt = ProxyMgmt(config, pipeline.readings, fingerprint=pipeline.membership.fingerprint)
    return pipeline, mgmt


def show_config(mgmt: ProxyMgmt, admin: ProxyAdmin, config: ProxyConfig,
                fingerprint: str) -> None:
    """What the management console's ``config`` and /status show, after a reload or a
    switch."""
    mgmt.config, mgmt.fingerprint = config, fingerprint
    admin.reconfigure(config)


async def start_components(nursery: trio.Nursery, config: ProxyConfig, pipeline: Pipeline,
                           mgmt: ProxyMgmt, sockets: ProxySockets,
                           scopes: dict[int, trio.CancelScope]) -> None:
    """Resolve the aggregators, then start every task but the intake."""
    await start_forwarders(nursery, config, pipeline.forwarders, scopes)
    if pipeline.keep_tails:
        nursery.start_soon(pipeline.run_tail_flusher)
    nursery.start_soon(pipeline.run_drop_reporter)
    await nursery.start(run_mgmt_server, sockets.mgmt, mgmt)


async def start_forwarders(nursery: trio.Nursery, config: ProxyConfig,
                           forwarders: Sequence[Forwarder],
                           scopes: dict[int, trio.CancelScope]) -> None:
    """Resolve each forwarder's aggregator, ask those with an admin port for their workers
    (before any line is routed to them), then run each forwarder's tasks (`run_forwarder`),
    its cancel scope put in ``scopes`` by ``id(forwarder)``."""
    for forwarder in forwarders:
        await resolve_one(forwarder)
    async with trio.open_nursery() as first_probes:
        for forwarder in forwarders:
            if forwarder.spec.admin_port is not None and forwarder.wants_workers:
                first_probes.start_soon(partial(probe_forwarder, forwarder,
                                                wait_seconds=config.connect_timeout))
    for forwarder in forwarders:
        scopes[id(forwarder)] = await nursery.start(run_forwarder, config, forwarder)


async def run_forwarder(config: ProxyConfig, forwarder: Forwarder, *,
                        task_status: trio.TaskStatus[trio.CancelScope]
                        = trio.TASK_STATUS_IGNORED) -> None:
    """One forwarder's delivery, health monitor and DNS resolver, until the scope it
    reports is cancelled."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as tasks:
            tasks.start_soon(forwarder.run)
            tasks.start_soon(partial(run_health_monitor, forwarder,
                                     interval=config.health_interval,
                                     wait_seconds=config.connect_timeout))
            tasks.start_soon(partial(run_resolver, [forwarder],
                                     interval=config.resolve_interval))
            task_status.started(scope)


async def run_intake(config: ProxyConfig, pipeline: Pipeline, bound: list[BoundSocket], *,
                     task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
                     ) -> None:
    """Receive on every intake socket until the scope it reports is cancelled."""
    connections = StreamConnections(max_connections=config.max_tcp_connections,
                                    stats=pipeline.intake,
                                    idle_timeout_seconds=config.tcp_idle_timeout_seconds)
    await run_listeners(
        bound, task_status=task_status, serve_datagrams=pipeline.run_datagram_intake,
        serve_stream=partial(run_stream_listener, handle=pipeline.handle_block,
                             max_line_bytes=config.max_line_bytes, connections=connections,
                             refused=pipeline.router.count_refused))


def log_started(config: ProxyConfig, pipeline: Pipeline, sockets: ProxySockets,
                process_index: int) -> None:
    addresses = sockets.addresses
    for kind, address in addresses.intake:
        log_event(LOGGER, "listening", kind=kind, address=address)
    log_event(LOGGER, "listening", kind="mgmt", address=addresses.mgmt)
    if sockets.http:
        log_event(LOGGER, "listening", kind="http", address=listener_address(sockets.http))
    log_event(LOGGER, "started", process=process_index, forward=config.forward,
              fingerprint=pipeline.membership.fingerprint,
              hash=pipeline.membership.hash_mode,
              aggregators=",".join(a.spec for a in config.aggregator))


async def stop(config: ProxyConfig, pipeline: Pipeline, mgmt: ProxyMgmt,
               bound: list[BoundSocket], intake_scope: trio.CancelScope) -> None:
    """The graceful stop (module docstring, step 5), bounded by ``graceful_timeout``."""
    log_event(LOGGER, "stopping", graceful_timeout=config.graceful_timeout)
    mgmt.health = "down"
    with trio.move_on_after(config.graceful_timeout) as deadline:
        intake_scope.cancel()
        for b in bound:
            if not b.url.is_stream:
                pipeline.drain_datagrams(b)
        pipeline.release_all()  # lines held by a list change, by the list in force
        pipeline.dispatch(final=True)
        for forwarder in [*pipeline.forwarders, *pipeline.retired]:
            if forwarder.up:
                await forwarder.wait_empty()
    undelivered = sum(f.drop_all(SHUTDOWN) for f in [*pipeline.forwarders, *pipeline.retired])
    log_event(LOGGER, "stopped", deadline_hit=deadline.cancelled_caught,
              undelivered_lines=undelivered,
              level=logging.WARNING if undelivered else logging.INFO)
