"""Serves the management protocol (`common.admin`) over TCP with trio.

SHELL: one task per connection, all inside the caller's nursery.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, Protocol

import trio

from .admin import (
    END,
    AdminTarget,
    handle_command,
    join_replies,
    needs_join,
    per_name,
    split_commands,
)
from .logging import log_event

LOGGER = logging.getLogger(__name__)

#: Admin connections served at once; the admin port is for operators and health checks.
MAX_ADMIN_CONNECTIONS: Final = 64
#: A command longer than this is not a command.
MAX_COMMAND_BYTES: Final = 65_536


class AdminPeers(Protocol):
    """The other worker processes of a daemon, asked for their part of an answer."""

    async def ask(self, command: str) -> list[tuple[int, str]]:
        """Each peer's ``(index, answer)``; raises `PeerUnavailable` if one does not answer."""


class PeerUnavailable(Exception):
    """A peer did not answer an admin command."""


async def answer(command: str, target: AdminTarget, peers: AdminPeers | None) -> tuple[str, bool]:
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


async def serve_admin_connection(stream: trio.abc.Stream, target: AdminTarget,
                                 peers: AdminPeers | None = None) -> None:
    """Answer commands on one connection until the peer leaves or says ``quit``."""
    try:
        async with stream:
            while True:
                chunk = bytes(await stream.receive_some(MAX_COMMAND_BYTES))
                if not chunk:
                    return
                for command in split_commands(chunk):
                    reply, close = await answer(command, target, peers)
                    if reply:
                        await stream.send_all(reply.encode())
                    if close:
                        return
    except trio.BrokenResourceError:
        return


async def run_admin_server(
    listeners: Sequence[trio.SocketListener],
    target: AdminTarget,
    *,
    peers: AdminPeers | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept admin connections on ``listeners`` until cancelled."""
    limiter = trio.CapacityLimiter(MAX_ADMIN_CONNECTIONS)

    async def handler(stream: trio.SocketStream) -> None:
        if limiter.borrowed_tokens >= limiter.total_tokens:
            log_event(LOGGER, "admin_connection_refused", level=logging.WARNING,
                      reason="too_many_connections")
            await stream.aclose()
            return
        async with limiter:
            await serve_admin_connection(stream, target, peers)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(trio.serve_listeners, handler, [listener])
        task_status.started()
