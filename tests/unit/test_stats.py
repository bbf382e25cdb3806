"""Tests for common.stats: snapshots read as named figures, one naming scheme."""

from __future__ import annotations

import attrs
import pytest

from common.stats import (
    COMPONENTS,
    COUNTER,
    LEVEL,
    TEXT,
    counter,
    level,
    numeric,
    path_component,
    read,
    statistic_name,
    stats_lines,
    text,
)


@attrs.frozen
class Example:
    node: str  # not a figure: no kind
    sent_lines: int = counter(help="lines sent")
    dropped_lines: dict[str, int] = counter(help="lines dropped, by reason")
    connected: bool = level(help="1 when connected")
    state: str = text(help="up or down")


def test_read_names_each_field_and_each_mapping_key() -> None:
    snap = Example("n", 5, {"shutdown": 1, "buffer_full": 2}, True, "up")
    readings = read("aggregator", "carbon", snap, instance="127_0_0_1_2003")
    head = "aggregator.carbon.127_0_0_1_2003."
    assert [(r.name, r.value, r.kind) for r in readings] == [
        (head + "sent_lines", 5, COUNTER),
        (head + "dropped_lines.buffer_full", 2, COUNTER),
        (head + "dropped_lines.shutdown", 1, COUNTER),
        (head + "connected", 1, LEVEL),
        (head + "state", "up", TEXT),
    ]
    assert readings[0].help == "lines sent"
    assert numeric(readings) == {head + "sent_lines": 5, head + "dropped_lines.buffer_full": 2,
                                 head + "dropped_lines.shutdown": 1, head + "connected": 1}
    assert stats_lines(readings)[-1] == (head + "state", "up")


def test_undeclared_role_or_component_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        statistic_name("carbon", "sender", "x")
    with pytest.raises(ValueError, match="unknown component"):
        read("proxy", "carbon", Example("n", 0, {}, False, "up"))


def test_a_figure_must_be_a_number() -> None:
    @attrs.frozen
    class Bad:
        value: object = counter(help="")

    with pytest.raises(TypeError, match="must be a number"):
        read("proxy", "router", Bad("x"))


def test_every_component_name_is_a_single_path_component() -> None:
    for role, components in COMPONENTS.items():
        for component in components:
            assert path_component(component) == component, (role, component)


@pytest.mark.parametrize(("raw", "expected"), [
    ("127.0.0.1:2003", "127_0_0_1_2003"),
    ("127.0.0.1:2003:a", "127_0_0_1_2003_a"),
    ("[::1]:2003", "___1__2003"),
    ("carbon-a_1", "carbon-a_1"),
])
def test_path_component(raw: str, expected: str) -> None:
    assert path_component(raw) == expected
