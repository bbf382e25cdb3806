"""proxy.server.serve with a reload trigger (proxy.switch.Reloader): a changed aggregator
list takes effect at its instant, with lines held around it; real UDP sinks on 127.0.0.1,
a wall clock that follows trio's (real) clock."""

from __future__ import annotations

import logging
import math
import socket as stdsocket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from common.config import config_from_mapping
from common.errors import ConfigError
from common.shard import shard_index
from harness.client import mgmt_stats
from proxy.admin import ProxyAdmin
from proxy.cli import ProcessSet, config_from_description, read_reload_file
from proxy.config import ProxyConfig
from proxy.forwarders.base import RETIRED
from proxy.membership import Membership, membership_fingerprint, parse_aggregator
from proxy.schedule import plan_change
from proxy.server import build_components, serve
from proxy.switch import Reloader

#: Epoch seconds at trio time 0: the wall clock of these tests (a multiple of 10).
EPOCH = 1_700_000_000.0
GUARD = 0.1


def wall() -> float:
    return EPOCH + trio.current_time()


class TimedSink:
    """A fake aggregator that records each line with the wall time it arrived."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        self.arrivals: list[tuple[float, bytes]] = []
        self.port = 0

    async def bind(self) -> TimedSink:
        await self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        return self

    async def run(self) -> None:
        while True:
            data = await self.sock.recv(65_535)
            now = wall()
            self.arrivals += [(now, line) for line in data.split(b"\n") if line]

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def lines(self) -> list[bytes]:
        return [line for _, line in self.arrivals]


class TimedTcpSink(TimedSink):
    """The same over TCP (``forward = "tcp"``): newline-framed connections."""

    async def bind(self) -> TimedTcpSink:
        self.listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = self.listeners[0].socket.getsockname()[1]
        return self

    async def handle(self, stream: trio.SocketStream) -> None:
        buffer = b""
        async for chunk in stream:
            now = wall()
            *complete, buffer = (buffer + chunk).split(b"\n")
            self.arrivals += [(now, line) for line in complete if line]

    async def run(self) -> None:
        await trio.serve_listeners(self.handle, self.listeners)


def make_config(aggregators: list[str], **values: Any) -> ProxyConfig:
    mapping = {"listen": ["udp://127.0.0.1:0"], "aggregator": aggregators, "mgmt_port": 0,
               "udp_receive_buffer_bytes": 0, "retry_base": 0.02, "retry_max": 0.1,
               "flush_interval": 1.0, "switch_guard": GUARD, "switch_margin": 0.3,
               "http": "127.0.0.1:0", "self_metrics": False, **values}
    return config_from_mapping(ProxyConfig, mapping)


@asynccontextmanager
async def reloadable_proxy(config: ProxyConfig, sinks: list[TimedSink], *,
                           pending: ProxyConfig | None = None,
                           wall_clock: Callable[[], float] = wall,
                           ) -> AsyncIterator[tuple[str, str, trio.MemorySendChannel[ProxyConfig]]]:
    stop = trio.Event()
    send, receive = trio.open_memory_channel[ProxyConfig](4)
    async with trio.open_nursery() as nursery:
        for sink in sinks:
            nursery.start_soon(sink.run)
        addresses = await nursery.start(lambda task_status: serve(
            config, task_status=task_status, shutdown_trigger=stop.wait,
            reload_trigger=receive.receive, wall_clock=wall_clock, pending=pending))
        yield addresses.first("udp"), addresses.mgmt, send
        stop.set()
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    for sink in sinks:
        sink.sock.close()
        for listener in getattr(sink, "listeners", []):
            await listener.aclose()


class Sender:
    """Sends ``svc.m<i % 37>:<i>|c``, one line per datagram every ``period`` seconds,
    recording when each left."""

    def __init__(self, address: str, period: float = 0.002) -> None:
        host, _, port = address.rpartition(":")
        self.target = (host, int(port))
        self.period = period
        self.sent: list[tuple[float, bytes]] = []

    async def run_until(self, t: float) -> None:
        sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        with sock:
            i = len(self.sent)
            while wall() < t:
                line = b"svc.m%d:%d|c" % (i % 37, i)
                self.sent.append((wall(), line))
                await sock.sendto(line, self.target)
                i += 1
                await trio.sleep(self.period)


async def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


def name_of(line: bytes) -> bytes:
    return line.split(b":")[0]


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records  # type: ignore[attr-defined]
            if r.getMessage() == name]


@pytest.mark.parametrize("forward", ["udp", "tcp"])
async def test_lines_before_the_instant_go_by_the_old_list_and_after_by_the_new(
        caplog: pytest.LogCaptureFixture, forward: str) -> None:
    caplog.set_level(logging.INFO)
    kind = TimedSink if forward == "udp" else TimedTcpSink
    a, b = await kind().bind(), await kind().bind()
    config = make_config([a.spec], forward=forward)
    async with reloadable_proxy(config, [a, b]) as (address, mgmt, reloads):
        sender = Sender(address)
        at = math.ceil(wall() + 0.6)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run_until, at + 0.5)
            await trio.sleep(0.1)
            await reloads.send(make_config([a.spec, b.spec], aggregators_from=at,
                                           forward=forward))
            await trio.sleep(at - GUARD - 0.05 - wall())
            pending = await mgmt_stats(mgmt)
            await trio.sleep(at + 0.05 - wall())
            done = await mgmt_stats(mgmt)
        await wait_for(lambda: len(a.lines) + len(b.lines) >= len(sender.sent))
        await trio.sleep(0.05)
    new_list = [a, b]
    before, after = (s["proxy.membership.fingerprint"] for s in (pending, done))
    assert (pending["proxy.membership.scheduled"], float(pending["proxy.membership.scheduled_at"]),
            pending["proxy.membership.switches"]) == (after, at, "0")
    assert (done["proxy.membership.scheduled"], done["proxy.membership.switches"]) == ("none", "1")
    assert sorted(a.lines + b.lines) == sorted(line for _, line in sender.sent)  # once each
    assert before == membership_fingerprint([parse_aggregator(a.spec)])
    assert after == membership_fingerprint([parse_aggregator(a.spec), parse_aggregator(b.spec)])
    sent_at = {line: t for t, line in sender.sent}
    for index, sink in enumerate(new_list):
        for arrived, line in sink.arrivals:
            assert not at <= arrived < at + GUARD, (line, arrived - at)
            if sent_at[line] < at - GUARD - 0.01:  # sent well before the hold: the old list
                assert sink is a and arrived < at
            elif sent_at[line] >= at - GUARD:  # held or after: the new list, after the guard
                assert shard_index(name_of(line), 2) == index
                assert arrived >= at + GUARD
    assert b.lines and any(sent_at[line] < at for line in b.lines)  # held lines moved to b
    scheduled, = events(caplog, "membership_scheduled")
    assert float(scheduled["at"]) == at and scheduled["new"] == after
    changed, = events(caplog, "membership_changed")
    assert changed["fingerprint"] == after and changed["old"] == before


async def test_a_removed_aggregator_drains_a_kept_one_moves_and_totals_stay_exact(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a, b, c = await TimedSink().bind(), await TimedSink().bind(), await TimedSink().bind()
    config = make_config([a.spec, b.spec])
    async with reloadable_proxy(config, [a, b, c]) as (address, mgmt, reloads):
        sender = Sender(address)
        at = math.ceil(wall() + 0.6)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run_until, at + 0.4)
            await trio.sleep(0.1)
            await reloads.send(make_config([b.spec, c.spec], aggregators_from=at))
        await wait_for(lambda: len(events(caplog, "aggregator_retired")) == 1)
        stats = await mgmt_stats(mgmt)
    sent_at = {line: t for t, line in sender.sent}
    assert sorted(a.lines + b.lines + c.lines) == sorted(sent_at)
    old, new = [a, b], [b, c]
    for line in a.lines:
        assert sent_at[line] < at - GUARD + 0.01 and shard_index(name_of(line), 2) == 0
    for arrived, line in c.arrivals:
        assert sent_at[line] >= at - GUARD - 0.01 and arrived >= at + GUARD
        assert new[shard_index(name_of(line), 2)] is c
    for arrived, line in b.arrivals:  # kept: position 1, then 0
        owner = (old if arrived < at else new)[shard_index(name_of(line), 2)]
        assert owner is b
    assert int(stats["proxy.forwarders.sent_lines"]) == len(sender.sent)
    assert int(stats["proxy.router.received_lines"]) == len(sender.sent)
    assert stats["proxy.forwarder.0.aggregator"] == b.spec
    assert stats["proxy.forwarder.1.aggregator"] == c.spec
    retired, = events(caplog, "aggregator_retired")
    assert retired["aggregator"] == a.spec and retired["dropped_lines"] == 0
    assert retired["sent_lines"] == len(a.lines)


async def test_reload_applies_tokens_and_log_level_at_once_and_refuses_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a = await TimedSink().bind()
    config = make_config([a.spec], auth="token", auth_tokens=["old"])
    async with reloadable_proxy(config, [a]) as (address, _, reloads):
        host, _, port = address.rpartition(":")
        sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        with sock:
            await sock.sendto(b"old.x:1|c", (host, int(port)))
            await wait_for(lambda: a.lines == [b"x:1|c"])
            await reloads.send(make_config([a.spec], auth="token", auth_tokens=["new"],
                                           max_datagram_bytes=512, forward="tcp",
                                           log_level="warning"))
            await wait_for(lambda: bool(events(caplog, "reloaded")))
            assert logging.getLogger().level == logging.WARNING
            caplog.set_level(logging.INFO)
            await sock.sendto(b"old.y:1|c\nnew.z:1|c", (host, int(port)))
            await wait_for(lambda: len(a.lines) == 2)
            await trio.sleep(0.05)
    assert a.lines == [b"x:1|c", b"z:1|c"]  # the old token is refused now, over UDP still
    refused = sorted(f["setting"] for f in events(caplog, "reload_refused"))
    assert refused == ["forward", "max_datagram_bytes"]
    assert all(f["reason"] == "restart_required" for f in events(caplog, "reload_refused"))
    reloaded, = events(caplog, "reloaded")
    assert reloaded["applied"] == "auth_tokens,log_level"
    assert reloaded["aggregator"] == "unchanged"


async def test_a_passed_instant_is_refused_and_a_reload_back_cancels_a_switch(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a, b = await TimedSink().bind(), await TimedSink().bind()
    config = make_config([a.spec])
    async with reloadable_proxy(config, [a, b]) as (address, _, reloads):
        sender = Sender(address, period=0.005)
        at = math.ceil(wall() + 0.6)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run_until, at + 0.3)
            await reloads.send(make_config([a.spec, b.spec], aggregators_from=wall() - 5))
            await reloads.send(make_config([a.spec, b.spec], aggregators_from=at))
            await trio.sleep(0.1)
            await reloads.send(make_config([a.spec]))
        await wait_for(lambda: len(a.lines) == len(sender.sent))
    assert b.lines == []
    passed, = events(caplog, "reload_refused")
    assert (passed["setting"], passed["reason"]) == ("aggregator", "aggregators_from_passed")
    assert [f["aggregator"] for f in events(caplog, "reloaded")] == [
        "refused", "scheduled", "cancelled"]
    assert len(events(caplog, "membership_schedule_cancelled")) == 1
    assert not events(caplog, "membership_changed")


def test_a_supervisor_fixes_one_instant_for_every_child_and_starts_late_ones_pending(
        tmp_path: Path) -> None:
    now = [EPOCH + 4.5]
    a, b = "127.0.0.1:9", "127.0.0.1:10"
    path = tmp_path / "reload.json"
    processes = ProcessSet(config=make_config([a]), groups=[[], []], reload_file=str(path),
                           wall_clock=lambda: now[0])
    assert processes.reload(lambda: make_config([a, b]))
    handed = read_reload_file(str(path))
    assert handed == processes.config
    assert handed.aggregators_from == EPOCH + 5.0  # the margin (0.3 s) from 4.5: one for all
    assert path.stat().st_mode & 0o777 == 0o600
    launch = processes.launch(1, generation=1)  # restarted before the instant
    assert launch.description["reload_file"] == str(path)
    assert config_from_description(launch.description["config"]).aggregator == \
        make_config([a]).aggregator
    assert config_from_description(launch.description["reload"]) == handed
    now[0] = EPOCH + 5.0
    late = processes.launch(1, generation=2)
    assert "reload" not in late.description
    assert config_from_description(late.description["config"]) == handed


def test_a_supervisor_passes_on_no_reload_that_fails_and_a_reload_back_cancels(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    now = [EPOCH + 1.0]
    a, b = "127.0.0.1:9", "127.0.0.1:10"
    path = tmp_path / "reload.json"
    processes = ProcessSet(config=make_config([a]), groups=[[]], reload_file=str(path),
                           wall_clock=lambda: now[0])

    def broken() -> ProxyConfig:
        raise ConfigError("bad file")

    assert not processes.reload(broken)
    assert not path.exists() and events(caplog, "reload_failed")[0]["error"] == "bad file"
    assert processes.reload(lambda: make_config([a, b], aggregators_from=EPOCH))  # passed
    refused, = events(caplog, "reload_refused")
    assert (refused["setting"], refused["reason"]) == ("aggregator", "aggregators_from_passed")
    assert read_reload_file(str(path)).aggregator == make_config([a]).aggregator
    assert processes.reload(lambda: make_config([a, b], aggregators_from=EPOCH + 7.2,
                                                max_datagram_bytes=512))
    assert processes.config.aggregators_from == EPOCH + 8.0
    assert processes.config.max_datagram_bytes == make_config([a]).max_datagram_bytes
    assert "reload" in processes.launch(0, generation=1).description
    assert processes.reload(lambda: make_config([a]))
    assert "reload" not in processes.launch(0, generation=2).description
    assert read_reload_file(str(path)).aggregator == make_config([a]).aggregator


async def test_the_switch_does_not_wait_for_a_slow_first_probe_of_a_new_aggregator(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a, b = await TimedSink().bind(), await TimedSink().bind()

    async def slow_admin(stream: trio.SocketStream) -> None:
        await stream.receive_some(100)
        await trio.sleep(0.6)  # longer than the time left before the instant
        await stream.send_all(b"health: up\n")
        await stream.receive_some(100)
        await stream.send_all(b"ERROR unknown command\n")

    config = make_config([a.spec], connect_timeout=2.0)
    async with trio.open_nursery() as admin:
        listeners = await admin.start(partial(trio.serve_tcp, slow_admin, 0, host="127.0.0.1"))
        admin_port = listeners[0].socket.getsockname()[1]
        async with reloadable_proxy(config, [a, b]) as (address, _, reloads):
            sender = Sender(address)
            at = math.ceil(wall() + 0.45)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender.run_until, at + 0.8)
                await trio.sleep(max(at - 0.4 - wall(), 0))
                await reloads.send(make_config([a.spec, f"{b.spec}:{admin_port}"],
                                               aggregators_from=at))
            await wait_for(lambda: len(a.lines) + len(b.lines) == len(sender.sent))
        admin.cancel_scope.cancel()
    changed, = events(caplog, "membership_changed")
    assert changed["late_ms"] < 50  # on time, though b's first probe took 0.6 s
    sent_at = {line: t for t, line in sender.sent}
    assert sorted(a.lines + b.lines) == sorted(sent_at)
    assert all(sent_at[line] >= at - GUARD and arrived >= at + GUARD
               for arrived, line in b.arrivals)


async def test_a_graceful_stop_during_the_hold_delivers_what_was_held(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a, b = await TimedSink().bind(), await TimedSink().bind()
    config = make_config([a.spec])
    async with reloadable_proxy(config, [a, b]) as (address, _, reloads):
        sender = Sender(address)
        at = math.ceil(wall() + 0.6)
        await reloads.send(make_config([a.spec, b.spec], aggregators_from=at))
        await sender.run_until(at - GUARD / 2)
        await trio.sleep(0.01)
        assert len(a.lines) < len(sender.sent)  # some are held
    assert sorted(a.lines) == sorted(line for _, line in sender.sent)  # the old list's
    assert b.lines == [] and not events(caplog, "membership_changed")
    stopped, = events(caplog, "stopped")
    assert stopped["undelivered_lines"] == 0


def test_a_second_reload_while_a_switch_is_pending_keeps_its_instant(tmp_path: Path) -> None:
    now = [EPOCH + 4.5]
    a, b = "127.0.0.1:9", "127.0.0.1:10"
    path = tmp_path / "reload.json"
    processes = ProcessSet(config=make_config([a]), groups=[[], []], reload_file=str(path),
                           wall_clock=lambda: now[0])
    assert processes.reload(lambda: make_config([a, b]))
    assert processes.config.aggregators_from == EPOCH + 5.0
    now[0] = EPOCH + 4.6  # the same file again (aggregators_from = 0), the switch pending
    assert processes.reload(lambda: make_config([a, b], log_level="warning"))
    assert processes.config.aggregators_from == EPOCH + 5.0
    assert read_reload_file(str(path)).aggregators_from == EPOCH + 5.0
    launch = processes.launch(1, generation=1)  # restarted later: the same instant
    assert config_from_description(launch.description["reload"]).aggregators_from == \
        EPOCH + 5.0


@pytest.mark.parametrize("started", ["inside_the_guard", "after_the_instant"])
async def test_a_process_started_late_with_a_pending_change_holds_or_switches_never_refuses(
        caplog: pytest.LogCaptureFixture, started: str) -> None:
    caplog.set_level(logging.INFO)
    a, b = await TimedSink().bind(), await TimedSink().bind()
    at = math.ceil(wall() + 0.5)
    await trio.sleep(at - (GUARD / 2 if started == "inside_the_guard" else -0.05) - wall())
    pending = make_config([a.spec, b.spec], aggregators_from=at)
    async with reloadable_proxy(make_config([a.spec]), [a, b], pending=pending) as (
            address, _, _):
        sender = Sender(address)
        await sender.run_until(at + 0.3)
        await wait_for(lambda: len(a.lines) + len(b.lines) == len(sender.sent))
    assert not events(caplog, "reload_refused")
    changed, = events(caplog, "membership_changed")
    assert float(changed["at"]) == at
    assert sorted(a.lines + b.lines) == sorted(line for _, line in sender.sent)
    new_list = [a, b]
    for index, sink in enumerate(new_list):  # every line by the new list, after the guard
        for arrived, line in sink.arrivals:
            assert shard_index(name_of(line), 2) == index and arrived >= at + GUARD
    assert b.lines


def test_a_child_started_inside_the_guard_is_handed_the_change_pending(
        tmp_path: Path) -> None:
    now = [EPOCH + 4.5]
    a, b = "127.0.0.1:9", "127.0.0.1:10"
    processes = ProcessSet(config=make_config([a]), groups=[[]],
                           reload_file=str(tmp_path / "reload.json"), wall_clock=lambda: now[0])
    assert processes.reload(lambda: make_config([a, b]))
    now[0] = EPOCH + 5.0 - GUARD / 2
    launch = processes.launch(0, generation=1)
    assert config_from_description(launch.description["config"]).aggregator == \
        make_config([a]).aggregator
    assert config_from_description(launch.description["reload"]).aggregators_from == \
        EPOCH + 5.0


async def test_a_hold_that_reaches_its_cap_ends_early_and_drops_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(["127.0.0.1:9"], aggregator_buffer_bytes=30)
    pipeline, mgmt = build_components(config)
    admin = ProxyAdmin(config, pipeline, mgmt)
    pipeline.hold()
    pipeline.handle_block(b"x:1|c\ny:2|c")
    assert pipeline.held is not None and pipeline.held_lines == 2
    pipeline.handle_block(b"z:3|c\n" * 4 + b"w:4|c")
    assert pipeline.held is None  # cut: routed by the list in force, intake flows again
    pipeline.handle_block(b"v:5|c")
    stats = pipeline.switch_statistics()
    assert (stats.hold_cuts, stats.held_lines) == (1, 0)
    totals = admin.totals()
    assert (totals.lines_in, totals.buffered_lines, sum(totals.dropped_lines.values())) == \
        (8, 8, 0)
    cut, = events(caplog, "switch_hold_cut")
    assert (cut["reason"], cut["held_lines"], cut["limit_bytes"]) == ("held_bytes", 7, 30)


async def test_held_lines_are_counted_in_and_buffered_so_the_totals_balance() -> None:
    config = make_config(["127.0.0.1:9"])
    pipeline, mgmt = build_components(config)
    admin = ProxyAdmin(config, pipeline, mgmt)
    pipeline.hold()
    pipeline.handle_block(b"a:1|c\nb:1|c\n\nc:1|c")
    held = admin.totals()
    assert (held.lines_in, held.buffered_lines, held.lines_out) == (3, 3, 0)
    pipeline.release_all()
    routed = admin.totals()
    assert (routed.lines_in, routed.buffered_lines) == (3, 3)


async def test_a_wall_clock_stepped_back_during_the_hold_does_not_lengthen_it(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a, b = await TimedSink().bind(), await TimedSink().bind()
    step = [0.0]

    def stepping_wall() -> float:
        return wall() + step[0]

    async with reloadable_proxy(make_config([a.spec]), [a, b], wall_clock=stepping_wall) as (
            address, _, reloads):
        sender = Sender(address)
        at = math.ceil(wall() + 0.6)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run_until, at + 0.4)
            await reloads.send(make_config([a.spec, b.spec], aggregators_from=at))
            await trio.sleep(at - GUARD / 2 - wall())
            step[0] = -5.0  # the hold has begun; the wall clock steps back 5 s
            await wait_for(lambda: bool(events(caplog, "membership_released")), 3 * GUARD)
        await wait_for(lambda: len(a.lines) + len(b.lines) == len(sender.sent))
    assert sorted(a.lines + b.lines) == sorted(line for _, line in sender.sent)
    assert b.lines


async def test_old_list_lines_still_queued_at_the_instant_are_counted_late(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    closed = stdsocket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{closed.getsockname()[1]}"  # nothing listens: the queue stays
    closed.close()
    a = await TimedTcpSink().bind()
    config = make_config([dead], forward="tcp", graceful_timeout=0.2)
    async with reloadable_proxy(config, [a]) as (address, mgmt, reloads):
        sender = Sender(address)
        at = math.ceil(wall() + 0.6)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run_until, at + 0.3)
            await reloads.send(make_config([a.spec], forward="tcp", aggregators_from=at,
                                           graceful_timeout=0.2))
        await wait_for(lambda: bool(events(caplog, "aggregator_retired")))
        stats = await mgmt_stats(mgmt)
    changed, = events(caplog, "membership_changed")
    retired, = events(caplog, "aggregator_retired")
    assert changed["late_lines"] > 0
    assert changed["late_lines"] == retired["dropped_lines"]  # never delivered, then retired
    assert int(stats["proxy.membership.late_lines"]) == changed["late_lines"]


def switch_directly(pipeline: Any, aggregators: list[str]) -> None:
    """Apply a list change at once, as the switch does at its instant."""
    new = Membership(make_config(aggregators).aggregator, now=trio.current_time())
    change = plan_change(pipeline.membership.aggregators, new.aggregators)
    added = {i: pipeline.build_forwarder(i, new) for i in change.added}
    pipeline.switch_to(new, added, change)


async def test_status_lists_a_removed_aggregator_as_retired_with_its_drops() -> None:
    config = make_config(["127.0.0.1:9", "127.0.0.1:10"])
    pipeline, mgmt = build_components(config)
    admin = ProxyAdmin(config, pipeline, mgmt)
    pipeline.router.route(b"\n".join(b"m%d:1|c" % i for i in range(40)))
    pipeline.dispatch(final=True)
    switch_directly(pipeline, ["127.0.0.1:10"])
    gone, = pipeline.retired
    dropped = gone.drop_all(RETIRED)
    assert dropped > 0
    members = admin.members()
    assert [(m.name, m.index, m.state) for m in members] == [
        ("127.0.0.1:10", 0, "up"), ("127.0.0.1:9", -1, "retired")]
    assert members[1].dropped_lines[RETIRED] == dropped
    assert admin.totals().dropped_lines[RETIRED] == dropped


async def test_a_graceful_stop_after_the_instant_still_retires_the_removed_aggregator(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a, b = await TimedSink().bind(), await TimedSink().bind()
    async with reloadable_proxy(make_config([a.spec]), [a, b]) as (address, _, reloads):
        sender = Sender(address)
        at = math.ceil(wall() + 0.6)
        await reloads.send(make_config([b.spec], aggregators_from=at))
        await sender.run_until(at + GUARD / 2)  # stopped in the switched phase
    assert events(caplog, "membership_changed")
    assert not events(caplog, "membership_released")
    retired, = events(caplog, "aggregator_retired")
    assert retired["aggregator"] == a.spec and retired["dropped_lines"] == 0
    assert sorted(a.lines + b.lines) == sorted(line for _, line in sender.sent)


async def test_a_retired_forwarder_once_closed_leaves_only_its_counts() -> None:
    config = make_config(["127.0.0.1:9", "127.0.0.1:10"], graceful_timeout=0.05)
    pipeline, mgmt = build_components(config)
    admin = ProxyAdmin(config, pipeline, mgmt)

    async def start_nothing(forwarders: Any, scopes: Any) -> None:
        pass

    dropped = 0
    async with trio.open_nursery() as nursery:
        reloader = Reloader(config, pipeline, nursery=nursery, start_forwarders=start_nothing,
                            scopes={}, wall_clock=wall)
        for _ in range(3):
            pipeline.router.route(b"\n".join(b"m%d:1|c" % i for i in range(40)))
            pipeline.dispatch(final=True)
            switch_directly(pipeline, ["127.0.0.1:10"])
            gone, = pipeline.retired
            queued = gone.queued_lines
            await reloader.retire(gone)  # never started: its queue is dropped as retired
            dropped += queued
            assert pipeline.retired == []
            switch_directly(pipeline, ["127.0.0.1:9", "127.0.0.1:10"])
    assert dropped > 0 and list(pipeline.closed) == ["127.0.0.1:9"]
    totals = admin.totals()
    assert totals.dropped_lines[RETIRED] == dropped
    assert totals.lines_in == 120 == \
        totals.lines_out + sum(totals.dropped_lines.values()) + totals.buffered_lines
    retired = [m for m in admin.members() if m.state == "retired"]
    assert [(m.name, m.reason, m.dropped_lines[RETIRED]) for m in retired] == [
        ("127.0.0.1:9", "closed", dropped)]
