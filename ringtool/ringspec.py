"""The ring a ``tallyd-ring`` command works on: its Carbon nodes, placement mode,
replication factor and tag key.

These are the aggregator's settings of the same names, declared once in `common.config`
(`carbon_setting`, `ring_hash_setting`, `replication_factor_setting`,
`ring_tag_key_setting`: a known mode and tag key and R >= 1 are checked there, as the
daemons check them) and read with the same machinery as the daemons' configs:
`parse_ring_spec` takes them from an aggregator's config document through
`common.config.config_from_mapping` (the document's other keys belong to the aggregator
and are ignored), and the entry layer lays the flags that were given over them with
`common.config.apply_arguments` (defaults < file < flags). The layout rules (distinct ring
nodes, instance names for ``fnv1a_ch``, at least one node) are the ring's own, checked once
by `common.ring.Ring.from_nodes` when `RingSpec.build_ring` builds it.

Pure: the file is read by the entry layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from common.config import (
    carbon_setting,
    config_from_mapping,
    replication_factor_setting,
    ring_hash_setting,
    ring_tag_key_setting,
)
from common.ring import DEFAULT_RING_HASH, CarbonNode, Ring


@attrs.frozen
class RingSpec:
    """The settings that place a path on the Carbon ring (empty ``carbon``: no ring yet)."""

    carbon: tuple[CarbonNode, ...] = carbon_setting(
        help="the ring nodes, in ring order: one or more, and repeatable, as for "
             "tallyd-aggregator (replaces the config file's list); paths go before it or "
             "after --")
    ring_hash: str = ring_hash_setting(
        help=f"placement mode (default: the config file's ring_hash, else {DEFAULT_RING_HASH})")
    replication_factor: int = replication_factor_setting(
        help="copies per path, on distinct hosts (c-relay modes: distinct members) (default: "
             "the config file's, else 1)")
    ring_tag_key: str | None = ring_tag_key_setting(
        help="what of a tagged path is hashed: as_received, name_only or normalized "
             "(default: the config file's, else the ring_hash mode's relay's choice)")

    def build_ring(self) -> Ring:
        """The ring these settings describe.

        Raises:
            ConfigError: for a layout `Ring.from_nodes` refuses (no nodes among them).
        """
        return Ring.from_nodes(self.carbon, hash_type=self.ring_hash,
                               replication_factor=self.replication_factor,
                               tag_key=self.ring_tag_key)


#: The keys of an aggregator's config document that `parse_ring_spec` reads.
RING_KEYS: Final = frozenset(field.name for field in attrs.fields(RingSpec))


def parse_ring_spec(document: Mapping[str, Any], *, source: str) -> RingSpec:
    """The ring settings of an aggregator's config document (a parsed TOML file), named
    ``source`` in errors; its other keys are ignored.

    Raises:
        ConfigError: for a ring key of the wrong type, or a node that does not parse.
    """
    ring_keys = {key: value for key, value in document.items() if key in RING_KEYS}
    return config_from_mapping(RingSpec, ring_keys, source=source)
