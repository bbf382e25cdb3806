"""The aggregator's intake path: from the listeners' callbacks to the ledger.

`build_intake_path` chains the callback every listener is given: the arrival time is noted
(for the management ``stats``), token authentication strips or refuses tokens, and the
lines go to the ledger (`Accumulator.ingest`) or, with several workers, to the exchange,
which keeps this worker's names and sends the others to their owners. `run_intake` runs
one listener per socket; `drain_datagrams` reads what is left at a graceful stop.

A worker's own UDP socket (``worker_listen``, `bind_worker_endpoints`) is one more socket
of the same path: what a proxy sends there for the names this worker owns goes straight to
its ledger, and a line it does not own (a sender with a stale worker count) goes through
the exchange like any other.

SHELL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import Final, Protocol

import attrs
import trio

from common.address import ListenURL
from common.auth import TokenAuth
from common.errors import ConfigError
from common.listener import (
    BoundSocket,
    DatagramReader,
    bind_listener,
    close_listener,
    run_datagram_listener,
)
from common.streams import StreamConnections, run_listeners, run_stream_listener

from .components import Components
from .config import AggregatorConfig
from .ledger import Accumulator
from .workers.context import WorkerContext

#: Datagrams read per call while draining the sockets at a graceful stop.
DRAIN_BATCH_DATAGRAMS: Final = 10_000


class Intake(Protocol):
    """The aggregator's intake callback: a block of lines, and how many datagrams it joins."""

    def __call__(self, packet: bytes, *, packets: int = 1) -> None: ...


@attrs.define
class Arrivals:
    """Whether anything reached the intake since the last `wait`: what lets the bad-line
    reporter (`aggregator.server.report_bad_lines`) sleep while the daemon is idle instead
    of waking every second to find nothing."""

    _event: trio.Event = attrs.Factory(trio.Event)

    def note(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        """Return once something arrived since the last call (at once if it already has)."""
        await self._event.wait()
        self._event = trio.Event()


@attrs.frozen
class IntakePath:
    """How intake reaches the ledger: the callbacks every listener is given."""

    handle: Intake
    components: Components
    connections: StreamConnections
    arrivals: Arrivals = attrs.Factory(Arrivals)

    def handle_batch(self, datagrams: list[bytes]) -> None:
        self.handle(b"\n".join(datagrams), packets=len(datagrams))

    def refused(self, reason: str, lines: int) -> None:
        """Lines the intake refused before parsing (too long, cut): received and bad."""
        self.components.accumulator.refuse_lines(lines)
        self.arrivals.note()


def build_intake_path(config: AggregatorConfig, components: Components,
                      worker: WorkerContext | None) -> IntakePath:
    """The intake callback: through the exchange with several workers, token
    authentication first when configured, and the arrival time noted for ``stats``."""
    accumulator = components.accumulator
    exchange = components.exchange
    handle: Intake = exchange.handle if exchange is not None else accumulator.ingest
    if components.auth is not None:
        handle = authenticated(handle, components.auth)
    connections = StreamConnections(
        max_connections=config.max_tcp_connections, stats=components.intake,
        idle_timeout_seconds=config.tcp_idle_timeout_seconds,
        table=worker.connections if worker is not None else None)
    arrivals = Arrivals()
    return IntakePath(noting_arrival(handle, accumulator, arrivals), components, connections,
                      arrivals)


async def run_intake(config: AggregatorConfig, bound: Sequence[BoundSocket],
                     path: IntakePath, *,
                     task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    """Run a listener per intake socket until the scope given to ``task_status`` is
    cancelled."""
    await run_listeners(
        bound, task_status=task_status,
        serve_stream=partial(run_stream_listener, handle=path.handle,
                             max_line_bytes=config.max_line_bytes,
                             connections=path.connections, refused=path.refused),
        serve_datagrams=partial(run_datagram_listener, handle=path.handle,
                                handle_batch=path.handle_batch,
                                stats=path.components.intake, refused=path.refused))


def worker_endpoint_url(url: ListenURL, index: int) -> ListenURL:
    """Where worker ``index`` binds its own socket: HOST:(PORT + index); PORT 0 stays 0
    (any free port, for tests)."""
    return attrs.evolve(url, port=url.port + index if url.port else 0)


def bind_worker_endpoints(url: ListenURL | None, workers: int, *,
                          receive_buffer_bytes: int = 0) -> list[BoundSocket]:
    """Bind every worker's own UDP socket (``worker_listen``), in worker order; none
    without ``url``. Each has the receive buffer of the other UDP intake sockets, and its
    URL names the port it really got.

    Never SO_REUSEPORT (even with ``reuse_port``): a port is one worker's, and nobody
    else may read its datagrams.

    Raises:
        ConfigError: a port cannot be bound (in use, not a local address); whatever was
            bound is closed.
    """
    if url is None:
        return []
    bound: list[BoundSocket] = []
    try:
        for index in range(workers):
            target = worker_endpoint_url(url, index)
            try:
                b = bind_listener(target, receive_buffer_bytes=receive_buffer_bytes)
            except ConfigError as e:
                cause = e.__cause__
                reason = (cause.strerror or str(cause)) if isinstance(cause, OSError) \
                    else e.message
                raise ConfigError(f"cannot bind worker {index}'s {target}: {reason}",
                                  key="worker_listen") from e
            port = b.sock.getsockname()[1]
            bound.append(attrs.evolve(b, url=attrs.evolve(target, port=port)))
    except ConfigError:
        for b in bound:
            close_listener(b)
        raise
    return bound


def drain_datagrams(bound: Sequence[BoundSocket], path: IntakePath) -> None:
    """Read what the kernel already queued on the datagram sockets."""
    for b in bound:
        if not b.url.is_stream:
            reader = DatagramReader(b, stats=path.components.intake, refused=path.refused)
            while reader.drain(path.handle, DRAIN_BATCH_DATAGRAMS) == DRAIN_BATCH_DATAGRAMS:
                pass


def authenticated(handle: Intake, auth: TokenAuth) -> Intake:
    """Wrap the intake callback: tokens are checked and stripped before anything else."""
    def handle_authenticated(packet: bytes, *, packets: int = 1) -> None:
        handle(auth.filter_packet(packet), packets=packets)

    return handle_authenticated


def noting_arrival(handle: Intake, accumulator: Accumulator, arrivals: Arrivals) -> Intake:
    """Wrap the intake callback: note when the last message arrived (the mgmt ``stats``),
    and that something did (`Arrivals`). Once per call: a call is a whole drained burst of
    datagrams, or a stream chunk."""
    note = arrivals.note

    def handle_noted(packet: bytes, *, packets: int = 1) -> None:
        accumulator.note_arrival(time.time())
        note()
        handle(packet, packets=packets)

    return handle_noted


