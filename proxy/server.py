"""`serve`: runs one proxy process until told to stop.

Wiring, all inside one nursery owned by `serve`:

    intake sockets --route(packet)--> Router (H1 + packing) --chunks--> one Forwarder per
    aggregator (bounded queue; UDP datagrams or one TCP stream) --> aggregators
    tail flusher (sends partly filled datagrams after max_batch_delay_ms), resolver (DNS),
    health monitors (admin ports), admin TCP (Etsy management protocol), drop reporter

Datagram intake reads until the socket would block (or 256 datagrams), routes each
datagram, then hands every aggregator's full datagrams to its forwarder at once; the last,
partly filled one waits at most ``max_batch_delay_ms`` for more lines.

Graceful stop (``shutdown_trigger`` returns): close intake after reading what the kernel
already queued, send every pending line, and wait for the forwarders to deliver their
queues, bounded by ``graceful_timeout``; what is left is counted as dropped (``shutdown``).

SHELL.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

import trio

from common.auth import make_auth
from common.errors import ConfigError
from common.listener import (
    BoundAddresses,
    BoundSocket,
    DatagramReader,
    IntakeCounters,
    bind_listeners,
    close_listener,
)
from common.logging import log_event
from common.mgmt_server import open_mgmt_listeners, run_mgmt_server
from common.streams import StreamConnections, run_stream_listener

from .config import ProxyConfig, check_config
from .forwarders.base import SHUTDOWN, Forwarder
from .forwarders.tcp import TcpForwarder
from .forwarders.udp import UdpForwarder
from .membership import Membership
from .mgmt import ProxyMgmt
from .probe import run_health_monitor
from .resolver import resolve_one, run_resolver
from .routing import Router

LOGGER = logging.getLogger(__name__)

#: Datagrams routed before their chunks are handed to the forwarders and other tasks run.
DATAGRAMS_PER_BATCH: Final = 256
#: How often drops are summarised in the log (only when there are new ones).
DROP_LOG_PERIOD_SECONDS: Final = 10.0



class Proxy:
    """The router and the forwarders of one process, and the hand-over between them."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.membership = Membership(config.aggregator, now=trio.current_time())
        self.auth = make_auth(config.auth, config.auth_tokens, config.auth_revoked_tokens)
        self.router = Router(len(self.membership), max_chunk_bytes=config.max_chunk_bytes,
                             sanitize=config.key_name_sanitize, auth=self.auth)
        common = {"buffer_bytes": config.aggregator_buffer_bytes,
                  "retry_base": config.retry_base, "retry_max": config.retry_max,
                  "connect_timeout": config.connect_timeout}
        self.forwarders: list[Forwarder] = [
            UdpForwarder(i, self.membership, source_sockets=config.source_sockets, **common)
            if config.forward == "udp" else
            TcpForwarder(i, self.membership, write_timeout=config.write_timeout, **common)
            for i in range(len(self.membership))
        ]
        self.keep_tails = config.max_batch_delay_ms > 0
        self.tails_waiting = trio.Event()

    def dispatch(self, *, final: bool = False) -> None:
        """Hand every aggregator's packed chunks to its forwarder (keeping the partly
        filled last one back for a few ms, unless ``final``)."""
        keep = self.keep_tails and not final
        take = self.router.take_chunks
        for index, forwarder in enumerate(self.forwarders):
            chunks = take(index, keep_tail=keep)
            if chunks:
                forwarder.offer(chunks)
        if keep and self.router.has_pending():
            self.tails_waiting.set()

    def handle_block(self, block: bytes) -> None:
        """A stream's block of whole lines: route it and hand it over at once."""
        self.router.route(block)
        self.dispatch()

    def refused(self, reason: str, lines: int) -> None:
        """Lines the intake refused before routing (too long, cut): received and dropped."""
        stats = self.router.stats
        stats.lines += lines
        if reason == "line_too_long":
            stats.too_long += lines
        else:
            stats.bad_lines += lines

    async def run_datagram_intake(self, bound: BoundSocket, intake: IntakeCounters) -> None:
        sock, route = bound.sock, self.router.route
        reader = DatagramReader(bound, stats=intake, refused=self.refused)
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                count = reader.drain(route, DATAGRAMS_PER_BATCH)
                self.dispatch()
                if count < DATAGRAMS_PER_BATCH:
                    break
                await trio.lowlevel.checkpoint()

    async def run_tail_flusher(self) -> None:
        delay = self.config.max_batch_delay_ms / 1000.0
        while True:
            await self.tails_waiting.wait()
            self.tails_waiting = trio.Event()
            await trio.sleep(delay)
            self.dispatch(final=True)

    def dropped(self) -> dict[str, int]:
        """Every drop of this process by reason (lines), all aggregators summed."""
        stats = self.router.stats
        totals = {"bad_line": stats.bad_lines, "line_too_long": stats.too_long,
                  "auth": self.auth.statistics().refused if self.auth else 0}
        for forwarder in self.forwarders:
            for reason, lines in forwarder.stats.dropped.items():
                totals[reason] = totals.get(reason, 0) + lines
        return totals

    async def run_drop_reporter(self) -> None:
        reported: dict[str, int] = {}
        while True:
            await trio.sleep(DROP_LOG_PERIOD_SECONDS)
            now = self.dropped()
            new = {k: v - reported.get(k, 0) for k, v in now.items() if v > reported.get(k, 0)}
            if new:
                per = {f"aggregator_{f.index}": sum(f.stats.dropped.values())
                       for f in self.forwarders if f.stats.dropped}
                log_event(LOGGER, "lines_dropped", level=logging.WARNING,
                          **{k: v for k, v in sorted(new.items())}, **per)
            reported = now



