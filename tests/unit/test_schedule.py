"""Tests for proxy.schedule: the switch instant, the hold around it, the list change plan,
the held packets; and proxy.config.classify_reload."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from common.config import config_from_mapping
from common.errors import ConfigError
from proxy.config import APPLIED_AT_ONCE, ProxyConfig, check_config, classify_reload
from proxy.membership import parse_aggregator
from proxy.schedule import (
    HOLDING,
    RELEASED,
    ROUTING,
    SWITCHED,
    HeldPackets,
    SwitchSchedule,
    first_boundary_at_or_after,
    plan_change,
    switch_instant,
)

A, B, C, D = (parse_aggregator(f"10.0.0.{i}:8125") for i in range(1, 5))


def config(**values: Any) -> ProxyConfig:
    return config_from_mapping(ProxyConfig, {"aggregator": ["10.0.0.1:8125"], **values})


def test_first_boundary_keeps_a_multiple_and_rounds_up_the_rest() -> None:
    assert first_boundary_at_or_after(1_700_000_010.0, 10.0) == 1_700_000_010.0
    assert first_boundary_at_or_after(1_700_000_010.001, 10.0) == 1_700_000_020.0
    assert first_boundary_at_or_after(0.3, 0.1) == pytest.approx(0.3)
    assert first_boundary_at_or_after(0.30001, 0.1) == pytest.approx(0.4)


def test_instant_without_a_request_is_the_first_boundary_past_the_margin() -> None:
    kwargs = {"interval": 10.0, "requested": 0.0, "margin": 3.0, "guard": 0.2}
    assert switch_instant(1_700_000_006.9, **kwargs) == 1_700_000_010.0
    assert switch_instant(1_700_000_007.0, **kwargs) == 1_700_000_010.0
    assert switch_instant(1_700_000_007.1, **kwargs) == 1_700_000_020.0


def test_instant_margin_is_never_shorter_than_the_guard() -> None:
    assert switch_instant(9.95, interval=10.0, requested=0.0, margin=0.0, guard=0.2) == 20.0
    assert switch_instant(9.7, interval=10.0, requested=0.0, margin=0.0, guard=0.2) == 10.0


def test_requested_instant_is_the_same_whenever_the_reload_comes() -> None:
    kwargs = {"interval": 10.0, "requested": 1_700_000_105.0, "margin": 3.0, "guard": 0.2}
    seen = {switch_instant(now, **kwargs) for now in (1_700_000_000.0, 1_700_000_100.0,
                                                      1_700_000_109.7)}
    assert seen == {1_700_000_110.0}


def test_requested_instant_whose_hold_has_begun_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        switch_instant(1_700_000_109.9, interval=10.0, requested=1_700_000_110.0, margin=3.0,
                       guard=0.2)
    assert caught.value.key == "aggregators_from"


def test_schedule_phases_hold_around_the_instant() -> None:
    schedule = SwitchSchedule(at=100.0, guard=0.2, old_fingerprint="a", new_fingerprint="b")
    assert (schedule.hold_from, schedule.release_at) == (99.8, 100.2)
    assert [schedule.phase(t) for t in (99.79, 99.8, 99.99, 100.0, 100.19, 100.2)] == [
        ROUTING, HOLDING, HOLDING, SWITCHED, SWITCHED, RELEASED]


def test_plan_change_keeps_specs_in_both_lists_by_position() -> None:
    change = plan_change([A, B, C], [B, D, A])
    assert change.kept == ((1, 0), (0, 2))
    assert change.added == (1,)
    assert change.removed == (2,)


def test_plan_change_treats_a_changed_admin_port_as_another_forwarder() -> None:
    change = plan_change([A], [parse_aggregator("10.0.0.1:8125:8126")])
    assert (change.kept, change.added, change.removed) == ((), (0,), (0,))


def test_held_packets_keep_order_and_count_bytes() -> None:
    held = HeldPackets()
    held.extend([b"a:1|c", b"bb:2|c"])
    held.append(b"c:3|c\nd:4|c")
    assert (len(held), held.bytes, held.total) == (3, 5 + 6 + 11, 3)
    assert held.take(2) == [b"a:1|c", b"bb:2|c"]
    assert (len(held), held.bytes) == (1, 11)
    assert held.take(10) == [b"c:3|c\nd:4|c"]
    assert (len(held), held.bytes, held.total) == (0, 0, 3)


def test_held_packets_count_lines_as_the_router_does_and_fill_at_their_cap() -> None:
    held = HeldPackets(limit_bytes=20)
    held.extend([b"a:1|c", b"b:1|c\n\nc:1|c\n"])
    assert (held.lines, held.full) == (3, False)
    held.append(b"d:1|c\ne:1|c")
    assert (held.lines, held.bytes, held.full) == (5, 5 + 13 + 11, True)
    assert held.take_all() == [b"a:1|c", b"b:1|c\n\nc:1|c\n", b"d:1|c\ne:1|c"]
    assert (held.lines, held.bytes, len(held)) == (0, 0, 0)


def test_classify_reload_applies_tokens_and_schedules_the_list_and_refuses_the_rest() -> None:
    old = config(auth="token", auth_tokens=["a"])
    new = config(auth="token", auth_tokens=["b"], aggregator=["10.0.0.2:8125"],
                 max_datagram_bytes=1000, log_level="debug", aggregators_from=5.0)
    changes = classify_reload(old, new)
    assert changes.applied == ("aggregators_from", "auth_tokens", "log_level")
    assert changes.aggregator_changed
    assert changes.refused == ("max_datagram_bytes",)
    assert changes.config == attrs.evolve(new, max_datagram_bytes=old.max_datagram_bytes)


def test_classify_reload_of_the_same_config_changes_nothing() -> None:
    changes = classify_reload(config(), config())
    assert (changes.applied, changes.aggregator_changed, changes.refused) == ((), False, ())


def test_every_reloadable_setting_is_applied_by_a_reload() -> None:
    reloadable = {f.name for f in attrs.fields(ProxyConfig) if f.metadata["reloadable"]}
    assert reloadable - {"aggregator"} <= set(APPLIED_AT_ONCE)


def test_guard_of_half_an_interval_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        check_config(config(flush_interval=1.0, switch_guard=0.5))
    assert caught.value.key == "switch_guard"


def test_flush_interval_reads_etsy_milliseconds_with_a_unit() -> None:
    assert config(flush_interval="10000ms").flush_interval == 10.0
    with pytest.raises(ConfigError):
        config(flush_interval=10000)
