"""Intake sockets: bind every listen URL, then receive lines and hand them to a callback.

Both roles receive the same way; what they do with a packet (aggregate it, or route and
forward it) is the ``handle`` callback, a plain synchronous function of one packet.

Datagram sockets (udp, unixgram) are drained without a scheduler round trip per datagram:
the loop reads until the socket would block and only then waits for readability, with a
checkpoint every `DATAGRAMS_PER_CHECKPOINT` datagrams so a flood cannot starve the flush.

Stream sockets (tcp, unix) run one task per connection; `common.framing.LineBuffer` cuts
the stream into blocks of whole lines, and at most ``max_connections`` are served at once
(the rest are closed at once and logged).

SHELL.
"""

from __future__ import annotations

import errno
import logging
import os
import socket as stdsocket
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import trio

from .address import ListenURL, format_host_port
from .errors import ConfigError
from .framing import LineBuffer
from .logging import log_event

LOGGER = logging.getLogger(__name__)

#: Datagrams read in a row before yielding to other tasks (~1-3 ms of parsing).
DATAGRAMS_PER_CHECKPOINT: Final = 256
#: Largest datagram: the UDP maximum.
MAX_DATAGRAM_BYTES: Final = 65_535
#: Bytes read from a stream per receive.
STREAM_CHUNK_BYTES: Final = 65_536

Handler = Callable[[bytes], None]
#: Called with every datagram drained in one go (at most `DATAGRAMS_PER_CHECKPOINT`).
BatchHandler = Callable[[list[bytes]], None]
#: Python's socket module does not export SO_RCVBUFFORCE; 33 on every Linux architecture.
_SO_RCVBUFFORCE_LINUX: Final = 33 if sys.platform == "linux" else None


@attrs.define
class IntakeStatistics:
    """Counters of the intake sockets (shared by all listeners of one process)."""

    stream_connections: int = 0
    stream_connections_refused: int = 0
    overlong_stream_lines: int = 0


@attrs.frozen
class BoundSocket:
    """A bound intake socket and the address it really got (port 0 resolved)."""

    url: ListenURL
    sock: stdsocket.socket
    address: str


@attrs.frozen
class BoundAddresses:
    """What a daemon's `serve` bound, for tests and scripts: ``(kind, address)`` per intake
    socket, and the admin address."""

    intake: tuple[tuple[str, str], ...]
    mgmt: str

    def first(self, kind: str) -> str:
        return next(address for k, address in self.intake if k == kind)


def _unlink_stale_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def bind_listener(url: ListenURL, *, receive_buffer_bytes: int = 0,
                  reuse_port: bool = False, backlog: int = 1024) -> BoundSocket:
    """Create and bind the socket for ``url`` (blocking; called before serving).

    Raises:
        ConfigError: when the address cannot be bound (in use, not local, no permission).
    """
    target: Any
    if url.scheme in ("unix", "unixgram"):
        family, target = stdsocket.AF_UNIX, url.path
    else:
        infos = stdsocket.getaddrinfo(url.host, url.port, type=stdsocket.SOCK_DGRAM)
        family, target = infos[0][0], infos[0][4][:2]
    kind = stdsocket.SOCK_STREAM if url.is_stream else stdsocket.SOCK_DGRAM
    sock = stdsocket.socket(family, kind)
    try:
        if family != stdsocket.AF_UNIX:
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT, 1)
        else:
            _unlink_stale_socket(url.path)
        if not url.is_stream and receive_buffer_bytes:
            set_receive_buffer(sock, receive_buffer_bytes)
        sock.bind(target)
        if url.is_stream:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot bind {url}: {e.strerror or e}", key="listen") from e
    return adopt_socket(url, sock)


def adopt_socket(url: ListenURL, sock: stdsocket.socket) -> BoundSocket:
    """Describe an already bound socket (ours, or one a supervisor passed down)."""
    if url.scheme in ("unix", "unixgram"):
        return BoundSocket(url=url, sock=sock, address=url.path)
    host, port = sock.getsockname()[:2]
    return BoundSocket(url=url, sock=sock, address=format_host_port(host, port))


def bind_listeners(urls: Sequence[ListenURL], *, receive_buffer_bytes: int = 0,
                   reuse_port: bool = False) -> list[BoundSocket]:
    """Bind every URL, in order; on a failure close what was bound and raise `ConfigError`."""
    bound: list[BoundSocket] = []
    try:
        for url in urls:
            bound.append(bind_listener(url, receive_buffer_bytes=receive_buffer_bytes,
                                       reuse_port=reuse_port))
    except ConfigError:
        for b in bound:
            close_listener(b)
        raise
    return bound


