"""Components.readings: every figure named once; the self-metrics and the mgmt `stats`
lines render from the same readings; the console backend."""

from __future__ import annotations

import io

import pytest
import trio

from aggregator.backends import EtsyStatus
from aggregator.backends.carbon import CarbonOutput
from aggregator.backends.console import MAX_QUEUED_BYTES, ConsoleOutput
from aggregator.components import Components
from aggregator.config import AggregatorConfig
from aggregator.flusher import format_etsy_figures, format_self_metrics
from aggregator.ledger import Accumulator
from aggregator.mgmt import AggregatorMgmt, format_etsy_lines
from common.auth import TokenAuth
from common.config import config_from_mapping
from common.listener import IntakeCounters
from common.mgmt import handle_command
from common.stats import Reading

NODE = "aggregator.carbon.127_0_0_1_2003"


def make_components(**values: object) -> Components:
    config = config_from_mapping(AggregatorConfig, {"listen": ["udp://127.0.0.1:0"], **values})
    carbon = CarbonOutput(config) if config.carbon else None
    return Components(Accumulator(config.ledger_options), IntakeCounters(),
                      backends=[carbon] if carbon is not None else [], carbon=carbon,
                      auth=TokenAuth(["tok"]))


@pytest.mark.parametrize(("name", "value"), [
    ("aggregator.intake.truncated_datagrams", 0),
    ("aggregator.ledger.dropped_lines.overflow", 0),
    ("aggregator.ledger.bad_lines", 1),
    ("aggregator.auth.refused_lines.missing", 0),
    (f"{NODE}.sent_lines", 0),
    (f"{NODE}.dropped_lines.buffer_full", 0),
    (f"{NODE}.dropped_lines.shutdown", 0),
    (f"{NODE}.buffered_lines", 1),
    (f"{NODE}.connected", 0),
    (f"{NODE}.last_exception", "never"),
])
def test_readings_name_every_component_figure(name: str, value: object) -> None:
    components = make_components(carbon=["127.0.0.1:2003"])
    components.accumulator.ingest(b"bad line")
    components.backends[0].offer(b"a 1 10\n")
    readings = {r.name: r.value for r in components.readings()}
    assert readings[name] == value


@pytest.mark.parametrize(("readings", "expected"), [
    ([], {}),
    ([Reading("aggregator.worker.generation", 2, "level")],
     {"tallyd.aggregator.w-0.worker.generation": 2}),
    ([Reading("aggregator.carbon.n.sent_lines", 5, "counter"),
      Reading("aggregator.carbon.n.last_flush", "3", "text")],
     {"tallyd.aggregator.w-0.carbon.n.sent_lines": 5}),
])
def test_self_metrics_publish_counters_and_levels_never_text(
        readings: list[Reading], expected: dict[str, float]) -> None:
    assert format_self_metrics("w-0", readings) == expected


STATUS = EtsyStatus("graphite", "graphiteStats",
                    {"last_flush": 990, "last_exception": 0, "flush_length": 12})


def test_etsy_figures_end_the_flush_under_the_flush_name() -> None:
    assert format_etsy_figures([STATUS]) == {"graphiteStats.last_flush": 990,
                                             "graphiteStats.last_exception": 0,
                                             "graphiteStats.flush_length": 12}


def test_etsy_lines_print_last_figures_as_seconds_ago() -> None:
    assert format_etsy_lines([STATUS], 1000.2) == [("graphite.last_flush", 10),
                                                   ("graphite.last_exception", 1000),
                                                   ("graphite.flush_length", 12)]


def test_stats_prints_etsys_lines_then_every_reading() -> None:
    components = make_components(carbon=["127.0.0.1:2003"])
    config = config_from_mapping(AggregatorConfig, {"listen": ["udp://127.0.0.1:0"]})
    reply, _ = handle_command("stats", AggregatorMgmt(config, components))
    names = [row.split(": ", 1)[0] for row in reply.removesuffix("END\n\n").splitlines()]
    assert names[:7] == ["uptime", "messages.last_msg_seen", "messages.bad_lines_seen",
                         "graphite.last_flush", "graphite.last_exception",
                         "graphite.flush_time", "graphite.flush_length"]
    assert names[7:] == [r.name for r in components.readings()]


async def test_console_writes_in_order_and_counts_what_it_drops() -> None:
    stream = io.BytesIO()
    console = ConsoleOutput(stream)
    big = b"x" * (MAX_QUEUED_BYTES // 2) + b"\n"
    for payload in (b"a 1 10\n", big, big, b"b 2 10\n"):
        console.offer(payload)
    assert console.statistics().dropped_bytes == len(b"a 1 10\n") + len(big)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(console.run)
        await console.wait_delivered()
        nursery.cancel_scope.cancel()
    assert stream.getvalue() == big + b"b 2 10\n"
    assert console.statistics().buffered_bytes == 0


def test_carbon_figures_end_the_flush_in_etsys_posting_order() -> None:
    status = make_components(carbon=["127.0.0.1:2003"]).etsy_statuses()[0]
    assert list(format_etsy_figures([status])) == [
        "graphiteStats.last_exception", "graphiteStats.last_flush", "graphiteStats.flush_time",
        "graphiteStats.flush_length"]
    assert [name for name, _ in format_etsy_lines([status], 0.0)] == [
        "graphite.last_flush", "graphite.last_exception", "graphite.flush_time",
        "graphite.flush_length"]


def test_last_msg_seen_counts_from_start_until_a_message_arrives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import aggregator.mgmt
    now = [1000.0]
    monkeypatch.setattr(aggregator.mgmt.time, "time", lambda: now[0])
    components = make_components()
    config = config_from_mapping(AggregatorConfig, {"listen": ["udp://127.0.0.1:0"]})
    mgmt = AggregatorMgmt(config, components)
    now[0] = 1100.0
    assert dict(mgmt.stats_lines())["messages.last_msg_seen"] == 100
    components.accumulator.note_arrival(1090.0)
    assert dict(mgmt.stats_lines())["messages.last_msg_seen"] == 10


async def test_console_close_during_a_write_keeps_the_write_and_drops_the_rest() -> None:
    started, release = trio.Event(), trio.Event()
    written: list[bytes] = []
    token = trio.lowlevel.current_trio_token()

    class SlowStream(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            token.run_sync_soon(started.set)
            trio.from_thread.run(release.wait, trio_token=token)
            written.append(bytes(data))
            return len(data)

    console = ConsoleOutput(SlowStream())
    console.offer(b"a 1 10\n")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(console.run)
        await started.wait()
        console.offer(b"b 2 10\n")
        console.close()  # at a deadline, while "a" is being written
        release.set()
        await console.wait_delivered()
        nursery.cancel_scope.cancel()
    assert written == [b"a 1 10\n"]
    assert console.statistics().dropped_bytes == len(b"b 2 10\n")
