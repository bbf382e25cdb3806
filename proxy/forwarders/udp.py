"""`UdpForwarder`: packed datagrams to one aggregator, from several source sockets.

The forwarder owns ``source_sockets`` connected UDP sockets and uses them in turn, so an
aggregator that reads with several SO_REUSEPORT sockets gets the load spread (the kernel
picks a reader per 4-tuple; one source socket would always reach the same reader).

When nothing is queued, `offer` sends on the spot: no task switch on the hot path. A
connected UDP socket learns from ICMP that nobody listens (ECONNREFUSED): that marks the
aggregator down, and the chunk that met the error is kept in the queue. While down, the
aggregator is probed with its admin ``health`` command when an ADMIN_PORT is configured,
otherwise with an empty datagram (statsd servers ignore it) followed by a look at the
socket's pending error; when it answers, the queue is sent and forwarding resumes.

SHELL.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Final

import trio

from ..membership import Membership
from ..probe import probe_mgmt
from .base import Forwarder, SockAddr

#: Chunks sent from the queue before yielding to other tasks.
CHUNKS_PER_CHECKPOINT: Final = 256
#: Seconds to wait for an ICMP "port unreachable" after an empty probe datagram.
UDP_PROBE_WAIT: Final = 0.1
#: Kernel send buffer asked for on each UDP source socket.
SEND_BUFFER_BYTES: Final = 4 * 1024 * 1024


class UdpForwarder(Forwarder):
    """Sends packed datagrams to one aggregator from several source sockets."""

    def __init__(self, index: int, membership: Membership, *, source_sockets: int,
                 **kwargs: Any) -> None:
        super().__init__(index, membership, **kwargs)
        self.source_sockets = source_sockets
        self.sockets: list[socket.socket] = []
        self._next = 0
        self._blocked = False

    def close(self) -> None:
        for sock in self.sockets:
            trio.lowlevel.notify_closing(sock)
            sock.close()
        self.sockets = []

    def set_address(self, family: int, sockaddr: SockAddr) -> None:
        self.close()
        for _ in range(self.source_sockets):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            except OSError:
                pass
            sock.connect(sockaddr)
            self.sockets.append(sock)
        self._blocked = False
        super().set_address(family, sockaddr)

    def offer(self, chunks: list[bytes]) -> None:
        if self.queue or self._blocked or not self.sockets or not self.up:
            self.enqueue(chunks)
            return
        sockets = self.sockets
        count = len(sockets)
        turn = self._next
        lines = 0
        for position, chunk in enumerate(chunks):
            try:
                sockets[turn % count].send(chunk)
            except OSError as e:
                self._send_failed(e)
                self.enqueue(chunks[position:])
                break
            turn += 1
            lines += chunk.count(b"\n") + 1
        self.sent_lines += lines
        self.sent_chunks += turn - self._next
        self._next = turn

    def _send_failed(self, error: OSError) -> None:
        if isinstance(error, BlockingIOError):
            self._blocked = True
            self.wake()
            return
        self.send_errors += 1
        self.fail(errno.errorcode.get(error.errno or 0, "send_error").lower())

    def pump(self, limit: int) -> int:
        """Send up to ``limit`` queued chunks; return how many were sent."""
        sockets = self.sockets
        sent = 0
        while self.queue and sent < limit and not self._blocked and self.up:
            chunk = self.queue.peek()
            try:
                sockets[self._next % len(sockets)].send(chunk)
            except OSError as e:
                self._send_failed(e)
                break
            _, lines = self.pop()
            self._next += 1
            sent += 1
            self.sent_chunks += 1
            self.sent_lines += lines
        return sent

    async def probe(self) -> str | None:
        """Check a down aggregator; None when it is usable, else a reason."""
        if not self.sockets:
            return "unresolved"
        if self.spec.admin_port is not None:
            return await probe_mgmt(self.spec.host if self.sockaddr is None else
                                    self.sockaddr[0], self.spec.admin_port,
                                    wait_seconds=self.connect_timeout)
        sock = self.sockets[0]
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # clear a stale error
        try:
            sock.send(b"")
        except OSError as e:
            return errno.errorcode.get(e.errno or 0, "send_error").lower()
        await trio.sleep(UDP_PROBE_WAIT)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return errno.errorcode.get(error, "send_error").lower() if error else None

    async def run(self) -> None:
        """Deliver queued chunks; wait out, probe and recover from outages. Never returns."""
        while True:
            if not self.sockets or not self.up:
                await self.backoff()
                reason = await self.probe()
                if reason is None:
                    self.recovered()
                else:
                    self.fail(reason)
                continue
            if self._blocked:
                sock = self.sockets[self._next % len(self.sockets)]
                try:
                    await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError:
                    pass
                self._blocked = False
            if self.queue:
                self.pump(CHUNKS_PER_CHECKPOINT)
                await trio.lowlevel.checkpoint()
                continue
            await self.wait_woken()
