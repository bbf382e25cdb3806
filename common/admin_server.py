"""Serves the management protocol (`common.admin`) over TCP with trio.

SHELL: one task per connection, all inside the caller's nursery.
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from .admin import AdminTarget, handle_command, split_commands
from .logging import log_event

LOGGER = logging.getLogger(__name__)

#: Admin connections served at once; the admin port is for operators and health checks.
MAX_ADMIN_CONNECTIONS: Final = 64
#: A command longer than this is not a command.
MAX_COMMAND_BYTES: Final = 65_536


async def serve_admin_connection(stream: trio.abc.Stream, target: AdminTarget) -> None:
    """Answer commands on one connection until the peer leaves or says ``quit``."""
    try:
        async with stream:
            while True:
                chunk = bytes(await stream.receive_some(MAX_COMMAND_BYTES))
                if not chunk:
                    return
                for command in split_commands(chunk):
                    reply, close = handle_command(command, target)
                    if reply:
                        await stream.send_all(reply.encode())
                    if close:
                        return
    except trio.BrokenResourceError:
        return


async def run_admin_server(
    listeners: list[trio.SocketListener],
    target: AdminTarget,
    *,
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
            await serve_admin_connection(stream, target)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(trio.serve_listeners, handler, [listener])
        task_status.started()
