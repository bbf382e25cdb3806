"""A proxy sends each line to the worker that owns it (contract C2), with real processes.

One proxy in front of two aggregators of two workers each: aggregator 0 has per-worker
endpoints (``worker_listen``, port 0, their ports read by the proxy from ``workers``),
aggregator 1 has none (the fallback: its main port, as with Etsy's statsd or an older
tallyd). Lines for many names go through the proxy; at the Carbon sink every count is
exact and every path has one writer, aggregator 0's exchange forwarded nothing (each line
reached its owner directly), and aggregator 1's got everything through its exchange.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from common.shard import shard_index, worker_index
from harness.client import mgmt_command, send_udp
from harness.daemon import wait_until
from harness.sink import GraphiteSink
from harness.tallyd import AggregatorProcess, ProxyProcess, start_aggregator, start_proxy

pytestmark = [pytest.mark.e2e]

NAMES = [f"pw.c{i}" for i in range(300)]
ROUNDS = 4


def datagrams() -> list[bytes]:
    """Every name once per round, ``<name>:<i % 7 + 1>|c``, 25 lines per datagram."""
    lines = [f"{name}:{i % 7 + 1}|c" for i, name in enumerate(NAMES)]
    return ["\n".join(lines[j:j + 25]).encode()
            for _ in range(ROUNDS) for j in range(0, len(lines), 25)]


def expected() -> dict[str, float]:
    return {f"stats_counts.{name}": float(ROUNDS * (i % 7 + 1)) for i, name in enumerate(NAMES)}


def counts(sink: GraphiteSink) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for r in sink.records():
        path, value, _ = r.line.split(" ")
        if path.startswith("stats_counts.pw."):
            totals[path] += float(value)
    return dict(totals)


def stats(address: tuple[str, int]) -> dict[str, str]:
    reply = mgmt_command(address, "stats", timeout=10)
    return dict(row.split(": ", 1) for row in reply.splitlines() if ": " in row)


def forwarded(agg: AggregatorProcess) -> float:
    """Lines the aggregator's exchange moved between workers (worker 0 answers for itself,
    worker 1's figures are prefixed ``worker.1.``)."""
    rows = stats(agg.mgmt)
    return (float(rows["aggregator.exchange.forwarded_lines"])
            + float(rows["worker.1.aggregator.exchange.forwarded_lines"]))


def start_aggregators(sink: GraphiteSink) -> list[AggregatorProcess]:
    common = ["--listen", "udp://127.0.0.1:0", "--carbon", f"127.0.0.1:{sink.port}",
              "--flush-interval", "1", "--mgmt-port", "0", "--workers", "2"]
    started = []
    try:
        started.append(start_aggregator([*common, "--identity", "pw-ports",
                                         "--worker-listen", "udp://127.0.0.1:0"]))
        started.append(start_aggregator([*common, "--identity", "pw-main"]))
    except BaseException:
        for agg in started:
            agg.kill()
        raise
    return started


def start_front(aggregators: list[AggregatorProcess]) -> ProxyProcess:
    args = ["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0", "--health-interval", "0.5"]
    for agg in aggregators:
        args += ["--aggregator", f"127.0.0.1:{agg.udp[1]}:{agg.mgmt[1]}"]
    return start_proxy(args)


def test_proxy_sends_each_line_to_its_worker_and_falls_back_to_main_port() -> None:
    owners = Counter((shard_index(n.encode(), 2), worker_index(n.encode(), 2)) for n in NAMES)
    assert len(owners) == 4, "names for both workers of both aggregators"
    with GraphiteSink() as sink:
        aggregators = start_aggregators(sink)
        try:
            with start_front(aggregators) as proxy:
                # The first probe ran before intake: the ports are known from the start.
                rows = stats(proxy.mgmt)
                assert rows["proxy.forwarder.0.workers"] == "2"
                assert rows["proxy.forwarder.1.workers"] == "0"
                proxy.wait_for_log(r"event=aggregator_workers index=0 .*workers=2 ports=\d+,\d+",
                                   5)
                send_udp(proxy.udp, datagrams())
                wait_until(lambda: counts(sink) == expected(), 30,
                           message="every count at the sink, exactly")
                assert forwarded(aggregators[0]) == 0  # each line reached its owner
                assert forwarded(aggregators[1]) > 0  # the exchange moved the rest
                rows = stats(proxy.mgmt)
                assert rows["proxy.forwarders.sent_lines"] == str(len(NAMES) * ROUNDS)
                assert "aggregator_workers index=1" not in proxy.log_text(None)
                assert proxy.stop() == 0
            for agg in aggregators:
                assert agg.stop() == 0
        finally:
            for agg in aggregators:
                agg.kill()
        sink.wait_closed(10)
    assert counts(sink) == expected()
    writes = Counter((r.line.split(" ")[0], r.timestamp) for r in sink.records()
                     if r.line.startswith("stats_counts.pw."))
    assert not {key: n for key, n in writes.items() if n > 1}, "one writer per path"
