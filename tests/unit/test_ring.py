"""Tests for common.ring: the Carbon ring.

Layers: golden vectors from carbon 1.1.10 itself (run in its own venv by
tests/support/carbon_ring_vectors.py) and graphite-web's published ones; ketama against
uhashring itself; distribution and stability properties; node parsing; refused layouts.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import subprocess
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from uhashring import HashRing  # type: ignore[import-untyped]

from common.errors import ConfigError
from common.ring import (
    RING_HASHES,
    CarbonNode,
    Ring,
    hash_position,
    parse_carbon_node,
    parse_carbon_nodes,
)

ROOT = Path(__file__).resolve().parents[2]
CARBON_PYTHON = ROOT / ".cache" / "carbon" / "bin" / "python"
VECTOR_SCRIPT = ROOT / "tests" / "support" / "carbon_ring_vectors.py"

# Name pieces: Graphite-ish words, unicode (graphite-web's own vector among them), tags.
WORDS = [
    "stats", "timers", "counters", "gauges", "api", "latency", "upper_90", "count_ps",
    "hosts", "worker1", "cpu", "load", "eu-west-1", "db", "p99", "mean", "sum_squares",
    "müller", "日本語", "📈", "naïve", "Ωmega", "a\xac\u1234\u20ac\U00008000", "x;env=prod",
]  # fmt: skip


def make_names(count: int, seed: int) -> list[str]:
    """``count`` deterministic metric names, unicode included, plus a few odd edge cases."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789_-"
    names = ["", ".", "a", "hosts.worker1.cpu", "hosts.worker2.cpu", "x" * 300]
    while len(names) < count:
        parts = [
            rng.choice(WORDS)
            if rng.random() < 0.6
            else "".join(rng.choices(alphabet, k=rng.randint(1, 12)))
            for _ in range(rng.randint(1, 7))
        ]
        names.append(".".join(parts))
    return names


def nodes(*texts: str) -> list[CarbonNode]:
    return [parse_carbon_node(text) for text in texts]


def triple(node: CarbonNode) -> list[Any]:
    return [node.host, node.port, node.instance]


# name: (hash_type, replication factor, DESTINATIONS in order)
LAYOUTS: dict[str, tuple[str, int, list[str]]] = {
    "one_host_three_instances": (
        "carbon_ch", 1, ["127.0.0.1:2103:a", "127.0.0.1:2203:b", "127.0.0.1:2303:c"],
    ),
    "four_hosts_no_instance": ("carbon_ch", 1, [f"10.0.0.{i}:2003" for i in range(1, 5)]),
    "twelve_hosts_colliding": (
        "carbon_ch", 1, [f"carbon{i:02d}.example.net:2004:cache{i}" for i in range(12)],
    ),
    "fnv1a_three_hosts": ("fnv1a_ch", 1, ["10.1.0.1:2003:a", "10.1.0.2:2003:b", "10.1.0.3:2003:c"]),
    "r2_mixed_hosts": (
        "carbon_ch", 2,
        ["10.2.0.1:2103:a", "10.2.0.1:2203:b", "10.2.0.2:2003", "10.2.0.3:2103:a",
         "[2001:db8::7]:2003:x", "10.2.0.3:2203:b"],
    ),
    "r3_mixed_hosts": (
        "carbon_ch", 3,
        ["10.3.0.1:2003:1", "10.3.0.2:2003:2", "10.3.0.2:2103:3", "10.3.0.3:2003",
         "10.3.0.4:2003:5", "10.3.0.4:2103:6", "10.3.0.5:2003:7"],
    ),
    "r3_only_two_hosts": (
        "carbon_ch", 3,
        ["10.4.0.1:2003:a", "10.4.0.1:2103:b", "10.4.0.2:2003:c", "10.4.0.2:2103:d"],
    ),
    "fnv1a_r2_mixed_hosts": (
        "fnv1a_ch", 2, ["10.5.0.1:2003:a", "10.5.0.1:2103:b", "10.5.0.2:2003:c", "10.5.0.3:2003:d"],
    ),
}  # fmt: skip
NAMES_PER_LAYOUT = 5000
WALKS_PER_LAYOUT = 500  # full get_nodes walks compared (each is a list of every node)


