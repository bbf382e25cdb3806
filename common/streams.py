"""Stream intake (tcp, unix): one task per connection, a daemon-wide connection limit.

`common.framing.LineBuffer` cuts each stream into blocks of whole lines; a line over
``max_line_bytes`` that never fits is counted through the ``refused`` callback at once.

The limit, ``max_tcp_connections``, is the daemon's: the processes of a multi-process
aggregator accept from one shared listening socket and count in one shared table
(`common.connections.ConnectionTable`). A stalled or idle client cannot lock the others out:

* a connection that receives nothing for ``tcp_idle_timeout_seconds`` is closed;
* when the daemon is full, a new connection closes (evicts) the connection of its process
  that has been idle longest, if it has been idle at least `EVICT_IDLE_SECONDS`: only once
  the process has accepted the newcomer and found no place (every process sharing the
  socket is woken for it, and only one gets it); a process with nothing to evict leaves
  the new connection queued (up to `MAX_DEFER_SECONDS` per wake-up) while another process
  reports something to evict, so that one accepts it;
* otherwise (every place is held by a client that is sending) the new connection is
  refused: closed at once, counted and logged.

When the daemon closes a connection (idle, evicted), or the client resets it, its
unfinished last line, if any, is refused (``truncated``), never parsed: only a clean end of
stream (the client's FIN) hands on an unterminated last line. What a client had in flight
when its connection was closed (or refused) is lost in the kernel and cannot be counted.

SHELL.
"""

from __future__ import annotations

import errno
import logging
import resource
import select
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Final

import attrs
import trio

from .connections import ConnectionTable
from .framing import LineBuffer
from .listener import (
    LOG_PER_SECOND,
    BoundSocket,
    Handler,
    IntakeCounters,
    RefusedLines,
    ignore_refused,
)
from .logging import RateLimiter, log_event

LOGGER = logging.getLogger(__name__)

#: Bytes read from a stream per receive.
STREAM_CHUNK_BYTES: Final = 65_536
#: When the daemon is full, a connection idle (nothing received) at least this long is
#: closed to make room for a new one; a client that sends at least once a second is never
#: evicted, so a full daemon of busy clients refuses newcomers instead of churning.
EVICT_IDLE_SECONDS: Final = 1.0
#: How often each process looks for idle connections (idle timeout, evictable count).
SWEEP_SECONDS: Final = 0.25
#: A full process with nothing to evict leaves a new connection in the shared accept queue
#: for this long at a time, up to `MAX_DEFER_SECONDS` per wake-up, if another process can
#: evict.
DEFER_SECONDS: Final = 0.02
MAX_DEFER_SECONDS: Final = 0.5
#: File descriptors wanted beyond the connection limit (sockets, pipes, files, Carbon).
FD_HEADROOM: Final = 256
#: accept() errors that mean "out of descriptors or memory": wait, then try again.
_ACCEPT_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_PAUSE_SECONDS: Final = 0.1


@attrs.define(eq=False)
class StreamConnection:
    """One open connection: when it last received, and the scope that closes it."""

    last_activity: float
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    closed_by: str = ""


