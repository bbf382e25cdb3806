"""Serves a role's admin routes over HTTP (`common.httpserver`, h11 on trio, with limits).

`open_admin_listeners` binds the ``http`` setting's address (a worker is handed the socket
its supervisor bound instead); `run_admin_server` serves `common.admin.routes` on it and
logs ``event=listening kind=http address=HOST:PORT`` (scripts and the test harness read it).

SHELL.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Final

import trio

from common.address import format_host_port, split_host_port
from common.errors import ConfigError
from common.httproutes import HTTPCounters, HTTPLimits
from common.httpserver import serve_http
from common.logging import log_event

from .routes import AdminSource, admin_routes

LOGGER = logging.getLogger(__name__)

#: Requests to the admin port are small and quick; a client gets this long for one whole.
ADMIN_REQUEST_TIMEOUT_SECONDS: Final = 10.0
#: Operators, Prometheus, the cluster report and page: a few connections at a time.
ADMIN_MAX_CONNECTIONS: Final = 32


def admin_limits() -> HTTPLimits:
    return HTTPLimits(request_timeout_seconds=ADMIN_REQUEST_TIMEOUT_SECONDS,
                      idle_timeout_seconds=ADMIN_REQUEST_TIMEOUT_SECONDS,
                      write_timeout_seconds=ADMIN_REQUEST_TIMEOUT_SECONDS,
                      max_connections=ADMIN_MAX_CONNECTIONS)


def parse_http_address(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` of the ``http`` setting; None for '' (off).

    Raises:
        ConfigError: not HOST:PORT.
    """
    if not text:
        return None
    host, port, rest = split_host_port(text, what="http address")
    if rest:
        raise ConfigError(f"bad http address {text!r}: expected HOST:PORT", key="http")
    return host, port


def bind_admin_socket(address: str) -> socket.socket | None:
    """A listening TCP socket on the ``http`` setting's address (None when it is off),
    bound before a supervisor starts its workers.

    Raises:
        ConfigError: it cannot be bound.
    """
    parsed = parse_http_address(address)
    if parsed is None:
        return None
    host, port = parsed
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind the http address {address}: {exc.strerror or exc}",
                          key="http") from exc
    sock.set_inheritable(True)
    return sock


async def open_admin_listeners(address: str) -> list[trio.SocketListener]:
    """The listeners of the ``http`` setting (none when it is off).

    Raises:
        ConfigError: it cannot be bound.
    """
    parsed = parse_http_address(address)
    if parsed is None:
        return []
    host, port = parsed
    try:
        return list(await trio.open_tcp_listeners(port, host=host))
    except OSError as exc:
        raise ConfigError(f"cannot bind the http address {address}: {exc.strerror or exc}",
                          key="http") from exc


def adopt_admin_socket(sock: socket.socket) -> list[trio.SocketListener]:
    """A listener on a socket the supervisor bound."""
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]


def listener_address(listeners: Sequence[trio.SocketListener]) -> str:
    host, port = listeners[0].socket.getsockname()[:2]
    return format_host_port(host, port)


async def run_admin_server(
    listeners: Sequence[trio.SocketListener],
    source: AdminSource,
    *,
    counters: HTTPCounters | None = None,
    log_listening: bool = True,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin routes on ``listeners`` until cancelled; ``task_status`` gets the
    bound ``(host, port)``."""
    address = listener_address(listeners)
    if log_listening:
        log_event(LOGGER, "listening", kind="http", address=address)
    await serve_http(admin_routes(source), listeners=list(listeners), limits=admin_limits(),
                     counters=counters, task_status=task_status)
