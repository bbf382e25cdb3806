"""A Carbon ring changed while the aggregator runs, against real loopback TCP sinks:
CarbonOutput.change_ring (kept, added and retired senders) and serve() reloading a ring at
the flush boundary (interval k on the old ring, k + 1 on the new, nothing lost or doubled)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from functools import partial

import attrs
import pytest
import trio

from aggregator.backends.carbon import RETIRED_DRAIN_SECONDS, CarbonOutput
from aggregator.config import AggregatorConfig, carbon_ring
from aggregator.server import serve
from common.config import config_from_mapping
from common.ring import CarbonNode
from common.stats import path_component
from harness.port import free_port
from harness.triosink import TrioSink


@attrs.define
class ClosingSink(TrioSink):
    """A TrioSink that also counts the connections its peer closed."""

    closed: int = 0
    gone: trio.Event = attrs.Factory(trio.Event)

    async def handler(self, stream: trio.SocketStream) -> None:
        await super().handler(stream)
        self.closed += 1
        self.gone.set()


async def open_sink(nursery: trio.Nursery, port: int = 0) -> ClosingSink:
    sink = ClosingSink()
    listeners = await nursery.start(partial(trio.serve_tcp, sink.handler, port,
                                            host="127.0.0.1"))
    sink.port = listeners[0].socket.getsockname()[1]
    return sink


def make_config(*carbon: str, **values: object) -> AggregatorConfig:
    base: dict[str, object] = {"listen": ["udp://127.0.0.1:0"], "mgmt_port": 0,
                               "flush_interval": 10, "carbon": list(carbon)}
    base.update(values)
    return config_from_mapping(AggregatorConfig, base)


def node(port: int, instance: str) -> str:
    return f"127.0.0.1:{port}:{instance}"


def flush_block(timestamp: int, names: int = 200) -> bytes:
    return b"".join(f"m.{i} {i} {timestamp}\n".encode() for i in range(names))


def paths_at(sink: TrioSink, timestamp: int) -> set[bytes]:
    return {line.split()[0] for line in sink.lines if int(line.split()[2]) == timestamp}


async def test_change_ring_keeps_adds_and_places_the_next_flush_on_the_new_ring(
        nursery, autojump_clock) -> None:
    a, b = await open_sink(nursery), await open_sink(nursery)
    old = make_config(node(a.port, "a"))
    new_ring = carbon_ring(make_config(node(a.port, "a"), node(b.port, "b")))
    output = CarbonOutput(old)
    kept_sender = output.senders[CarbonNode("127.0.0.1", a.port, "a")]
    nursery.start_soon(output.run)
    output.offer(flush_block(10))
    change = output.change_ring(new_ring)
    output.offer(flush_block(20))
    with trio.fail_after(30):
        await output.wait_delivered()
        await a.wait_for(lambda lines: len(lines) + len(b.lines) == 400)
    assert [str(n) for n in change.kept] == [node(a.port, "a")]
    assert [str(n) for n in change.added] == [node(b.port, "b")] and change.retired == ()
    assert output.senders[CarbonNode("127.0.0.1", a.port, "a")] is kept_sender
    assert a.connections == 1 and b.connections == 1  # A's connection was kept
    # Interval 10 went wholly to the old ring; interval 20 to the new one, once each.
    assert len(paths_at(a, 10)) == 200 and paths_at(b, 10) == set()
    wanted = {n: {f"m.{i}".encode() for i in range(200) if new_ring.node_for(f"m.{i}") == n}
              for n in new_ring.nodes}
    assert paths_at(a, 20) == wanted[new_ring.nodes[0]]
    assert paths_at(b, 20) == wanted[new_ring.nodes[1]]
    assert paths_at(a, 20) and paths_at(b, 20)
    assert sum(1 for line in (*a.lines, *b.lines) if line.endswith(b" 20")) == 200


async def test_retired_node_drains_then_closes_and_rejoins_with_its_sender(
        nursery, autojump_clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a, b = await open_sink(nursery), await open_sink(nursery)
    both = make_config(node(a.port, "a"), node(b.port, "b"))
    only_a = carbon_ring(make_config(node(a.port, "a")))
    output = CarbonOutput(both)
    b_node = CarbonNode("127.0.0.1", b.port, "b")
    b_sender = output.senders[b_node]
    nursery.start_soon(output.run)
    output.offer(flush_block(10))  # placed on A and B, not yet written
    change = output.change_ring(only_a)
    assert change.retired == (b_node,)
    assert b_node not in output.senders
    output.offer(flush_block(20))
    with trio.fail_after(30):
        await output.wait_delivered()
        await b.gone.wait()
    assert paths_at(b, 10) and paths_at(b, 20) == set()
    assert len(paths_at(a, 10) | paths_at(b, 10)) == 200 and len(paths_at(a, 20)) == 200
    retired = [r for r in caplog.records if r.getMessage() == "carbon_retired"]
    assert len(retired) == 1
    assert retired[0].fields["drained"] is True  # type: ignore[attr-defined]
    assert retired[0].fields["sent_lines"] == len(paths_at(b, 10))  # type: ignore[attr-defined]
    assert not b_sender.connected
    # Its figures stay (a counter never goes backwards), under its node's name.
    assert output.statistics()[b_node].sent_lines == len(paths_at(b, 10))
    # Back in the ring: the same sender, a new connection.
    output.change_ring(carbon_ring(both))
    assert output.senders[b_node] is b_sender
    output.offer(flush_block(30))
    with trio.fail_after(30):
        await output.wait_delivered()
        await b.wait_for(lambda lines: any(x.endswith(b" 30") for x in lines))
    assert b.connections == 2 and b.closed == 1
    assert len(paths_at(a, 30) | paths_at(b, 30)) == 200


async def test_retired_node_that_stays_down_gives_up_at_the_deadline(
        nursery, autojump_clock, caplog: pytest.LogCaptureFixture) -> None:
    a = await open_sink(nursery)
    down = free_port()
    output = CarbonOutput(make_config(node(a.port, "a"), node(down, "b")))
    nursery.start_soon(output.run)
    output.offer(flush_block(10))
    output.change_ring(carbon_ring(make_config(node(a.port, "a"))))
    held = output.statistics()[CarbonNode("127.0.0.1", down, "b")].buffered_lines
    assert held > 0
    started = trio.current_time()
    with trio.fail_after(RETIRED_DRAIN_SECONDS + 60):
        await output.wait_delivered()  # A's lines, and B's given up at the deadline
    assert trio.current_time() - started >= RETIRED_DRAIN_SECONDS
    stats = output.statistics()[CarbonNode("127.0.0.1", down, "b")]
    assert stats.dropped == {"shutdown": held} and stats.buffered_lines == 0
    retired = [r for r in caplog.records if r.getMessage() == "carbon_retired"]
    assert retired[0].fields["drained"] is False  # type: ignore[attr-defined]
    assert output.close().lost_lines == held


# -- serve(): the reload path ------------------------------------------------------------


async def send_udp(address: str, payload: bytes) -> None:
    host, port = address.rsplit(":", 1)
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as s:
        await s.sendto(payload, (host, int(port)))


def counters_at(sinks: list[ClosingSink], timestamp: int) -> Counter[bytes]:
    """How many times each ``stats_counts.*`` path was written for ``timestamp``, across
    ``sinks`` (1 for every path, if nothing is doubled)."""
    return Counter(line.split()[0] for s in sinks for line in s.lines
                   if line.startswith(b"stats_counts.c") and int(line.split()[2]) == timestamp)


async def test_serve_applies_a_reloaded_ring_at_the_next_flush_boundary(
        nursery, wall_clock: Callable[[], float], autojump_clock,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a, b = await open_sink(nursery), await open_sink(nursery)
    config = make_config(node(a.port, "a"), delete_idle_stats=True)
    reloads = trio.open_memory_channel[AggregatorConfig](1)
    addrs = await nursery.start(partial(serve, config, wall_clock=wall_clock,
                                        reload_trigger=reloads[1].receive))
    names = [f"c{i}" for i in range(100)]
    # Interval k: lines, then the reload in its middle, then more lines of interval k.
    await trio.sleep(10 - wall_clock() % 10 + 2)
    k = int(wall_clock() // 10 * 10 + 10)  # the timestamp of the interval in progress
    await send_udp(addrs.first("udp"), b"\n".join(f"{n}:1|c".encode() for n in names))
    await reloads[0].send(make_config(node(a.port, "a"), node(b.port, "b"),
                                      delete_idle_stats=True))
    await trio.sleep(3)
    assert not any(r.getMessage() == "ring_changed" for r in caplog.records)  # not yet
    await send_udp(addrs.first("udp"), b"\n".join(f"{n}:2|c".encode() for n in names))
    await trio.sleep(10)  # past boundary k; now in interval k + 10
    await send_udp(addrs.first("udp"), b"\n".join(f"{n}:5|c".encode() for n in names))
    with trio.fail_after(60):
        await a.wait_for(lambda _: len(counters_at([a, b], k + 10)) == 100)
    assert counters_at([a], k) == Counter({f"stats_counts.{n}".encode(): 1 for n in names})
    assert counters_at([b], k) == Counter()
    after = counters_at([a, b], k + 10)
    assert set(after.values()) == {1}  # each path once, on one node
    assert counters_at([a], k + 10) and counters_at([b], k + 10)
    assert {float(line.split()[1]) for s in (a, b) for line in s.lines
            if line.startswith(b"stats_counts.c")} == {3.0, 5.0}  # 1 + 2, then 5: exact
    changed = [r for r in caplog.records if r.getMessage() == "ring_changed"]
    assert len(changed) == 1
    fields = changed[0].fields  # type: ignore[attr-defined]
    assert fields["last_timestamp"] == k and fields["sequence"] == k // 10
    assert fields["old"] == carbon_ring(config).fingerprint() != fields["new"]
    assert a.connections == 1


async def test_serve_reload_applies_tokens_at_once_refuses_the_rest_and_survives_bad_ones(
        nursery, wall_clock: Callable[[], float], autojump_clock,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a = await open_sink(nursery)
    config = make_config(node(a.port, "a"), auth="token", auth_tokens=["old"])
    reloads = trio.open_memory_channel[AggregatorConfig](1)
    addrs = await nursery.start(partial(serve, config, wall_clock=wall_clock,
                                        reload_trigger=reloads[1].receive))
    await reloads[0].send(make_config(node(a.port, "a"), auth="token", auth_tokens=["new"],
                                      auth_revoked_tokens=["old"], flush_interval=30))
    await trio.sleep(0.1)
    await send_udp(addrs.first("udp"), b"old.x:1|c\nnew.y:1|c")
    # A token both valid and revoked: the whole reload fails, the tokens in force stay.
    await reloads[0].send(make_config(node(a.port, "a"), auth="token",
                                      auth_tokens=["new", "z"], auth_revoked_tokens=["z"]))
    await trio.sleep(0.1)
    await send_udp(addrs.first("udp"), b"new.y:1|c\nz.w:1|c")
    with trio.fail_after(60):
        await a.wait_for(lambda lines: any(x.startswith(b"stats_counts.y ") for x in lines))
    assert a.values(b"stats_counts.y") == [2.0]
    assert not a.values(b"stats_counts.x") and not a.values(b"stats_counts.w")
    messages = [r.getMessage() for r in caplog.records]
    refused = [r.fields for r in caplog.records  # type: ignore[attr-defined]
               if r.getMessage() == "reload_refused"]
    assert [(f["setting"], f["reason"]) for f in refused] == [("flush_interval",
                                                               "restart_required")]
    assert "reload_failed" in messages
    stamps = sorted({int(x.split()[2]) for x in a.lines})
    assert all(s % 10 == 0 for s in stamps)  # the interval stayed (a restart is needed)


async def test_a_later_reload_before_the_boundary_wins(
        nursery, wall_clock: Callable[[], float], autojump_clock,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a, b, c = await open_sink(nursery), await open_sink(nursery), await open_sink(nursery)
    config = make_config(node(a.port, "a"))
    reloads = trio.open_memory_channel[AggregatorConfig](1)
    addrs = await nursery.start(partial(serve, config, wall_clock=wall_clock,
                                        reload_trigger=reloads[1].receive))
    await trio.sleep(10 - wall_clock() % 10 + 2)
    # [A] -> [A, B] then, in the same interval, back to [A]: no change at the boundary.
    await reloads[0].send(make_config(node(a.port, "a"), node(b.port, "b")))
    await reloads[0].send(config)
    await send_udp(addrs.first("udp"), b"\n".join(f"c{i}:1|c".encode() for i in range(50)))
    await trio.sleep(10)
    assert not any(r.getMessage() == "ring_changed" for r in caplog.records)
    # [A] -> [A, B] then -> [A, C]: the boundary applies [A, C].
    await reloads[0].send(make_config(node(a.port, "a"), node(b.port, "b")))
    await reloads[0].send(make_config(node(a.port, "a"), node(c.port, "c")))
    await trio.sleep(10)
    await send_udp(addrs.first("udp"), b"\n".join(f"c{i}:1|c".encode() for i in range(50)))
    with trio.fail_after(60):
        await c.wait_for(lambda lines: any(x.startswith(b"stats_counts.c") for x in lines))
    changed = [r.fields for r in caplog.records  # type: ignore[attr-defined]
               if r.getMessage() == "ring_changed"]
    assert len(changed) == 1 and changed[0]["added"] == node(c.port, "c")
    assert b.connections == 0 and b.lines == []


async def test_a_ring_whose_spool_cannot_be_made_is_refused_and_the_old_one_stays(
        nursery, tmp_path, autojump_clock, caplog: pytest.LogCaptureFixture) -> None:
    a = await open_sink(nursery)
    spool = tmp_path / "spool"
    output = CarbonOutput(make_config(node(a.port, "a"), carbon_spool_dir=str(spool)))
    nursery.start_soon(output.run)
    (spool / path_component(node(9, "b"))).write_text("not a directory")
    before = output.placement.ring
    output.change_ring_at_boundary(carbon_ring(make_config(node(a.port, "a"), node(9, "b"))),
                                   7, 70)
    assert output.placement.ring is before
    assert list(output.senders) == [CarbonNode("127.0.0.1", a.port, "a")]
    assert [r.getMessage() for r in caplog.records].count("ring_change_failed") == 1
    output.offer(flush_block(80))
    with trio.fail_after(30):
        await output.wait_delivered()
    assert len(paths_at(a, 80)) == 200


async def test_a_failed_ring_change_is_tried_again_by_the_next_reload(
        nursery, tmp_path, wall_clock: Callable[[], float], autojump_clock,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a, b = await open_sink(nursery), await open_sink(nursery)
    spool = tmp_path / "spool"
    config = make_config(node(a.port, "a"), carbon_spool_dir=str(spool))
    reloads = trio.open_memory_channel[AggregatorConfig](1)
    await nursery.start(partial(serve, config, wall_clock=wall_clock,
                                reload_trigger=reloads[1].receive))
    obstacle = spool / path_component(node(b.port, "b"))
    obstacle.write_text("not a directory")
    both = make_config(node(a.port, "a"), node(b.port, "b"), carbon_spool_dir=str(spool))
    await reloads[0].send(both)
    await trio.sleep(11)  # past a boundary
    messages = [r.getMessage() for r in caplog.records]
    assert "ring_change_failed" in messages and "ring_changed" not in messages
    obstacle.unlink()
    await reloads[0].send(both)  # the same file again: the ring is still to be changed
    with trio.fail_after(60):
        await b.wait_for(lambda lines: len(lines) > 0)
    assert [r.getMessage() for r in caplog.records].count("ring_changed") == 1
