"""`serve`: runs one aggregator process until told to stop.

Wiring, all inside one nursery owned by `serve`:

    intake sockets (and the worker's own, worker_listen) --handle(packet)--> Accumulator
        (the ledger, single-threaded; with several workers, through the exchange)
    Flusher (every interval) --swap--> render --> each Backend (Carbon senders, console)
    mgmt TCP (Etsy's management protocol), bad-line reporter, reloads (from the CLI)
    HTTP admin (`aggregator.admin`: /status, /metrics, ...; worker 0 of several) and the
        accounting task (kernel drops and the /status rates, every interval)

`serve` reads top to bottom: bind the sockets, build the components, start the tasks,
wait for the stop, stop gracefully. Graceful stop (SIGTERM, or ``shutdown_trigger``
returning): report health down, read what the kernel already queued on the datagram
sockets, close intake, run a final flush stamped with the interval in progress, and wait
for the backends to deliver it, the whole sequence bounded by ``graceful_timeout`` seconds.

SHELL.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import attrs
import trio

from common.address import ListenURL, format_host_port
from common.admin.server import (
    adopt_admin_socket,
    listener_address,
    open_admin_listeners,
    run_admin_server,
)
from common.errors import ConfigError
from common.listener import (
    BoundAddresses,
    BoundSocket,
    adopt_socket,
    bind_listeners,
    close_listener,
)
from common.logging import log_event
from common.mgmt_server import open_mgmt_listeners, run_mgmt_server
from common.netstat import udp_socket_drops

from .admin import AggregatorAdmin, run_accounting
from .components import Components, build_components
from .config import AggregatorConfig, identity_from_hostname
from .flusher import Flusher, final_flush_plan, flush_sequence
from .intake import (
    Arrivals,
    IntakePath,
    bind_worker_endpoints,
    build_intake_path,
    drain_datagrams,
    run_intake,
)
from .ledger import Accumulator
from .mgmt import AggregatorMgmt, WorkerMgmtPeers, open_worker_mgmt
from .reloading import run_reloads, show_config
from .workers.context import WorkerContext

LOGGER = logging.getLogger(__name__)

#: How often kept bad lines are logged (each period logs at most `MAX_KEPT_ERRORS`).
BAD_LINE_LOG_PERIOD_SECONDS = 1.0


@attrs.frozen
class Sockets:
    """What `bind_sockets` opened: the intake sockets, the management listeners, on
    worker 0 of several the other workers' management addresses, and with
    ``worker_listen`` this process's own socket and every worker's port of it."""

    intake: list[BoundSocket]
    mgmt: list[trio.SocketListener]
    peers: WorkerMgmtPeers | None = None
    endpoint: BoundSocket | None = None
    endpoint_ports: tuple[int, ...] = ()
    #: The HTTP admin's listeners (none when ``http`` is off, and on workers but 0).
    http: list[trio.SocketListener] = attrs.Factory(list)

    @property
    def served(self) -> list[BoundSocket]:
        """Every socket intake reads: the shared ones, then this worker's own."""
        return [*self.intake, *([self.endpoint] if self.endpoint is not None else [])]

    def counted(self, worker: WorkerContext | None) -> list[BoundSocket]:
        """The sockets whose kernel drops this process counts: all it reads, but with
        several workers only worker 0 counts the shared ones."""
        if worker is None or worker.index == 0:
            return self.served
        return [self.endpoint] if self.endpoint is not None else []

    def addresses(self) -> BoundAddresses:
        mgmt = ""
        if self.mgmt and self.mgmt[0].socket.family != socket.AF_UNIX:
            host, port = self.mgmt[0].socket.getsockname()[:2]
            mgmt = format_host_port(host, port)
        return BoundAddresses(intake=tuple((b.url.scheme, b.address) for b in self.intake),
                              mgmt=mgmt)


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
        worker: set when this process is one worker of several (`aggregator.workers.pool`
            bound the sockets); None for a single-process aggregator.

    Raises:
        ConfigError: when a socket cannot be bound or the ring is invalid.
    """
    sockets = await bind_sockets(config, worker)
    components: Components | None = None
    try:
        components = build_components(config, worker)
        path = build_intake_path(config, components, worker)
        mgmt = AggregatorMgmt(config, components, workers=worker.count if worker else 1,
                              endpoint_ports=sockets.endpoint_ports)
        flusher = Flusher(components.accumulator, config.naming, components.backends,
                          config.flush_interval, identity=self_identity(config, worker),
                          self_metrics=config.self_metrics, readings=components.readings,
                          etsy_statuses=components.etsy_statuses,
                          coordinator=components.exchange, on_lines=components.flushes.add)
        admin = AggregatorAdmin(config, components, mgmt, flusher,
                                identity=admin_identity(config),
                                workers=worker.count if worker else 1, peers=sockets.peers,
                                index=worker.index if worker else 0, wall_clock=wall_clock)
        mgmt.route_lookup = admin.local_route
        async with trio.open_nursery() as nursery:
            for backend in components.backends:
                nursery.start_soon(backend.run)
            if sockets.mgmt:
                await nursery.start(partial(run_mgmt_server, sockets.mgmt, mgmt,
                                            peers=sockets.peers))
            if components.exchange is not None:
                nursery.start_soon(components.exchange.run)
            if sockets.http:
                await nursery.start(partial(run_admin_server, sockets.http, admin,
                                            log_listening=False))
            nursery.start_soon(partial(run_accounting, admin, sockets.counted(worker),
                                       sample=bool(sockets.http)))
            intake_scope = await nursery.start(run_intake, config, sockets.served, path)
            flush_scope = await nursery.start(run_flushes, flusher, wall_clock)
            nursery.start_soon(partial(report_bad_lines, components.accumulator, path.arrivals,
                                       quiet_seconds=config.flush_interval))
            if reload_trigger is not None:
                nursery.start_soon(partial(run_reloads, reload_trigger, config, flusher,
                                           components, on_applied=partial(show_config, mgmt,
                                                                          admin)))
            log_started(config, sockets, components, worker)
            admin.serving = True
            task_status.started(sockets.addresses())

            if shutdown_trigger is None:
                await trio.sleep_forever()
            await shutdown_trigger()

            mgmt.health = "down"
            await stop_gracefully(config, components, flusher, path, sockets.served,
                                  intake_scope=intake_scope, flush_scope=flush_scope,
                                  wall_clock=wall_clock)
            nursery.cancel_scope.cancel()
    finally:
        if components is not None and components.exchange is not None:
            components.exchange.close()
        for listener in (*sockets.mgmt, *sockets.http):  # their servers close them too
            listener.socket.close()
        if worker is None:
            for b in sockets.served:
                close_listener(b)


async def bind_sockets(config: AggregatorConfig, worker: WorkerContext | None) -> Sockets:
    """Bind the intake, own (``worker_listen``) and management sockets (a worker adopts the
    supervisor's instead).

    Raises:
        ConfigError: when a socket cannot be bound.
    """
    if worker is None:
        bound = bind_listeners(config.listen, reuse_port=config.reuse_port,
                               receive_buffer_bytes=config.udp_receive_buffer_bytes)
        try:
            endpoints = bind_worker_endpoints(
                config.worker_listen, 1, receive_buffer_bytes=config.udp_receive_buffer_bytes)
        except ConfigError:
            for b in bound:
                close_listener(b)
            raise
        try:
            mgmt = await open_mgmt_listeners(config.mgmt_address, config.mgmt_port)
        except ConfigError:
            for b in (*bound, *endpoints):
                close_listener(b)
            raise
        try:
            http = await open_admin_listeners(config.http)
        except ConfigError:
            for b in (*bound, *endpoints):
                close_listener(b)
            for listener in mgmt:
                listener.socket.close()
            raise
        return Sockets(bound, mgmt, endpoint=endpoints[0] if endpoints else None,
                       endpoint_ports=tuple(b.sock.getsockname()[1] for b in endpoints),
                       http=http)
    bound = [adopt_socket(url, sock)
             for url, sock in zip(config.listen, worker.sockets, strict=True)]
    endpoint = adopt_endpoint(worker)
    mgmt = ([trio.SocketListener(trio.socket.from_stdlib_socket(worker.mgmt))]
            if worker.mgmt is not None else [])
    peers = None
    if worker.index:
        mgmt.append(await open_worker_mgmt(worker.mgmt_address(worker.index)))
    else:
        peers = WorkerMgmtPeers({i: worker.mgmt_address(i) for i in range(1, worker.count)})
    http = adopt_admin_socket(worker.http) if worker.http is not None else []
    return Sockets(bound, mgmt, peers, endpoint=endpoint, endpoint_ports=worker.endpoint_ports,
                   http=http)


def adopt_endpoint(worker: WorkerContext) -> BoundSocket | None:
    """The worker's own socket as the supervisor bound it, if it handed one (what the
    supervisor bound is served, even if the file a restarted worker read since says
    otherwise)."""
    if worker.endpoint is None:
        return None
    host, port = worker.endpoint.getsockname()[:2]
    return adopt_socket(ListenURL("udp", host=host, port=port), worker.endpoint)


def admin_identity(config: AggregatorConfig) -> str:
    """The aggregator's identity in /status (its workers' together)."""
    return config.identity or identity_from_hostname(socket.gethostname())


def self_identity(config: AggregatorConfig, worker: WorkerContext | None) -> str:
    """This process's name in its self-metrics: a worker appends ``-w<index>``."""
    identity = config.identity or identity_from_hostname(socket.gethostname())
    return f"{identity}-w{worker.index}" if worker is not None else identity


