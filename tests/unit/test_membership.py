"""Tests for proxy.membership: the ordered list, its fingerprint, up/down state."""

from __future__ import annotations

import hashlib

import pytest

from common.errors import ConfigError
from proxy.membership import (
    DOWN,
    UP,
    AggregatorSpec,
    Membership,
    membership_fingerprint,
    parse_aggregator,
)

A = parse_aggregator("10.0.0.1:8125")
B = parse_aggregator("agg-b.example:8125:8126")
C = parse_aggregator("[::1]:9125")


def test_parse_aggregator_reads_host_port_and_optional_admin_port() -> None:
    assert A == AggregatorSpec("10.0.0.1", 8125, None)
    assert B == AggregatorSpec("agg-b.example", 8125, 8126)
    assert C == AggregatorSpec("::1", 9125, None)
    assert str(C) == "[::1]:9125" and B.spec == "agg-b.example:8125:8126"


@pytest.mark.parametrize("text", ["nohost", ":8125", "h:0", "h:8125:x", "h:8125:0", "h:99999"])
def test_parse_aggregator_refuses_bad_forms(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_aggregator(text)


def test_fingerprint_follows_documented_recipe() -> None:
    text = "tallyd-proxy/1\ncrc32\n10.0.0.1:8125\nagg-b.example:8125\n[::1]:9125\n"
    assert membership_fingerprint([A, B, C]) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_fingerprint_golden_value() -> None:
    assert membership_fingerprint([A, B, C]) == "ceb1e91cb344cbdc"


def test_fingerprint_changes_with_order_and_hash_mode_not_admin_port() -> None:
    base = membership_fingerprint([A, B])
    assert membership_fingerprint([B, A]) != base
    assert membership_fingerprint([A, B], "other") != base
    assert membership_fingerprint([A, AggregatorSpec(B.host, B.port, 9999)]) == base


def test_membership_refuses_empty_and_duplicate_lists() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        Membership([])
    with pytest.raises(ConfigError, match="listed twice"):
        Membership([A, B, AggregatorSpec(A.host, A.port, 1)])


def test_mark_down_keeps_member_in_list_and_reports_transition_once() -> None:
    members = Membership([A, B, C], now=1.0)
    assert members.mark_down(1, "econnrefused", now=2.0) is True
    assert members.mark_down(1, "timeout", now=3.0) is False
    assert len(members) == 3 and members.aggregators[1] == B
    state = members.states[1]
    assert (state.state, state.reason, state.since, state.failures) == (DOWN, "timeout", 2.0, 2)
    assert members.down_members() == [1]
    assert members.is_up(0) and members.is_up(2)


def test_mark_up_resets_failures_and_reports_recovery_once() -> None:
    members = Membership([A, B])
    members.mark_down(0, "x", now=1.0)
    assert members.mark_up(0, now=5.0) is True
    assert members.mark_up(0, now=6.0) is False
    state = members.states[0]
    assert (state.state, state.failures, state.since, state.transitions) == (UP, 0, 5.0, 2)


def test_set_address_reports_changes_only() -> None:
    members = Membership([B])
    assert members.set_address(0, "10.1.1.1:8125") is True
    assert members.set_address(0, "10.1.1.1:8125") is False
    assert members.set_address(0, "10.1.1.2:8125") is True


def test_statistics_describe_the_list_in_force() -> None:
    members = Membership([A, B, C])
    stats = members.statistics()
    assert (stats.fingerprint, stats.hash_mode, stats.aggregators) == (
        membership_fingerprint([A, B, C]), members.hash_mode, 3)


@pytest.mark.parametrize(("events", "expected"), [
    ([], (UP, "", 0, 0)),
    ([("down", "timeout")], (DOWN, "timeout", 1, 1)),
    ([("down", "timeout"), ("down", "econnrefused")], (DOWN, "econnrefused", 2, 1)),
    ([("down", "timeout"), ("up", "")], (UP, "", 0, 2)),
    ([("up", ""), ("up", "")], (UP, "", 0, 0)),
])
def test_member_state_follows_events_and_earlier_values_stay_unchanged(
    events: list[tuple[str, str]], expected: tuple[str, str, int, int],
) -> None:
    members = Membership([A, B])
    first = members.states[0]
    for now, (event, reason) in enumerate(events, start=1):
        if event == "down":
            members.mark_down(0, reason, now=float(now))
        else:
            members.mark_up(0, now=float(now))
    state = members.states[0]
    assert (state.state, state.reason, state.failures, state.transitions) == expected
    assert (first.state, first.failures, first.transitions) == (UP, 0, 0)