@pytest.fixture(scope="module")
def carbon_answers() -> dict[str, dict[str, Any]]:
    """Carbon's own answers for every layout, from one run of its interpreter."""
    if not CARBON_PYTHON.exists():
        pytest.skip(f"{CARBON_PYTHON} is absent (tools/bootstrap installs carbon==1.1.10)")
    cases = [
        {"hash_type": mode, "replication_factor": factor, "destinations": dests,
         "names": make_names(NAMES_PER_LAYOUT, seed), "walks": WALKS_PER_LAYOUT}
        for seed, (mode, factor, dests) in enumerate(LAYOUTS.values())
    ]  # fmt: skip
    result = subprocess.run(
        [str(CARBON_PYTHON), "-I", str(VECTOR_SCRIPT)],  # -I: no script dir, no PYTHON* env
        input=json.dumps({"cases": cases}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        pytest.fail(f"{VECTOR_SCRIPT.name} failed:\n{result.stderr}")
    answers = json.loads(result.stdout)["cases"]
    for case, answer in zip(cases, answers, strict=True):
        answer["names"] = case["names"]
    return dict(zip(LAYOUTS, answers, strict=True))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_placement_matches_carbon_for_every_name(
    layout: str, carbon_answers: dict[str, dict[str, Any]]
) -> None:
    mode, factor, destinations = LAYOUTS[layout]
    answer = carbon_answers[layout]
    ring = Ring.from_nodes(nodes(*destinations), hash_type=mode, replication_factor=factor)
    # Our parser reads DESTINATIONS as carbon's parseDestination does.
    assert [triple(node) for node in ring.nodes] == answer["destinations"]
    # The whole continuum, collision bumps included, is carbon's.
    assert [[spot, node.host, node.instance] for spot, node in ring.points()] == answer["ring"]
    mismatched_first = mismatched_all = mismatched_walk = 0
    for name, placement in zip(answer["names"], answer["placements"], strict=True):
        mismatched_first += triple(ring.node_for(name)) != placement[0]
        mismatched_all += [triple(node) for node in ring.nodes_for(name)] != placement
    for name, walk in zip(answer["names"], answer["successors"], strict=False):
        mismatched_walk += [[node.host, node.instance] for node in ring.successors(name)] != walk
    assert len(answer["successors"]) == WALKS_PER_LAYOUT
    assert (mismatched_first, mismatched_all, mismatched_walk) == (0, 0, 0)


def test_carbon_point_keys_are_the_documented_ones(
    carbon_answers: dict[str, dict[str, Any]],
) -> None:
    assert carbon_answers["one_host_three_instances"]["replica_keys"] == [
        "('127.0.0.1', 'a'):0", "('127.0.0.1', 'a'):1", "('127.0.0.1', 'a'):2",
    ]  # fmt: skip
    assert carbon_answers["four_hosts_no_instance"]["replica_keys"][0] == "('10.0.0.1', None):0"
    assert carbon_answers["fnv1a_three_hosts"]["replica_keys"][:2] == ["0-a", "1-a"]


def test_collision_layout_really_bumps_points(carbon_answers: dict[str, dict[str, Any]]) -> None:
    # Without a bump the layout would not exercise the collision rule at all.
    assert carbon_answers["twelve_hosts_colliding"]["bumped"] >= 1
    spots = [entry[0] for entry in carbon_answers["twelve_hosts_colliding"]["ring"]]
    assert len(spots) == len(set(spots)) == 1200


@pytest.mark.parametrize("layout", ["r3_mixed_hosts", "r3_only_two_hosts"])
def test_replicas_land_on_distinct_hosts_capped_by_host_count(layout: str) -> None:
    mode, factor, destinations = LAYOUTS[layout]
    ring = Ring.from_nodes(nodes(*destinations), hash_type=mode, replication_factor=factor)
    expected = min(factor, len({node.host for node in ring.nodes}))
    for name in make_names(500, 99):
        replicas = ring.nodes_for(name)
        assert len({node.host for node in replicas}) == len(replicas) == expected
        assert replicas[0] == ring.node_for(name)


# --- graphite-web's published vectors (webapp/tests/test_render.py) -----------------------


def test_graphite_web_vectors() -> None:
    assert hash_position("hosts.worker1.cpu") == 64833
    assert hash_position("hosts.worker2.cpu") == 38509
    assert hash_position("hosts.worker1.cpu", "fnv1a_ch") == 59573
    assert hash_position("hosts.worker1.load", "fnv1a_ch") == 57163
    assert hash_position("a\xac\u1234\u20ac\U00008000", "fnv1a_ch") == 38658
    ring = Ring.from_nodes(
        nodes("127.0.0.1:2103:cache0", "127.0.0.1:2203:cache1", "127.0.0.1:2303:cache2")
    )
    assert str(ring.node_for("hosts.worker1.cpu")) == "127.0.0.1:2303:cache2"
    walk = [node.instance for node in ring.successors("hosts.worker1.cpu")]
    assert walk == ["cache2", "cache0", "cache1"]


def markdown_table(text: str, name: str) -> list[list[str]]:
    """The body rows of the table between ``<!-- name: begin -->`` and its end marker."""
    block = text.split(f"<!-- {name}: begin -->")[1].split(f"<!-- {name}: end -->")[0]
    rows = [line.strip().strip("|").split("|") for line in block.strip().splitlines()[2:]]
    return [[cell.strip().strip("`") for cell in row] for row in rows]


def test_docs_golden_tables_match_the_ring() -> None:
    text = (ROOT / "docs" / "ring.md").read_text(encoding="utf-8")
    layouts = {
        name: nodes(*spec.replace("`", "").split())
        for name, spec in markdown_table(text, "ring-layouts")
    }
    rows = markdown_table(text, "ring-vectors")
    assert len(rows) >= 10
    for layout, mode, factor, path, position, placed in rows:
        ring = Ring.from_nodes(layouts[layout], hash_type=mode, replication_factor=int(factor))
        assert hash_position(path, mode) == int(position), path
        assert ",".join(str(node) for node in ring.nodes_for(path)) == placed, path


# --- ketama: uhashring's own ring ---------------------------------------------------------


def test_ketama_matches_uhashring_itself() -> None:
    layout = nodes("10.6.0.1:2003:a", "10.6.0.1:2103:b", "10.6.0.2:2003", "[::1]:2003:z")
    ring = Ring.from_nodes(layout, hash_type="ketama", replication_factor=2)
    reference = HashRing(
        [node.identity_text for node in layout], hash_fn="ketama", vnodes=40, replicas=4
    )
    by_name = {node.identity_text: node for node in layout}
    for name in make_names(3000, 5):
        assert ring.node_for(name) == by_name[reference.get_node(name)]
        walk = tuple(by_name[conf["nodename"]] for conf in reference.range(name))
        assert ring.successors(name) == walk
        first_per_host: dict[str, CarbonNode] = {}
        for node in walk:
            first_per_host.setdefault(node.host, node)
        assert ring.nodes_for(name) == tuple(first_per_host.values())[:2]


# --- properties ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", RING_HASHES)
def test_adding_an_eleventh_node_moves_about_one_eleventh_onto_it(mode: str) -> None:
    # c00..c10: the new node sorts last, which jump_fnv1a_ch needs to move only 1/11.
    layout = [CarbonNode(f"10.7.0.{i + 1}", 2003, f"c{i:02d}") for i in range(11)]
    before = Ring.from_nodes(layout[:10], hash_type=mode)
    after = Ring.from_nodes(layout, hash_type=mode)
    names = make_names(10_000, 11)
    shares = collections.Counter(before.node_for(name) for name in names)
    assert all(0.6 < count / 1000 < 1.4 for count in shares.values()), shares
    moved = [name for name in names if before.node_for(name) != after.node_for(name)]
    assert 0.05 < len(moved) / len(names) < 0.14
    assert {after.node_for(name) for name in moved} == {layout[10]}


@pytest.mark.parametrize("mode", RING_HASHES)
def test_str_and_bytes_paths_place_alike(mode: str) -> None:
    layout = nodes("10.8.0.1:2003:a", "10.8.0.2:2003:b", "10.8.0.3:2003:c")
    ring = Ring.from_nodes(layout, hash_type=mode, replication_factor=2)
    for name in make_names(1000, 8):
        assert ring.node_for(name) == ring.node_for(name.encode())
        assert ring.nodes_for(name) == ring.nodes_for(name.encode())


def test_ring_is_an_immutable_snapshot_compared_by_config() -> None:
    layout = nodes("10.9.0.1:2003:a", "10.9.0.2:2003:b")
    ring = Ring.from_nodes(layout)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ring.nodes = ()  # type: ignore[misc]
    assert ring == Ring.from_nodes(list(layout))
    assert ring != Ring.from_nodes(layout, replication_factor=2)
    assert ring.nodes == tuple(layout)


def test_fingerprint_is_stable_and_sees_every_setting() -> None:
    layout = nodes("127.0.0.1:2103:cache0", "127.0.0.1:2203:cache1", "127.0.0.1:2303:cache2")
    ring = Ring.from_nodes(layout)
    recipe = "tallyd-ring/1\ncarbon_ch\n1\n" + "".join(f"{node}\n" for node in layout)
    assert ring.fingerprint() == hashlib.sha256(recipe.encode()).hexdigest()[:16]
    assert ring.fingerprint() == "ff7309761d10207b"  # pinned: other daemons compare it
    variants = [
        Ring.from_nodes(layout[::-1]),
        Ring.from_nodes(layout, hash_type="ketama"),
        Ring.from_nodes(layout, replication_factor=2),
        Ring.from_nodes(nodes("127.0.0.1:2104:cache0", "127.0.0.1:2203:cache1")),
    ]
    prints = {ring.fingerprint(), *(variant.fingerprint() for variant in variants)}
    assert len(prints) == 1 + len(variants)


# --- nodes: parsing and refusals ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "back"),
    [
        ("10.0.0.1:2003", CarbonNode("10.0.0.1", 2003), "10.0.0.1:2003"),
        ("10.0.0.1:2003:a", CarbonNode("10.0.0.1", 2003, "a"), "10.0.0.1:2003:a"),
        (" carbon.example.com:2004:7 ", CarbonNode("carbon.example.com", 2004, "7"), None),
        ("[::1]:2003", CarbonNode("::1", 2003), "[::1]:2003"),
        ("[2001:db8::1]:2004:cache-1", CarbonNode("2001:db8::1", 2004, "cache-1"), None),
        ("[fe80::1%eth0]:2003:a", CarbonNode("fe80::1%eth0", 2003, "a"), None),
    ],
)
def test_parse_carbon_node_accepts(text: str, expected: CarbonNode, back: str | None) -> None:
    node = parse_carbon_node(text)
    assert node == expected
    assert str(node) == (back or text.strip())
    assert node.identity == (expected.host, expected.instance)


@pytest.mark.parametrize(
    "text",
    [
        "", "host", "host:", "host:port", "host:0", "host:65536", "host:2003:", "host:2003:a:b",
        ":2003", "::1:2003", "[::1]2003", "[::1]:", "[carbon]:2003", "[zz::g]:2003",
        "ho st:2003", "host:-1", "host:\uff12\uff10\uff10\uff13", "[::1]:2003:a b",
        "a,b:2003", "host:2003:a,b",
    ],
)  # fmt: skip
def test_parse_carbon_node_refuses(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_carbon_node(text)
    assert caught.value.key == "carbon"
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], ()),
        (["10.0.0.1:2003:a"], (CarbonNode("10.0.0.1", 2003, "a"),)),
        ([CarbonNode("10.0.0.1", 2003, "a"), "10.0.0.2:2003"],
         (CarbonNode("10.0.0.1", 2003, "a"), CarbonNode("10.0.0.2", 2003))),
        (("[::1]:2003",), (CarbonNode("::1", 2003),)),
    ],
)
def test_parse_carbon_nodes_keeps_nodes_and_parses_text(
    values: list[object], expected: tuple[CarbonNode, ...]
) -> None:
    assert parse_carbon_nodes(values) == expected


