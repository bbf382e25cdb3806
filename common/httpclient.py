"""A small HTTP/1.1 client on trio, driven by h11: one request per connection.

`open_request` sends one request and yields the `ClientResponse` once its head has arrived; the
body is read whole (`ClientResponse.read`, capped) or streamed (`ClientResponse.iter_body`).
`request` does both for small answers. Every failure is an `HTTPClientError` with a ``reason``:
``bad_url``, ``connect_failed``, ``connect_timeout``, ``timeout``, ``connection_lost``,
``protocol_error``, ``too_large``.

Time is bounded three ways: connecting (``connect_timeout``), each read or write making
progress (``read_timeout``: a stalled peer), and optionally the whole exchange
(``total_timeout``). A streamed listing of a million files may take minutes and still be
healthy, so only the first two are always on.

SHELL (sockets).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any, Final

import h11
import trio

#: Default seconds to connect, and to wait for any progress of a read or write.
DEFAULT_TIMEOUT_SECONDS: Final = 30.0
#: The largest answer `ClientResponse.read` accepts unless told otherwise.
DEFAULT_MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
#: The largest response head accepted.
MAX_HEADER_BYTES: Final = 16 * 1024
#: How much one read asks of the socket.
RECEIVE_BYTES: Final = 65_536
#: Request bodies are written in pieces this big, each under the read/write timeout.
SEND_BYTES: Final = 1024 * 1024


class HTTPClientError(Exception):
    """A request that got no usable answer; ``reason`` says why (module docstring)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def split_url(url: str) -> tuple[str, int, str]:
    """``http://host:port/path?q`` -> ``(host, port, "/path?q")``.

    Raises:
        HTTPClientError: ``bad_url`` for anything but a plain http URL with a host.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 80
    except ValueError as exc:
        raise HTTPClientError("bad_url", f"{url!r}: {exc}") from None
    if parts.scheme != "http" or not parts.hostname:
        raise HTTPClientError("bad_url", f"{url!r}: only http://host[:port] URLs")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return parts.hostname, port, target


class ClientResponse:
    """The status and headers of an answer, and its body to read once."""

    def __init__(self, conn: _ClientConnection, event: h11.Response) -> None:
        self.status = event.status_code
        self.headers = [(k.decode("latin-1").lower(), v.decode("latin-1"))
                        for k, v in event.headers]
        self._conn = conn

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    async def iter_body(self) -> AsyncGenerator[bytes, None]:
        """The body, chunk by chunk as it arrives.

        Raises:
            HTTPClientError: ``connection_lost`` when it is cut short, ``timeout``.
        """
        while True:
            event = await self._conn.next_event()
            if isinstance(event, h11.EndOfMessage):
                return
            if not isinstance(event, h11.Data):
                raise HTTPClientError("connection_lost", "the body ended early")
            yield bytes(event.data)

    async def read(self, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> bytes:
        """The whole body.

        Raises:
            HTTPClientError: ``too_large`` past ``max_bytes``, and as `iter_body`.
        """
        length = self.header("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise HTTPClientError("too_large", f"answer of {length} bytes, over {max_bytes}")
        parts: list[bytes] = []
        size = 0
        async with aclosing(self.iter_body()) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise HTTPClientError("too_large", f"answer over {max_bytes} bytes")
                parts.append(chunk)
        return b"".join(parts)


class _ClientConnection:
    def __init__(self, stream: trio.SocketStream, read_timeout: float) -> None:
        self.stream = stream
        self.read_timeout = read_timeout
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.eof = False

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if not data:
            return
        view = memoryview(data)
        for start in range(0, len(view), SEND_BYTES):
            with trio.move_on_after(self.read_timeout) as scope:
                await self.stream.send_all(view[start:start + SEND_BYTES])
            if scope.cancelled_caught:
                raise HTTPClientError("timeout", "the server does not read the request")

    async def next_event(self) -> Any:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                # A close in the middle of an answer is h11's protocol error; it is a cut.
                reason = "connection_lost" if self.eof else "protocol_error"
                raise HTTPClientError(reason, str(exc)) from None
            if event is not h11.NEED_DATA:
                return event
            data = None
            with trio.move_on_after(self.read_timeout):
                try:
                    data = await self.stream.receive_some(RECEIVE_BYTES)
                except trio.BrokenResourceError as exc:
                    raise HTTPClientError("connection_lost", str(exc)) from None
            if data is None:
                raise HTTPClientError("timeout", f"no answer for {self.read_timeout}s")
            self.eof = not data
            self.h11.receive_data(bytes(data))


@asynccontextmanager
async def open_request(
    method: str,
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    connect_timeout: float = DEFAULT_TIMEOUT_SECONDS,
    read_timeout: float = DEFAULT_TIMEOUT_SECONDS,
    total_timeout: float | None = None,
) -> AsyncIterator[ClientResponse]:
    """Send one request; yield the answer once its head is in (the body still to read).

    Without ``total_timeout`` no cancel scope spans the yield, so an async generator may
    stream the body from inside this context.

    Raises:
        HTTPClientError: for every failure (module docstring).
    """
    exchange = _exchange(method, url, headers, body, connect_timeout, read_timeout)
    if total_timeout is None:
        async with exchange as response:
            yield response
        return
    with trio.move_on_after(total_timeout) as total:
        async with exchange as response:
            yield response
    if total.cancelled_caught:
        raise HTTPClientError("timeout", f"no whole answer within {total_timeout}s")


@asynccontextmanager
async def _exchange(method: str, url: str, headers: Sequence[tuple[str, str]], body: bytes,
                    connect_timeout: float, read_timeout: float
                    ) -> AsyncIterator[ClientResponse]:
    host, port, target = split_url(url)
    with trio.move_on_after(connect_timeout) as connecting:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise HTTPClientError("connect_failed", f"{host}:{port}: {exc}") from None
    if connecting.cancelled_caught:
        raise HTTPClientError("connect_timeout", f"{host}:{port}")
    async with stream:
        conn = _ClientConnection(stream, read_timeout)
        head = [("host", f"{host}:{port}"), ("connection", "close"), *headers]
        if body or method.upper() in ("POST", "PUT"):
            head.append(("content-length", str(len(body))))
        try:
            await conn.send(h11.Request(method=method, target=target, headers=head))
            if body:
                await conn.send(h11.Data(data=body))
            await conn.send(h11.EndOfMessage())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server may have answered early (413, 401): read its answer
        event = await conn.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = await conn.next_event()
        if not isinstance(event, h11.Response):
            raise HTTPClientError("connection_lost", "closed before answering")
        yield ClientResponse(conn, event)


async def request(
    method: str,
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One whole exchange: ``(status, headers, body)``; ``timeout_seconds`` bounds connecting
    and each stall.

    Raises:
        HTTPClientError: for every failure (module docstring).
    """
    async with open_request(method, url, headers=headers, body=body,
                            connect_timeout=timeout_seconds,
                            read_timeout=timeout_seconds) as response:
        data = b"" if method.upper() == "HEAD" else await response.read(max_response_bytes)
        return response.status, response.headers, data
