"""Refused lines over the wire: overflow never reaches Carbon as Infinity or NaN, DogStatsD
events and service checks are counted under their own reasons, and the admin ``stats``
says when the last message arrived."""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from functools import partial

import pytest
import trio

import aggregator.intake
import aggregator.mgmt
from aggregator.config import AggregatorConfig
from aggregator.server import serve
from common.config import config_from_mapping
from harness.triosink import TrioSink


def make_config(**values: object) -> AggregatorConfig:
    base: dict[str, object] = {"listen": ["udp://127.0.0.1:0"], "mgmt_port": 0,
                               "http": "127.0.0.1:0", "flush_interval": 1}
    base.update(values)
    return config_from_mapping(AggregatorConfig, base)


async def send_udp(address: str, *packets: bytes) -> None:
    host, port = address.rsplit(":", 1)
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as s:
        for p in packets:
            await s.sendto(p, (host, int(port)))


async def ask_stats(address: str) -> dict[str, str]:
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"stats\n")
        reply = b""
        while not reply.endswith(b"END\n\n"):
            chunk = await stream.receive_some(65536)
            assert chunk, reply
            reply += chunk
    rows = [row.split(": ", 1) for row in reply.decode().splitlines() if ": " in row]
    return dict((k, v) for k, v in rows)


HOSTILE = [
    b"x:1|c|@1e-320\nx:0|c|@1e-320\nt:5|ms|@1e-320",
    b"big:1e307|c\nbig:1e307|c\nhuge:1e308|c",
    b"g:1e308|g\ng:+1e308|g",
    b"t:1e308|ms\nt:1e308|ms\nt:1e200|ms\nd:1e300|d\nd:-1e300|d",
    b"_e{5,4}:title|text|#k:v\n_sc|db.up|2|m:down",
    b"ok:1|c\nok:2|c",
]


async def test_carbon_never_receives_infinity_or_nan(nursery, sink: TrioSink, wall_clock,
                                                     autojump_clock) -> None:
    addrs = await nursery.start(partial(serve, make_config(carbon=[f"127.0.0.1:{sink.port}"]),
                                        wall_clock=wall_clock))
    await send_udp(addrs.first("udp"), *HOSTILE)
    head = b"stats.statsd.tallyd."

    def reported(lines: list[bytes]) -> bool:
        return any(x.startswith(head) and b".ledger.dropped_lines.overflow 6 " in x
                   for x in lines) and any(x.startswith(b"stats_counts.ok ") for x in lines)

    with trio.fail_after(60):
        await sink.wait_for(reported)
    assert not [x for x in sink.lines if b"Infinity" in x or b"NaN" in x]
    assert sink.values(b"stats_counts.ok") == [3.0]
    assert sink.values(b"stats_counts.big") == [1e307]
    assert sink.values(b"stats.gauges.g")[-1] == 1e308
    [mean] = sink.values(b"stats.timers.t.mean")
    assert math.isclose(mean, 1e308 / 3 * 2, rel_tol=1e-15)
    assert sink.values(b"stats.timers.t.sum") == []  # beyond the double range: left out
    assert sink.values(b"stats.timers.d.sum") == [0.0]
    assert not sink.values(b"stats_counts.huge") and not sink.values(b"stats_counts.x")
    drops = {x.split()[0].rsplit(b".", 1)[1]: float(x.split()[1]) for x in sink.lines
             if x.startswith(head) and b".ledger.dropped_lines." in x}
    assert drops == {b"overflow": 6.0, b"dogstatsd_event": 1.0,
                     b"dogstatsd_service_check": 1.0}
    assert sink.values(b"stats_counts.statsd.bad_lines_seen")[0] == 0.0
    # every line was received: 17 lines, 8 of them refused under a named reason
    assert sum(sink.values(b"stats_counts.statsd.metrics_received")) == 17
    stats = await ask_stats(addrs.mgmt)
    assert stats["aggregator.ledger.dropped_lines.overflow"] == "6"
    assert stats["aggregator.ledger.dropped_lines.dogstatsd_event"] == "1"
    assert stats["aggregator.ledger.dropped_lines.dogstatsd_service_check"] == "1"
    assert stats["messages.bad_lines_seen"] == "0"


async def test_last_msg_seen_is_the_time_since_the_last_message(
        nursery, wall_clock: Callable[[], float], autojump_clock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake_time = types.SimpleNamespace(time=wall_clock)  # follows trio's mocked clock
    monkeypatch.setattr(aggregator.mgmt, "time", fake_time)
    monkeypatch.setattr(aggregator.intake, "time", fake_time)
    addrs = await nursery.start(partial(serve, make_config(flush_interval=10),
                                        wall_clock=wall_clock))
    await trio.sleep(100)
    await send_udp(addrs.first("udp"), b"a:1|c")
    await trio.sleep(0.1)
    stats = await ask_stats(addrs.mgmt)
    assert (stats["uptime"], stats["messages.last_msg_seen"]) == ("100", "0")
    await trio.sleep(30)
    stats = await ask_stats(addrs.mgmt)
    assert (stats["uptime"], stats["messages.last_msg_seen"]) == ("130", "30")
    await send_udp(addrs.first("udp"), b"bad line")  # a bad message is a message too
    await trio.sleep(0.1)
    assert (await ask_stats(addrs.mgmt))["messages.last_msg_seen"] == "0"
