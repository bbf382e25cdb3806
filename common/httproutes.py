"""The routes, answers and limits of `common.httpserver`: the pure part of the HTTP server.

A `Route` has methods (GET also answers HEAD: headers only), a regular expression matched
against the whole raw path (before percent-decoding; its named groups become the request's
``params``), a handler and the largest body it takes. A handler returns a `Response` with a
bytes body or an async iterable of chunks, or raises `HTTPError` for a JSON error answer
``{"error": reason, "detail": ...}``. `HTTPStatistics` is a server's counts.

Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import attrs

from .stats import counter

#: The largest request head (request line and headers).
MAX_HEADER_BYTES: Final = 16 * 1024
#: A request must arrive whole within this (the ring agent's --request-timeout-seconds).
DEFAULT_REQUEST_TIMEOUT_SECONDS: Final = 30.0
#: A keep-alive connection with no new request is closed after this.
DEFAULT_IDLE_TIMEOUT_SECONDS: Final = 10.0
#: Connections served at once; each costs a task and a socket.
DEFAULT_MAX_CONNECTIONS: Final = 64


class HTTPError(Exception):
    """An error answer a handler raises: ``{"error": reason, "detail": detail}``."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status, self.reason, self.detail = status, reason, detail


@attrs.frozen
class Response:
    """An answer; a bytes body gets a content-length unless ``headers`` has one."""

    status: int = 200
    body: bytes | AsyncIterable[bytes] = b""
    headers: tuple[tuple[str, str], ...] = ()


def json_response(value: Any, status: int = 200,
                  headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """``value`` as a JSON answer."""
    body = json.dumps(value, separators=(",", ":")).encode() + b"\n"
    return Response(status, body, (("content-type", "application/json"), *headers))


def error_response(status: int, reason: str, detail: str = "",
                   headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """The JSON error answer of every failed request."""
    return json_response({"error": reason, "detail": detail}, status, headers)


#: An async handler: it gets a `common.httpserver.Request`.
Handler = Callable[[Any], Awaitable[Response]]


@attrs.frozen
class Route:
    """``methods`` on paths that ``pattern`` matches whole; bodies up to ``max_body_bytes``."""

    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler
    max_body_bytes: int = 0


def route(methods: str | Iterable[str], pattern: str, handler: Handler, *,
          max_body_bytes: int = 0) -> Route:
    """A `Route`; ``methods`` as ``"GET"`` or ``["GET", "DELETE"]``."""
    names = [methods] if isinstance(methods, str) else list(methods)
    return Route(frozenset(m.upper() for m in names), re.compile(pattern), handler,
                 max_body_bytes)


@attrs.frozen
class HTTPLimits:
    """The limits of one server (module docstring); tests shorten them."""

    request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS
    idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS
    write_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS
    max_connections: int = DEFAULT_MAX_CONNECTIONS


@attrs.frozen
class HTTPStatistics:
    """A server's totals since it started."""

    connections: int = counter(help="connections served")
    refused_connections: int = counter(help="connections refused (503: too many open)")
    requests: int = counter(help="requests read")
    timeouts: int = counter(help="connections closed idle, or for a request too slow (408)")
    handler_errors: int = counter(help="handlers that failed (500, or a streamed answer cut)")
    responses: dict[str, int] = counter(help="answers, by status code")


@attrs.define
class HTTPCounters:
    """A server's running totals (`HTTPStatistics`' fields), kept by the server."""

    connections: int = 0
    refused_connections: int = 0
    requests: int = 0
    timeouts: int = 0
    handler_errors: int = 0
    responses: dict[str, int] = attrs.Factory(dict)

    def answered(self, status: int) -> None:
        self.responses[str(status)] = self.responses.get(str(status), 0) + 1

    def statistics(self) -> HTTPStatistics:
        return HTTPStatistics(**{**attrs.asdict(self), "responses": dict(self.responses)})




def find_route(routes: Sequence[Route], method: str, path: str
               ) -> tuple[Route | None, dict[str, str], set[str]]:
    """The route for ``method`` on ``path`` and its params; without one, the methods other
    routes of that path allow (empty: no route has the path, a 404; else a 405)."""
    allowed: set[str] = set()
    for one in routes:
        match = one.pattern.fullmatch(path)
        if match is None:
            continue
        methods = one.methods | ({"HEAD"} if "GET" in one.methods else set())
        if method in methods:
            return one, match.groupdict(), allowed
        allowed |= methods
    return None, {}, allowed
