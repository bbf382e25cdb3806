"""common.httpserver on real loopback sockets: routing, limits, timeouts, failures.

Clients are raw trio TCP streams (to send what no well-behaved client sends) and
common.httpclient. Time is real (the limits are shortened), since the server's timeouts race
real sockets.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import trio

from common.httpclient import HTTPClientError, open_request, request
from common.httproutes import (
    MAX_HEADER_BYTES,
    HTTPCounters,
    HTTPError,
    HTTPLimits,
    Response,
    json_response,
    route,
)
from common.httpserver import Request, serve_http


async def hello(request: Request) -> Response:
    return Response(200, b"hello " + request.params.get("who", "world").encode(),
                    (("content-type", "text/plain"),))


async def echo(request: Request) -> Response:
    return Response(200, await request.read_body())


async def boom(request: Request) -> Response:
    raise RuntimeError("secret internals")


async def refuse(request: Request) -> Response:
    raise HTTPError(409, "conflict", "in the way")


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(100):
            yield f"line {i}\n".encode()
    return Response(200, chunks())


async def broken_stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"first\n" * 1000
        raise RuntimeError("midway")
    return Response(200, chunks())


async def slow(request: Request) -> Response:
    await trio.sleep(0.5)
    return json_response({"slow": True})


ROUTES = [
    route("GET", "/hello", hello),
    route("GET", r"/hello/(?P<who>[^/]+)", hello),
    route("POST", "/echo", echo, max_body_bytes=1000),
    route("GET", "/boom", boom),
    route("GET", "/refuse", refuse),
    route("GET", "/stream", stream),
    route("GET", "/broken", broken_stream),
    route("GET", "/slow", slow),
]

LIMITS = HTTPLimits(request_timeout_seconds=1.0, idle_timeout_seconds=0.5,
                    write_timeout_seconds=2.0, max_connections=4)


@pytest.fixture
async def server(nursery: trio.Nursery) -> tuple[str, HTTPCounters]:
    counters = HTTPCounters()
    host, port = await nursery.start(lambda task_status: serve_http(
        ROUTES, host="127.0.0.1", port=0, limits=LIMITS, counters=counters,
        task_status=task_status))
    return f"http://{host}:{port}", counters


async def raw(url: str) -> trio.SocketStream:
    host, port = url.removeprefix("http://").split(":")
    return await trio.open_tcp_stream(host, int(port))


async def read_all(stream: trio.SocketStream, limit: float = 5.0) -> bytes:
    """Everything the server sends until it closes (or ``limit`` passes)."""
    data = b""
    with trio.move_on_after(limit):
        try:
            while chunk := await stream.receive_some(65536):
                data += chunk
        except trio.BrokenResourceError:
            pass
    return data


async def test_route_answers_with_params(server: tuple[str, HTTPCounters]) -> None:
    url, _ = server
    assert (await request("GET", url + "/hello"))[2] == b"hello world"
    status, headers, body = await request("GET", url + "/hello/trio")
    assert (status, body) == (200, b"hello trio")
    assert ("content-length", "10") in headers


async def test_unknown_path_is_404_and_wrong_method_405(
        server: tuple[str, HTTPCounters]) -> None:
    url, _ = server
    status, _, body = await request("GET", url + "/nowhere")
    assert status == 404 and json.loads(body)["error"] == "not_found"
    status, headers, body = await request("DELETE", url + "/hello")
    assert status == 405 and json.loads(body)["error"] == "method_not_allowed"
    assert dict(headers)["allow"] == "GET, HEAD"


async def test_head_on_a_get_route_has_headers_only(server: tuple[str, HTTPCounters]) -> None:
    url, _ = server
    status, headers, body = await request("HEAD", url + "/hello")
    assert (status, body) == (200, b"")
    assert dict(headers)["content-length"] == "11"


async def test_body_within_cap_is_read_and_over_cap_is_413(
        server: tuple[str, HTTPCounters]) -> None:
    url, _ = server
    assert (await request("POST", url + "/echo", body=b"x" * 1000))[2] == b"x" * 1000
    status, _, body = await request("POST", url + "/echo", body=b"x" * 1001)
    assert status == 413 and json.loads(body)["error"] == "too_large"


async def test_chunked_body_over_cap_is_413(server: tuple[str, HTTPCounters]) -> None:
    url, _ = server
    async with await raw(url) as stream:
        chunk = b"x" * 600
        await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n"
                              + (b"258\r\n" + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
        answer = await read_all(stream)
        assert answer.startswith(b"HTTP/1.1 413 ")


async def test_header_too_large_is_431(server: tuple[str, HTTPCounters]) -> None:
    url, _ = server
    async with await raw(url) as stream:
        await stream.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: "
                              + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n")
        assert (await read_all(stream)).startswith(b"HTTP/1.1 431 ")


async def test_garbage_is_400(server: tuple[str, HTTPCounters]) -> None:
    url, _ = server
    async with await raw(url) as stream:
        await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        assert (await read_all(stream)).startswith(b"HTTP/1.1 400 ")


async def test_slowloris_is_closed_by_the_deadline_while_others_are_served(
        server: tuple[str, HTTPCounters]) -> None:
    url, counters = server
    async with await raw(url) as slow_client:
        closed_after: list[float] = []

        async def dribble() -> None:
            start = trio.current_time()
            await slow_client.send_all(b"GET /hello HTTP/1.1\r\n")
            try:
                for _ in range(100):
                    await slow_client.send_all(b"X")
                    await trio.sleep(0.05)
            except trio.BrokenResourceError:
                pass
            closed_after.append(trio.current_time() - start)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dribble)
            for _ in range(5):  # others are served all along
                with trio.fail_after(0.5):
                    assert (await request("GET", url + "/hello"))[0] == 200
                await trio.sleep(0.1)
            answer = await read_all(slow_client, limit=3.0)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert counters.timeouts >= 1


async def test_idle_connection_is_closed(server: tuple[str, HTTPCounters]) -> None:
    url, _ = server
    async with await raw(url) as stream:
        start = trio.current_time()
        assert await read_all(stream, limit=3.0) == b""
        assert 0.3 < trio.current_time() - start < 2.0


async def test_keep_alive_serves_several_requests_on_one_connection(
        server: tuple[str, HTTPCounters]) -> None:
    url, counters = server
    async with await raw(url) as stream:
        for _ in range(3):
            await stream.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"hello world"):
                answer += await stream.receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 200 ")
        assert counters.connections == 1 and counters.requests == 3
        await stream.aclose()


async def test_pipelined_requests_are_answered_in_order(
        server: tuple[str, HTTPCounters]) -> None:
    url, _ = server
    async with await raw(url) as stream:
        await stream.send_all(b"GET /hello/a HTTP/1.1\r\nHost: x\r\n\r\n"
                              b"GET /hello/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await read_all(stream)
        assert answer.index(b"hello a") < answer.index(b"hello b")


async def test_connection_cap_refuses_with_503_then_recovers(
        server: tuple[str, HTTPCounters]) -> None:
    url, counters = server
    holders = [await raw(url) for _ in range(LIMITS.max_connections)]
    # (closed below; a failure leaves them to the garbage collector)
    for holder in holders:  # each holds a slot with a request that has begun
        await holder.send_all(b"GET /slow HTTP/1.1\r\n")
    await trio.sleep(0.1)
    status, _, body = await request("GET", url + "/hello")
    assert status == 503 and json.loads(body)["error"] == "busy"
    assert counters.refused_connections == 1
    for holder in holders:
        await holder.aclose()
    await trio.sleep(0.1)
    assert (await request("GET", url + "/hello"))[0] == 200


async def test_handler_exception_is_500_without_traceback_and_server_goes_on(
        server: tuple[str, HTTPCounters], caplog: pytest.LogCaptureFixture) -> None:
    url, counters = server
    status, _, body = await request("GET", url + "/boom")
    assert status == 500
    assert json.loads(body)["error"] == "internal_error"
    assert b"secret" not in body and b"Traceback" not in body
    assert counters.handler_errors == 1
    assert any("secret internals" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    assert (await request("GET", url + "/hello"))[0] == 200


async def test_http_error_from_a_handler_is_its_json_answer(
        server: tuple[str, HTTPCounters]) -> None:
    url, _ = server
    status, _, body = await request("GET", url + "/refuse")
    assert status == 409
    assert json.loads(body) == {"error": "conflict", "detail": "in the way"}


async def test_streamed_body_arrives_whole(server: tuple[str, HTTPCounters]) -> None:
    url, _ = server
    async with open_request("GET", url + "/stream") as response:
        assert response.header("transfer-encoding") == "chunked"
        body = b"".join([chunk async for chunk in response.iter_body()])
    assert body == b"".join(f"line {i}\n".encode() for i in range(100))


async def test_streamed_body_failing_midway_is_cut_not_ended(
        server: tuple[str, HTTPCounters]) -> None:
    url, counters = server
    with pytest.raises(HTTPClientError) as caught:
        await request("GET", url + "/broken")
    assert caught.value.reason == "connection_lost"
    assert counters.handler_errors == 1
    assert (await request("GET", url + "/hello"))[0] == 200
