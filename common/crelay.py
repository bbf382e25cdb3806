"""carbon-c-relay's placement rules, for the ``crelay_carbon_ch``, ``crelay_fnv1a_ch`` and
``jump_fnv1a_ch`` ring modes of `common.ring`.

The rules are those of carbon-c-relay 3.7.3 (``consistent-hash.c``, ``fnv1a.h``), checked
against Debian's ``carbon-c-relay`` binary (its test mode and a live relay):

* ``crelay_carbon_ch``: carbon's point keys (``('HOST', 'INSTANCE'):i`` or
  ``('HOST', None):i``, written with C's ``snprintf``, so always single quotes) and MD5
  positions, 100 points per member, but no +1 bump for a taken position: the points are
  sorted by (position, host strcmp, instance strcmp, instance-less last) and a position
  held by several points belongs to the first of them.
* ``crelay_fnv1a_ch``: keys ``"%d-%s" % (i, instance)``, or ``"%d-%s:%u" % (i, host,
  port)`` for a member without instance; 32-bit FNV-1a folded to 16 bits, over the bytes
  as C's ``char`` sees them (signed: a byte >= 0x80 is sign-extended before the XOR);
  sorted by (position, host strcmp, port), the first point of a position keeps it.
* ``jump_fnv1a_ch``: no points. The members are ordered by instance (numerically when both
  instances are whole decimal numbers, else strcmp), instance-less members after them in
  configured order; a path's 64-bit FNV-1a (signed bytes too) picks a bucket with the jump
  consistent hash of Lamping and Veach. Each further replica removes the chosen bucket
  (the last bucket takes its place) and re-mixes the hash with an xorshift and a multiply.

Replicas are distinct members (c-relay's servers), not distinct hosts as carbon's
``DIVERSE_REPLICAS``: two instances on one host can hold the same path. The relay refuses
a replication factor above the member count and more than 64 members, and so does tallyd.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from functools import cmp_to_key
from typing import Final, Protocol, TypeVar

from .errors import ConfigError

CRELAY_HASHES: Final = ("crelay_carbon_ch", "crelay_fnv1a_ch", "jump_fnv1a_ch")
CRELAY_POINTS_PER_MEMBER: Final = 100  # HASH_REPLICAS (jump_fnv1a_ch: one entry per member)
#: c-relay's CONN_DESTS_SIZE: a consistent-hash cluster of more members is refused.
MAX_MEMBERS: Final = 64
#: Point keys are written with snprintf into ``char buf[256]``: longer ones are cut.
MAX_KEY_BYTES: Final = 255

_MASK32: Final = 0xFFFFFFFF
_MASK64: Final = 0xFFFFFFFFFFFFFFFF
# ``(unsigned int)*p`` on a signed char: bytes >= 0x80 arrive sign-extended.
_SIGNED32: Final = tuple(byte if byte < 0x80 else byte | 0xFFFFFF00 for byte in range(256))
_SIGNED64: Final = tuple(byte if byte < 0x80 else byte | 0xFFFFFFFFFFFFFF00 for byte in range(256))
# What strtol(s, &end, 10) consumes whole: optional space and sign, then digits.
_DECIMAL_RE: Final = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


class Member(Protocol):
    """A ring member as c-relay sees it (`common.ring.CarbonNode` is one)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def instance(self) -> str | None: ...


M = TypeVar("M", bound=Member)


def fnv1a32(data: bytes) -> int:
    """c-relay's 32-bit FNV-1a of ``data`` (bytes >= 0x80 sign-extended, as its macro does)."""
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ _SIGNED32[byte]) * 0x01000193) & _MASK32
    return value


def fnv1a64(data: bytes) -> int:
    """c-relay's 64-bit FNV-1a of ``data`` (bytes >= 0x80 sign-extended): jump's input."""
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ _SIGNED64[byte]) * 0x100000001B3) & _MASK64
    return value


