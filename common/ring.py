"""The Carbon ring: which carbon-cache node(s) store a Graphite path.

Theory: each node owns many points on a circle of hash positions; a path hashes onto the
circle and belongs to the owner of the next point clockwise (wrapping). A node's points depend
only on that node, so adding one moves about 1/(N+1) of the paths, all onto the new node.

* ``carbon_ch`` (default) places exactly like carbon 1.1.10's ``ConsistentHashRing``, so we,
  carbon-relay and graphite-web agree: identity ``(host, instance)``, not the port; 100 points
  per node at ``str((host, instance)) + ":" + i``, position = first 2 md5 bytes, big-endian;
  nodes are added in configured order and a taken position moves up by one until free (so
  order matters); a path goes to the first point >= the md5 position of its UTF-8 bytes.
* ``fnv1a_ch``: keys ``"%d-%s" % (i, instance)`` (host not hashed: instances must exist and
  differ), FNV-1a 32 folded to 16 bits; same collision rule and lookup.
* ``ketama``: uhashring's ring keyed by `CarbonNode.identity_text`, 160 points per node; a path
  goes to the first point > the little-endian md5 prefix of its bytes (uhashring's rule).
* ``crelay_carbon_ch``, ``crelay_fnv1a_ch``, ``jump_fnv1a_ch``: carbon-c-relay 3.7.3's
  modes (no collision bump, its sort order, signed-byte FNV-1a, jump hash): `common.crelay`.

With replication factor R a path goes to the first R nodes clockwise that are on distinct
hosts (carbon's ``get_nodes`` under ``DIVERSE_REPLICAS = True``); in the c-relay modes to R
distinct members, as the relay places them. What of a tagged path is hashed is
``tag_key`` (`common.ringkey`), by default what the mode's relay hashes.

Design choice: carbon_ch and fnv1a_ch are a native port, not a uhashring adapter (see
docs/ring.md); ketama comes from uhashring. A Ring is an immutable snapshot (sorted
positions, each point's replica tuple precomputed): a lookup is one hash and one bisect
(jump_fnv1a_ch: one hash and a few jump steps). Pure: no I/O, clock or logging.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import attrs
from uhashring import HashRing  # type: ignore[import-untyped]

from . import crelay
from .errors import ConfigError
from .ringkey import RING_TAG_KEYS, tag_key_function

RING_HASHES: Final = ("carbon_ch", "fnv1a_ch", "ketama", *crelay.CRELAY_HASHES)
DEFAULT_RING_HASH: Final = "carbon_ch"
CARBON_POINTS_PER_NODE: Final = 100  # carbon's routers always use ConsistentHashRing's 100
# uhashring's ketama defaults, passed explicitly so that a changed default cannot move data.
KETAMA_VNODES: Final = 40
KETAMA_POINTS_PER_VNODE: Final = 4
# [IPV6]:PORT[:INSTANCE] or HOST:PORT[:INSTANCE]; CarbonNode's validators check the fields.
_NODE_RE: Final = re.compile(
    r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>[0-9]{1,5})(?::(?P<instance>.*))?"
)
_NODE_SYNTAX: Final = "expected HOST:PORT[:INSTANCE], IPv6 as [ADDR]:PORT[:INSTANCE]"
_HOST_RE: Final = re.compile(r"[^\s\[\],]+")
_INSTANCE_RE: Final = re.compile(r"[^\s:,]+")


def _check_host(_node: object, _attribute: object, host: str) -> None:
    if not isinstance(host, str) or not _HOST_RE.fullmatch(host):
        raise ConfigError(f"bad host {host!r}", key="carbon")
    if ":" in host:  # kept as written: carbon compares host strings, not addresses
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{host!r} has ':' but is no IPv6 address", key="carbon") from None


def _check_port(_node: object, _attribute: object, port: int) -> None:
    if type(port) is not int or not 1 <= port <= 65535:
        raise ConfigError(f"port {port!r} is not in 1..65535", key="carbon")


def _check_instance(_node: object, _attribute: object, instance: str | None) -> None:
    if instance is not None and not (
        isinstance(instance, str) and _INSTANCE_RE.fullmatch(instance)
    ):
        raise ConfigError(f"bad instance name {instance!r}", key="carbon")


@attrs.frozen
class CarbonNode:
    """One carbon-cache destination; ``str(node)`` gives ``host:port[:instance]`` back.

    Its ring identity is ``(host, instance)``: as in carbon, the port is not part of it.
    """

    host: str = attrs.field(validator=_check_host)
    port: int = attrs.field(validator=_check_port)
    instance: str | None = attrs.field(default=None, validator=_check_instance)

    @property
    def identity(self) -> tuple[str, str | None]:
        """The ``(host, instance)`` pair that places this node on the ring."""
        return (self.host, self.instance)

    @property
    def identity_text(self) -> str:
        """``host`` or ``host:instance`` (IPv6 in brackets): the node's ketama key."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.instance is None else f"{host}:{self.instance}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" + ("" if self.instance is None else f":{self.instance}")