async def serve(
    config: ProxyConfig,
    *,
    task_status: trio.TaskStatus[BoundAddresses] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    bound: list[BoundSocket] | None = None,
    process_index: int = 0,
) -> None:
    """Run a proxy until ``shutdown_trigger`` returns (or forever), then stop gracefully.

    Args:
        config: the configuration.
        task_status: receives the `BoundAddresses` once every socket is bound.
        shutdown_trigger: awaited; when it returns, the graceful stop begins.
        bound: intake sockets already bound (``--processes``: one set per process).
        process_index: this process's number among ``config.processes`` (admin port offset).

    Raises:
        ConfigError: for an invalid configuration or a socket that cannot be bound.
    """
    check_config(config)
    proxy = Proxy(config)
    if bound is None:
        bound = bind_listeners(config.listen, reuse_port=config.reuse_port,
                               receive_buffer_bytes=config.udp_receive_buffer_bytes)
    intake = IntakeCounters()
    connections = StreamConnections(max_connections=config.max_tcp_connections, stats=intake,
                                    idle_timeout_seconds=config.tcp_idle_timeout_seconds)
    mgmt_port = config.mgmt_port + process_index if config.mgmt_port else 0
    try:
        mgmt_listeners = await open_mgmt_listeners(config.mgmt_address, mgmt_port)
    except ConfigError:
        for b in bound:
            close_listener(b)
        raise
    mgmt_host, mgmt_bound = mgmt_listeners[0].socket.getsockname()[:2]
    addresses = BoundAddresses(intake=tuple((b.url.scheme, b.address) for b in bound),
                               mgmt=f"{mgmt_host}:{mgmt_bound}")
    admin = ProxyMgmt(config, proxy, intake)
    try:
        for forwarder in proxy.forwarders:
            await resolve_one(forwarder)
        async with trio.open_nursery() as nursery:
            for forwarder in proxy.forwarders:
                nursery.start_soon(forwarder.run)
                nursery.start_soon(partial(run_health_monitor, forwarder,
                                           interval=config.health_interval,
                                           wait_seconds=config.connect_timeout))
            nursery.start_soon(partial(run_resolver, proxy.forwarders,
                                       interval=config.resolve_interval))
            if proxy.keep_tails:
                nursery.start_soon(proxy.run_tail_flusher)
            nursery.start_soon(proxy.run_drop_reporter)
            await nursery.start(run_mgmt_server, mgmt_listeners, admin)
            intake_scope = trio.CancelScope()

            async def run_intake() -> None:
                with intake_scope:
                    async with trio.open_nursery() as inner:
                        for b in bound:
                            if b.url.is_stream:
                                inner.start_soon(partial(
                                    run_stream_listener, b, proxy.handle_block,
                                    max_line_bytes=config.max_line_bytes,
                                    connections=connections, refused=proxy.refused))
                            else:
                                inner.start_soon(proxy.run_datagram_intake, b, intake)

            nursery.start_soon(run_intake)
            for kind, address in addresses.intake:
                log_event(LOGGER, "listening", kind=kind, address=address)
            log_event(LOGGER, "listening", kind="mgmt", address=addresses.mgmt)
            log_event(LOGGER, "started", process=process_index, forward=config.forward,
                      fingerprint=proxy.membership.fingerprint,
                      hash=proxy.membership.hash_mode,
                      aggregators=",".join(a.spec for a in config.aggregator))
            task_status.started(addresses)

            if shutdown_trigger is None:
                await trio.sleep_forever()
            await shutdown_trigger()

            log_event(LOGGER, "stopping", graceful_timeout=config.graceful_timeout)
            admin.health = "down"
            with trio.move_on_after(config.graceful_timeout) as deadline:
                intake_scope.cancel()
                for b in bound:
                    if not b.url.is_stream:
                        reader = DatagramReader(b, stats=intake, refused=proxy.refused)
                        while reader.drain(proxy.router.route, 10_000) == 10_000:
                            pass
                proxy.dispatch(final=True)
                for forwarder in proxy.forwarders:
                    if forwarder.up:
                        await forwarder.wait_empty()
            undelivered = sum(f.drop_all(SHUTDOWN) for f in proxy.forwarders)
            log_event(LOGGER, "stopped", deadline_hit=deadline.cancelled_caught,
                      undelivered_lines=undelivered,
                      level=logging.WARNING if undelivered else logging.INFO)
            nursery.cancel_scope.cancel()
    finally:
        for b in bound:
            close_listener(b)
        for forwarder in proxy.forwarders:
            forwarder.close()
