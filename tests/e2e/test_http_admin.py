"""End to end: the HTTP admin of real daemons (aggregator W=1 and W=2, proxy).

Every endpoint of each, the /status document's keys (Contract S, docs/admin.md), /metrics
parsed by prometheus_client's own parser, and the loss-accounting equations after known
traffic: N good lines, B bad ones, sent through a proxy to an aggregator that writes to a
Graphite sink.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.client import send_udp
from harness.daemon import wait_until
from harness.sink import GraphiteSink
from harness.tallyd import AggregatorProcess, ProxyProcess, TallydProcess, start_aggregator

pytestmark = pytest.mark.e2e

STATUS_KEYS = {"schema", "version", "role", "identity", "pid", "now", "started",
               "uptime_seconds", "health", "ready", "not_ready", "flush_interval",
               "fingerprints", "members", "workers", "totals", "rates", "figures"}
MEMBER_KEYS = {"kind", "index", "name", "address", "state", "reason", "sent_lines",
               "buffered_lines", "buffer_capacity_lines", "dropped_lines"}
GOOD, BAD = 300, 7


@pytest.fixture
def sink() -> Iterator[GraphiteSink]:
    with GraphiteSink() as s:
        yield s


def start(sink: GraphiteSink, workers: int) -> AggregatorProcess:
    return start_aggregator(["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0",
                             "--carbon", f"127.0.0.1:{sink.port}", "--flush-interval", "1",
                             "--workers", str(workers), "--identity", f"agg{workers}"])


def get_json(proc: TallydProcess, path: str) -> tuple[int, Any]:
    code, body = proc.http_get(path)
    return code, json.loads(body)


def traffic() -> list[bytes]:
    """GOOD counter lines over 30 names (10 a datagram) and BAD lines without a value."""
    lines = [f"admin.c{i % 30}:1|c".encode() for i in range(GOOD)]
    datagrams = [b"\n".join(lines[i:i + 10]) for i in range(0, GOOD, 10)]
    return datagrams + [b"nocolon"] * BAD


def metric_families(proc: TallydProcess) -> dict[str, Any]:
    code, body = proc.http_get("/metrics")
    assert code == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def wait_totals(proc: TallydProcess, lines_in: int) -> dict[str, Any]:
    """The totals once ``lines_in`` lines were counted and the exchange is idle."""
    wait_until(lambda: proc.status()["totals"]["lines_in"] >= lines_in, 20,
               message=f"{lines_in} lines in")

    def settled() -> bool:
        t = proc.status()["totals"]
        dropped = sum(v for k, v in t["dropped_lines"].items() if k != "kernel_overflow")
        return bool(t["lines_in"] == t["lines_out"] + dropped)

    wait_until(settled, 20, message="lines_in == lines_out + dropped")
    totals: dict[str, Any] = proc.status()["totals"]
    return totals


def check_points(proc: TallydProcess) -> dict[str, Any]:
    def balanced() -> bool:
        t = proc.status()["totals"]
        return bool(t["points_flushed"] > 0 and t["points_flushed"] == t["points_sent"]
                    + t["points_buffered"] + sum(t["points_dropped"].values()))

    wait_until(balanced, 20, message="points_flushed == sent + buffered + dropped")
    totals: dict[str, Any] = proc.status()["totals"]
    return totals


@pytest.mark.parametrize("workers", [1, 2])
def test_aggregator_serves_every_endpoint_and_accounts_every_line(
        sink: GraphiteSink, workers: int) -> None:
    proc = start(sink, workers)
    try:
        wait_until(lambda: proc.http_get("/readyz")[0] == 200, 20, message="ready")
        assert proc.http_get("/healthz") == (200, b"ok\n")
        send_udp(proc.udp, traffic())
        totals = wait_totals(proc, GOOD + BAD)
        assert (totals["lines_in"], totals["lines_out"]) == (GOOD + BAD, GOOD)
        assert totals["dropped_lines"]["bad_line"] == BAD
        assert totals["buffered_lines"] == 0
        check_points(proc)

        status = proc.status()
        assert STATUS_KEYS <= set(status)
        assert (status["schema"], status["role"], status["workers"]) == (1, "aggregator",
                                                                           workers)
        assert status["identity"] == f"agg{workers}" and status["health"] == "up"
        assert status["ready"] is True and status["not_ready"] == []
        assert status["flush_interval"] == 1.0
        ring = proc.log_text(None).split(" ring=", 1)[1].split()[0]
        assert status["fingerprints"]["membership"] == ring
        assert len(status["fingerprints"]["config"]) == 16
        (member,) = status["members"]
        assert set(member) == MEMBER_KEYS
        assert (member["kind"], member["name"], member["state"]) == (
            "carbon", f"127.0.0.1:{sink.port}", "up")
        assert member["sent_lines"] == status["totals"]["points_sent"]
        assert sum(v for k, v in status["figures"].items()  # worker.<i>. prefixes too
                   if k.endswith("aggregator.ledger.bad_lines")) == BAD
        assert status["totals"]["dropped_lines"]["kernel_overflow"] == \
            status["figures"]["aggregator.intake.kernel_drops"]
        wait_until(lambda: proc.status()["rates"]["interval_seconds"] > 0, 10,
                   message="a completed interval")

        families = metric_families(proc)
        bad = families["tallyd_aggregator_ledger_bad_lines"]
        assert bad.type == "counter"
        assert sum(s.value for s in bad.samples) == BAD
        sent = families["tallyd_aggregator_carbon_sent_lines"]
        assert {s.labels["node"] for s in sent.samples} == {f"127_0_0_1_{sink.port}"}
        if workers > 1:
            assert {s.labels["worker"] for s in sent.samples} == {"0", "1"}

        code, found = get_json(proc, "/route/admin.c2")  # worker 1's of 2 (H2)
        assert code == 200
        # With W=2 the owner worker answers (worker 0 asks it): the values are known too.
        assert (found["seen"], found["types"]) == (True, ["counter"])
        assert found["values"] == {"counter": found["values"]["counter"]}
        assert {"stats.admin.c2", "stats_counts.admin.c2"} <= {p["path"] for p in found["paths"]}
        assert all(p["carbon"] == [f"127.0.0.1:{sink.port}"] for p in found["paths"])
        assert (found["workers"], found["worker"]) == (workers, 1 if workers == 2 else 0)
        # A name smuggling a second command to the owning worker's console is refused, and
        # the name's values are still there afterwards.
        code, _ = get_json(proc, "/route/admin.c2%0Ddelcounters%20admin.c2")
        assert code == 400
        assert get_json(proc, "/route/admin.c2")[1]["values"] == found["values"]
        code, unknown = get_json(proc, "/route/never.seen")
        assert code == 200 and unknown["types"] == ["counter", "timer", "gauge", "set"]
        assert proc.http_get("/nothing")[0] == 404

        # health down (the mgmt console's) makes /readyz fail with the reason.
        from harness.client import mgmt_command
        assert "down" in mgmt_command(proc.mgmt, "health down")
        code, body = get_json(proc, "/readyz")
        assert (code, body["not_ready"]) == (503, ["health_down"])
        assert proc.status()["health"] == "down"
    finally:
        assert proc.stop() == 0


def test_proxy_accounts_lines_in_as_out_plus_dropped_plus_buffered(
        sink: GraphiteSink, proxy_launcher: Any) -> None:
    aggregator = start(sink, 1)
    proxy: ProxyProcess | None = None
    try:
        proxy = proxy_launcher(["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0",
                                "--aggregator", f"127.0.0.1:{aggregator.udp[1]}",
                                "--identity", "edge", "--flush-interval", "1"])
        assert proxy is not None
        wait_until(lambda: proxy.http_get("/readyz")[0] == 200, 20, message="proxy ready")
        send_udp(proxy.udp, traffic())

        def proxy_done() -> bool:
            t = proxy.status()["totals"]
            return bool(t["lines_in"] == GOOD + BAD and t["buffered_lines"] == 0)

        wait_until(proxy_done, 20, message="the proxy took every line")
        status = proxy.status()
        assert STATUS_KEYS <= set(status)
        assert (status["role"], status["identity"], status["workers"]) == ("proxy", "edge", 1)
        assert status["fingerprints"]["membership"] == proxy.fingerprint()
        t = status["totals"]
        dropped = sum(v for k, v in t["dropped_lines"].items() if k != "kernel_overflow")
        assert t["lines_in"] == t["lines_out"] + dropped + t["buffered_lines"]
        assert (t["lines_out"], t["dropped_lines"]["bad_line"]) == (GOOD, BAD)
        (member,) = status["members"]
        assert set(member) == MEMBER_KEYS and member["kind"] == "aggregator"
        assert member["sent_lines"] == GOOD + t["self_lines"]

        # The aggregator received what the proxy sent: the client lines and its self lines.
        agg = wait_totals(aggregator, GOOD + t["self_lines"])
        assert agg["lines_in"] >= GOOD

        code, found = get_json(proxy, "/route/admin.c1")
        assert (code, found["aggregator"], found["state"]) == (200, 0, "up")
        families = metric_families(proxy)
        assert families["tallyd_proxy_router_received_lines"].type == "counter"
        assert {s.labels["forwarder"]
                for s in families["tallyd_proxy_forwarder_sent_lines"].samples} == {"0"}

        # The proxy's own figures reach Graphite as tallyd.proxy.<identity>.* gauges.
        wait_until(lambda: any(r.line.startswith("stats.gauges.tallyd.proxy.edge.router.")
                               for r in sink.records()), 20, message="proxy self-metrics")
    finally:
        if proxy is not None:
            assert proxy.stop() == 0
        assert aggregator.stop() == 0


def test_a_stalled_worker_is_named_not_waited_for(sink: GraphiteSink) -> None:
    """W=2 with worker 1 stopped (SIGSTOP): /status answers within about a second (worker 0
    asks every worker at once, under one deadline), names the worker in not_ready, and the
    answer is whole again once the worker runs."""
    import os
    import signal
    import time

    from harness.daemon import parse_logfmt

    proc = start(sink, 2)
    with proc:
        wait_until(lambda: proc.log_text(None).count("event=worker_started") == 2, 20,
                   message="both workers started")
        pid = next(int(f["pid"]) for line in proc.log_text(None).splitlines()
                   if (f := parse_logfmt(line)).get("event") == "worker_started"
                   and f.get("worker") == "1")
        os.kill(pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            status = proc.status(timeout=10)
            took = time.monotonic() - began
            assert took < 3.0, took
            assert "worker_1_unreachable" in status["not_ready"]
            assert get_json(proc, "/readyz")[0] == 503
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: "worker_1_unreachable" not in proc.status()["not_ready"], 10,
                   message="worker 1 answers again")