class StreamConnections:
    """The stream connections of one process, within the daemon-wide limit.

    Args:
        max_connections: the daemon's limit (all stream listeners, all processes).
        idle_timeout_seconds: close connections idle this long (0: never).
        stats: where connections are counted.
        table: the shared count (`ConnectionTable.attach`); a private one by default.
    """

    def __init__(self, *, max_connections: int, idle_timeout_seconds: float = 0.0,
                 stats: IntakeCounters | None = None,
                 table: ConnectionTable | None = None) -> None:
        self.limit = max_connections
        self.idle_timeout = idle_timeout_seconds
        self.stats = stats if stats is not None else IntakeCounters()
        self.table = table if table is not None else ConnectionTable.local()
        self.open: dict[StreamConnection, None] = {}
        self.log = RateLimiter(LOG_PER_SECOND)
        #: Set when a connection opens: the sweepers sleep on it while none is open.
        self._opened = trio.Event()

    def add(self, conn: StreamConnection) -> None:
        """``conn`` is open (its place is reserved)."""
        self.open[conn] = None
        self._opened.set()

    def full(self) -> bool:
        return self.table.total() >= self.limit

    def close(self, conn: StreamConnection, reason: str) -> None:
        """Close ``conn`` now (its task ends soon) and give its place back at once."""
        if conn in self.open:
            conn.closed_by = reason
            conn.scope.cancel()
            self._forget(conn)

    def _forget(self, conn: StreamConnection) -> None:
        if self.open.pop(conn, False) is None:
            self.table.release()

    def can_evict(self) -> bool:
        """Whether a connection has been idle long enough to be evicted (none is closed)."""
        if not self.open:
            return False
        oldest = min(c.last_activity for c in self.open)
        return trio.current_time() - oldest >= EVICT_IDLE_SECONDS

    def evict_one(self) -> bool:
        """Close the connection idle longest, if idle long enough; say whether one was."""
        if not self.open:
            return False
        oldest = min(self.open, key=lambda c: c.last_activity)
        if trio.current_time() - oldest.last_activity < EVICT_IDLE_SECONDS:
            return False
        self.close(oldest, "evicted")
        self.stats.stream_connections_evicted += 1
        return True

    async def run_sweeper(self) -> None:
        """Close idle connections and publish the evictable count, until cancelled; while
        no connection is open, wait for one (an idle daemon is not woken)."""
        while True:
            if not self.open:
                self.table.report_evictable(0)
                if self._opened.is_set():
                    self._opened = trio.Event()
                await self._opened.wait()
                continue
            await trio.sleep(SWEEP_SECONDS)
            now = trio.current_time()
            evictable = 0
            for conn in list(self.open):
                idle = now - conn.last_activity
                if self.idle_timeout and idle >= self.idle_timeout:
                    self.close(conn, "idle_timeout")
                    self.stats.stream_connections_idle_closed += 1
                elif idle >= EVICT_IDLE_SECONDS:
                    evictable += 1
            self.table.report_evictable(evictable)

    async def serve(self, conn: StreamConnection, stream: trio.SocketStream, handle: Handler,
                    *, max_line_bytes: int, refused: RefusedLines) -> None:
        """Serve one accepted connection (its place is reserved, it is in `open`)."""
        try:
            with conn.scope:
                async with stream:
                    await serve_stream(stream, handle, max_line_bytes=max_line_bytes,
                                       stats=self.stats, refused=refused, connection=conn)
        finally:
            self._forget(conn)


async def serve_stream(stream: trio.abc.ReceiveStream, handle: Handler, *,
                       max_line_bytes: int, stats: IntakeCounters,
                       refused: RefusedLines | None = None,
                       connection: StreamConnection | None = None) -> None:
    """Read newline-framed lines from one stream connection until it ends.

    Every line is handed to ``handle`` (in blocks) or to ``refused`` (too long, or cut by
    the daemon closing the connection mid-line), as soon as it is known.
    """
    refuse = refused or ignore_refused
    buffer = LineBuffer(max_line_bytes=max_line_bytes)
    counted = 0
    cut = False
    try:
        while True:
            chunk = bytes(await stream.receive_some(STREAM_CHUNK_BYTES))  # bytes already: no copy
            if not chunk:
                break
            if connection is not None:
                connection.last_activity = trio.current_time()
            block = buffer.feed(chunk)
            if buffer.overlong_lines > counted:
                _refuse_overlong(buffer.overlong_lines - counted, refuse, stats, max_line_bytes)
                counted = buffer.overlong_lines
            if block:
                handle(block)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        cut = True  # reset by the client (or closed under us): the tail may be a cut line
    except trio.Cancelled:
        cut = True  # closed by the daemon (idle, evicted, stopping), maybe mid-line
        raise
    finally:
        tail = buffer.flush()
        if tail and cut:
            refuse("truncated", 1)
        elif tail:
            handle(tail)


