"""Serves the management protocol (`common.mgmt`) over TCP with trio.

SHELL: one task per connection, all inside the caller's nursery.

The admin port must keep answering ``health`` (a proxy's probe, a load balancer, an
operator) whatever other clients do, so no client can hold a connection for free:

* idle: a connection that sends no command for `MgmtLimits.idle_seconds` is closed;
* slow: a command must be complete (its newline) within `MgmtLimits.command_seconds` of its
  first byte, so a client dribbling a byte a second is closed too;
* stuck reader: a reply that cannot be written within `MgmtLimits.write_seconds` closes the
  connection;
* full: when `MgmtLimits.max_connections` are open, a new connection is served and the one
  that has gone longest without a command is closed (``admin_connection_evicted``), so
  a flood of silent or slow connections cannot lock out a health probe (which connects,
  asks at once and leaves). A connection busy answering (waiting for the worker peers, or
  writing its reply) is never closed for a newcomer: a delete is never cut off half applied
  across workers. When every connection is busy, the newcomer gets a one-line ``ERROR`` and
  is closed (``admin_connection_refused``).

A last line without its newline waits for the rest of it (a command split across reads runs
whole), and runs when the client closes; a bare read-only command (``echo -n health | nc``
without the close) runs once the client has sent nothing for `MgmtLimits.quiet_seconds`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Sequence
from typing import Final, Protocol

import attrs
import trio

from .address import format_host_port
from .errors import ConfigError
from .logging import log_event
from .mgmt import (
    END,
    MgmtTarget,
    bare_command,
    handle_command,
    join_replies,
    needs_join,
    per_name,
    take_commands,
)

LOGGER = logging.getLogger(__name__)

#: Admin connections served at once; the admin port is for operators and health checks.
MAX_ADMIN_CONNECTIONS: Final = 64
#: A command longer than this is not a command.
MAX_COMMAND_BYTES: Final = 65_536
#: An operator's interactive session sends a command within a minute; probes send theirs at
#: once and leave. A silent connection is closed after this.
ADMIN_IDLE_SECONDS: Final = 60.0
#: A command is a few bytes; its line must be complete this long after its first byte.
ADMIN_COMMAND_SECONDS: Final = 10.0
#: A client that reads nothing (a full dump waiting in its window) is given this long.
ADMIN_WRITE_SECONDS: Final = 10.0
#: At most one ``admin_connection_evicted`` log line per this many seconds (a flood of
#: connections must not become a flood of log lines); the line counts the evictions.
EVICTION_LOG_SECONDS: Final = 10.0
#: A bare command without its newline (``health``, Etsy's one command per chunk) runs after
#: this long with no further bytes: longer than the gap between two reads of one line sent at
#: once, short enough that a probe waiting for its answer does not notice.
ADMIN_QUIET_SECONDS: Final = 0.1
#: A refused connection is read (and what it sends dropped) this long after its ERROR line,
#: so that closing it with its command unread does not reset it before the line is read.
REFUSE_LINGER_SECONDS: Final = 1.0
#: What a newcomer reads when every admin connection is busy answering.
REFUSED_REPLY: Final = "ERROR admin port busy: every connection is answering a command; retry\n"


@attrs.frozen
class MgmtLimits:
    """The limits of one admin server (module docstring); tests shorten them."""

    max_connections: int = MAX_ADMIN_CONNECTIONS
    idle_seconds: float = ADMIN_IDLE_SECONDS
    command_seconds: float = ADMIN_COMMAND_SECONDS
    write_seconds: float = ADMIN_WRITE_SECONDS
    quiet_seconds: float = ADMIN_QUIET_SECONDS


@attrs.define(eq=False)
class _Slot:
    """One open admin connection: the scope that closes it, when it last asked, and whether
    it is answering a command now (then it is not evicted)."""

    scope: trio.CancelScope
    last_command: float
    busy: bool = False


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    # The errno's own words (a name that does not resolve has a negative errno and words of
    # its own).
    reason = (os.strerror(exc.errno) if isinstance(exc.errno, int) and exc.errno > 0
              else exc.strerror or str(exc))
    return ConfigError(f"cannot bind the admin port {format_host_port(host, port)}: {reason}",
                       key="mgmt_port")


def bind_mgmt_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket for the admin port (the multi-worker supervisor binds it and
    hands it to worker 0).

    Raises:
        ConfigError: when it cannot be bound (in use, not a local address, no permission).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as socket.create_server
        sock.bind((host, port))
        sock.listen()
    except OSError as exc:
        sock.close()
        raise _bind_error(host, port, exc) from exc
    return sock


async def open_mgmt_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """The listeners of the admin port, on every address ``host`` resolves to.

    Raises:
        ConfigError: when it cannot be bound (in use, not a local address, no permission).
    """
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise _bind_error(host, port, exc) from exc


class MgmtPeers(Protocol):
    """The other worker processes of a daemon, asked for their part of an answer."""

    async def ask(self, command: str) -> list[tuple[int, str]]:
        """Each peer's ``(index, answer)``; raises `PeerUnavailable` if one does not answer."""


