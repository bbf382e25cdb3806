"""What a supervisor hands each worker process, and how a worker keeps track of it.

The supervisor (`aggregator.supervisor`) passes the bound intake sockets, the admin socket
(worker 0 only), the read end of a lifeline pipe and a readiness pipe as inherited file
descriptors, and describes them in the ``TALLYD_WORKER`` environment variable (JSON).
Workers find each other by name in the abstract Unix socket namespace: ``@<exchange>-<index>``
for lines and flush marks (`aggregator.worker`), ``@<exchange>-admin-<index>`` for admin
commands joined by worker 0 (`aggregator.admin.WorkerAdminPeers`).

SHELL.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable

import attrs
import trio

from common.connections import ConnectionTable
from common.logging import log_event

LOGGER = logging.getLogger(__name__)


@attrs.frozen
class WorkerContext:
    """What the supervisor hands a worker process."""

    index: int
    count: int
    exchange: str
    generation: int
    sockets: tuple[socket.socket, ...]
    mgmt: socket.socket | None
    parent_pipe: int | None = None
    ready_pipe: int | None = None
    #: The daemon-wide count of stream connections (``connections_fd``), if passed.
    connections: ConnectionTable | None = None

    def address(self, index: int) -> bytes:
        return f"\0{self.exchange}-{index}".encode()

    def admin_address(self, index: int) -> str:
        """Where worker ``index`` answers admin commands for worker 0 (`WorkerAdminPeers`)."""
        return f"\0{self.exchange}-admin-{index}"


async def watch_parent(fd: int, on_gone: Callable[[], None]) -> None:
    """Call ``on_gone`` once the supervisor is gone.

    ``fd`` is the read end of a pipe whose write end only the supervisor holds: it reads
    EOF when the supervisor exits, however it dies (even SIGKILL), so a worker never
    outlives it. (PR_SET_PDEATHSIG does not fit: it fires when the *thread* that started
    the child exits, and trio starts processes from a worker thread.)
    """
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            if not os.read(fd, 4096):
                break
        except BlockingIOError:
            continue
    log_event(LOGGER, "supervisor_gone", level=logging.WARNING)
    on_gone()


def worker_context_from_env(value: str, listen_count: int) -> WorkerContext:
    """Rebuild the context the supervisor put in ``TALLYD_WORKER`` (JSON)."""
    data = json.loads(value)
    fds = data["fds"]
    if len(fds) != listen_count:
        raise RuntimeError(f"supervisor passed {len(fds)} sockets for {listen_count} listeners")
    sockets = tuple(socket.socket(fileno=fd) for fd in fds)
    mgmt = socket.socket(fileno=data["mgmt_fd"]) if data.get("mgmt_fd") is not None else None
    for s in (*sockets, *([mgmt] if mgmt else [])):
        os.set_blocking(s.fileno(), False)
    os.set_blocking(data["parent_pipe"], False)
    table_fd = data.get("connections_fd")
    connections = ConnectionTable.attach(table_fd, data["index"]) if table_fd is not None else None
    return WorkerContext(index=data["index"], count=data["count"], exchange=data["exchange"],
                         generation=data["generation"], sockets=sockets, mgmt=mgmt,
                         parent_pipe=data["parent_pipe"], ready_pipe=data.get("ready_pipe"),
                         connections=connections)
