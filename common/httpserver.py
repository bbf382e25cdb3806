"""A small HTTP/1.1 server on trio, driven by h11: routes to async handlers, with limits.

The routes, answers and limits are `common.httproutes`. A handler gets a
`Request` and returns a `Response`: a bytes body, or an async iterable of chunks streamed with
chunked encoding; an `HTTPError` it raises is its JSON error answer.

No client holds the server for free (`HTTPLimits`):

* idle: a connection that starts no request within ``idle_timeout_seconds`` of its accept or
  its last answer is closed;
* slow: a request, head and body, must arrive within ``request_timeout_seconds`` of its first
  byte (408), so a client dribbling bytes is closed while the others are served;
* big: a head over `MAX_HEADER_BYTES` gets 431, a body over its route's cap 413;
* stuck reader: each write of an answer must finish within ``write_timeout_seconds``;
* full: past ``max_connections`` open connections, a newcomer gets 503 and is closed.

A handler that raises anything else gets the client a 500 without details; the traceback goes
to the log, at most `ERROR_LOGS_PER_SECOND` a second. A streamed body that fails midway is cut
(no last chunk), so the client sees a broken answer, never a short one passing for whole.

SHELL: one task per connection, in the nursery of `serve_http`.
"""

from __future__ import annotations

import http
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Final

import h11
import trio

from .httproutes import (
    MAX_HEADER_BYTES,
    Handler,
    HTTPCounters,
    HTTPError,
    HTTPLimits,
    Response,
    Route,
    error_response,
    find_route,
)
from .logging import RateLimiter, log_event

LOGGER = logging.getLogger(__name__)

#: How much one read asks of the socket.
RECEIVE_BYTES: Final = 65_536
#: Before closing with request bytes unread, what the client still sends is dropped for this
#: long, so that the close does not reset the connection before the client reads the answer.
LINGER_SECONDS: Final = 1.0
#: Handler failures logged per second (each with its traceback); the rest are counted.
ERROR_LOGS_PER_SECOND: Final = 5


class _Timeout(Exception):
    """No request (``idle``) or not all of it (``request``) in time."""


#: What a write to a client that went away, or stopped reading, raises.
_CLIENT_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)


class _Connection:
    """An h11 connection over a trio stream; reads bounded by the request's deadlines."""

    def __init__(self, stream: trio.abc.Stream, limits: HTTPLimits) -> None:
        self.stream, self.limits = stream, limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.idle_deadline = trio.current_time() + min(limits.idle_timeout_seconds,
                                                       limits.request_timeout_seconds)
        self.request_deadline: float | None = None

    async def next_event(self) -> Any:
        while (event := self.h11.next_event()) is h11.NEED_DATA:
            data = None
            with trio.move_on_at(self.request_deadline or self.idle_deadline):
                data = await self.stream.receive_some(RECEIVE_BYTES)
            if data is None:
                raise _Timeout("request" if self.request_deadline else "idle")
            if data and self.request_deadline is None:  # a request begins
                self.request_deadline = trio.current_time() + self.limits.request_timeout_seconds
            self.h11.receive_data(bytes(data))
        return event

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            with trio.fail_after(self.limits.write_timeout_seconds):
                await self.stream.send_all(data)

    def next_cycle(self) -> None:
        self.h11.start_next_cycle()
        now = trio.current_time()
        self.idle_deadline = now + self.limits.idle_timeout_seconds
        pipelined = self.h11.trailing_data[0]  # the next request is already here
        self.request_deadline = now + self.limits.request_timeout_seconds if pipelined else None


class Request:
    """One request: ``method``, raw ``target``, ``path`` and ``query``, lower-cased
    ``headers``, the route's ``params``, and the body (`read_body`)."""

    def __init__(self, conn: _Connection, event: h11.Request, params: dict[str, str],
                 max_body_bytes: int) -> None:
        self.method = event.method.decode("ascii", "replace").upper()
        self.target = event.target.decode("ascii", "replace")
        self.path, _, self.query = self.target.partition("?")
        self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        self.params = params
        self.max_body_bytes = max_body_bytes
        self.body_done = False
        self._conn = conn

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        return next((v for k, v in self.headers if k == name.lower()), None)

    async def read_body(self) -> bytes:
        """The whole body.

        Raises:
            HTTPError: 413 over the route's cap, 408 past the request's deadline, 400 for a
                body h11 refuses.
        """
        too_large = HTTPError(413, "too_large", f"body over {self.max_body_bytes} bytes")
        length = self.header("content-length") or ""
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise too_large
        if self._conn.h11.they_are_waiting_for_100_continue:
            await self._conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                event = await self._conn.next_event()
            except _Timeout:
                raise HTTPError(408, "request_timeout", "the body came too slowly") from None
            except h11.RemoteProtocolError as exc:
                raise HTTPError(400, "bad_request", str(exc)) from None
            if isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return b"".join(parts)
            size += len(event.data)  # h11 gives Data or EndOfMessage here
            if size > self.max_body_bytes:
                raise too_large
            parts.append(bytes(event.data))

    def skip_body(self) -> bool:
        """Drop a body the handler left that is all here already; False when some is still
        to come (the connection then closes to be rid of it)."""
        while not self.body_done:
            try:
                event = self._conn.h11.next_event()
            except h11.RemoteProtocolError:
                return False
            if not isinstance(event, h11.Data | h11.EndOfMessage):
                return False
            self.body_done = isinstance(event, h11.EndOfMessage)
        return True


