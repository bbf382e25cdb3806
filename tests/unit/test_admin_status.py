"""The /status document, the Prometheus rendering and the aggregator's accounting (pure)."""

from __future__ import annotations

import json

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregator.accounting import (
    aggregator_totals,
    carbon_instances,
    carbon_members,
    parse_stats_text,
)
from aggregator.ledger import Accumulator, LedgerOptions
from common.admin.prometheus import format_metrics, format_readings, metric_name
from common.admin.routes import parse_route_name, percent_decode
from common.admin.status import (
    SCHEMA,
    Member,
    RateTracker,
    StatusFacts,
    Totals,
    add_totals,
    build_status,
    config_fingerprint,
    totals_from_json,
)
from common.httproutes import HTTPError
from common.mgmt import END, handle_command
from common.stats import COUNTER, Reading, counter, level, numeric, read, text


@attrs.frozen
class IntakeFigures:
    kernel_drops: int = counter(help="kernel drops")


@attrs.frozen
class ForwarderFigures:
    state: str = text(help="up or down")
    buffered_lines: int = level(help="waiting")
    dropped_lines: dict[str, int] = counter(help="dropped, by reason")

CONTRACT_KEYS = ["schema", "version", "role", "identity", "pid", "now", "started",
                 "uptime_seconds", "health", "ready", "not_ready", "flush_interval",
                 "fingerprints", "members", "workers", "totals", "rates", "figures"]


def facts(**values: object) -> StatusFacts:
    base: dict[str, object] = dict(
        role="proxy", identity="edge", version="1.2", pid=7, started=100.0, health="up",
        not_ready=[], flush_interval=10.0, membership_fingerprint="m1",
        config_fingerprint="c1",
        members=[Member("aggregator", 0, "a:1", "127.0.0.1:1", "down", "refused", 3, 2,
                        None, {"buffer_full": 1})],
        totals=Totals(10, 6, 2, {"bad_line": 2}, self_lines=1))
    base.update(values)
    return StatusFacts(**base)  # type: ignore[arg-type]


def test_status_has_every_contract_key_and_is_json() -> None:
    doc = build_status(facts(), [Reading("proxy.router.received_lines", 10, COUNTER)],
                       now=112.5)
    assert list(doc) == CONTRACT_KEYS
    assert json.loads(json.dumps(doc)) == doc
    assert (doc["schema"], doc["uptime_seconds"], doc["ready"]) == (SCHEMA, 12.5, True)
    assert doc["fingerprints"] == {"membership": "m1", "config": "c1"}
    assert doc["members"][0] == {
        "kind": "aggregator", "index": 0, "name": "a:1", "address": "127.0.0.1:1",
        "state": "down", "reason": "refused", "sent_lines": 3, "buffered_lines": 2,
        "buffer_capacity_lines": None, "dropped_lines": {"buffer_full": 1}}
    assert doc["totals"] == {"lines_in": 10, "lines_out": 6, "buffered_lines": 2,
                             "dropped_lines": {"bad_line": 2}, "self_lines": 1}
    assert doc["figures"] == {"proxy.router.received_lines": 10}


def test_status_not_ready_reasons_make_ready_false() -> None:
    doc = build_status(facts(not_ready=["health_down"]), [], now=100.0)
    assert (doc["ready"], doc["not_ready"]) == (False, ["health_down"])


def test_rates_come_from_the_last_two_samples() -> None:
    tracker = RateTracker()
    assert tracker.rates()["interval_seconds"] == 0.0
    tracker.sample(0.0, Totals(0, 0, 0, {"x": 0}))
    tracker.sample(10.0, Totals(100, 50, 0, {"x": 10}))
    tracker.sample(20.0, Totals(300, 250, 0, {"x": 30}))
    assert tracker.rates() == {"interval_seconds": 10.0, "lines_in": 20.0, "lines_out": 20.0,
                               "dropped_lines": {"x": 2.0}}


def test_totals_add_up_over_workers_and_round_trip() -> None:
    a = Totals(5, 4, 0, {"bad_line": 1}, points_flushed=3, points_sent=3, points_buffered=0,
               points_dropped={})
    b = Totals(7, 5, 0, {"bad_line": 1, "overflow": 1}, points_flushed=2, points_sent=1,
               points_buffered=1, points_dropped={"buffer_full": 0})
    total = add_totals([a, b])
    assert (total.lines_in, total.lines_out, dict(total.dropped_lines)) == (
        12, 9, {"bad_line": 2, "overflow": 1})
    assert (total.points_flushed, total.points_sent, total.points_buffered) == (5, 4, 1)
    assert total.self_lines is None and "self_lines" not in total.as_json()
    assert totals_from_json(total.as_json()) == total


def test_config_fingerprint_ignores_secrets_only() -> None:
    one = 'a = 1\nauth_tokens = ["x"]\n'
    assert config_fingerprint(one, ["auth_tokens"]) == config_fingerprint(
        'a = 1\nauth_tokens = ["y"]\n', ["auth_tokens"])
    assert config_fingerprint(one, ["auth_tokens"]) != config_fingerprint(
        'a = 2\nauth_tokens = ["x"]\n', ["auth_tokens"])
    assert len(config_fingerprint(one)) == 16


