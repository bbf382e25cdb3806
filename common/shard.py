"""Sharding hashes: which aggregator (H1) and which worker (H2) owns a metric name.

Both hashes take the metric's *Graphite name*: the key as it will be written to Graphite,
after Etsy's sanitising, without tags (`common.protocol.LineParser.name_of`). So ``a b``,
``a_b`` and ``a\\tb`` (one Graphite path) go to one owner, and every tag variant of a
series goes to the same owner as the series itself.

H1, proxy -> aggregator (``shard_index``)
    ``CRC-32(name) mod N``, where CRC-32 is the common ISO-HDLC CRC used by zlib, gzip, PNG
    and Ethernet: reflected polynomial 0xEDB88320, initial value 0xFFFFFFFF, final XOR
    0xFFFFFFFF, over the name's bytes (ASCII after sanitising; UTF-8 in general), read as
    an unsigned 32-bit integer. N is the length of the ordered aggregator list and the
    result is the position in that list. No salt, no seed, no process state: every
    implementation in every language gets the same answer (Python: ``zlib.crc32``; Go:
    ``hash/crc32.ChecksumIEEE``; Java: ``java.util.zip.CRC32``; shell: ``gzip -c | tail -c8``).
    Example: ``CRC-32(b"api.requests") = 0x4F66CB48``, so with N = 7 it goes to 0x4F66CB48
    mod 7 = 5 (`GOLDEN_SHARD_VECTORS` has more).

H2, aggregator -> worker (``worker_index``)
    ``BLAKE2b-64(name) mod W``: BLAKE2b with an 8-byte digest (digest_size=8, no key, no
    salt, no personalisation), the digest read as a big-endian unsigned 64-bit integer.
    It must not be H1 or anything derived from it: were H2 = H1 with N == W, every name
    reaching aggregator k would land on its worker k and the other workers would idle.
    A CRC with another initial value is *not* independent either (for names of equal
    length it differs from H1 by a constant XOR), hence a different hash family.

Why CRC-32 for H1: it is specified to the bit, implemented in C in every standard library
(about 0.1 us per name here), and for the modulo of small N it spreads real metric names
evenly (tests/unit/test_shard.py measures it). It is not collision resistant, which
sharding does not need.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Final

#: The one H1 mode. It is part of the membership fingerprint, so a future mode can be
#: introduced without two proxies silently disagreeing.
SHARD_HASH: Final = "crc32"

#: The one H2 mode, as the aggregator's management command ``workers`` names it: a sender
#: that does not implement this hash sends to the aggregator's main port instead.
WORKER_HASH: Final = "blake2b64"

#: Golden vectors for H1: (name, N, index). Another implementation must reproduce them.
GOLDEN_SHARD_VECTORS: Final[tuple[tuple[bytes, int, int], ...]] = (
    # CRC-32 = 0x4F66CB48
    (b"api.requests", 2, 0), (b"api.requests", 3, 0),
    (b"api.requests", 5, 1), (b"api.requests", 7, 5),
    # CRC-32 = 0xDCF2FBFC
    (b"stats.timers.db.query", 2, 0), (b"stats.timers.db.query", 3, 2),
    (b"stats.timers.db.query", 5, 0), (b"stats.timers.db.query", 7, 0),
    # CRC-32 = 0x46A563A7
    (b"hosts.web-01.cpu.load", 2, 1), (b"hosts.web-01.cpu.load", 3, 0),
    (b"hosts.web-01.cpu.load", 5, 1), (b"hosts.web-01.cpu.load", 7, 4),
    # CRC-32 = 0xE8B7BE43
    (b"a", 2, 1), (b"a", 3, 0),
    (b"a", 5, 2), (b"a", 7, 4),
    # CRC-32 = 0xF8C5E91A
    (b"bench.m0", 2, 0), (b"bench.m0", 3, 2),
    (b"bench.m0", 5, 4), (b"bench.m0", 7, 4),
    # CRC-32 = 0x00000000
    (b"", 1, 0), (b"", 3, 0),
)

#: Golden vectors for H2: (name, W, worker).
GOLDEN_WORKER_VECTORS: Final[tuple[tuple[bytes, int, int], ...]] = (
    # BLAKE2b-64 = 0x638C0C103C0DD2A1
    (b"api.requests", 2, 1), (b"api.requests", 4, 1),
    (b"api.requests", 8, 1),
    # BLAKE2b-64 = 0x1C51CA0973EB3183
    (b"stats.timers.db.query", 2, 1), (b"stats.timers.db.query", 4, 3),
    (b"stats.timers.db.query", 8, 3),
    # BLAKE2b-64 = 0x56C6FCB8957A17D2
    (b"hosts.web-01.cpu.load", 2, 0), (b"hosts.web-01.cpu.load", 4, 2),
    (b"hosts.web-01.cpu.load", 8, 2),
    # BLAKE2b-64 = 0x40F89E395B66422F
    (b"a", 2, 1), (b"a", 4, 3),
    (b"a", 8, 7),
    # BLAKE2b-64 = 0xA3FE9F1401073132
    (b"bench.m0", 2, 0), (b"bench.m0", 4, 2),
    (b"bench.m0", 8, 2),
)


def shard_hash(name: bytes) -> int:
    """H1's 32-bit value for ``name``: CRC-32 (ISO-HDLC, as zlib), unsigned."""
    return zlib.crc32(name)


def shard_index(name: bytes, n: int) -> int:
    """The aggregator that owns ``name``: its position in an ordered list of ``n``.

    Args:
        name: the Graphite name (sanitised, tags excluded), as bytes.
        n: the number of aggregators (at least 1).

    Returns:
        ``CRC-32(name) % n``, in ``range(n)``.

    Raises:
        ValueError: if ``n`` is below 1.
    """
    if n < 1:
        raise ValueError(f"need at least one aggregator, got {n}")
    return zlib.crc32(name) % n


def worker_hash(name: bytes) -> int:
    """H2's 64-bit value for ``name``: BLAKE2b with an 8-byte digest, big-endian."""
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big")


def worker_index(name: bytes, w: int) -> int:
    """The worker ledger that owns ``name`` inside one aggregator of ``w`` workers.

    Raises:
        ValueError: if ``w`` is below 1.
    """
    if w < 1:
        raise ValueError(f"need at least one worker, got {w}")
    return worker_hash(name) % w