def parse_carbon_node(text: str) -> CarbonNode:
    """Parse a carbon ``DESTINATIONS`` entry: ``HOST:PORT[:INSTANCE]`` or ``[ADDR]:PORT...``.

    Raises:
        ConfigError: (key ``carbon``) when the text is not such an entry.
    """
    match = _NODE_RE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"bad carbon node {text!r}: {_NODE_SYNTAX}", key="carbon")
    host = match["host"]
    if host is None and ":" not in match["v6"]:
        raise ConfigError(f"bad carbon node {text!r}: brackets are for IPv6", key="carbon")
    try:
        return CarbonNode(host or match["v6"], int(match["port"]), match["instance"])
    except ConfigError as exc:
        raise ConfigError(f"bad carbon node {text!r}: {exc.message}", key="carbon") from None


def parse_carbon_nodes(values: Iterable[object]) -> tuple[CarbonNode, ...]:
    """A ``carbon`` list setting's values as nodes: a node stays as it is, anything else is
    parsed from its text with `parse_carbon_node` (the converter for the ``carbon`` setting).

    Raises:
        ConfigError: (key ``carbon``) for a value that is not a node.
    """
    return tuple(value if isinstance(value, CarbonNode) else parse_carbon_node(str(value))
                 for value in values)


def _md5_position(data: bytes) -> int:
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return (digest[0] << 8) | digest[1]


