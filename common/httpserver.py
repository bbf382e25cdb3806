"""A small HTTP/1.1 server on trio, driven by h11: routes to async handlers, with limits.

A `Route` names its methods, a regular expression matched against the whole raw path (before
percent-decoding; its named groups become `Request.params`), its handler and the largest body it
takes. A handler gets a `Request` and returns a `Response` whose body is bytes or an async
iterable of chunks (streamed, chunked encoding); it may raise `HTTPError` for an error answer.

No client can hold the server for free:

* idle: a connection that starts no request within `HTTPLimits.idle_timeout_seconds` (after
  its accept or its previous response) is closed;
* slow: a request (head and body) must arrive within `HTTPLimits.request_timeout_seconds` of
  its first byte, so a client dribbling bytes is closed (408);
* big: a head over `MAX_HEADER_BYTES` gets 431; a body over its route's cap gets 413;
* stuck reader: every write of a response must finish within
  `HTTPLimits.write_timeout_seconds`;
* full: past `HTTPLimits.max_connections` open connections, a newcomer gets 503 and is closed.

A handler that raises anything else gets the client a 500 JSON answer without a traceback; the
traceback goes to the log, at most `ERROR_LOGS_PER_SECOND` lines a second. A streamed body that
fails midway is cut (no final chunk), so the client sees an incomplete answer, never a short one
passing for whole. Answers to HEAD carry the headers only.

SHELL: one task per connection, inside the nursery of `serve_http`.
"""

from __future__ import annotations

import http
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import attrs
import h11
import trio

from .logging import RateLimiter, log_event

LOGGER = logging.getLogger(__name__)

#: The largest request head (request line and headers): h11's max_incomplete_event_size.
MAX_HEADER_BYTES: Final = 16 * 1024
#: A request must arrive whole within this (the agent's --request-timeout-seconds default).
DEFAULT_REQUEST_TIMEOUT_SECONDS: Final = 30.0
#: A keep-alive connection with no new request is closed after this.
DEFAULT_IDLE_TIMEOUT_SECONDS: Final = 10.0
#: Connections served at once; each costs a task and a socket.
DEFAULT_MAX_CONNECTIONS: Final = 64
#: How much one read asks of the socket.
RECEIVE_BYTES: Final = 65_536
#: After an answer that closes the connection with request bytes unread, what the client still
#: sends is read (and dropped) for this long, so the close does not reset the connection before
#: the client has read the answer.
LINGER_SECONDS: Final = 1.0
#: Handler failures logged per second (each with its traceback); the rest are counted.
ERROR_LOGS_PER_SECOND: Final = 5


class HTTPError(Exception):
    """An error answer a handler raises: ``{"error": reason, "detail": detail}``."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{status} {reason}: {detail}" if detail else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.detail = detail


@attrs.frozen
class Response:
    """What a handler answers. Without a content-length header, a bytes body gets one; an
    iterable body is streamed with chunked encoding."""

    status: int = 200
    body: bytes | AsyncIterable[bytes] = b""
    headers: tuple[tuple[str, str], ...] = ()


def json_response(value: Any, status: int = 200) -> Response:
    """``value`` as a JSON answer."""
    body = json.dumps(value, separators=(",", ":")).encode() + b"\n"
    return Response(status, body, (("content-type", "application/json"),))


def error_response(status: int, reason: str, detail: str = "") -> Response:
    """The JSON error answer every failure of a request gets."""
    return json_response({"error": reason, "detail": detail}, status)


Handler = Callable[["Request"], Awaitable[Response]]


@attrs.frozen
class Route:
    """``methods`` on paths that ``pattern`` matches whole; bodies up to ``max_body_bytes``."""

    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler
    max_body_bytes: int = 0


def route(methods: str | Iterable[str], pattern: str, handler: Handler, *,
          max_body_bytes: int = 0) -> Route:
    """A `Route`; ``methods`` as ``"GET"`` or ``["GET", "HEAD"]``."""
    names = frozenset([methods] if isinstance(methods, str) else methods)
    return Route(frozenset(m.upper() for m in names), re.compile(pattern), handler,
                 max_body_bytes)


@attrs.frozen
class HTTPLimits:
    """The limits of one server (module docstring); tests shorten them."""

    request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS
    idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS
    write_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS
    max_connections: int = DEFAULT_MAX_CONNECTIONS


@attrs.define
class HTTPCounters:
    """The server's running totals, read through `statistics` (a plain dict copy)."""

    connections: int = 0
    refused_connections: int = 0
    requests: int = 0
    timeouts: int = 0
    handler_errors: int = 0
    responses: dict[str, int] = attrs.Factory(dict)  # by status code

    def statistics(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "responses": dict(self.responses)}


class _Timeout(Exception):
    pass


