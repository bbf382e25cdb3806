"""`UdpForwarder`: packed datagrams to one aggregator, from several source sockets.

The forwarder owns ``source_sockets`` connected UDP sockets and uses them in turn, so an
aggregator that reads with several SO_REUSEPORT sockets gets the load spread (the kernel
picks a reader per 4-tuple; one source socket would always reach the same reader).

When the aggregator advertised its workers' ports (`proxy.workers`), the forwarder also
owns one connected socket per worker and sends each chunk (whose lines the router packed
for one worker) to that worker's port; a chunk that had to wait in the queue goes to the
worker of its first line under the worker count in force when it leaves.

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
from collections.abc import Callable
from typing import Any, Final

import trio

from ..membership import Membership
from ..probe import probe_forwarder
from ..routing import MAIN
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
        #: One connected socket per worker port (empty: send to the main port).
        self.worker_sockets: list[socket.socket] = []
        #: The worker (or MAIN) of a chunk taken from the queue (set by the pipeline).
        self.worker_of: Callable[[bytes], int] = lambda chunk: MAIN
        self._next = 0
        self._blocked: socket.socket | None = None

    wants_workers = True

    def close(self) -> None:
        self._close(self.sockets)
        self._close(self.worker_sockets)
        self.sockets, self.worker_sockets = [], []

    @staticmethod
    def _close(sockets: list[socket.socket]) -> None:
        for sock in sockets:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def _open(self, family: int, sockaddr: SockAddr) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        except OSError:
            pass
        sock.connect(sockaddr)
        return sock

    def set_address(self, family: int, sockaddr: SockAddr) -> None:
        self.close()
        self.sockets = [self._open(family, sockaddr) for _ in range(self.source_sockets)]
        self._blocked = None
        super().set_address(family, sockaddr)
        self._open_workers()

    def set_worker_ports(self, ports: tuple[int, ...]) -> None:
        super().set_worker_ports(ports)
        self._open_workers()

    def _open_workers(self) -> None:
        if self._blocked in self.worker_sockets:
            self._blocked = None
        self._close(self.worker_sockets)
        self.worker_sockets = []
        if self.sockaddr is not None:
            host, rest = self.sockaddr[0], self.sockaddr[2:]
            self.worker_sockets = [self._open(self.family, (host, port, *rest))
                                   for port in self.worker_ports]
        self.wake()

    def _socket_for(self, worker: int) -> socket.socket:
        """The socket for a chunk of ``worker``'s: its own, else the next source socket."""
        if 0 <= worker < len(self.worker_sockets):
            return self.worker_sockets[worker]
        sock = self.sockets[self._next % len(self.sockets)]
        self._next += 1
        return sock

    def offer(self, chunks: list[bytes], worker: int = MAIN) -> None:
        if self.queue or self._blocked is not None or not self.sockets or not self.up:
            self.enqueue(chunks)
            return
        sockets = self.sockets
        count = len(sockets)
        own = self.worker_sockets[worker] if 0 <= worker < len(self.worker_sockets) else None
        turn = self._next
        lines = sent = 0
        for chunk in chunks:
            sock = own if own is not None else sockets[turn % count]
            try:
                sock.send(chunk)
            except OSError as e:
                self._send_failed(e, sock)
                self.enqueue(chunks[sent:])
                break
            turn += own is None
            sent += 1
            lines += chunk.count(b"\n") + 1
        self.sent_lines += lines
        self.sent_chunks += sent
        self._next = turn

    def _send_failed(self, error: OSError, sock: socket.socket) -> None:
        if isinstance(error, BlockingIOError):
            self._blocked = sock
            self.wake()
            return
        self.send_errors += 1
        self.fail(errno.errorcode.get(error.errno or 0, "send_error").lower())

    def pump(self, limit: int) -> int:
        """Send up to ``limit`` queued chunks; return how many were sent."""
        sent = 0
        while self.queue and sent < limit and self._blocked is None and self.up:
            chunk = self.queue.peek()
            sock = self._socket_for(self.worker_of(chunk) if self.worker_sockets else MAIN)
            try:
                sock.send(chunk)
            except OSError as e:
                self._send_failed(e, sock)
                break
            _, lines = self.pop()
            sent += 1
            self.sent_chunks += 1
            self.sent_lines += lines
        return sent

    async def probe(self) -> str | None:
        """Check a down aggregator; None when it is usable, else a reason."""
        if not self.sockets:
            return "unresolved"
        if self.spec.admin_port is not None:
            return await probe_forwarder(self, wait_seconds=self.connect_timeout)
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
            if self._blocked is not None:
                try:
                    await trio.lowlevel.wait_writable(self._blocked)
                except trio.ClosedResourceError:
                    pass
                self._blocked = None
            if self.queue:
                self.pump(CHUNKS_PER_CHECKPOINT)
                await trio.lowlevel.checkpoint()
                continue
            await self.wait_woken()