def _fnv1a_position(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return (value >> 16) ^ (value & 0xFFFF)


def _ketama_position(data: bytes) -> int:
    return int.from_bytes(hashlib.md5(data, usedforsecurity=False).digest()[:4], "little")


def _ketama_search(data: bytes) -> int:  # ketama wants the first point > hash, i.e. >= hash + 1
    return _ketama_position(data) + 1


_POSITION: Final[dict[str, Callable[[bytes], int]]] = {
    "carbon_ch": _md5_position,
    "fnv1a_ch": _fnv1a_position,
    "ketama": _ketama_position,
    "crelay_carbon_ch": crelay.md5_position,
    "crelay_fnv1a_ch": crelay.fnv1a_position,
    "jump_fnv1a_ch": crelay.fnv1a64,
}
_SEARCH: Final = {**_POSITION, "ketama": _ketama_search}  # the value a lookup bisects for
#: Each mode's default ``tag_key``: what the relay of that mode hashes of a tagged path.
DEFAULT_TAG_KEYS: Final = {
    "carbon_ch": "as_received", "fnv1a_ch": "as_received", "ketama": "as_received",
    "crelay_carbon_ch": "name_only", "crelay_fnv1a_ch": "name_only", "jump_fnv1a_ch": "name_only",
}  # fmt: skip


def hash_position(key: str | bytes, hash_type: str = DEFAULT_RING_HASH) -> int:
    """The ring position of a path or point key (str is UTF-8 encoded): 16 bits for carbon_ch,
    fnv1a_ch and their crelay_ variants (carbon's ``carbonHash``), 32 bits for ketama, and
    for jump_fnv1a_ch the 64-bit FNV-1a that picks its bucket. The key is hashed as given
    (no tag rule)."""
    return _POSITION[hash_type](key.encode() if isinstance(key, str) else key)


def _carbon_points(nodes: Sequence[CarbonNode], hash_type: str) -> list[tuple[int, CarbonNode]]:
    position = _POSITION[hash_type]
    taken: set[int] = set()
    points = []
    for node in nodes:  # configured order decides who keeps a contested position
        for i in range(CARBON_POINTS_PER_NODE):
            key = f"{i}-{node.instance}" if hash_type == "fnv1a_ch" else f"{node.identity}:{i}"
            spot = position(key.encode())
            while spot in taken:
                spot += 1
            taken.add(spot)
            points.append((spot, node))
    points.sort(key=lambda point: point[0])
    return points


def _ketama_points(nodes: Sequence[CarbonNode]) -> list[tuple[int, CarbonNode]]:
    by_name = {node.identity_text: node for node in nodes}
    ring = HashRing(
        list(by_name), hash_fn="ketama", vnodes=KETAMA_VNODES, replicas=KETAMA_POINTS_PER_VNODE
    )
    # Colliding 32-bit points repeat in get_points() with one owner; keep each once.
    continuum: dict[int, Any] = dict(ring.get_points())
    return sorted((spot, by_name[name]) for spot, name in continuum.items())


def _replica_tuples(owners: Sequence[CarbonNode], factor: int) -> list[tuple[CarbonNode, ...]]:
    """For each point, where a path landing on it goes: distinct hosts, clockwise."""
    wanted = min(factor, len({node.host for node in owners}))
    shared: dict[tuple[CarbonNode, ...], tuple[CarbonNode, ...]] = {}
    result = []
    for start in range(len(owners)):
        chosen: dict[str, CarbonNode] = {}
        index = start
        while len(chosen) < wanted:
            chosen.setdefault(owners[index].host, owners[index])
            index = (index + 1) % len(owners)
        replicas = tuple(chosen.values())
        result.append(shared.setdefault(replicas, replicas))
    return result


def _check_unique(nodes: Sequence[CarbonNode], attribute: str, why: str) -> None:
    seen: dict[object, CarbonNode] = {}
    for node in nodes:
        value = getattr(node, attribute)
        if value in seen:
            raise ConfigError(f"{seen[value]} and {node} {why}", key="carbon")
        seen[value] = node


def _check_layout(nodes: Sequence[CarbonNode], hash_type: str, factor: int, tag_key: str) -> None:
    if hash_type not in RING_HASHES:
        raise ConfigError(f"{hash_type!r} is not one of {', '.join(RING_HASHES)}", key="ring_hash")
    if tag_key not in RING_TAG_KEYS:
        raise ConfigError(f"{tag_key!r} is not one of {', '.join(RING_TAG_KEYS)}",
                          key="ring_tag_key")
    if type(factor) is not int or factor < 1:
        raise ConfigError(f"{factor!r} is not an integer >= 1", key="replication_factor")
    if not nodes:
        raise ConfigError("the ring needs at least one carbon node", key="carbon")
    if hash_type in crelay.CRELAY_HASHES:
        crelay.check_members(nodes, hash_type, factor)
        return
    why = "are one ring node: the same (host, instance), as the port is not part of a node's "
    _check_unique(nodes, "identity", why + "identity; give them distinct instance names")
    if hash_type == "fnv1a_ch":
        for node in nodes:
            if node.instance is None:
                raise ConfigError(f"fnv1a_ch hashes instance names; {node} has none", key="carbon")
        why = "share an instance name, the only thing fnv1a_ch hashes, so all their points "
        _check_unique(nodes, "instance", why + "would collide; give them distinct instance names")


Place = Callable[[bytes], tuple[CarbonNode, ...]]  # a path's bytes -> its nodes


def _ring_place(positions: Sequence[int], replicas: Sequence[tuple[CarbonNode, ...]],
                search: Callable[[bytes], int]) -> Place:
    def place(data: bytes) -> tuple[CarbonNode, ...]:
        return replicas[bisect_left(positions, search(data))]
    return place


def _ring_walk(positions: Sequence[int], owners: tuple[CarbonNode, ...], count: int,
               search: Callable[[bytes], int]) -> Place:
    def walk(data: bytes) -> tuple[CarbonNode, ...]:
        start = bisect_left(positions, search(data))
        found: dict[CarbonNode, None] = {}
        for owner in owners[start:] + owners[:start]:
            found[owner] = None
            if len(found) == count:
                break
        return tuple(found)
    return walk


def _keyed(place: Place, key: Callable[[bytes], bytes] | None) -> Place:
    if key is None:
        return place
    return lambda data: place(key(data))


@attrs.frozen
class Ring:
    """An immutable ring snapshot, equal to another with the same mode, R, tag key and node
    list; a membership change builds a new one with `from_nodes`."""

    hash_type: str
    replication_factor: int
    nodes: tuple[CarbonNode, ...]
    tag_key: str
    # Sorted point positions and each point's owner (jump_fnv1a_ch: bucket numbers and the
    # members in bucket order); _place maps a path's bytes to its replicas, _walk to every
    # node in successor order.
    _positions: tuple[int, ...] = attrs.field(eq=False, repr=False)
    _owners: tuple[CarbonNode, ...] = attrs.field(eq=False, repr=False)
    _place: Place = attrs.field(eq=False, repr=False)
    _walk: Place = attrs.field(eq=False, repr=False)

    @classmethod
    def from_nodes(
        cls,
        nodes: Sequence[CarbonNode],
        *,
        hash_type: str = DEFAULT_RING_HASH,
        replication_factor: int = 1,
        tag_key: str | None = None,
    ) -> Ring:
        """Build the ring of ``nodes``, in configured order (which carbon_ch depends on).

        Args:
            tag_key: what of a tagged path is hashed (`common.ringkey`); None: the mode's
                relay's choice, `DEFAULT_TAG_KEYS`.

        Raises:
            ConfigError: for an unknown mode or tag key, R < 1, no nodes, two nodes with the
                same ``(host, instance)``, fnv1a_ch nodes without distinct instance names,
                or a layout carbon-c-relay refuses in its modes (`crelay.check_members`).
        """
        nodes = tuple(nodes)
        tag_key = DEFAULT_TAG_KEYS.get(hash_type, "as_received") if tag_key is None else tag_key
        _check_layout(nodes, hash_type, replication_factor, tag_key)
        key = tag_key_function(tag_key)
        if hash_type == "jump_fnv1a_ch":
            owners = crelay.jump_order(nodes)
            positions = tuple(range(len(owners)))
            place = crelay.jump_placer(nodes, replication_factor)
            walk = crelay.jump_placer(nodes, len(nodes))
        else:
            if hash_type == "ketama":
                points = _ketama_points(nodes)
            elif hash_type in crelay.CRELAY_HASHES:
                points = crelay.ring_points(nodes, hash_type)
            else:
                points = _carbon_points(nodes, hash_type)
            owners = tuple(node for _, node in points)
            if hash_type in crelay.CRELAY_HASHES:
                replicas = crelay.member_tuples(owners, replication_factor)
            else:
                replicas = _replica_tuples(owners, replication_factor)
            positions = tuple(spot for spot, _ in points)
            search = _SEARCH[hash_type]
            # One extra replica tuple, a copy of the first: a bisect past the top wraps.
            place = _ring_place(positions, (*replicas, replicas[0]), search)
            walk = _ring_walk(positions, owners, len(nodes), search)
        return cls(hash_type, replication_factor, nodes, tag_key, positions, owners,
                   _keyed(place, key), _keyed(walk, key))

    def node_for(self, path: str | bytes) -> CarbonNode:
        """The node that stores ``path`` (the first of `nodes_for`); str is UTF-8 encoded."""
        return self._place(path.encode() if isinstance(path, str) else path)[0]

    def nodes_for(self, path: str | bytes) -> tuple[CarbonNode, ...]:
        """The nodes that store ``path``, primary first: min(R, distinct hosts) of them in
        carbon's modes and ketama, R distinct members in the c-relay modes."""
        return self._place(path.encode() if isinstance(path, str) else path)

    def successors(self, path: str | bytes) -> tuple[CarbonNode, ...]:
        """Every node, in the order met walking clockwise from ``path``'s position (carbon's
        ``get_nodes``, before replication's distinct-host filter); jump_fnv1a_ch: the order
        its replica steps would pick every member in."""
        return self._walk(path.encode() if isinstance(path, str) else path)

    def points(self) -> tuple[tuple[int, CarbonNode], ...]:
        """The continuum: ``(position, owner)`` for every point, in position order
        (jump_fnv1a_ch: ``(bucket, member)`` in bucket order)."""
        return tuple(zip(self._positions, self._owners, strict=True))

    def fingerprint(self) -> str:
        """A short hex digest of mode, R, tag key and ordered nodes: daemons publish it so
        that diverging ring configs show. Recipe: the first 16 hex digits of the sha256 of
        ``"tallyd-ring/1\\n{hash_type}\\n{R}\\n"`` plus ``f"{node}\\n"`` for each node in
        order, plus ``f"tag_key={tag_key}\\n"`` when it is not the mode's default (so the
        fingerprints of rings with the default stay what they were)."""
        text = f"tallyd-ring/1\n{self.hash_type}\n{self.replication_factor}\n"
        text += "".join(f"{node}\n" for node in self.nodes)
        if self.tag_key != DEFAULT_TAG_KEYS[self.hash_type]:
            text += f"tag_key={self.tag_key}\n"
        return hashlib.sha256(text.encode()).hexdigest()[:16]
