"""``ringtool.clusterfetch.collect`` against real HTTP servers on loopback serving /status
documents shaped per the contract (docs/admin.md), and ``tallyd-ring cluster``'s command
line: bad input exits 2, an unreachable daemon 1, each named."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trio

from common.httproutes import Response, json_response, route
from common.httpserver import Request, serve_http
from ringtool.cli import main
from ringtool.clusterfetch import collect
from support.statusdocs import member, status


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve(nursery: trio.Nursery, document: Any = None, *, body: bytes | None = None,
                delay: float = 0.0, render: Any = None) -> str:
    async def handler(request: Request) -> Response:
        await trio.sleep(delay)
        if body is not None:
            return Response(200, body)
        return json_response(document)

    async def render_handler(request: Request) -> Response:
        assert "carbon.agents" in request.target
        return json_response(render)

    host, port = await nursery.start(serve_http, [route("GET", "/status", handler),
                                                  route("GET", "/render", render_handler)])
    return f"http://{host}:{port}"


async def test_collect_reads_every_daemon_and_names_the_ones_that_fail(
        nursery: trio.Nursery) -> None:
    proxy = await serve(nursery, status(
        "proxy", "p0", lines_in=10, lines_out=10,
        members=[member("aggregator", 0, "a0:8125", sent=4),
                 member("aggregator", 1, "a1:8125", sent=6)]))
    aggregator = await serve(nursery, status(
        "aggregator", "a0", lines_in=4, lines_out=4, points_flushed=2, points_sent=2,
        members=[member("carbon", 0, "c:2003", sent=2)]),
        render=[{"target": "carbon.agents.c.metricsReceived", "datapoints": [[2, 60]]}])
    slow = await serve(nursery, status("aggregator", "a1"), delay=5)
    garbage = await serve(nursery, body=b"<html>")
    deep = await serve(nursery, body=b"[" * 100_000)
    closed = f"http://127.0.0.1:{closed_port()}"
    with trio.fail_after(4):
        report = await collect(proxies=[proxy, garbage, deep],
                               aggregators=[aggregator, slow, closed],
                               carbon_query=aggregator, timeout_seconds=0.5)
    assert [d.reachable for d in report.daemons] == [True, False, False, True, False, False]
    errors = {f.daemon: f.detail for f in report.findings if f.kind == "unreachable"}
    assert "not JSON" in errors[garbage]
    assert "nested too deep" in errors[deep]
    assert "timeout" in errors[slow]
    assert "connect_failed" in errors[closed]
    assert report.intake[0].received == 4 and report.intake[0].difference == 0
    assert report.sample.carbon_accepted == {"carbon.agents.c.metricsReceived": 2}
    assert report.exit_status == 1


async def test_collect_with_a_previous_sample_reports_the_window(nursery: trio.Nursery) -> None:
    counts = {"n": 10}

    async def growing(request: Request) -> Response:
        return json_response(status("proxy", "p0", lines_in=counts["n"],
                                    lines_out=counts["n"]))

    host, port = await nursery.start(serve_http, [route("GET", "/status", growing)])
    url = f"http://{host}:{port}"
    first = await collect(proxies=[url], timeout_seconds=2)
    counts["n"] = 25
    second = await collect(proxies=[url], timeout_seconds=2, previous=first.sample)
    assert first.daemons[0].totals.lines_in == 10
    assert second.daemons[0].totals.lines_in == 15
    assert second.window_seconds is not None and second.window_seconds >= 0


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["cluster", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_names_an_unreachable_daemon_and_exits_1(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    code, out, _ = run_cli(capsys, "--aggregator", url, "--timeout", "2")
    assert code == 1
    assert f"UNREACHABLE: aggregator {url}: unreachable: connect_failed" in out
    assert out.rstrip().endswith("cluster: PROBLEMS: 0 lines lost, 0 points lost, "
                                 "1 unreachable, 0 diverged")
    code, out, _ = run_cli(capsys, "--aggregator", url, "--json")
    data = json.loads(out)
    assert code == 1 and data["summary"]["unreachable"] == 1 and data["ok"] is False


@pytest.mark.parametrize(("argv", "message"), [
    ((), "no daemons"),
    (("--proxy", "127.0.0.1:8137"), "bad proxy URL"),
    (("--aggregator", "http://h:1/x"), "bad aggregator URL"),
    (("--proxy", "http://h:1", "--timeout", "0"), "--timeout must be > 0"),
    (("--proxy", "http://h:1", "--carbon-query", "h:8080"), "bad --carbon-query"),
])
def test_cli_bad_input_exits_2(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
                               message: str) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and err.startswith("tallyd-ring: error:")


def test_cli_reads_the_ring_files_cluster_table(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Any) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    ring = tmp_path / "ring.toml"
    ring.write_text(f'carbon = ["127.0.0.1:2003"]\n[cluster]\nproxies = ["{url}"]\n')
    code, out, _ = run_cli(capsys, "--ring", str(ring), "--timeout", "2")
    assert code == 1 and f"proxy {url}" in out
    ring.write_text('[cluster]\nproxies = ["http://h:1"]\nextra = 1\n')
    code, _, err = run_cli(capsys, "--ring", str(ring))
    assert code == 2 and "unknown key(s) extra" in err
