"""common.httpclient against a real common.httpserver (and a silent socket) on loopback:
every failure is an HTTPClientError with its reason."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio

from common.httpclient import HTTPClientError, open_request, request, split_url
from common.httproutes import Response, route
from common.httpserver import Request, serve_http


async def slow(request: Request) -> Response:
    await trio.sleep(2)
    return Response(200, b"late")


async def big(request: Request) -> Response:
    return Response(200, b"x" * 100_000)


async def trickle(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"."
            await trio.sleep(0.1)
    return Response(200, chunks())


@pytest.fixture
async def url(nursery: trio.Nursery) -> str:
    host, port = await nursery.start(serve_http, [
        route("GET", "/slow", slow), route("GET", "/big", big), route("GET", "/trickle", trickle),
    ])
    return f"http://{host}:{port}"


async def reason_of(coroutine: object) -> str:
    with pytest.raises(HTTPClientError) as caught:
        await coroutine  # type: ignore[misc]
    return caught.value.reason


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_refused_connection_is_connect_failed() -> None:
    port = closed_port()
    assert await reason_of(request("GET", f"http://127.0.0.1:{port}/")) == "connect_failed"


async def test_a_server_that_does_not_answer_is_a_timeout(url: str) -> None:
    assert await reason_of(request("GET", url + "/slow", timeout_seconds=0.3)) == "timeout"


async def test_a_silent_peer_is_a_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        reason = await reason_of(request("GET", f"http://127.0.0.1:{port}/",
                                         timeout_seconds=0.3))
    assert reason == "timeout"


async def test_total_timeout_bounds_a_trickle_that_keeps_moving(url: str) -> None:
    async def read() -> None:
        async with open_request("GET", url + "/trickle", read_timeout=1.0,
                                total_timeout=0.5) as response:
            await response.read()
    assert await reason_of(read()) == "timeout"
    async with open_request("GET", url + "/trickle", read_timeout=1.0) as response:
        assert await response.read() == b"." * 20


async def test_answer_over_the_cap_is_too_large(url: str) -> None:
    assert await reason_of(request("GET", url + "/big", max_response_bytes=1000)) == "too_large"
    assert len((await request("GET", url + "/big"))[2]) == 100_000


@pytest.mark.parametrize("bad", ["https://x/", "ftp://x", "http:///nohost", "http://x:99999/",
                                 "x"])
def test_only_plain_http_urls(bad: str) -> None:
    with pytest.raises(HTTPClientError) as caught:
        split_url(bad)
    assert caught.value.reason == "bad_url"


def test_url_parts() -> None:
    assert split_url("http://10.0.0.1:7070") == ("10.0.0.1", 7070, "/")
    assert split_url("http://h/files/a%2Fb?x=1") == ("h", 80, "/files/a%2Fb?x=1")
    assert split_url("http://[::1]:7070/v") == ("::1", 7070, "/v")