def families(body: bytes) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def test_prometheus_names_kinds_and_labels() -> None:
    readings = [*read("proxy", "intake", IntakeFigures(kernel_drops=4)),
                *read("proxy", "forwarder", ForwarderFigures(
                    "up", 2, {"buffer_full": 3, "shutdown": 0}), instance="0")]
    parsed = families(format_readings(readings))
    kernel = parsed["tallyd_proxy_intake_kernel_drops"]
    assert kernel.type == "counter"  # type: ignore[attr-defined]
    assert [(s.name, s.value) for s in kernel.samples] == [  # type: ignore[attr-defined]
        ("tallyd_proxy_intake_kernel_drops_total", 4.0)]
    dropped = parsed["tallyd_proxy_forwarder_dropped_lines"]
    assert {(s.labels["forwarder"], s.labels["reason"], s.value)  # type: ignore[attr-defined]
            for s in dropped.samples} == {("0", "buffer_full", 3.0), ("0", "shutdown", 0.0)}
    buffered = parsed["tallyd_proxy_forwarder_buffered_lines"]
    assert buffered.type == "gauge"  # type: ignore[attr-defined]
    state = parsed["tallyd_proxy_forwarder_state_info"]
    assert [s.labels["value"] for s in state.samples] == ["up"]  # type: ignore[attr-defined]


def test_prometheus_extra_labels_and_uneven_labels_stay_valid() -> None:
    reading = Reading("aggregator.ledger.bad_lines", 3, COUNTER, "bad", role="aggregator",
                      component="ledger", measure="bad_lines")
    body = format_metrics([({"worker": "0"}, reading), ({}, reading),
                           ({}, Reading("unnamed", 1, COUNTER))])
    (family,) = families(body).values()
    assert metric_name(reading) == "tallyd_aggregator_ledger_bad_lines"
    assert [s.labels for s in family.samples] == [  # type: ignore[attr-defined]
        {"worker": "0"}, {"worker": ""}]


@pytest.mark.parametrize(("raw", "name"), [
    ("a.b", "a.b"), ("a%20b", "a b"), ("caf%C3%A9", "café"), ("x;tag=1", "x;tag=1")])
def test_route_names_are_percent_decoded(raw: str, name: str) -> None:
    assert parse_route_name(raw) == name


@pytest.mark.parametrize("raw", ["", "%", "%zz", "%ff", "a%0Ab", "x" * 9000,
                                 # every separator str.splitlines knows, and control bytes:
                                 # none may reach a worker's console as a second command
                                 "a%0Ddelcounters%20a", "a%0Bb", "a%0Cb", "a%1Cb", "a%00b",
                                 "a%7Fb", "a%C2%85b", "a%E2%80%A8b", "a%E2%80%A9b"])
def test_bad_route_names_are_400(raw: str) -> None:
    with pytest.raises(HTTPError) as caught:
        parse_route_name(raw)
    assert caught.value.status == 400


def test_percent_decode_keeps_plain_text() -> None:
    assert percent_decode("plain.name-1_x") == "plain.name-1_x"


def test_aggregator_totals_balance_with_the_exchange() -> None:
    # Worker 0 read 10 lines: forwarded 4, 1 bad, 1 overflow; worker 1 read 6: forwarded 2,
    # received 4 (from 0) and worker 0 received 1 of the 2 it was sent (1 exchange_full).
    w0 = parse_stats_text(
        "aggregator.ledger.received_lines: 10\naggregator.ledger.bad_lines: 1\n"
        "aggregator.ledger.refused_lines.bad_line: 1\n"
        "aggregator.ledger.refused_lines.overflow: 1\naggregator.exchange.forwarded_lines: 4\n"
        "aggregator.exchange.received_lines: 1\naggregator.exchange.dropped_lines.exchange_full"
        ": 0\naggregator.intake.kernel_drops: 2\naggregator.carbon.n.sent_lines: 5\n"
        "aggregator.carbon.n.buffered_lines: 1\naggregator.carbon.n.spooled_lines: 1\n"
        "aggregator.carbon.n.connected: 1\naggregator.flusher.flushed_lines: 7\nEND\n\n")
    w1 = parse_stats_text(
        "aggregator.ledger.received_lines: 6\naggregator.exchange.forwarded_lines: 2\n"
        "aggregator.exchange.received_lines: 4\n"
        "aggregator.exchange.dropped_lines.exchange_full: 1\n"
        "aggregator.carbon.n.last_flush: 3\n")
    assert w1["aggregator.carbon.n.last_flush"] == 3 and "END" not in w0
    parts = [aggregator_totals(w, carbon_nodes=["n"]) for w in (w0, w1)]
    total = add_totals(parts)
    dropped = {k: v for k, v in total.dropped_lines.items() if k != "kernel_overflow"}
    assert total.lines_in == 16
    assert total.lines_in == total.lines_out + sum(dropped.values())
    assert total.dropped_lines["kernel_overflow"] == 2
    assert dict(dropped) == {"bad_line": 1, "overflow": 1, "exchange_full": 1}
    assert (total.points_flushed, total.points_sent, total.points_buffered) == (7, 5, 2)
    (member,) = carbon_members([("n:1", "n:1", "n")], [w0, w1])
    assert (member.state, member.sent_lines, member.buffered_lines) == ("up", 5, 2)