#: The process's budget of ``stream_line_too_long`` warnings (all its connections).
_OVERLONG_LOG: Final = RateLimiter(LOG_PER_SECOND)


def _refuse_overlong(count: int, refuse: RefusedLines, stats: IntakeCounters,
                     limit: int) -> None:
    stats.overlong_stream_lines += count
    refuse("line_too_long", count)
    if _OVERLONG_LOG.allow():
        log_event(LOGGER, "stream_line_too_long", level=logging.WARNING, count=count,
                  limit_bytes=limit, total=stats.overlong_stream_lines,
                  suppressed=_OVERLONG_LOG.take_suppressed())


async def run_stream_listener(bound: BoundSocket, handle: Handler, *, max_line_bytes: int,
                              connections: StreamConnections,
                              refused: RefusedLines | None = None) -> None:
    """Accept stream connections on ``bound`` until cancelled (module docstring)."""
    ensure_file_limit(connections.limit + FD_HEADROOM)
    sock = bound.sock
    refuse = refused or ignore_refused
    queued = select.poll()  # whether a deferred connection is still in the accept queue
    queued.register(sock, select.POLLIN)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connections.run_sweeper)
        while True:
            await trio.lowlevel.wait_readable(sock)
            # Full, nothing to evict here, something elsewhere: leave the newcomer queued
            # for the process that can evict (woken for it too), for a while this wake-up.
            deferred = 0.0
            while (deferred < MAX_DEFER_SECONDS and connections.full()
                   and not connections.can_evict() and connections.table.evictable_elsewhere()):
                deferred += DEFER_SECONDS
                await trio.sleep(DEFER_SECONDS)
                if not queued.poll(0):
                    break  # taken meanwhile: this wake-up is over (accept finds nothing)
            try:
                client, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another process took it
            except OSError as e:
                if e.errno not in _ACCEPT_EXHAUSTED:
                    continue  # the client gave up (ECONNABORTED, ...)
                if connections.log.allow():
                    log_event(LOGGER, "accept_failed", level=logging.ERROR,
                              listener=str(bound.url), error=e.strerror)
                await trio.sleep(_ACCEPT_PAUSE_SECONDS)
                continue
            reserved = connections.table.reserve(connections.limit)
            if not reserved and connections.evict_one():
                reserved = connections.table.reserve(connections.limit)
            if not reserved:
                client.close()
                connections.stats.stream_connections_refused += 1
                if connections.log.allow():
                    log_event(LOGGER, "connection_refused", level=logging.WARNING,
                              listener=str(bound.url), reason="max_tcp_connections",
                              limit=connections.limit,
                              total=connections.stats.stream_connections_refused)
                continue
            client.setblocking(False)
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
            conn = StreamConnection(last_activity=trio.current_time())
            connections.add(conn)
            connections.stats.stream_connections += 1
            nursery.start_soon(partial(connections.serve, conn, stream, handle,
                                       max_line_bytes=max_line_bytes, refused=refuse))


def ensure_file_limit(needed: int) -> int:
    """Raise this process's open-file limit (soft, up to the hard one) to ``needed``;
    return the soft limit now in force (a warning is logged when it stays lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
        if soft < needed:
            log_event(LOGGER, "file_limit_low", level=logging.WARNING, limit=soft,
                      needed=needed, detail="raise RLIMIT_NOFILE (LimitNOFILE= in systemd)")
    return int(soft)


async def run_listeners(
    bound: Sequence[BoundSocket], *,
    serve_stream: Callable[[BoundSocket], Awaitable[None]],
    serve_datagrams: Callable[[BoundSocket], Awaitable[None]],
    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve every intake socket of a process, a stream listener with ``serve_stream`` and
    a datagram socket with ``serve_datagrams``, until the cancel scope handed to
    ``task_status`` is cancelled (a role's graceful stop closes its intake that way)."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            for b in bound:
                nursery.start_soon(serve_stream if b.url.is_stream else serve_datagrams, b)
            task_status.started(scope)
