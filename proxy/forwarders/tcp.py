"""`TcpForwarder`: one persistent, newline-framed TCP connection per aggregator.

With ``forward = "tcp"`` each aggregator gets one long-lived connection (an aggregator's
TCP listener reads it like any client's). Chunks are written in batches, each ending with a
newline. A write that stalls longer than ``write_timeout`` or fails drops the connection;
the unwritten batch goes back to the head of the queue, and the forwarder reconnects with
exponential backoff and jitter (so that many proxies do not reconnect in lockstep).
While disconnected, lines wait in the bounded queue (`proxy.forwarders.base.Forwarder`).

A DNS change of the aggregator's name (`proxy.resolver`) closes the connection; the next
one goes to the new address. The aggregator keeps its position, so no name moves.

SHELL.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import attrs
import trio

from common.logging import log_event
from common.stats import counter, level

from ..membership import Membership
from ..probe import connect_failure, probe_mgmt
from .base import Forwarder, ForwarderStatistics, SockAddr

LOGGER = logging.getLogger(__name__)

#: Bytes written per send: large enough to amortise the call, small enough to requeue.
MAX_WRITE_BYTES: Final = 256 * 1024


@attrs.frozen
class TcpForwarderStatistics(ForwarderStatistics):
    """A TCP forwarder's figures, and its connection's."""

    connected: int = level(help="1 while the connection is open, else 0")
    connects: int = counter(help="connections opened")


class TcpForwarder(Forwarder):
    """Streams chunks to one aggregator over a persistent TCP connection."""

    def __init__(self, index: int, membership: Membership, *, write_timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(index, membership, **kwargs)
        self.write_timeout = write_timeout
        self.connected = False
        self.connects = 0
        self._inflight: list[bytes] = []
        self._scope: trio.CancelScope | None = None
        self._closed_by_peer = False

    @property
    def busy(self) -> bool:
        return bool(self._inflight)

    def statistics(self) -> TcpForwarderStatistics:
        return TcpForwarderStatistics(**attrs.asdict(super().statistics(), recurse=False),
                                      connected=int(self.connected), connects=self.connects)

    def set_address(self, family: int, sockaddr: SockAddr) -> None:
        changed = self.sockaddr is not None and self.sockaddr != sockaddr
        super().set_address(family, sockaddr)
        if changed and self._scope is not None:
            self._scope.cancel()  # reconnect to the new address

    async def _connect(self) -> trio.SocketStream | str:
        if self.sockaddr is None:
            return "unresolved"
        host, port = self.sockaddr[0], self.sockaddr[1]
        if self.spec.admin_port is not None:
            reason = await probe_mgmt(host, self.spec.admin_port,
                                      wait_seconds=self.connect_timeout)
            if reason is not None:
                return reason
        try:
            with trio.fail_after(self.connect_timeout):
                return await trio.open_tcp_stream(host, port)
        except trio.TooSlowError:
            return "connect_timeout"
        except OSError as e:
            return connect_failure(e)

    async def _write(self, stream: trio.SocketStream) -> str:
        """Write queued chunks until the aggregator is marked down or the stream fails;
        return why it stopped."""
        try:
            while self.up:
                if not self.queue:
                    await self.wait_woken()
                    continue
                size = lines = 0
                batch = self._inflight
                while self.queue and size < MAX_WRITE_BYTES:
                    chunk, chunk_lines = self.pop()
                    batch.append(chunk)
                    size += len(chunk) + 1
                    lines += chunk_lines
                batch.append(b"")  # the final newline
                with trio.fail_after(self.write_timeout):
                    await stream.send_all(b"\n".join(batch))
                batch.pop()
                self.sent_chunks += len(batch)
                self.sent_lines += lines
                batch.clear()
        except trio.TooSlowError:
            return "write_timeout"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log_event(LOGGER, "aggregator_connection_lost", level=logging.WARNING,
                      aggregator=self.name, error=str(e) or type(e).__name__)
            return "connection_lost"
        return "draining"

    async def _watch(self, stream: trio.SocketStream, done: trio.CancelScope) -> None:
        """Notice at once when the aggregator closes the connection (it never sends)."""
        try:
            while await stream.receive_some(4096):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        self._closed_by_peer = True
        done.cancel()

    async def run(self) -> None:
        """Connect, write, reconnect; never returns."""
        while True:
            if not self.up:
                await self.backoff()
            outcome = await self._connect()
            if isinstance(outcome, str):
                self.fail(outcome)
                continue
            self.connects += 1
            self.connected = True
            self._closed_by_peer = False
            self.recovered()
            reason = "closed"
            try:
                with trio.CancelScope() as self._scope:
                    async with outcome, trio.open_nursery() as nursery:
                        nursery.start_soon(self._watch, outcome, nursery.cancel_scope)
                        reason = await self._write(outcome)
                        nursery.cancel_scope.cancel()
                if self._scope.cancelled_caught:
                    reason = "address_changed"
                elif self._closed_by_peer:
                    reason = "closed_by_peer"
            finally:
                self._scope = None
                self.connected = False
                if self._inflight:
                    if self._inflight[-1] == b"":
                        self._inflight.pop()
                    self.requeue_front(self._inflight)
                    self._inflight = []
            if reason == "address_changed":
                continue
            if self.up:
                self.fail(reason)