def test_a_line_with_one_good_segment_is_out_and_bad_segments_stay_etsy_counts() -> None:
    # 3 lines, 3 bad segments: every line has a good segment, so all 3 reached the ledger;
    # a 4th line wholly bad is the one line dropped.
    acc = Accumulator(LedgerOptions())
    acc.ingest(b"x:1|c:zz|q:yy|w\ngood:1|c\nm:1|c:bad|c\nonly:bad|c")
    assert set(acc.ledger.counters) >= {b"x", b"good", b"m"}
    assert acc.bad_lines_total == 4  # Etsy's bad_lines_seen: per segment
    values = numeric(read("aggregator", "ledger", acc.statistics()))
    totals = aggregator_totals(values)
    assert (totals.lines_in, totals.lines_out, totals.dropped_lines["bad_line"]) == (4, 3, 1)
    assert totals.lines_in == totals.lines_out + sum(
        n for k, n in totals.dropped_lines.items() if k != "kernel_overflow")


def test_a_line_whose_every_sample_overflows_is_dropped_as_overflow() -> None:
    acc = Accumulator(LedgerOptions())
    acc.ingest(b"big:1e308|c|@0.0001\nbig:1e308|c|@0.0001:1|c")
    totals = aggregator_totals(numeric(read("aggregator", "ledger", acc.statistics())))
    assert acc.dropped["overflow"] == 2
    assert (totals.lines_in, totals.lines_out, totals.dropped_lines["overflow"]) == (2, 1, 1)


def test_carbon_members_list_the_nodes_a_reload_retired() -> None:
    # Node "old" left the ring; worker 1 still has figures for "gone" (not known by name).
    w0 = {"aggregator.carbon.n.sent_lines": 5, "aggregator.carbon.n.connected": 1,
          "aggregator.carbon.old.sent_lines": 3, "aggregator.carbon.old.spooled_lines": 2,
          "aggregator.carbon.old.dropped_lines.shutdown": 1}
    w1 = {"aggregator.carbon.gone.sent_lines": 4}
    members = carbon_members([("n:1", "n:1", "n")], [w0, w1],
                             known={"old": ("old:2003", "old:2003")})
    assert [(m.index, m.name, m.address, m.state, m.reason, m.sent_lines, m.buffered_lines,
             dict(m.dropped_lines)) for m in members] == [
        (0, "n:1", "n:1", "up", "", 5, 0, {}),
        (-1, "gone", "", "retired", "", 4, 0, {}),
        (-1, "old:2003", "old:2003", "retired", "", 3, 2, {"shutdown": 1})]
    totals = add_totals(aggregator_totals(w, carbon_nodes=carbon_instances(w))
                        for w in (w0, w1))
    assert totals.points_sent == sum(m.sent_lines for m in members)
    assert totals.points_buffered == sum(m.buffered_lines for m in members)


def test_aggregator_totals_count_auth_refusals_as_received() -> None:
    values = {"aggregator.ledger.received_lines": 3,
              "aggregator.auth.refused_lines.missing": 2}
    totals = aggregator_totals(values)
    assert (totals.lines_in, totals.lines_out, totals.dropped_lines["auth_missing"]) == (
        5, 3, 2)


def test_prometheus_skips_a_number_that_is_not_one() -> None:
    good = Reading("a.b.c", 1, COUNTER, role="proxy", component="router", measure="c")
    bad = Reading("a.b.d", "never", COUNTER, role="proxy", component="router", measure="d")
    assert set(families(format_metrics([({}, good), ({}, bad)]))) == {"tallyd_proxy_router_c"}


class RoutingTarget:
    health = "up"
    commands = ("stats", "health", "help", "quit")

    def stats_lines(self) -> list[tuple[str, object]]:
        return []

    def config_lines(self) -> list[tuple[str, object]]:
        return []

    def dump(self, kind: str) -> str | None:
        return None

    def delete(self, kind: str, names: object) -> list[str] | None:
        return None

    def route_text(self, name: str) -> str:
        return json.dumps({"name": name})


class PlainTarget(RoutingTarget):
    route_text = None  # type: ignore[assignment]


def test_route_command_answers_json_then_end_and_stays_out_of_help() -> None:
    target = RoutingTarget()
    assert handle_command("route a.b", target) == ('{"name": "a.b"}\n' + END, False)
    assert handle_command("route", target)[0].startswith("ERROR")
    assert "route" not in handle_command("help", target)[0]
    assert handle_command("route a.b", PlainTarget())[0].startswith("ERROR unknown command")