class PeerUnavailable(Exception):
    """A peer did not answer an admin command."""


async def answer(command: str, target: MgmtTarget, peers: MgmtPeers | None) -> tuple[str, bool]:
    """The reply to ``command``, joined over ``peers`` where the command needs it."""
    if peers is None or not needs_join(command):
        return handle_command(command, target)
    reply = ""
    for one in per_name(command):
        own, _ = handle_command(one, target)
        try:
            theirs = await peers.ask(one)
        except PeerUnavailable as exc:
            log_event(LOGGER, "admin_peer_unavailable", level=logging.WARNING,
                      command=one.split()[0], error=exc)
            return f"ERROR {exc}\n", False
        joined = join_replies(one, own, theirs)
        # Several names of one delete make one answer with one END.
        reply = reply.removesuffix(END) + joined if reply else joined
    return reply, False


async def serve_mgmt_connection(stream: trio.abc.Stream, target: MgmtTarget,
                                 peers: MgmtPeers | None = None, *,
                                 limits: MgmtLimits = MgmtLimits(),
                                 slot: _Slot | None = None) -> None:
    """Answer commands on one connection until the peer leaves, says ``quit``, or breaks a
    limit of ``limits`` (idle, slow command, stuck reader: module docstring)."""
    async with stream:
        try:
            await _serve_commands(stream, target, peers, limits, slot)
        except trio.BrokenResourceError:
            return


async def _serve_commands(stream: trio.abc.Stream, target: MgmtTarget,
                          peers: MgmtPeers | None, limits: MgmtLimits,
                          slot: _Slot | None) -> None:
    pending = b""
    waiting_since = pending_since = last_bytes = trio.current_time()
    while True:
        if pending:
            deadline, reason = pending_since + limits.command_seconds, "command_timeout"
        else:
            deadline, reason = waiting_since + limits.idle_seconds, "idle_timeout"
        bare = bare_command(pending) if pending else None
        quiet_at = last_bytes + limits.quiet_seconds if bare is not None else math.inf
        chunk: bytes | None = None
        with trio.move_on_at(min(deadline, quiet_at)):
            chunk = bytes(await stream.receive_some(MAX_COMMAND_BYTES))
        eof = chunk == b""
        if chunk is None:
            if bare is None or trio.current_time() < quiet_at:
                log_event(LOGGER, "admin_connection_closed", level=logging.DEBUG, reason=reason)
                return
            commands, pending = [bare], b""  # a bare command, and nothing more came
        elif eof:  # the client is done sending; what it left is a command
            commands, pending = take_commands(pending, b"\n" if pending else b"")
        else:
            last_bytes = trio.current_time()
            had_pending = bool(pending)
            commands, pending = take_commands(pending, chunk)
            if len(pending) > MAX_COMMAND_BYTES:
                log_event(LOGGER, "admin_connection_closed", level=logging.DEBUG,
                          reason="command_too_long")
                return
            if pending and (commands or not had_pending):
                pending_since = last_bytes
        if commands:
            if slot is not None:  # answering: not evicted until the last reply is sent
                slot.busy, slot.last_command = True, trio.current_time()
            try:
                if not await _answer_all(stream, commands, target, peers, limits):
                    return
            finally:
                if slot is not None:
                    slot.busy = False
            waiting_since = trio.current_time()
            if slot is not None:
                slot.last_command = waiting_since
        if eof:
            return


