"""The ring file of ``tallyd-ring plan``, ``rebalance`` and ``check``.

A ring file is TOML: the aggregator's own ring keys ``carbon``, ``ring_hash`` and
``replication_factor`` (read by `ringtool.ringspec.parse_ring_spec`, so an aggregator's
config file is a ring file and its other keys are ignored), plus

* ``[agents]``: each node, written as in ``carbon``, mapped to the ``http://HOST:PORT`` URL of
  the ``tallyd-ring agent`` beside it. Every node of ``carbon`` needs one; an agent for a node
  that is not in ``carbon`` is an error too (a typo would otherwise leave a node without one).
* ``token_file`` (optional, top level): the file holding the cluster's agent token. A relative
  path is relative to the ring file's directory (resolved by the entry layer, which reads it).
* ``[cluster]`` (optional): the daemons ``tallyd-ring cluster`` reads, as the ``http://HOST:PORT``
  URLs of their HTTP admin: ``proxies = [...]``, ``aggregators = [...]`` (in the order of the
  proxies' ``aggregator`` list) and ``carbon_query`` (a graphite-web URL). `parse_cluster_table`
  reads it alone, so a file for the cluster command needs no ``[agents]``.

Nodes are matched by parsing both spellings (``carbon`` and the ``[agents]`` key) with
`common.ring.parse_carbon_node`, so spacing or IPv6 brackets written differently still match.

Pure: the file is read by the entry layer (`common.cli.load_toml`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from common.address import format_host_port, split_host_port
from common.errors import ConfigError
from common.ring import CarbonNode, Ring, parse_carbon_node

from .ringspec import RingSpec, parse_ring_spec

#: The keys of the ring file besides the aggregator's ring keys.
AGENTS_KEY: Final = "agents"
TOKEN_FILE_KEY: Final = "token_file"
CLUSTER_KEY: Final = "cluster"
#: The keys of the ``[cluster]`` table.
CLUSTER_KEYS: Final = ("proxies", "aggregators", "carbon_query")


@attrs.frozen
class ClusterTable:
    """The ``[cluster]`` table: the daemons' HTTP admin URLs, in order."""

    proxies: tuple[str, ...] = ()
    aggregators: tuple[str, ...] = ()
    carbon_query: str | None = None


@attrs.frozen
class RingFile:
    """A parsed ring file: the ring, where each node's agent listens, and the token file.

    Attributes:
        source: the file's name, for messages.
        spec: the ring settings (``carbon``, ``ring_hash``, ``replication_factor``).
        ring: the ring they build.
        agents: ``(node, url)`` for every node of ``spec.carbon``, in ring order.
        token_file: the ``token_file`` key as written, or None.
    """

    source: str
    spec: RingSpec
    ring: Ring
    agents: tuple[tuple[CarbonNode, str], ...]
    token_file: str | None = None
    cluster: ClusterTable = ClusterTable()

    def agent_url(self, node: CarbonNode) -> str:
        """The agent URL of ``node``.

        Raises:
            KeyError: for a node that is not in this ring.
        """
        for candidate, url in self.agents:
            if candidate == node:
                return url
        raise KeyError(node)


def parse_agent_url(text: object, *, key: str, what: str = "agent") -> str:
    """An agent URL (or another daemon's, named ``what``): ``http://HOST:PORT`` (IPv6 as
    ``http://[ADDR]:PORT``; a trailing ``/`` is dropped).

    Raises:
        ConfigError: (``key``) for anything else: another scheme, no port, a path or query.
    """
    if not isinstance(text, str):
        raise ConfigError(f"must be a string like \"http://HOST:PORT\", not {text!r}", key=key)
    url = text.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "http":
        raise ConfigError(f"bad {what} URL {text!r}: the {what}s speak http://HOST:PORT",
                          key=key)
    try:
        host, port, tail = split_host_port(rest, what=f"{what} URL", shown=text)
    except ConfigError as exc:
        raise ConfigError(exc.message, key=key) from None
    if tail or port == 0 or any(c in rest for c in "/?#@ "):
        raise ConfigError(f"bad {what} URL {text!r}: expected http://HOST:PORT only", key=key)
    return f"http://{format_host_port(host, port)}"