async def _respond(conn: _Connection, response: Response, method: str, close: bool) -> None:
    headers = [(k.lower(), v) for k, v in response.headers]
    body = response.body
    if isinstance(body, bytes) and all(k != "content-length" for k, _ in headers):
        headers.append(("content-length", str(len(body))))
    if close:
        headers.append(("connection", "close"))
    try:
        phrase = http.HTTPStatus(response.status).phrase.encode()
    except ValueError:
        phrase = b""
    try:
        await conn.send(h11.Response(status_code=response.status, headers=headers,
                                     reason=phrase))
        if method == "HEAD":
            pass
        elif isinstance(body, bytes):
            await conn.send(h11.Data(data=body))
        else:
            async for chunk in body:
                if chunk:
                    await conn.send(h11.Data(data=chunk))
    finally:
        if isinstance(body, AsyncGenerator):
            await body.aclose()
    await conn.send(h11.EndOfMessage())


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then drop what the client still sends, for `LINGER_SECONDS` at most."""
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
        self.routes, self.limits, self.counters = routes, limits, counters
        self.slots = trio.CapacityLimiter(limits.max_connections)
        self.error_log = RateLimiter(ERROR_LOGS_PER_SECOND)

    async def accept(self, stream: trio.abc.Stream) -> None:
        async with stream:
            conn = _Connection(stream, self.limits)
            try:
                self.slots.acquire_nowait()
            except trio.WouldBlock:
                self.counters.refused_connections += 1
                await self._fail(conn, 503, "busy", "too many connections")
                return
            try:
                self.counters.connections += 1
                await self._serve(conn)
            except _CLIENT_GONE:
                pass
            finally:
                self.slots.release()

    async def _fail(self, conn: _Connection, status: int, reason: str, detail: str) -> None:
        """Answer an error, if an answer can still be sent, and close."""
        if conn.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.counters.answered(status)
            try:
                await _respond(conn, error_response(status, reason, detail), "GET", True)
            except _CLIENT_GONE:
                return
            await _linger(conn.stream)

    async def _serve(self, conn: _Connection) -> None:
        while True:
            try:
                event = await conn.next_event()
            except _Timeout as exc:
                self.counters.timeouts += 1
                if str(exc) == "request":
                    await self._fail(conn, 408, "request_timeout", "the request came too slowly")
                return
            except h11.RemoteProtocolError as exc:
                await self._fail(conn, exc.error_status_hint, "bad_request", str(exc))
                return
            if not isinstance(event, h11.Request):
                return  # the client closed
            if len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) \
                    > MAX_HEADER_BYTES:  # h11's own bound holds only for a head in pieces
                await self._fail(conn, 431, "headers_too_large", f"over {MAX_HEADER_BYTES}")
                return
            self.counters.requests += 1
            request, response = await self._handle(conn, event)
            close = not request.skip_body()
            self.counters.answered(response.status)
            try:
                await _respond(conn, response, request.method, close)
            except _CLIENT_GONE:
                raise
            except Exception as exc:  # a streamed body failed midway: the answer is cut
                self._log_failure(request, exc)
                return
            if close or conn.h11.our_state is h11.MUST_CLOSE:
                await _linger(conn.stream)
                return
            conn.next_cycle()

    async def _handle(self, conn: _Connection, event: h11.Request
                      ) -> tuple[Request, Response]:
        request = Request(conn, event, {}, 0)
        found, params, allowed = find_route(self.routes, request.method, request.path)
        if found is not None:
            request.params, request.max_body_bytes = params, found.max_body_bytes
            return request, await self._call(found.handler, request)
        if allowed:
            return request, error_response(405, "method_not_allowed", request.method,
                                           (("allow", ", ".join(sorted(allowed))),))
        return request, error_response(404, "not_found", request.path[:200])

    async def _call(self, handler: Handler, request: Request) -> Response:
        try:
            response: Response = await handler(request)
            return response
        except HTTPError as exc:
            return error_response(exc.status, exc.reason, exc.detail)
        except Exception as exc:
            self._log_failure(request, exc)
            return error_response(500, "internal_error", "see the server's log")

    def _log_failure(self, request: Request, exc: Exception) -> None:
        self.counters.handler_errors += 1
        if self.error_log.allow():
            fields = {"event": "http_handler_failed", "method": request.method,
                      "path": request.path[:200], "error": repr(exc)[:500],
                      "suppressed": self.error_log.take_suppressed()}
            LOGGER.error("http_handler_failed", exc_info=exc, extra={"fields": fields})


async def serve_http(
    routes: Sequence[Route],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: HTTPLimits | None = None,
    counters: HTTPCounters | None = None,
    listeners: list[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` on ``host:port`` until cancelled, counting in ``counters``;
    ``task_status.started((host, port))`` once listening (port 0 picks a free port).
    ``listeners`` already bound (a socket a supervisor handed over) replace host and port.

    Raises:
        OSError: when the address cannot be bound.
    """
    server = _Server(routes, limits or HTTPLimits(),
                     counters if counters is not None else HTTPCounters())
    if listeners is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    log_event(LOGGER, "http_listening", level=logging.DEBUG, host=bound_host, port=bound_port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, server.accept, listeners)
        task_status.started((bound_host, bound_port))