async def run_flushes(flusher: Flusher, wall_clock: Callable[[], float], *,
                      task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    """Flush at every interval until the scope given to ``task_status`` is cancelled."""
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await flusher.run(wall_clock=wall_clock)


async def stop_gracefully(config: AggregatorConfig, components: Components, flusher: Flusher,
                          path: IntakePath, bound: Sequence[BoundSocket], *,
                          intake_scope: trio.CancelScope, flush_scope: trio.CancelScope,
                          wall_clock: Callable[[], float]) -> None:
    """Final flush and delivery, bounded by ``graceful_timeout``; then each backend keeps
    (spools) or gives up what it still holds."""
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
        drain_datagrams(bound, path)
        sequence = flush_sequence(stamp, config.flush_interval) if wait > 0 else None
        if components.exchange is not None:
            components.exchange.finish()
        await flusher.flush(stamp, sequence=sequence)
        for backend in components.backends:
            await backend.wait_delivered()
    leftovers = [backend.close() for backend in components.backends]
    lost = sum(left.lost_lines for left in leftovers)
    log_event(LOGGER, "stopped", deadline_hit=deadline.cancelled_caught,
              spooled_lines=sum(left.spooled_lines for left in leftovers), lost_lines=lost,
              level=logging.WARNING if lost else logging.INFO)


async def report_bad_lines(accumulator: Accumulator, arrivals: Arrivals, *,
                           quiet_seconds: float) -> None:
    """Log the kept bad lines and the count of all of them, at most once per
    `BAD_LINE_LOG_PERIOD_SECONDS`.

    It wakes only when the intake took something in (`Arrivals`), or after
    ``quiet_seconds`` (the flush interval; at least the period) without any: an idle daemon
    is not woken every second, and lines that arrive from the other workers (which may be
    bad too) are reported within an interval even when nothing reaches this worker's own
    sockets.
    """
    reported = 0
    while True:
        with trio.move_on_after(max(quiet_seconds, BAD_LINE_LOG_PERIOD_SECONDS)) as quiet:
            await arrivals.wait()
        if not quiet.cancelled_caught:
            await trio.sleep(BAD_LINE_LOG_PERIOD_SECONDS)  # the rest of a burst, in one report
        for error in accumulator.take_errors():
            log_event(LOGGER, "bad_line", level=logging.WARNING, reason=error.reason,
                      line=error.line[:200], detail=error.detail)
        total = accumulator.statistics().bad_lines
        if total > reported:
            log_event(LOGGER, "bad_lines", level=logging.WARNING, count=total - reported,
                      total=total)
            reported = total


def log_started(config: AggregatorConfig, sockets: Sockets, components: Components,
                worker: WorkerContext | None) -> None:
    """The start log lines (``event=listening`` ones only for a single process)."""
    if worker is None:
        log_listening(config, sockets.intake, sockets.addresses().mgmt,
                      [sockets.endpoint] if sockets.endpoint is not None else [],
                      http=listener_address(sockets.http) if sockets.http else "")
    carbon = components.carbon
    log_event(LOGGER, "started" if worker is None else "worker_started",
              worker=worker.index if worker else 0, pid=os.getpid(),
              generation=worker.generation if worker else 0,
              flush_interval=config.flush_interval,
              carbon=",".join(str(n) for n in config.carbon) or "none",
              ring=carbon.placement.ring.fingerprint() if carbon else "none")


def log_listening(config: AggregatorConfig, bound: Sequence[BoundSocket], mgmt: str,
                  endpoints: Sequence[BoundSocket] = (), *, http: str = "") -> None:
    """The ``event=listening`` lines scripts and tests read to find the bound ports: the
    intake sockets, the admin port, the HTTP admin (``kind=http``, when on), then each
    worker's own socket (``kind=worker``, in worker order)."""
    for b in bound:
        log_event(LOGGER, "listening", kind=b.url.scheme, address=b.address)
    log_event(LOGGER, "listening", kind="mgmt", address=mgmt)
    if http:
        log_event(LOGGER, "listening", kind="http", address=http)
    for index, b in enumerate(endpoints):
        log_event(LOGGER, "listening", kind="worker", address=b.address, worker=index)
    for b in (*bound, *endpoints):
        if b.url.scheme == "udp":
            log_event(LOGGER, "udp_receive_buffer", address=b.address,
                      bytes=b.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                      drops=udp_socket_drops(b.sock))
