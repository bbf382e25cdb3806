"""Tests for ringtool.ringfile: the ring file = the aggregator's ring keys + [agents]."""

from __future__ import annotations

import re
from typing import Any

import pytest

from common.errors import ConfigError
from common.ring import CarbonNode
from ringtool.ringfile import (
    ClusterTable,
    parse_agent_url,
    parse_cluster_table,
    parse_ring_file,
    union_agents,
)

A = CarbonNode("10.0.0.1", 2003, "a")
B = CarbonNode("10.0.0.2", 2003, "b")
V6 = CarbonNode("::1", 2003, "c")


def document(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "carbon": ["10.0.0.1:2003:a", "10.0.0.2:2003:b"],
        "agents": {"10.0.0.1:2003:a": "http://10.0.0.1:7070",
                   "10.0.0.2:2003:b": "http://10.0.0.2:7070/"},
    }
    doc.update(extra)
    return doc


def test_parse_ring_file_reads_ring_agents_and_token_file() -> None:
    ring_file = parse_ring_file(document(token_file="token", replication_factor=2,
                                         flush_interval=10), source="new.toml")
    assert ring_file.spec.carbon == (A, B)
    assert ring_file.ring.replication_factor == 2
    assert ring_file.agents == ((A, "http://10.0.0.1:7070"), (B, "http://10.0.0.2:7070"))
    assert ring_file.agent_url(B) == "http://10.0.0.2:7070"
    assert ring_file.token_file == "token"
    assert ring_file.source == "new.toml"


def test_parse_ring_file_matches_nodes_by_their_parsed_form() -> None:
    doc = {"carbon": [" [::1]:2003:c"], "agents": {"[::1]:2003:c ": "http://[::1]:7070"}}
    ring_file = parse_ring_file(doc, source="x")
    assert ring_file.agents == ((V6, "http://[::1]:7070"),)


def test_agent_url_of_a_node_not_in_the_ring_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        parse_ring_file(document(), source="x").agent_url(V6)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"agents": {}}, "carbon: x lists no carbon nodes"),
        (document(agents={"10.0.0.1:2003:a": "http://h:1"}),
         "agents: no agent for 10.0.0.2:2003:b"),
        (document(agents=None), "agents: no agent for 10.0.0.1:2003:a, 10.0.0.2:2003:b"),
        ({"carbon": ["10.0.0.1:2003:a"], "agents": "http://h:1"}, "agents: must be a table"),
        ({"carbon": ["10.0.0.1:2003:a"],
          "agents": {"10.0.0.1:2003:a": "http://h:1", "10.0.0.9:2003:z": "http://h:2"}},
         'agents."10.0.0.9:2003:z": 10.0.0.9:2003:z is not a node of carbon'),
        ({"carbon": ["10.0.0.1:2003:a"], "agents": {"nonsense": "http://h:1"}},
         'agents."nonsense": bad carbon node'),
        ({"carbon": ["10.0.0.1:2003:a"],
          "agents": {"10.0.0.1:2003:a": "http://h:1", " 10.0.0.1:2003:a": "http://h:2"}},
         "has two agents"),
        ({"carbon": ["10.0.0.1:2003:a"], "agents": {"10.0.0.1:2003:a": "https://h:1"}},
         "the agents speak http://HOST:PORT"),
        (document(token_file=""), "token_file: must be a file name"),
        (document(token_file=3), "token_file: must be a file name"),
        (document(carbon="10.0.0.1:2003:a"), "carbon: expected a list"),
        (document(ring_hash="nope"), "ring_hash"),
    ],
)
def test_parse_ring_file_refuses_naming_the_key(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_ring_file(doc, source="x")


@pytest.mark.parametrize("url", ["http://h", "h:7070", "ftp://h:1", "http://h:1/x",
                                 "http://h:1?q", "http://u:p@h:1", "http://h:99999", 7070, ""])
def test_parse_agent_url_refuses_anything_but_http_host_port(url: object) -> None:
    with pytest.raises(ConfigError, match="agents"):
        parse_agent_url(url, key="agents")


@pytest.mark.parametrize(("url", "expected"), [("http://h:1", "http://h:1"),
                                                (" http://h:1/ ", "http://h:1"),
                                                ("http://[::1]:7070", "http://[::1]:7070")])
def test_parse_agent_url_accepts_host_port(url: str, expected: str) -> None:
    assert parse_agent_url(url, key="agents") == expected


def test_union_agents_lists_new_nodes_then_the_drained_ones() -> None:
    c = CarbonNode("10.0.0.3", 2003, "c")
    a_moved = CarbonNode("10.0.0.1", 2103, "a")  # same identity, another port: NEW wins
    old = parse_ring_file({"carbon": [str(A), str(B)],
                           "agents": {str(A): "http://h:1", str(B): "http://h:2"}}, source="o")
    new = parse_ring_file({"carbon": [str(a_moved), str(c)],
                           "agents": {str(a_moved): "http://h:9", str(c): "http://h:3"}},
                          source="n")
    assert union_agents(old, new) == ((a_moved, "http://h:9"), (c, "http://h:3"),
                                      (B, "http://h:2"))


def test_the_cluster_table_lists_the_daemons_in_order() -> None:
    doc = document(cluster={"proxies": ["http://p1:8137/", "http://p2:8137"],
                            "aggregators": ["http://a2:8127", "http://a1:8127"],
                            "carbon_query": "http://graphite:8080"})
    table = parse_ring_file(doc, source="r.toml").cluster
    assert table.proxies == ("http://p1:8137", "http://p2:8137")
    assert table.aggregators == ("http://a2:8127", "http://a1:8127")
    assert table.carbon_query == "http://graphite:8080"
    assert parse_cluster_table({}) == ClusterTable()


@pytest.mark.parametrize(("table", "message"), [
    ([], "must be a table"),
    ({"proxy": []}, "unknown key(s) proxy"),
    ({"proxies": "http://p:1"}, "must be a list"),
    ({"aggregators": ["http://a:1", "http://a:1/"]}, "lists http://a:1 twice"),
    ({"aggregators": ["a:8127"]}, "bad aggregator URL"),
    ({"carbon_query": "graphite:8080"}, "graphite-web URL"),
])
def test_a_bad_cluster_table_is_refused_naming_the_key(table: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        parse_cluster_table({"cluster": table})
    assert str(caught.value.key).startswith("cluster")