def set_receive_buffer(sock: stdsocket.socket, size: int) -> int:
    """Ask for a ``size``-byte kernel receive buffer; return what the kernel granted.

    SO_RCVBUFFORCE (root only) passes net.core.rmem_max; otherwise SO_RCVBUF is capped.
    """
    force = getattr(stdsocket, "SO_RCVBUFFORCE", _SO_RCVBUFFORCE_LINUX)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(stdsocket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, size)
    return int(sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF))


def drain_datagrams(sock: stdsocket.socket, handle: Handler, limit: int) -> int:
    """Read and handle up to ``limit`` queued datagrams without blocking; return how many."""
    recv = sock.recv
    for count in range(limit):
        try:
            data = recv(MAX_DATAGRAM_BYTES)
        except (BlockingIOError, InterruptedError):
            return count
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.EAGAIN):
                return count
            raise
        handle(data)
    return limit


def receive_datagrams(sock: stdsocket.socket, limit: int) -> list[bytes]:
    """Read up to ``limit`` queued datagrams without blocking."""
    recv = sock.recv
    out: list[bytes] = []
    append = out.append
    for _ in range(limit):
        try:
            append(recv(MAX_DATAGRAM_BYTES))
        except (BlockingIOError, InterruptedError):
            break
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.EAGAIN):
                break
            raise
    return out


async def run_datagram_listener(bound: BoundSocket, handle: Handler, *,
                                handle_batch: BatchHandler | None = None) -> None:
    """Receive datagrams on ``bound`` until cancelled.

    Args:
        handle: called once per datagram, unless ``handle_batch`` is given.
        handle_batch: called once per drained burst with all its datagrams: one call
            (and one parser setup) for up to `DATAGRAMS_PER_CHECKPOINT` datagrams.
    """
    sock = bound.sock
    limit = DATAGRAMS_PER_CHECKPOINT
    while True:
        await trio.lowlevel.wait_readable(sock)
        if handle_batch is None:
            while drain_datagrams(sock, handle, limit) == limit:
                await trio.lowlevel.checkpoint()
            continue
        while True:
            batch = receive_datagrams(sock, limit)
            if batch:
                handle_batch(batch)
            if len(batch) < limit:
                break
            await trio.lowlevel.checkpoint()


async def serve_stream(stream: trio.abc.ReceiveStream, handle: Handler, *,
                       max_line_bytes: int, stats: IntakeStatistics) -> None:
    """Read newline-framed lines from one stream connection until it ends."""
    buffer = LineBuffer(max_line_bytes=max_line_bytes)
    try:
        while True:
            chunk = bytes(await stream.receive_some(STREAM_CHUNK_BYTES))  # bytes already: no copy
            if not chunk:
                break
            block = buffer.feed(chunk)
            if block:
                handle(block)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        tail = buffer.flush()
        if tail:
            handle(tail)
        stats.overlong_stream_lines += buffer.overlong_lines
        if buffer.overlong_lines:
            log_event(LOGGER, "stream_line_too_long", level=logging.WARNING,
                      count=buffer.overlong_lines, limit_bytes=max_line_bytes)


async def run_stream_listener(bound: BoundSocket, handle: Handler, *, max_line_bytes: int,
                              max_connections: int, stats: IntakeStatistics) -> None:
    """Accept stream connections on ``bound`` until cancelled."""
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(bound.sock))
    active = 0

    async def connection(stream: trio.SocketStream) -> None:
        nonlocal active
        if active >= max_connections:
            stats.stream_connections_refused += 1
            log_event(LOGGER, "connection_refused", level=logging.WARNING,
                      listener=str(bound.url), reason="max_tcp_connections",
                      limit=max_connections)
            await stream.aclose()
            return
        active += 1
        stats.stream_connections += 1
        try:
            async with stream:
                await serve_stream(stream, handle, max_line_bytes=max_line_bytes, stats=stats)
        finally:
            active -= 1

    await trio.serve_listeners(connection, [listener])


def close_listener(bound: BoundSocket) -> None:
    """Close the socket; remove a Unix socket's file."""
    bound.sock.close()
    if bound.url.scheme in ("unix", "unixgram"):
        try:
            os.unlink(bound.url.path)
        except OSError:
            pass
