"""Tests for the carbon-c-relay ring modes (common.crelay through common.ring.Ring) and the
tag keys (common.ringkey).

Layers: golden vectors produced by Debian's carbon-c-relay 3.7.3 test mode
(tests/support/crelay_vectors.py, how they were made is written there); the installed relay's
test mode run live on random names; the hash functions' C semantics; the layouts c-relay
refuses; the tag keys, ``normalized`` checked against carbon 1.1.10's TaggedSeries itself.
The live relay (tagged paths as it really routes them) is tests/e2e/test_crelay_ring.py.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from common.crelay import fnv1a32, fnv1a64, jump_bucket
from common.errors import ConfigError
from common.ring import DEFAULT_TAG_KEYS, RING_HASHES, CarbonNode, Ring, hash_position
from common.ring import parse_carbon_node as node
from common.ringkey import RING_TAG_KEYS, normalize_tagged
from tests.support.crelay_vectors import (
    LAYOUTS,
    NAMES,
    POSITIONS,
    RELAY,
    RINGS,
    VECTORS,
    ring_digest,
    run_test_mode,
)

ROOT = Path(__file__).resolve().parents[2]
CARBON_PYTHON = ROOT / ".cache" / "carbon" / "bin" / "python"
CRELAY_MODES = ("crelay_carbon_ch", "crelay_fnv1a_ch", "jump_fnv1a_ch")
LIVE_NAMES_PER_LAYOUT = 2000

needs_relay = pytest.mark.skipif(
    not RELAY.exists(), reason=f"{RELAY} is absent (tools/bootstrap --test installs Debian's "
                               "carbon-c-relay 3.7.3)")


def build(layout: str, tag_key: str | None = "as_received") -> Ring:
    """The layout's ring; as_received by default, as the relay's test mode hashes."""
    mode, factor, members = LAYOUTS[layout]
    return Ring.from_nodes([node(text) for text in members], hash_type=mode,
                           replication_factor=factor, tag_key=tag_key)


def address(member: CarbonNode) -> str:
    return f"{member.host}:{member.port}"


def printed(ring: Ring) -> list[tuple[int, str]]:
    """Our continuum as c-relay's debug output prints it (server text cut at 20 bytes)."""
    def text(member: CarbonNode) -> str:
        suffix = "" if member.instance is None else f"={member.instance}"
        return f"{member.host}:{member.port}{suffix}"[:20]
    if ring.hash_type == "jump_fnv1a_ch":  # it prints each member's config index
        return [(ring.nodes.index(member), text(member)) for _, member in ring.points()]
    return [(spot, text(member)) for spot, member in ring.points()]


def random_names(count: int, seed: int) -> list[str]:
    """Random names with bytes >= 0x80 and tags among them (no space, no empty name)."""
    rng = random.Random(seed)
    pieces = ["stats", "gauges", "müller", "日本語", "📈", "ÿ", "\x80", "api", "p99", "é"]
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789_-:#"
    names = []
    for _ in range(count):
        parts = [rng.choice(pieces) if rng.random() < 0.4
                 else "".join(rng.choices(alphabet, k=rng.randint(1, 10)))
                 for _ in range(rng.randint(1, 6))]
        tags = "".join(f";t{i}=v{rng.randint(0, 9)}" for i in range(rng.choice([0, 0, 1, 3])))
        names.append(".".join(parts) + tags)
    return names


# --- golden vectors from carbon-c-relay 3.7.3's test mode ---------------------------------