def fnv1a_position(data: bytes) -> int:
    """``crelay_fnv1a_ch``'s 16-bit position: `fnv1a32` folded, ``(h >> 16) ^ (h & 0xffff)``."""
    value = fnv1a32(data)
    return (value >> 16) ^ (value & 0xFFFF)


def md5_position(data: bytes) -> int:
    """``crelay_carbon_ch``'s 16-bit position: the first two MD5 bytes, big-endian."""
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return (digest[0] << 8) | digest[1]


def jump_bucket(key: int, buckets: int) -> int:
    """The jump consistent hash (Lamping and Veach) of the 64-bit ``key``: 0..buckets-1.

    The float arithmetic is C's double, which Python's float is, step for step.
    """
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & _MASK64
        jump = int((bucket + 1) * (2147483648.0 / ((key >> 33) + 1)))
    return bucket


def jump_walk(order: Sequence[M], key: int, count: int) -> tuple[M, ...]:
    """The first ``count`` members (at most all) that ``jump_fnv1a_ch`` gives a path whose
    `fnv1a64` is ``key``, over the members in c-relay's `jump_order`."""
    buckets = list(order)
    left = len(buckets)
    chosen: list[M] = []
    while left > 0:
        index = jump_bucket(key, left)
        chosen.append(buckets[index])
        if len(chosen) == count:
            break
        key ^= key >> 12  # xorshift, then a multiply: the next replica's input
        key ^= (key << 25) & _MASK64
        key ^= key >> 27
        key = (key * 2685821657736338717) & _MASK64
        left -= 1
        buckets[index] = buckets[left]  # the last bucket takes the chosen one's place
    return tuple(chosen)


def member_tuples(owners: Sequence[M], factor: int) -> list[tuple[M, ...]]:
    """For each point of a c-relay ring, where a path landing on it goes: the first
    ``factor`` distinct members clockwise (equal tuples shared)."""
    wanted = min(factor, len(set(owners)))  # a member without points cannot be met
    shared: dict[tuple[M, ...], tuple[M, ...]] = {}
    result = []
    for start in range(len(owners)):
        chosen: dict[M, None] = {}
        index = start
        while len(chosen) < wanted:
            chosen[owners[index]] = None
            index = (index + 1) % len(owners)
        replicas = tuple(chosen)
        result.append(shared.setdefault(replicas, replicas))
    return result


def jump_placer(members: Sequence[M], factor: int) -> Callable[[bytes], tuple[M, ...]]:
    """``jump_fnv1a_ch``'s lookup: a path's bytes -> its first ``factor`` members."""
    order = jump_order(members)

    def place(data: bytes) -> tuple[M, ...]:
        return jump_walk(order, fnv1a64(data), factor)
    return place


def _strcmp(left: str, right: str) -> int:
    a, b = left.encode(), right.encode()  # strcmp compares unsigned bytes
    return (a > b) - (a < b)


def _decimal(text: str) -> int | None:
    return int(text) if _DECIMAL_RE.fullmatch(text) else None


def _jump_compare(left: tuple[int, Member], right: tuple[int, Member]) -> int:
    (index_l, member_l), (index_r, member_r) = left, right
    if member_l.instance is None or member_r.instance is None:
        if member_l.instance is None and member_r.instance is None:
            return index_l - index_r  # instance-less members keep their configured order
        return 1 if member_l.instance is None else -1
    number_l, number_r = _decimal(member_l.instance), _decimal(member_r.instance)
    if number_l is not None and number_r is not None:
        return (number_l > number_r) - (number_l < number_r)
    return _strcmp(member_l.instance, member_r.instance)


def jump_order(members: Sequence[M]) -> tuple[M, ...]:
    """The members in ``jump_fnv1a_ch``'s bucket order (see the module docstring)."""
    indexed = sorted(enumerate(members), key=cmp_to_key(_jump_compare))
    return tuple(member for _, member in indexed)


