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
from typing import Final

from common.protocol import DEFAULT_KEY_CACHE_BYTES, KEY_CACHE_ENTRY_BYTES, LineParser
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
    """Splits packets between the worker that read them and the names' owners.

    Args:
        parser: gives each line's Graphite name (and caches it).
        index: this worker's number.
        workers: how many workers there are.
        cache_bytes: what the remembered owners may cost, by the parser's estimate of a
            key cache entry (names may be up to ``max_line_bytes`` long, so the bound is in
            bytes, as the parser's); past it the cache starts over.
    """

    def __init__(self, parser: LineParser, index: int, workers: int,
                 cache_bytes: int = DEFAULT_KEY_CACHE_BYTES) -> None:
        self.parser = parser
        self.index = index
        self.workers = workers
        self.cache_bytes = cache_bytes
        #: What the entries of ``_owners`` cost (an int owner is a shared small int).
        self.cached_bytes = 0
        self._owners: dict[bytes, int] = {}

    def owner(self, name: bytes) -> int:
        owner = self._owners.get(name)
        if owner is None:
            owner = worker_index(name, self.workers)
            cost = KEY_CACHE_ENTRY_BYTES + len(name)
            if self.cached_bytes + cost > self.cache_bytes:
                self._owners.clear()
                self.cached_bytes = 0
                if cost > self.cache_bytes:
                    return owner
            self._owners[name] = owner
            self.cached_bytes += cost
        return owner

    def split(self, packet: bytes) -> tuple[bytes, dict[int, list[bytes]], int]:
        """Returns ``(own lines, {worker: lines}, number of lines)``.

        A line without a usable name stays here, where the parser will count it as bad.
        """
        name_of = self.parser.line_name
        owners = self._owners
        own: list[bytes] = []
        foreign: dict[int, list[bytes]] = {}
        count = 0
        me = self.index
        for line in packet.split(b"\n"):
            if not line:
                continue
            count += 1
            name = name_of(line)
            owner = owners.get(name)
            if owner is None:
                owner = self.owner(name) if name else me
            if owner == me:
                own.append(line)
            else:
                batch = foreign.get(owner)
                if batch is None:
                    foreign[owner] = [line]
                else:
                    batch.append(line)
        return b"\n".join(own), foreign, count
