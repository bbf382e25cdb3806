"""Worker ledgers: which worker owns a line, and the messages workers exchange.

With ``workers = W > 1`` an aggregator runs W processes that all read the same intake
sockets. A worker that reads a packet keeps the lines whose name it owns (H2, see
`common.shard.worker_index`) and forwards the others, batched, to their owners. So every
name is aggregated by exactly one worker, whichever worker read it.

Messages (Unix datagrams; the first byte says which):

* ``D`` + (sender, line count) + lines: forwarded lines, newline-separated, for the
  receiver to aggregate (the count travels in the header, so a message cut short is
  counted line for line);
* ``M`` + (sender, flush, packets, lines, bad_lines): "flush mark": the sender has forwarded
  everything it read before flush number ``flush`` (its boundary / the interval; whole-second
  timestamps cannot tell sub-second flushes apart), and this is its intake count since its
  previous mark;
* ``S`` + (sender, flush, names): after its swap, a worker's number of reported names
  (Etsy's ``numStats`` is the total over all workers, reported by worker 0).

Each flush is a barrier: a worker sends its mark to every peer, waits (boundedly) for
every peer's mark, then swaps. Channels between two workers are FIFO, so all lines a
peer read before its mark are in the interval; lines it sends after its mark wait at the
receiver until the receiver has swapped too, so they land in the next interval, the one
the sender counts them in. Worker 0 thus reports Etsy's internal counters exactly summed
over the workers, consistent with the lines of the same flush.

Every message is at most `MAX_MESSAGE_BYTES`: the sender cuts its batches into messages of
that size (`pack_data`) and the receiver reads into a buffer of that size, asking the kernel
for the real length (``MSG_TRUNC``), so a cut message cannot happen between two workers and
is counted, never parsed, if anything else sends one.

Pure: encoding and splitting only.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from common.protocol import (
    DEFAULT_KEY_CACHE_BYTES,
    KEY_CACHE_ENTRY_BYTES,
    LineParser,
    sanitize_key,
)
from common.shard import worker_index

DATA: Final = b"D"
MARK: Final = b"M"
STATS: Final = b"S"
_DATA: Final = struct.Struct("!HI")
#: Bytes before the lines of a data message (kind, sender, line count).
DATA_HEADER_BYTES: Final = 1 + _DATA.size
#: The largest exchange message, header included: the sender's limit and the receiver's
#: buffer. Room for two lines of the default ``max_line_bytes`` (64 KiB), and well below
#: the largest Unix datagram an unprivileged process can send with the default
#: ``net.core.wmem_max`` (212,992 bytes, doubled by the kernel, less 32: 425,952 bytes).
MAX_MESSAGE_BYTES: Final = 128 * 1024
_MARK: Final = struct.Struct("!HqQQQ")
_STATS: Final = struct.Struct("!HqQ")


def encode_data(sender: int, lines: list[bytes]) -> bytes:
    """One data message (the caller keeps it within `MAX_MESSAGE_BYTES`: `pack_data`)."""
    return DATA + _DATA.pack(sender, len(lines)) + b"\n".join(lines)


def pack_data(sender: int, lines: list[bytes],
              limit: int = MAX_MESSAGE_BYTES) -> tuple[list[bytes], list[bytes]]:
    """Data messages of at most ``limit`` bytes holding ``lines``, in order.

    Returns:
        ``(messages, oversized)``: a line that does not fit in a message of its own is
        not sent; it is returned in ``oversized`` for the caller to count.
    """
    payload = b"\n".join(lines)
    room = limit - DATA_HEADER_BYTES
    if len(payload) <= room:  # the usual case: one batch, one message
        return ([DATA + _DATA.pack(sender, len(lines)) + payload] if lines else []), []
    messages: list[bytes] = []
    oversized: list[bytes] = []
    start, end_of_payload = 0, len(payload)
    while start < end_of_payload:
        end = start + room
        if end >= end_of_payload:
            cut = end_of_payload
        else:
            cut = payload.rfind(b"\n", start, end + 1)  # payload[start:cut] fits
            if cut < 0:  # the first line alone is longer than a message
                cut = payload.find(b"\n", end)
                cut = end_of_payload if cut < 0 else cut
                oversized.append(payload[start:cut])
                start = cut + 1
                continue
        chunk = payload[start:cut]
        if chunk:
            messages.append(DATA + _DATA.pack(sender, chunk.count(b"\n") + 1) + chunk)
        start = cut + 1
    return messages, oversized


def decode_data(message: bytes) -> tuple[int, int, bytes]:
    """(sender, line count, newline-separated lines) of a data message.

    Raises:
        struct.error: the message is too short to be one.
    """
    sender, count = _DATA.unpack_from(message, 1)
    return sender, count, message[DATA_HEADER_BYTES:]


def data_line_count(message: bytes) -> int:
    """The line count in a data message's header (of a message that may be cut short).

    Raises:
        struct.error: not even the header is there.
    """
    return int(_DATA.unpack_from(message, 1)[1])


def split_gauges(lines: bytes) -> tuple[bytes, bytes]:
    """``(gauge lines, other lines)`` of a block of lines.

    Lines that belong to the next interval wait until the swap, but gauge values do not
    belong to an interval (the last value set is the gauge's value), so gauges are applied
    at once, in the order they were read, and only the rest waits.
    """
    gauges: list[bytes] = []
    other: list[bytes] = []
    for line in lines.split(b"\n"):
        if line:
            (gauges if b"|g" in line else other).append(line)
    return b"\n".join(gauges), b"\n".join(other)


def encode_mark(sender: int, flush: int, packets: int, lines: int, bad_lines: int) -> bytes:
    return MARK + _MARK.pack(sender, flush, packets, lines, bad_lines)


def decode_mark(message: bytes) -> tuple[int, int, int, int, int]:
    """(sender, flush, packets, lines, bad_lines) of a mark message."""
    return _MARK.unpack(message[1:])


def encode_stats(sender: int, flush: int, names: int) -> bytes:
    return STATS + _STATS.pack(sender, flush, names)


def decode_stats(message: bytes) -> tuple[int, int, int]:
    """(sender, flush, names) of a stats message."""
    return _STATS.unpack(message[1:])


class Splitter:
    """Decides which worker owns each line this worker reads, and batches the others.

    Two ways to use it:

    * the fused path (`Accumulator.ingest_sharded`, whenever own lines are not held by
      the barrier): the ledger's inline pass aggregates a line whose raw name is in the
      parser's key cache (only this worker's names ever get there: the router parses
      without caching), appends a line whose raw name is in `foreign` to that owner's
      list in `pending`, and hands any other line to `route`, which decides and learns;
    * `split` (while the barrier holds own lines): own lines joined into a block, the
      others by owner, for the barrier to hold what it must.

    Either way each peer's lines wait in ``pending[peer]`` (lists that are never
    replaced: `foreign` points at them) until the caller takes them (`take_pending`).

    Args:
        parser: this worker's parser (its key cache holds only this worker's names).
        index: this worker's number.
        workers: how many workers there are.
        cache_bytes: what the remembered owners may cost, by the parser's estimate of a
            key cache entry (names may be up to ``max_line_bytes`` long, so the bound is in
            bytes, as the parser's); past it the cache starts over.
        checked: aggregates one own line by the general path (`Accumulator.ingest_checked`);
            needed by `route` only.
    """

    def __init__(self, parser: LineParser, index: int, workers: int,
                 cache_bytes: int = DEFAULT_KEY_CACHE_BYTES, *,
                 checked: Callable[[bytes], None] | None = None) -> None:
        self.parser = parser
        self.index = index
        self.workers = workers
        self.cache_bytes = cache_bytes
        self.checked = checked
        #: What the entries of ``_owners`` and `foreign` cost (an int owner is a shared
        #: small int; a list is shared by all the names of its owner).
        self.cached_bytes = 0
        #: Graphite name -> owner.
        self._owners: dict[bytes, int] = {}
        #: Each peer's lines read here, in order, until `take_pending`.
        self.pending: dict[int, list[bytes]] = {
            w: [] for w in range(workers) if w != index}
        #: Raw name (a line's text before its first ``:``) of another worker's line -> that
        #: worker's list in `pending`.
        self.foreign: dict[bytes, list[bytes]] = {}

    def _charge(self, name: bytes) -> bool:
        """Account for one more cache entry; False: it does not fit even in an empty
        cache. When full, both caches start over."""
        cost = KEY_CACHE_ENTRY_BYTES + len(name)
        if self.cached_bytes + cost > self.cache_bytes:
            self._owners.clear()
            self.foreign.clear()
            self.cached_bytes = 0
            if cost > self.cache_bytes:
                return False
        self.cached_bytes += cost
        return True

    def owner(self, name: bytes) -> int:
        """The worker that owns Graphite name ``name`` (remembered)."""
        owner = self._owners.get(name)
        if owner is None:
            owner = worker_index(name, self.workers)
            if self._charge(name):
                self._owners[name] = owner
        return owner

    def owner_of_line(self, line: bytes) -> int:
        """The worker that aggregates ``line``: its name's owner, or this worker for a
        line that gives no sample (counted as bad where it was read). Parses without
        caching: the parser's key cache keeps only this worker's names."""
        parser = self.parser
        body, _, tagpart = line.partition(b"|#")
        raw = body.split(b":", 1)[0]
        if parser.keys.get(raw + b":" + tagpart if tagpart else raw) is not None:
            return self.index  # only own keys are cached
        samples, _ = parser.parse_line(line, remember=False)
        if not samples:
            return self.index
        name = samples[0][1].split(b";", 1)[0]
        return self.owner(name if parser.sanitize else sanitize_key(name))

    def _learn(self, line: bytes, owner: int) -> list[bytes]:
        """``owner``'s list; remembers the line's raw name as ``owner``'s when that name
        alone decides (no DogStatsD tags before its first ``:``)."""
        batch = self.pending[owner]
        raw = line.partition(b":")[0]
        if b"|#" not in raw and self._charge(raw):
            self.foreign[raw] = batch
        return batch

    def route(self, line: bytes) -> None:
        """The fused path's general case: aggregate ``line`` here if it is this
        worker's, else append it to its owner's pending lines."""
        owner = self.owner_of_line(line)
        if owner == self.index:
            assert self.checked is not None, "route needs the ledger's checked path"
            self.checked(line)
        else:
            self._learn(line, owner).append(line)

    def take_pending(self) -> list[tuple[int, list[bytes]]]:
        """The peers' lines read since the last call, by peer (emptied for the next)."""
        taken = []
        for peer, lines in self.pending.items():
            if lines:
                taken.append((peer, lines.copy()))
                lines.clear()
        return taken

    def split(self, packet: bytes) -> tuple[bytes, dict[int, list[bytes]], int]:
        """Returns ``(own lines, {worker: lines}, number of lines)``; the peers' lines
        are taken from `pending` (with any left there before).

        A line without a usable name stays here, where the parser will count it as bad.
        """
        cached_key = self.parser.cached_key
        batch_of = self.foreign.get
        me = self.index
        own: list[bytes] = []
        count = 0
        for line in packet.split(b"\n"):
            if not line:
                continue
            count += 1
            name = line.partition(b":")[0]
            if cached_key(name):
                own.append(line)
                continue
            batch = batch_of(name)
            if batch is None:
                owner = self.owner_of_line(line)
                if owner == me:
                    own.append(line)
                    continue
                batch = self._learn(line, owner)
            batch.append(line)
        return b"\n".join(own), dict(self.take_pending()), count