def parse_cluster_table(document: Mapping[str, Any]) -> ClusterTable:
    """The ``[cluster]`` table of ``document`` (an empty one when there is none).

    Raises:
        ConfigError: naming the key: not a table, an unknown key, a list that is not a list
            of ``http://HOST:PORT`` URLs (or names one twice), a bad ``carbon_query``.
    """
    raw = document.get(CLUSTER_KEY)
    if raw is None:
        return ClusterTable()
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a table: [cluster] proxies = [...] aggregators = [...]",
                          key=CLUSTER_KEY)
    unknown = sorted(set(raw) - set(CLUSTER_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(CLUSTER_KEYS)}", key=CLUSTER_KEY)
    lists: dict[str, tuple[str, ...]] = {}
    for name, what in (("proxies", "proxy"), ("aggregators", "aggregator")):
        key = f"{CLUSTER_KEY}.{name}"
        value = raw.get(name, [])
        if not isinstance(value, list):
            raise ConfigError(f"must be a list of \"http://HOST:PORT\", not {value!r}", key=key)
        urls = tuple(parse_agent_url(v, key=key, what=what) for v in value)
        twice = sorted({u for u in urls if urls.count(u) > 1})
        if twice:
            raise ConfigError(f"lists {', '.join(twice)} twice", key=key)
        lists[name] = urls
    query = raw.get("carbon_query")
    if query is not None:
        if not isinstance(query, str) or not query.startswith("http://"):
            raise ConfigError(f"must be a graphite-web URL http://HOST[:PORT][/PATH], not "
                              f"{query!r}", key=f"{CLUSTER_KEY}.carbon_query")
    return ClusterTable(proxies=lists["proxies"], aggregators=lists["aggregators"],
                        carbon_query=query)


def _parse_agents(raw: object, carbon: tuple[CarbonNode, ...]) -> tuple[tuple[CarbonNode, str],
                                                                        ...]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a table of node = \"http://HOST:PORT\"", key=AGENTS_KEY)
    urls: dict[CarbonNode, str] = {}
    for written, value in raw.items():
        key = f'{AGENTS_KEY}."{written}"'
        try:
            node = parse_carbon_node(str(written))
        except ConfigError as exc:
            raise ConfigError(exc.message, key=key) from None
        if node not in carbon:
            raise ConfigError(f"{node} is not a node of carbon ({', '.join(map(str, carbon))})",
                              key=key)
        if node in urls:
            raise ConfigError(f"{node} has two agents", key=key)
        urls[node] = parse_agent_url(value, key=key)
    missing = [str(node) for node in carbon if node not in urls]
    if missing:
        raise ConfigError(f"no agent for {', '.join(missing)}: every node of carbon needs "
                          "its agent's URL", key=AGENTS_KEY)
    return tuple((node, urls[node]) for node in carbon)


def parse_ring_file(document: Mapping[str, Any], *, source: str) -> RingFile:
    """The ring file in ``document`` (a parsed TOML file), named ``source`` in errors.

    Returns:
        The ring, its agents and the token file as written.

    Raises:
        ConfigError: naming the key at fault: a bad ring key, no carbon nodes, a layout the
            ring refuses, a node without an agent or an agent for no node, a bad URL, a
            ``token_file`` that is not a non-empty string, a bad ``[cluster]`` table.
    """
    spec = parse_ring_spec(document, source=source)
    if not spec.carbon:
        raise ConfigError(f"{source} lists no carbon nodes", key="carbon")
    ring = spec.build_ring()
    agents = _parse_agents(document.get(AGENTS_KEY), spec.carbon)
    token_file = document.get(TOKEN_FILE_KEY)
    if token_file is not None and (not isinstance(token_file, str) or not token_file.strip()):
        raise ConfigError(f"must be a file name, not {token_file!r}", key=TOKEN_FILE_KEY)
    return RingFile(source=source, spec=spec, ring=ring, agents=agents, token_file=token_file,
                    cluster=parse_cluster_table(document))


def union_agents(old: RingFile, new: RingFile) -> tuple[tuple[CarbonNode, str], ...]:
    """Every node of ``new`` and then every node only in ``old`` (the ones drained), each
    with its agent's URL, matched by ring identity ``(host, instance)``: a node in both is
    NEW's node and NEW's URL.

    Returns:
        ``(node, url)`` pairs, NEW's ring order first.
    """
    seen = {node.identity for node, _ in new.agents}
    return new.agents + tuple((node, url) for node, url in old.agents
                              if node.identity not in seen)