async def _answer_all(stream: trio.abc.Stream, commands: Sequence[str], target: MgmtTarget,
                      peers: MgmtPeers | None, limits: MgmtLimits) -> bool:
    """Answer ``commands`` in order; False when the connection is to be closed."""
    for command in commands:
        reply, close = await answer(command, target, peers)
        if reply:
            with trio.move_on_after(limits.write_seconds) as write:
                await stream.send_all(reply.encode())
            if write.cancelled_caught:
                log_event(LOGGER, "admin_connection_closed", level=logging.DEBUG,
                          reason="write_timeout")
                return False
        if close:
            return False
    return True


async def run_mgmt_server(
    listeners: Sequence[trio.SocketListener],
    target: MgmtTarget,
    *,
    peers: MgmtPeers | None = None,
    limits: MgmtLimits = MgmtLimits(),
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept admin connections on ``listeners`` until cancelled.

    At most ``limits.max_connections`` are served: a new one closes the connection that has
    gone longest without a command and is not answering one; when all are answering, the
    new one is refused with a one-line ``ERROR`` (module docstring).
    """
    slots: set[_Slot] = set()
    # Evictions and refusals not logged yet, and when each was last logged (one line per
    # EVICTION_LOG_SECONDS, counting them: admin_connection_evicted evicted=N, ..._refused
    # refused=N).
    unlogged = {"evicted": 0, "refused": 0}
    logged_at = dict.fromkeys(unlogged, -EVICTION_LOG_SECONDS)

    def count(what: str) -> None:
        unlogged[what] += 1
        now = trio.current_time()
        if now - logged_at[what] >= EVICTION_LOG_SECONDS:
            log_event(LOGGER, f"admin_connection_{what}", level=logging.WARNING,
                      reason="max_admin_connections", **{what: unlogged[what]},
                      max_connections=limits.max_connections)
            unlogged[what], logged_at[what] = 0, now

    def make_room() -> bool:
        """Room for one more connection (closing idle ones); False if all are busy."""
        while len(slots) >= limits.max_connections:
            idle = [one for one in slots if not one.busy]
            if not idle:
                return False
            oldest = min(idle, key=lambda one: one.last_command)
            slots.discard(oldest)
            oldest.scope.cancel()
            count("evicted")
        return True

    async def refuse(stream: trio.SocketStream) -> None:
        count("refused")
        async with stream:
            try:
                with trio.move_on_after(limits.write_seconds):
                    await stream.send_all(REFUSED_REPLY.encode())
                    await stream.send_eof()
                # Closing with the client's command unread would reset the connection, and
                # the client could lose the line: read what it sends, for a moment.
                with trio.move_on_after(REFUSE_LINGER_SECONDS):
                    while await stream.receive_some(MAX_COMMAND_BYTES):
                        pass
            except trio.BrokenResourceError:
                pass

    async def handler(stream: trio.SocketStream) -> None:
        if not make_room():
            await refuse(stream)
            return
        slot = _Slot(scope=trio.CancelScope(), last_command=trio.current_time())
        slots.add(slot)
        try:
            with slot.scope:
                await serve_mgmt_connection(stream, target, peers, limits=limits, slot=slot)
        finally:
            slots.discard(slot)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(trio.serve_listeners, handler, [listener])
        task_status.started()