def _carbon_key(member: Member, i: int) -> bytes:
    instance = "None" if member.instance is None else f"'{member.instance}'"
    return f"('{member.host}', {instance}):{i}".encode()[:MAX_KEY_BYTES]


def _fnv1a_key(member: Member, i: int) -> bytes:
    if member.instance is None:
        return f"{i}-{member.host}:{member.port}".encode()[:MAX_KEY_BYTES]
    return f"{i}-{member.instance}".encode()[:MAX_KEY_BYTES]


def ring_points(members: Sequence[M], hash_type: str) -> list[tuple[int, M]]:
    """The continuum of a c-relay ring mode: ``(position, member)`` sorted, each position once,
    owned by the first of its points in c-relay's order (the relay overwrites the others)."""
    points: list[tuple[int, tuple[bytes, int, bytes], M]] = []
    for member in members:
        tie: tuple[bytes, int, bytes]
        if hash_type == "crelay_carbon_ch":  # ties: host, instance, instance-less last
            tie = (member.host.encode(), int(member.instance is None),
                   (member.instance or "").encode())
            points += [(md5_position(_carbon_key(member, i)), tie, member)
                       for i in range(CRELAY_POINTS_PER_MEMBER)]
        else:  # ties: host, port
            tie = (member.host.encode(), member.port, b"")
            points += [(fnv1a_position(_fnv1a_key(member, i)), tie, member)
                       for i in range(CRELAY_POINTS_PER_MEMBER)]
    points.sort(key=lambda point: point[:2])
    continuum: dict[int, M] = {}
    for spot, _, member in points:
        continuum.setdefault(spot, member)
    return list(continuum.items())


def _refuse_repeats(members: Sequence[Member], what: str, values: list[object]) -> None:
    seen: dict[object, Member] = {}
    for member, value in zip(members, values, strict=True):
        if value is not None and value in seen:
            raise ConfigError(f"{seen[value]} and {member} {what}", key="carbon")
        seen.setdefault(value, member)


def check_members(members: Sequence[Member], hash_type: str, factor: int) -> None:
    """Refuse what carbon-c-relay refuses, and layouts whose order it leaves to chance.

    Raises:
        ConfigError: more than `MAX_MEMBERS` members, R above the member count, two members
            on one ``host:port`` (one server to the relay); for ``crelay_carbon_ch`` two
            with one (host, instance) (identical points); for ``crelay_fnv1a_ch`` a
            repeated instance name (the only thing it hashes); for ``jump_fnv1a_ch``
            instance names that do not sort to one strict order under c-relay's compare
            (equal, or numbers and strings mixed into a cycle: qsort would decide).
    """
    if len(members) > MAX_MEMBERS:
        raise ConfigError(f"carbon-c-relay takes at most {MAX_MEMBERS} members in a "
                          f"{hash_type} cluster, not {len(members)}", key="carbon")
    if factor > len(members):
        raise ConfigError(f"replication factor {factor} is more than the {len(members)} "
                          "member(s): carbon-c-relay refuses it", key="replication_factor")
    _refuse_repeats(members, "are one server to carbon-c-relay (same host:port)",
                    [(member.host, member.port) for member in members])
    if hash_type == "crelay_carbon_ch":
        _refuse_repeats(members, "have the same (host, instance): all their points would tie",
                        [(member.host, member.instance) for member in members])
    elif hash_type == "crelay_fnv1a_ch":
        _refuse_repeats(members, "share an instance name, the only thing crelay_fnv1a_ch "
                        "hashes for them: give them distinct instance names",
                        [member.instance for member in members])
    else:
        indexed = sorted(enumerate(members), key=cmp_to_key(_jump_compare))
        for i, left in enumerate(indexed):
            for right in indexed[i + 1:]:
                if _jump_compare(left, right) >= 0:
                    raise ConfigError(
                        f"instances {left[1].instance!r} and {right[1].instance!r} have no "
                        "order for jump_fnv1a_ch (equal, or numbers and names mixed): "
                        "carbon-c-relay's order would depend on its qsort", key="carbon")
