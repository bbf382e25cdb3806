"""``ringtool.ui`` on real loopback: the page and its files from the package, ``/cluster.json``
read at most once per cache period and shared by concurrent requests, and the command line's
collector reading real HTTP servers that serve /status documents shaped per the contract."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio

from common.httpclient import request
from common.httproutes import Response, json_response, route
from common.httpserver import Request, serve_http
from ringtool.cli import main
from ringtool.ringfile import ClusterTable
from ringtool.ui import ClusterPage, Collector, serve_ui
from ringtool.uicli import build_collector
from support.statusdocs import member, status


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counting_collector() -> tuple[Collector, list[int]]:
    calls: list[int] = []

    async def collect() -> dict[str, Any]:
        calls.append(1)
        return {"reading": len(calls)}
    return collect, calls


async def start(nursery: trio.Nursery, page: ClusterPage) -> str:
    host, port = await nursery.start(partial(serve_ui, page, host="127.0.0.1", port=0))
    return f"http://{host}:{port}"


async def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    code, headers, body = await request(method, url, timeout_seconds=5)
    return code, dict(headers), body


async def test_page_and_its_files_are_served_from_the_package(nursery: trio.Nursery) -> None:
    collect, calls = counting_collector()
    base = await start(nursery, ClusterPage(collect))
    code, headers, page = await get(base + "/")
    assert code == 200 and headers["content-type"].startswith("text/html")
    assert b'src="ui.js"' in page and b'href="ui.css"' in page and b'id="picture"' in page
    assert (await get(base + "/ui"))[2] == page
    code, headers, script = await get(base + "/ui.js")
    assert code == 200 and headers["content-type"].startswith("text/javascript")
    assert b"cluster.json" in script
    code, headers, style = await get(base + "/ui.css")
    assert b".node" in style
    assert code == 200 and headers["content-type"].startswith("text/css")
    assert headers["cache-control"] == "no-store"
    assert (await get(base + "/ui.jsx"))[0] == 404
    assert (await get(base + "/static/../pyproject.toml"))[0] == 404
    assert (await get(base + "/", "POST"))[0] == 405
    assert (await get(base + "/healthz"))[:3:2] == (200, b"ok\n")
    assert calls == []  # the page itself reads no daemon


async def test_cluster_json_is_read_again_only_once_the_cache_period_is_over(
        nursery: trio.Nursery) -> None:
    collect, calls = counting_collector()
    clock = FakeClock()
    page = ClusterPage(collect, cache_seconds=1.0, clock=clock)
    base = await start(nursery, page)
    code, headers, body = await get(base + "/cluster.json")
    assert code == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"reading": 1}
    clock.now += 0.9
    assert json.loads((await get(base + "/cluster.json"))[2]) == {"reading": 1}
    clock.now += 0.2
    assert json.loads((await get(base + "/cluster.json"))[2]) == {"reading": 2}
    assert len(calls) == 2
    stats = page.statistics()
    assert (stats.readings, stats.shared) == (2, 1)


async def test_requests_that_come_during_a_reading_share_it(nursery: trio.Nursery) -> None:
    release = trio.Event()
    calls: list[int] = []

    async def slow_collect() -> dict[str, Any]:
        calls.append(1)
        await release.wait()
        return {"reading": len(calls)}

    clock = FakeClock()
    base = await start(nursery, ClusterPage(slow_collect, clock=clock))
    answers: list[Any] = []

    async def ask() -> None:
        answers.append(json.loads((await get(base + "/cluster.json"))[2]))

    async with trio.open_nursery() as inner:
        for _ in range(3):
            inner.start_soon(ask)
        await trio.sleep(0.2)
        clock.now += 5  # the reading took long: the waiting requests still share it
        release.set()
    assert answers == [{"reading": 1}] * 3 and len(calls) == 1


async def test_a_failed_reading_is_a_500_and_the_next_request_reads_again(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    outcomes: list[Callable[[], dict[str, Any]]] = [
        lambda: {"reading": 2}, lambda: (_ for _ in ()).throw(RuntimeError("boom"))]

    async def collect() -> dict[str, Any]:
        return outcomes.pop()()

    base = await start(nursery, ClusterPage(collect, clock=FakeClock()))
    code, _, body = await get(base + "/cluster.json")
    assert code == 500 and json.loads(body)["error"] == "internal_error"
    assert "http_handler_failed" in caplog.text
    assert json.loads((await get(base + "/cluster.json"))[2]) == {"reading": 2}


async def serve_status(nursery: trio.Nursery, document: Any) -> str:
    async def handler(request: Request) -> Response:
        return json_response(document)
    host, port = await nursery.start(serve_http, [route("GET", "/status", handler)])
    return f"http://{host}:{port}"


async def test_the_collector_serves_the_cluster_report_of_real_status_answers(
        nursery: trio.Nursery) -> None:
    proxy = await serve_status(nursery, status(
        "proxy", "p0", lines_in=10, lines_out=10,
        members=[member("aggregator", 0, "a0:8125", sent=4),
                 member("aggregator", 1, "a1:8125", sent=6)]))
    aggregator = await serve_status(nursery, status(
        "aggregator", "a0", membership="ring", lines_in=4, lines_out=4, points_flushed=2,
        points_sent=2, members=[member("carbon", 0, "c:2003", sent=2)]))
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    table = ClusterTable(proxies=(proxy,), aggregators=(aggregator, closed))
    page = ClusterPage(build_collector(table, ring_fingerprint=None, timeout_seconds=1.0))
    base = await start(nursery, page)
    report = json.loads((await get(base + "/cluster.json"))[2])
    assert [(d["tier"], d["identity"], d["reachable"]) for d in report["daemons"]] == [
        ("proxy", "p0", True), ("aggregator", "a0", True), ("aggregator", "", False)]
    assert {(e["source"], e["target"]) for e in report["edges"]} == {
        (proxy, "a0:8125"), (proxy, "a1:8125"), (aggregator, "c:2003")}
    assert [n["name"] for n in report["carbon_nodes"]] == ["c:2003"]
    assert report["summary"]["unreachable"] == 1 and report["ok"] is False


@pytest.mark.parametrize(("argv", "message"), [
    (["ui"], "no daemons"),
    (["ui", "--proxy", "ftp://x:1"], "--proxy"),
    (["ui", "--proxy", "http://127.0.0.1:1", "--listen", "nowhere"], "--listen"),
    (["ui", "--proxy", "http://127.0.0.1:1", "--timeout", "0"], "--timeout"),
])
def test_bad_input_is_one_error_line_and_exit_2(argv: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tallyd-ring: error:") and message in err


def test_an_address_in_use_is_one_error_line_and_exit_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["ui", "--proxy", "http://127.0.0.1:1", "--listen", f"127.0.0.1:{port}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("tallyd-ring: error:") and err.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err