class Request:
    """One request: method, raw target and path, lower-cased headers, the route's params and
    its body (read with `read_body`, at most the route's cap)."""

    def __init__(self, conn: _Connection, event: h11.Request, params: dict[str, str],
                 max_body_bytes: int) -> None:
        self.method = event.method.decode("ascii", "replace").upper()
        self.target = event.target.decode("ascii", "replace")
        self.path, _, self.query = self.target.partition("?")
        self.headers = [(k.decode("latin-1").lower(), v.decode("latin-1"))
                        for k, v in event.headers]
        self.params = params
        self.max_body_bytes = max_body_bytes
        self.body_done = False
        self._conn = conn

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    async def read_body(self) -> bytes:
        """The whole body.

        Raises:
            HTTPError: 413 over the route's cap, 408 when the request deadline passes, 400 for
                a body h11 refuses.
        """
        length = self.header("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise HTTPError(413, "too_large", f"body over {self.max_body_bytes} bytes")
        conn, size = self._conn, 0
        parts: list[bytes] = []
        if conn.h11.they_are_waiting_for_100_continue:
            await conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        while True:
            try:
                event = await conn.next_event()
            except _Timeout:
                raise HTTPError(408, "request_timeout", "the body came too slowly") from None
            except h11.RemoteProtocolError as exc:
                raise HTTPError(400, "bad_request", str(exc)) from None
            if isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return b"".join(parts)
            if not isinstance(event, h11.Data):
                raise HTTPError(400, "bad_request", "the body ended early")
            size += len(event.data)
            if size > self.max_body_bytes:
                raise HTTPError(413, "too_large", f"body over {self.max_body_bytes} bytes")
            parts.append(bytes(event.data))


class _Connection:
    """An h11 connection over a trio stream, reads bounded by the request's deadlines."""

    def __init__(self, stream: trio.abc.Stream, limits: HTTPLimits) -> None:
        self.stream = stream
        self.limits = limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.idle_deadline = trio.current_time() + min(limits.idle_timeout_seconds,
                                                       limits.request_timeout_seconds)
        self.request_deadline: float | None = None

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            deadline = self.request_deadline or self.idle_deadline
            data = None
            with trio.move_on_at(deadline):
                data = await self.stream.receive_some(RECEIVE_BYTES)
            if data is None:
                raise _Timeout("request" if self.request_deadline else "idle")
            if data and self.request_deadline is None:
                self.request_deadline = (trio.current_time()
                                         + self.limits.request_timeout_seconds)
            self.h11.receive_data(bytes(data))

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            with trio.fail_after(self.limits.write_timeout_seconds):
                await self.stream.send_all(data)

    def next_cycle(self) -> None:
        self.h11.start_next_cycle()
        self.idle_deadline = trio.current_time() + self.limits.idle_timeout_seconds
        pipelined = self.h11.trailing_data[0]
        self.request_deadline = (trio.current_time() + self.limits.request_timeout_seconds
                                 if pipelined else None)


def _find_route(routes: Sequence[Route], method: str, path: str
                ) -> tuple[Route | None, dict[str, str], set[str]]:
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


async def _respond(conn: _Connection, response: Response, method: str, close: bool) -> None:
    headers = [(k.lower(), v) for k, v in response.headers]
    names = {k for k, _ in headers}
    if isinstance(response.body, bytes) and "content-length" not in names:
        headers.append(("content-length", str(len(response.body))))
    if close:
        headers.append(("connection", "close"))
    try:
        reason = http.HTTPStatus(response.status).phrase.encode()
    except ValueError:
        reason = b""
    body = response.body
    try:
        await conn.send(h11.Response(status_code=response.status, headers=headers,
                                     reason=reason))
        if isinstance(body, bytes):
            if body and method != "HEAD":
                await conn.send(h11.Data(data=body))
        elif method != "HEAD":
            async for chunk in body:
                if chunk:
                    await conn.send(h11.Data(data=chunk))
    finally:
        if isinstance(body, AsyncGenerator):
            await body.aclose()
    await conn.send(h11.EndOfMessage())


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then drop what the client still sends, for a moment (`LINGER_SECONDS`)."""
    with trio.move_on_after(LINGER_SECONDS):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            while await stream.receive_some(RECEIVE_BYTES):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class _Server:
    def __init__(self, routes: Sequence[Route], limits: HTTPLimits,
                 counters: HTTPCounters) -> None:
        self.routes = routes
        self.limits = limits
        self.counters = counters
        self.slots = trio.CapacityLimiter(limits.max_connections)
        self.error_log = RateLimiter(ERROR_LOGS_PER_SECOND)

    async def accept(self, stream: trio.abc.Stream) -> None:
        async with stream:
            try:
                self.slots.acquire_nowait()
            except trio.WouldBlock:
                self.counters.refused_connections += 1
                await self._refuse(stream)
                return
            try:
                self.counters.connections += 1
                await self._serve(_Connection(stream, self.limits))
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                pass
            finally:
                self.slots.release()

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        conn = _Connection(stream, self.limits)
        try:
            await _respond(conn, error_response(503, "busy", "too many connections"), "GET",
                           close=True)
        except (trio.BrokenResourceError, trio.TooSlowError):
            return
        await _linger(stream)

    async def _answer_error(self, conn: _Connection, status: int, reason: str,
                            detail: str) -> None:
        if conn.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.counters.responses[str(status)] = self.counters.responses.get(str(status), 0) + 1
            await _respond(conn, error_response(status, reason, detail), "GET", close=True)
            await _linger(conn.stream)

    async def _serve(self, conn: _Connection) -> None:
        while True:
            try:
                event = await conn.next_event()
            except _Timeout as exc:
                self.counters.timeouts += 1
                if str(exc) == "request":
                    await self._answer_error(conn, 408, "request_timeout",
                                             "the request came too slowly")
                return
            except h11.RemoteProtocolError as exc:
                await self._answer_error(conn, exc.error_status_hint, "bad_request", str(exc))
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed
            if _head_bytes(event) > MAX_HEADER_BYTES:
                # h11's limit only holds for a head that arrives in pieces; this one came whole.
                await self._answer_error(conn, 431, "headers_too_large",
                                         f"request head over {MAX_HEADER_BYTES} bytes")
                return
            self.counters.requests += 1
            request, response = await self._handle(conn, event)
            close = not _skip_body(conn, request)
            key = str(response.status)
            self.counters.responses[key] = self.counters.responses.get(key, 0) + 1
            try:
                await _respond(conn, response, request.method, close)
            except (trio.BrokenResourceError, trio.TooSlowError, trio.ClosedResourceError):
                raise
            except Exception as exc:  # a streamed body failed midway: cut the answer
                self._log_failure(request, exc)
                return
            if close or conn.h11.our_state is h11.MUST_CLOSE:
                await _linger(conn.stream)
                return
            conn.next_cycle()

    async def _handle(self, conn: _Connection, event: h11.Request
                      ) -> tuple[Request, Response]:
        method = event.method.decode("ascii", "replace").upper()
        path = event.target.decode("ascii", "replace").partition("?")[0]
        found, params, allowed = _find_route(self.routes, method, path)
        request = Request(conn, event, params, found.max_body_bytes if found else 0)
        if found is None:
            if allowed:
                return request, attrs.evolve(
                    error_response(405, "method_not_allowed", f"{method} {path}"),
                    headers=(("content-type", "application/json"),
                             ("allow", ", ".join(sorted(allowed)))))
            return request, error_response(404, "not_found", path)
        try:
            return request, await found.handler(request)
        except HTTPError as exc:
            return request, error_response(exc.status, exc.reason, exc.detail)
        except Exception as exc:
            self._log_failure(request, exc)
            return request, error_response(500, "internal_error", "see the server's log")

    def _log_failure(self, request: Request, exc: Exception) -> None:
        self.counters.handler_errors += 1
        if self.error_log.allow():
            fields = {"event": "http_handler_failed", "method": request.method,
                      "path": request.path[:200], "error": repr(exc)[:500],
                      "suppressed": self.error_log.take_suppressed()}
            LOGGER.error("http_handler_failed", exc_info=exc, extra={"fields": fields})


def _head_bytes(event: h11.Request) -> int:
    return (len(event.method) + len(event.target) + 12
            + sum(len(k) + len(v) + 4 for k, v in event.headers))


def _skip_body(conn: _Connection, request: Request) -> bool:
    """Whether the request's body is behind us: read by the handler, empty, or all received
    already (then dropped); False when the connection must close to be rid of it."""
    while not request.body_done:
        try:
            event = conn.h11.next_event()
        except h11.RemoteProtocolError:
            return False
        if isinstance(event, h11.EndOfMessage):
            request.body_done = True
        elif not isinstance(event, h11.Data):
            return False
    return True


async def serve_http(
    routes: Sequence[Route],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: HTTPLimits = HTTPLimits(),
    counters: HTTPCounters | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` on ``host:port`` until cancelled; ``task_status.started((host, port))``
    with the bound address once it listens (port 0 picks a free one).

    Raises:
        OSError: when the address cannot be bound.
    """
    server = _Server(routes, limits, counters if counters is not None else HTTPCounters())
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()
    log_event(LOGGER, "http_listening", level=logging.DEBUG, host=sockname[0],
              port=sockname[1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, server.accept, listeners)
        task_status.started((sockname[0], sockname[1]))