def test_the_vectors_cover_what_they_should() -> None:
    modes = {mode for mode, _, _ in LAYOUTS.values()}
    assert modes == set(CRELAY_MODES)
    for mode in CRELAY_MODES:
        sizes = {len(members) for m, _, members in LAYOUTS.values() if m == mode}
        factors = {factor for m, factor, _ in LAYOUTS.values() if m == mode}
        assert {3, 12} <= sizes and {1, 2} <= factors, mode
    assert any(max(name.encode()) >= 0x80 for name in NAMES)
    assert any(";" in name for name in NAMES)
    assert all(len(VECTORS[layout]) == len(NAMES) for layout in LAYOUTS)
    # The 12-member rings really have positions several points share (the tie rule).
    assert RINGS["carbon_twelve_mixed_r2"][1] < RINGS["carbon_twelve_mixed_r2"][0]
    assert RINGS["fnv1a_twelve_mixed_r2"][1] < RINGS["fnv1a_twelve_mixed_r2"][0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_placements_equal_the_relays_test_mode(layout: str) -> None:
    ring = build(layout)
    got = [",".join(address(m) for m in ring.nodes_for(name)) for name in NAMES]
    assert got == VECTORS[layout]
    assert [address(ring.node_for(name)) for name in NAMES] == [
        vector.split(",")[0] for vector in VECTORS[layout]]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_positions_and_ring_equal_the_relays(layout: str) -> None:
    ring = build(layout)
    if ring.hash_type == "jump_fnv1a_ch":
        ours = [jump_bucket(hash_position(name, ring.hash_type), len(ring.nodes)) for name in NAMES]
    else:
        ours = [hash_position(name, ring.hash_type) for name in NAMES]
    assert ours == POSITIONS[layout]
    entries, distinct, digest = RINGS[layout]
    assert entries == len(ring.nodes) * (1 if ring.hash_type == "jump_fnv1a_ch" else 100)
    assert len(ring.points()) == distinct
    assert ring_digest(printed(ring)) == digest


# --- the installed relay, live, on random names -------------------------------------------


@needs_relay
@pytest.mark.parametrize("layout", LAYOUTS)
def test_random_names_place_as_the_installed_relays_test_mode(layout: str) -> None:
    names = random_names(LIVE_NAMES_PER_LAYOUT, seed=len(layout))
    mode, factor, members = LAYOUTS[layout]
    relay = run_test_mode(mode, factor, members, names)
    ring = build(layout)
    assert ring_digest(printed(ring)) == ring_digest(relay.ring)
    mismatches = [
        (name, placed) for name, placed in zip(names, relay.placements, strict=True)
        if tuple(address(m) for m in ring.nodes_for(name)) != placed
    ]
    assert mismatches == []


# --- C semantics of the hashes ------------------------------------------------------------


def test_fnv1a_sign_extends_high_bytes_as_the_c_macro_does() -> None:
    def unsigned_fnv1a32(data: bytes) -> int:
        value = 0x811C9DC5
        for byte in data:
            value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
        return value
    assert fnv1a32(b"hosts.worker1.cpu") == unsigned_fnv1a32(b"hosts.worker1.cpu")
    assert fnv1a32("müller".encode()) != unsigned_fnv1a32("müller".encode())
    unicode_vector = "a\xac\u1234\u20ac\U00008000".encode()
    folded = fnv1a32(unicode_vector)
    assert (folded >> 16) ^ (folded & 0xFFFF) == 6405  # carbon.md's measured C value
    assert hash_position(unicode_vector, "fnv1a_ch") == 38658  # Python carbon's
    assert hash_position("hosts.worker1.cpu", "crelay_fnv1a_ch") == 59573  # equal for ASCII
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C  # the published FNV-1a 64 of "a"


def test_jump_bucket_matches_the_published_algorithm() -> None:
    # Every key lands in range, bucket 0 for one bucket, and growing by one bucket moves
    # a key only onto the new bucket (the jump hash's defining property).
    rng = random.Random(7)
    for _ in range(2000):
        key = rng.getrandbits(64)
        assert jump_bucket(key, 1) == 0
        for buckets in (2, 5, 12, 40):
            before, after = jump_bucket(key, buckets), jump_bucket(key, buckets + 1)
            assert 0 <= before < buckets
            assert after in (before, buckets)


# --- replication and layouts --------------------------------------------------------------


def test_replicas_are_distinct_members_not_distinct_hosts() -> None:
    layout = [node("127.0.0.1:2103:a"), node("127.0.0.1:2203:b"), node("127.0.0.2:2003:c")]
    for mode in CRELAY_MODES:
        ring = Ring.from_nodes(layout, hash_type=mode, replication_factor=2)
        same_host = 0
        for name in random_names(500, 3):
            replicas = ring.nodes_for(name)
            assert len(set(replicas)) == 2 and replicas[0] == ring.node_for(name)
            same_host += replicas[0].host == replicas[1].host
        assert same_host > 0, mode  # carbon's DIVERSE_REPLICAS would never do this
    carbon = Ring.from_nodes(layout, replication_factor=2)
    assert all(len({m.host for m in carbon.nodes_for(n)}) == 2 for n in random_names(200, 3))


@pytest.mark.parametrize("mode", CRELAY_MODES)
def test_successors_start_with_the_replicas_and_hold_every_member(mode: str) -> None:
    layout = [node(f"10.9.0.{i}:2003:{i}") for i in range(1, 6)]
    ring = Ring.from_nodes(layout, hash_type=mode, replication_factor=3)
    for name in random_names(300, 4):
        walk = ring.successors(name)
        assert sorted(walk, key=str) == sorted(layout, key=str)
        assert walk[:3] == ring.nodes_for(name)


@pytest.mark.parametrize(
    ("texts", "mode", "factor", "key"),
    [
        (["10.0.0.1:2003:a", "10.0.0.2:2003:b"], "crelay_carbon_ch", 3, "replication_factor"),
        (["10.0.0.1:2003:a", "10.0.0.1:2003:b"], "crelay_fnv1a_ch", 1, "carbon"),
        (["10.0.0.1:2003:a", "10.0.0.1:2004:a"], "crelay_carbon_ch", 1, "carbon"),
        (["10.0.0.1:2003:a", "10.0.0.2:2003:a"], "crelay_fnv1a_ch", 1, "carbon"),
        (["10.0.0.1:2003:a", "10.0.0.2:2003:a"], "jump_fnv1a_ch", 1, "carbon"),
        (["10.0.0.1:2003:2", "10.0.0.2:2003:10", "10.0.0.3:2003:1a"], "jump_fnv1a_ch", 1,
         "carbon"),  # 2 < 10 as numbers, 10 < 1a and 1a < 2 as strings: qsort would decide
        ([f"10.0.1.{i}:2003" for i in range(65)], "jump_fnv1a_ch", 1, "carbon"),
    ],
)
def test_layouts_carbon_c_relay_refuses_are_refused(
    texts: list[str], mode: str, factor: int, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Ring.from_nodes([node(t) for t in texts], hash_type=mode, replication_factor=factor)
    assert caught.value.key == key


def test_ports_tell_members_apart_where_the_relay_hashes_them() -> None:
    layout = [node("127.0.0.1:2003"), node("127.0.0.1:2004")]
    for mode in ("crelay_fnv1a_ch", "jump_fnv1a_ch"):
        ring = Ring.from_nodes(layout, hash_type=mode)
        assert {ring.node_for(name) for name in random_names(200, 5)} == set(layout)
    with pytest.raises(ConfigError):
        Ring.from_nodes(layout, hash_type="crelay_carbon_ch")


def test_jump_orders_members_by_instance_then_instance_less_in_config_order() -> None:
    layout = [node(t) for t in ("10.0.0.1:2003", "10.0.0.2:2003:b", "10.0.0.3:2003:10",
                                "10.0.0.4:2003", "10.0.0.5:2003:9", "10.0.0.6:2003:a")]
    ring = Ring.from_nodes(layout, hash_type="jump_fnv1a_ch")
    order = [member for _, member in ring.points()]
    assert order == [layout[4], layout[2], layout[5], layout[1], layout[0], layout[3]]


# --- tag keys -----------------------------------------------------------------------------


def test_each_mode_has_the_default_tag_key_of_its_relay() -> None:
    assert set(DEFAULT_TAG_KEYS) == set(RING_HASHES)
    for mode in RING_HASHES:
        ring = Ring.from_nodes([node("10.0.0.1:2003:a")], hash_type=mode)
        expected = "name_only" if mode in CRELAY_MODES else "as_received"
        assert ring.tag_key == DEFAULT_TAG_KEYS[mode] == expected


@pytest.mark.parametrize("mode", RING_HASHES)
def test_tag_keys_place_tagged_paths_by_what_they_hash(mode: str) -> None:
    layout = [node(f"10.8.0.{i}:2003:n{i}") for i in range(1, 6)]
    rings = {key: Ring.from_nodes(layout, hash_type=mode, tag_key=key) for key in RING_TAG_KEYS}
    for name in random_names(400, 6):
        plain = name.split(";")[0]
        assert rings["name_only"].nodes_for(name) == rings["as_received"].nodes_for(plain)
        normal = normalize_tagged(name) or name
        assert rings["normalized"].nodes_for(name) == rings["as_received"].nodes_for(normal)
        assert rings["as_received"].nodes_for(name) == rings["as_received"].nodes_for(
            name.encode())


def test_the_default_tag_key_keeps_fingerprints_and_another_changes_them() -> None:
    layout = [node("127.0.0.1:2103:cache0"), node("127.0.0.1:2203:cache1"),
              node("127.0.0.1:2303:cache2")]
    assert Ring.from_nodes(layout).fingerprint() == "ff7309761d10207b"
    assert Ring.from_nodes(layout, tag_key="as_received").fingerprint() == "ff7309761d10207b"
    assert Ring.from_nodes(layout, tag_key="normalized").fingerprint() != "ff7309761d10207b"
    assert Ring.from_nodes(layout, tag_key="normalized") != Ring.from_nodes(layout)
    with pytest.raises(ConfigError) as caught:
        Ring.from_nodes(layout, tag_key="sorted")
    assert caught.value.key == "ring_tag_key"


NORMALIZE_CASES = [
    "a.b", "~a.b", "~", "a.b;z=1;a=2", "a.b;a=2;z=1", "a.b;a=1;a=2", "a;name=x;b=c",
    "a;b", "a;=b", "a;b=", "a;b=~c", "a;b!=c", "a;b=c=d", ";a=b", "a.b;c=d;",
    'm{a="1",b="2"}', 'm{b="2",a="1"}', 'm{a="x\\"y"}', '{a="1"}', 'm{a="1"', 'm{a=1}',
    "stats.gauges.müller;région=été;a=b", "x;env=prod", "a;b.c=d;b=e", "a;b=c;b=~d",
]  # fmt: skip


def test_normalized_equals_carbons_tagged_series() -> None:
    if not CARBON_PYTHON.exists():
        pytest.skip(f"{CARBON_PYTHON} is absent (tools/bootstrap installs carbon==1.1.10)")
    script = (
        "import json, sys\n"
        "from carbon.util import TaggedSeries\n"
        "out = []\n"
        "for path in json.load(sys.stdin):\n"
        "    try:\n"
        "        out.append(TaggedSeries.parse(path).path)\n"
        "    except Exception:\n"
        "        out.append(None)\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(CARBON_PYTHON), "-I", "-c", script], capture_output=True,
                          text=True, input=json.dumps(NORMALIZE_CASES), timeout=60, check=True)
    carbon: list[Any] = json.loads(done.stdout)
    assert [normalize_tagged(path) for path in NORMALIZE_CASES] == carbon


# --- the setting, as the aggregator reads it ----------------------------------------------


@pytest.mark.parametrize(
    ("document", "tag_key"),
    [
        ({"ring_hash": "crelay_carbon_ch"}, "name_only"),
        ({"ring_hash": "carbon_ch"}, "as_received"),
        ({"ring_hash": "carbon_ch", "ring_tag_key": "normalized"}, "normalized"),
        ({"ring_hash": "jump_fnv1a_ch", "ring_tag_key": "as_received"}, "as_received"),
    ],
)
def test_the_aggregator_places_lines_with_its_ring_tag_key(
    document: dict[str, Any], tag_key: str
) -> None:
    from aggregator.backends.carbon import CarbonOutput
    from aggregator.config import AggregatorConfig, check_config
    from common.config import config_from_mapping

    members = ["10.0.0.1:2003:1", "10.0.0.2:2003:2", "10.0.0.3:2003:3", "10.0.0.4:2003:4"]
    config = config_from_mapping(AggregatorConfig, {"carbon": members, **document})
    check_config(config)
    placement = CarbonOutput(config).placement
    assert placement.ring.tag_key == tag_key
    lines = [f"disk.used;host=h{i};dc=eu 1 1700000000\n".encode() for i in range(40)]
    groups = placement.split(b"".join(lines))
    ring = placement.ring
    for owner, block in groups.items():
        for line in block.splitlines():
            assert owner in ring.nodes_for(line.split(b" ")[0])
    assert (len(groups) == 1) is (tag_key == "name_only")


def test_the_aggregator_refuses_an_unknown_ring_tag_key() -> None:
    from aggregator.config import AggregatorConfig
    from common.config import config_from_mapping

    with pytest.raises(ConfigError) as caught:
        config_from_mapping(AggregatorConfig, {"ring_tag_key": "sorted"})
    assert "ring_tag_key" in str(caught.value)  # as for ring_hash: the validator's message
