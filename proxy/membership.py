"""Membership: the ordered aggregator list, its fingerprint, and each member's up/down state.

The list is a cluster-wide fact. H1 is ``CRC-32(name) mod N``, so an aggregator's identity
is its *position*: the address behind a DNS name may change (it is re-resolved and followed)
without moving any name, and a member that is down is NEVER removed. Removing it would remap
almost every name mid-interval, so two aggregators would write the same Graphite series
(Etsy's proxy.js did that on every health flap). A down member's lines wait in a bounded
buffer, then are dropped and counted under its name; the others are unaffected.

The fingerprint lets operators find proxies that disagree: every proxy logs it at start
and reports it in admin ``stats`` (``proxy.membership.fingerprint``). Recipe: the first 16
hex digits of the SHA-256 of ``"tallyd-proxy/1\\n{hash}\\n"`` followed by
``"{host}:{port}\\n"`` for each aggregator in list order (IPv6 hosts in brackets, admin
ports excluded: they do not affect routing).

Pure: times come in as arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

import attrs

from common.address import format_host_port, split_host_port
from common.errors import ConfigError
from common.shard import SHARD_HASH
from common.stats import level, text

UP: Final = "up"
DOWN: Final = "down"
FINGERPRINT_VERSION: Final = "tallyd-proxy/1"


@attrs.frozen
class AggregatorSpec:
    """One aggregator as configured: ``HOST:PORT[:ADMIN_PORT]``.

    ``host`` may be a DNS name. ``admin_port``, when given, is probed with the management
    protocol's ``health`` command (an aggregator that answers ``health: down`` is
    draining: its lines are held, not sent).
    """

    host: str
    port: int
    admin_port: int | None = None

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)

    @property
    def spec(self) -> str:
        """The configured form, admin port included."""
        text = str(self)
        return text if self.admin_port is None else f"{text}:{self.admin_port}"


def parse_aggregator(text: str | AggregatorSpec) -> AggregatorSpec:
    """Parse ``HOST:PORT`` or ``HOST:PORT:ADMIN_PORT`` (``[V6]:PORT[:ADMIN]``).

    Raises:
        ConfigError: for a missing host, a port outside 1-65535, or trailing garbage.
    """
    if isinstance(text, AggregatorSpec):
        return text
    host, port, rest = split_host_port(str(text), what="aggregator")
    if port == 0:
        raise ConfigError(f"bad aggregator {text!r}: port 0 is not an address to send to")
    admin: int | None = None
    if rest:
        if not rest.isdigit() or not 1 <= int(rest) <= 65535:
            raise ConfigError(f"bad aggregator {text!r}: expected HOST:PORT[:ADMIN_PORT]")
        admin = int(rest)
    return AggregatorSpec(host=host, port=port, admin_port=admin)


def membership_fingerprint(aggregators: Sequence[AggregatorSpec],
                           hash_mode: str = SHARD_HASH) -> str:
    """The fingerprint of an ordered aggregator list and hash mode (module docstring)."""
    text = f"{FINGERPRINT_VERSION}\n{hash_mode}\n"
    text += "".join(f"{a}\n" for a in aggregators)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@attrs.frozen
class MemberState:
    """One aggregator's condition at one moment, as the proxy sees it (a new value replaces
    it on every change, so a reader always holds a consistent snapshot)."""

    state: str = UP
    reason: str = ""
    since: float = 0.0
    failures: int = 0
    transitions: int = 0
    address: str = ""


@attrs.frozen
class MembershipStatistics:
    """The aggregator list in force."""

    fingerprint: str = text(help="the fingerprint of the ordered list and the hash mode")
    hash_mode: str = text(help="the H1 hash mode")
    aggregators: int = level(help="how many aggregators the list holds")


class Membership:
    """The ordered list plus one `MemberState` per position.

    Args:
        aggregators: the ordered list (at least one).
        hash_mode: the H1 mode (part of the fingerprint).
        now: the current time (seconds, any clock), for ``since``.

    Raises:
        ConfigError: for an empty list or an aggregator listed twice.
    """

    def __init__(self, aggregators: Sequence[AggregatorSpec], *,
                 hash_mode: str = SHARD_HASH, now: float = 0.0) -> None:
        if not aggregators:
            raise ConfigError("at least one aggregator is required", key="aggregator")
        seen = [str(a) for a in aggregators]
        dupes = sorted({a for a in seen if seen.count(a) > 1})
        if dupes:
            raise ConfigError(f"aggregator(s) listed twice: {', '.join(dupes)} (each position "
                              "is a shard; list an aggregator once)", key="aggregator")
        self.aggregators = tuple(aggregators)
        self.hash_mode = hash_mode
        self.fingerprint = membership_fingerprint(self.aggregators, hash_mode)
        self.states = [MemberState(since=now) for _ in self.aggregators]

    def __len__(self) -> int:
        return len(self.aggregators)

    def is_up(self, index: int) -> bool:
        return self.states[index].state == UP

    def mark_down(self, index: int, reason: str, now: float) -> bool:
        """Record a failure of member ``index``.

        Returns:
            True when this changed its state from up to down (log it once).
        """
        member = self.states[index]
        if member.state == DOWN:
            self.states[index] = attrs.evolve(member, failures=member.failures + 1,
                                              reason=reason)
            return False
        self.states[index] = attrs.evolve(member, state=DOWN, reason=reason, since=now,
                                          failures=member.failures + 1,
                                          transitions=member.transitions + 1)
        return True

    def mark_up(self, index: int, now: float) -> bool:
        """Record a success of member ``index``; True when it was down until now."""
        member = self.states[index]
        if member.state == UP:
            if member.failures:
                self.states[index] = attrs.evolve(member, failures=0)
            return False
        self.states[index] = attrs.evolve(member, state=UP, reason="", since=now, failures=0,
                                          transitions=member.transitions + 1)
        return True

    def set_address(self, index: int, address: str) -> bool:
        """Record the address a member's name resolved to; True if it changed."""
        member = self.states[index]
        if member.address == address:
            return False
        self.states[index] = attrs.evolve(member, address=address)
        return True

    def down_members(self) -> list[int]:
        return [i for i, m in enumerate(self.states) if m.state == DOWN]

    def statistics(self) -> MembershipStatistics:
        return MembershipStatistics(fingerprint=self.fingerprint, hash_mode=self.hash_mode,
                                    aggregators=len(self.aggregators))
