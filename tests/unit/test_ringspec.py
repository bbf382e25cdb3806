"""Tests for ringtool.ringspec: the ring settings read from an aggregator's config document."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import ConfigError
from common.ring import CarbonNode, Ring
from ringtool.ringspec import RING_KEYS, RingSpec, parse_ring_spec

A = CarbonNode("10.0.0.1", 2003, "a")
B = CarbonNode("10.0.0.2", 2003, "b")


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({}, RingSpec(carbon=(), ring_hash="carbon_ch", replication_factor=1)),
        ({"carbon": ["10.0.0.1:2003:a", "10.0.0.2:2003:b"]}, RingSpec(carbon=(A, B))),
        ({"ring_hash": "ketama", "replication_factor": 2},
         RingSpec(ring_hash="ketama", replication_factor=2)),
        # The aggregator's other keys are its own business, known or not.
        ({"carbon": ["10.0.0.1:2003:a"], "flush_interval": 10, "admin": {"listen": "x"},
          "no_such_key": True}, RingSpec(carbon=(A,))),
    ],
)
def test_parse_ring_spec_reads_the_ring_keys_only(
    document: dict[str, Any], expected: RingSpec
) -> None:
    assert parse_ring_spec(document, source="aggregator.toml") == expected


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"carbon": "10.0.0.1:2003"}, "carbon: expected a list"),
        ({"carbon": [2003]}, "carbon: bad carbon node '2003'"),
        ({"carbon": ["10.0.0.1"]}, "carbon: bad carbon node '10.0.0.1'"),
        ({"ring_hash": 1}, "ring_hash: expected a str"),
        ({"replication_factor": "2"}, "replication_factor: expected a int"),
        ({"replication_factor": True}, "replication_factor: expected a int"),
        ({"replication_factor": 1.5}, "replication_factor: expected a int"),
    ],
)
def test_parse_ring_spec_refuses_a_ring_key_of_the_wrong_kind(
    document: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_ring_spec(document, source="aggregator.toml")
    assert str(raised.value).startswith(message)


def test_ring_keys_are_the_specs_fields() -> None:
    assert RING_KEYS == {"carbon", "ring_hash", "replication_factor", "ring_tag_key"}


@pytest.mark.parametrize(
    ("document", "key"),
    [({"ring_hash": "md5"}, "ring_hash"), ({"replication_factor": 0}, "replication_factor"),
     ({"ring_tag_key": "sorted"}, "ring_tag_key")],
)
def test_parse_ring_spec_refuses_an_unknown_mode_or_factor_as_the_daemons_do(
    document: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_ring_spec(document, source="aggregator.toml")
    assert key in str(raised.value)


@pytest.mark.parametrize(
    "spec",
    [
        RingSpec(carbon=(A, B)),
        RingSpec(carbon=(A, B), ring_hash="fnv1a_ch"),
        RingSpec(carbon=(A, B), ring_hash="ketama", replication_factor=2),
        RingSpec(carbon=(A, B), ring_hash="jump_fnv1a_ch", replication_factor=2),
        RingSpec(carbon=(A, B), ring_hash="crelay_carbon_ch", ring_tag_key="normalized"),
    ],
)
def test_build_ring_places_as_the_ring_does(spec: RingSpec) -> None:
    expected = Ring.from_nodes(spec.carbon, hash_type=spec.ring_hash,
                               replication_factor=spec.replication_factor,
                               tag_key=spec.ring_tag_key)
    assert spec.build_ring() == expected


def test_the_tag_key_comes_from_the_file_and_defaults_to_the_modes() -> None:
    spec = parse_ring_spec({"carbon": ["10.0.0.1:2003:a"], "ring_hash": "crelay_fnv1a_ch"},
                           source="aggregator.toml")
    assert spec.ring_tag_key is None and spec.build_ring().tag_key == "name_only"
    spec = parse_ring_spec({"carbon": ["10.0.0.1:2003:a"], "ring_tag_key": "normalized"},
                           source="aggregator.toml")
    assert spec.build_ring().tag_key == "normalized"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (RingSpec(), "carbon: the ring needs at least one carbon node"),
        (RingSpec(carbon=(A, CarbonNode("10.0.0.1", 2004, "a"))), "carbon: 10.0.0.1:2003:a and"),
    ],
)
def test_build_ring_refuses_a_layout_the_ring_refuses(spec: RingSpec, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        spec.build_ring()
    assert str(raised.value).startswith(message)