@pytest.mark.parametrize("values", [[2003], ["10.0.0.1:2003", "10.0.0.1"]])
def test_parse_carbon_nodes_refuses_a_value_that_is_no_node(values: list[object]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_carbon_nodes(values)
    assert caught.value.key == "carbon"


hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}\.){0,3}[a-z0-9]{1,10}", fullmatch=True),
    st.ip_addresses().map(str),
)
instances = st.none() | st.from_regex(r"[A-Za-z0-9_.-]{1,16}", fullmatch=True)


@given(host=hosts, port=st.integers(1, 65535), instance=instances)
def test_str_of_a_node_parses_back_to_it(host: str, port: int, instance: str | None) -> None:
    node = CarbonNode(host, port, instance)
    assert parse_carbon_node(str(node)) == node


@pytest.mark.parametrize(
    ("texts", "options", "key"),
    [
        (["10.0.0.1:2003:a", "10.0.0.1:2004:a"], {}, "carbon"),  # the port is no identity
        (["10.0.0.1:2003", "10.0.0.1:2004"], {}, "carbon"),
        (["10.0.0.1:2003:a", "10.0.0.2:2003"], {"hash_type": "fnv1a_ch"}, "carbon"),
        (["10.0.0.1:2003:a", "10.0.0.2:2003:a"], {"hash_type": "fnv1a_ch"}, "carbon"),
        ([], {}, "carbon"),
        (["10.0.0.1:2003"], {"replication_factor": 0}, "replication_factor"),
        (["10.0.0.1:2003"], {"replication_factor": -1}, "replication_factor"),
        (["10.0.0.1:2003"], {"replication_factor": True}, "replication_factor"),
        (["10.0.0.1:2003"], {"hash_type": "mmh3_ch"}, "ring_hash"),
    ],
)
def test_from_nodes_refuses_bad_layouts(
    texts: list[str], options: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Ring.from_nodes(nodes(*texts), **options)
    assert caught.value.key == key


def test_replicas_beyond_the_host_count_are_capped_not_refused() -> None:
    ring = Ring.from_nodes(nodes("10.0.0.1:2003:a", "10.0.0.1:2004:b"), replication_factor=3)
    assert len(ring.nodes_for("any.path")) == 1
    assert len(ring.successors("any.path")) == 2
