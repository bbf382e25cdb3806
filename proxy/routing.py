"""Routing and packing: which aggregator gets each line, and how lines travel in batches.

Routing (H1, `common.shard`): a line's aggregator is ``shard_index(name, N)``, where the
name is the line's Graphite name (`LineParser.name_of`: sanitised, tags excluded). That
name depends only on the bytes before the line's first ``:``, so the router remembers
``raw key -> index`` and, for a name it has seen, routing costs one ``partition`` and one
dict lookup. Lines are forwarded byte for byte (only an auth token is stripped).

A line is dropped and counted, never forwarded, when:

* it has no ``:`` or its name sanitises to nothing (``bad_line``: no aggregator could use it);
* it is longer than one batch may be (``line_too_long``: a UDP datagram never splits a line);
* auth is on and its token is missing, unknown or revoked (``auth``; `common.auth`).

Packing: each aggregator's pending lines are joined with ``\\n`` and cut, at line
boundaries only, into chunks of at most ``max_chunk_bytes`` (`pack_lines`), in arrival
order. The last chunk may be kept back (``keep_tail``) so that the next lines can fill it;
the shell sends it anyway after a few milliseconds.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs

from common.auth import TokenAuth
from common.protocol import LineParser
from common.shard import shard_index
from common.stats import counter

#: Distinct raw keys remembered before the cache is cleared (about 100 bytes each).
DEFAULT_ROUTE_CACHE_SIZE: Final = 500_000
#: The index cached for a key whose name is unusable.
BAD: Final = -1


def pack_lines(lines: Sequence[bytes], max_bytes: int) -> list[bytes]:
    """Join ``lines`` with newlines into chunks of at most ``max_bytes``, in order.

    Every element of ``lines`` must be non-empty and at most ``max_bytes`` long (an element
    may itself hold several newline-separated lines). Chunks carry no trailing newline;
    each one is filled greedily: it ends where the next line would not fit.
    """
    if not lines:
        return []
    blob = b"\n".join(lines)
    end = len(blob)
    if end <= max_bytes:
        return [blob]
    chunks = []
    start = 0
    rfind = blob.rfind
    while end - start > max_bytes:
        cut = rfind(b"\n", start, start + max_bytes + 1)
        if cut <= start:
            raise ValueError(f"an element is longer than {max_bytes} bytes")
        chunks.append(blob[start:cut])
        start = cut + 1
    chunks.append(blob[start:])
    return chunks


def count_lines(chunk: bytes) -> int:
    """The number of lines in a packed chunk."""
    return chunk.count(b"\n") + 1


@attrs.frozen
class RouterStatistics:
    """What the router received and refused, since start.

    ``received_lines`` counts every line that reached the proxy: the ones the intake refused
    (too long, cut) and the ones auth refused included, so that it equals the lines sent,
    plus the lines dropped (here and by each forwarder), plus the lines still buffered.
    """

    received_packets: int = counter(help="datagrams and stream blocks routed")
    received_lines: int = counter(help="lines received, refused ones included")
    dropped_lines: dict[str, int] = counter(
        help="lines refused before routing, by reason (bad_line: no usable name; "
             "line_too_long: longer than a batch; auth: no valid token)")


class Router:
    """Routes StatsD lines to ``n`` aggregators and packs them per aggregator.

    Args:
        n: the number of aggregators (the ordered list's length).
        max_chunk_bytes: the largest chunk handed to a forwarder (a UDP datagram's payload;
            for TCP, a write); longer lines are refused as ``line_too_long``.
        sanitize: whether the aggregators sanitise keys (``key_name_sanitize``): routing
            must hash the name they will write.
        auth: a `TokenAuth` when lines must carry a token.
        cache_size: see `DEFAULT_ROUTE_CACHE_SIZE`.
    """

    def __init__(self, n: int, *, max_chunk_bytes: int, sanitize: bool = True,
                 auth: TokenAuth | None = None,
                 cache_size: int = DEFAULT_ROUTE_CACHE_SIZE) -> None:
        if n < 1:
            raise ValueError("a router needs at least one aggregator")
        self.n = n
        self.max_chunk_bytes = max_chunk_bytes
        self.auth = auth
        #: Packets routed, lines past auth, and of those the ones refused (see `statistics`).
        self.packets = 0
        self.lines = 0
        self.bad_lines = 0
        self.too_long = 0
        #: Lines (or kept-back chunks) waiting, per aggregator, in arrival order.
        self.pending: list[list[bytes]] = [[] for _ in range(n)]
        self._parser = LineParser(sanitize=sanitize, cache_bytes=0)
        self._cache: dict[bytes, int] = {}
        self._cache_size = cache_size

    def index_of_key(self, raw_key: bytes) -> int:
        """The aggregator for the raw key (the bytes before the first ``:``); `BAD` if its
        name is unusable. Remembers the answer."""
        name = self._parser.name_of(raw_key)
        index = shard_index(name, self.n) if name else BAD
        if raw_key:  # never cached, so that empty lines always reach the slow path
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[raw_key] = index
        return index

    def index_of(self, line: bytes) -> int:
        """The aggregator for one line, or `BAD` (no ``:``, or no usable name)."""
        key, sep, _ = line.partition(b":")
        if not sep:
            return BAD
        index = self._cache.get(key)
        return self.index_of_key(key) if index is None else index

    def route(self, packet: bytes) -> None:
        """Route every line of ``packet`` (a datagram or a block of whole lines) onto
        `pending`. Never raises for bad input: refused lines are counted."""
        self.packets += 1
        lines = packet.split(b"\n") if self.auth is None else self.auth.filter_lines(packet)
        empty = lines.count(b"")
        self.lines += len(lines) - empty
        cache = self._cache
        pending = self.pending
        bad = 0
        if len(packet) <= self.max_chunk_bytes:
            for line in lines:
                key, sep, _ = line.partition(b":")
                index = cache.get(key)
                if index is None:
                    if not line:
                        continue
                    index = self.index_of_key(key)
                if index < 0 or not sep:
                    bad += 1
                    continue
                pending[index].append(line)
        else:
            limit = self.max_chunk_bytes
            for line in lines:
                if not line:
                    continue
                if len(line) > limit:
                    self.too_long += 1
                    continue
                index = self.index_of(line)
                if index < 0:
                    bad += 1
                    continue
                pending[index].append(line)
        self.bad_lines += bad

    def count_refused(self, reason: str, lines: int) -> None:
        """Lines the intake refused before routing (``line_too_long``, or cut: counted as
        ``bad_line``): received and dropped."""
        self.lines += lines
        if reason == "line_too_long":
            self.too_long += lines
        else:
            self.bad_lines += lines

    def statistics(self) -> RouterStatistics:
        auth = self.auth.statistics().refused if self.auth is not None else 0
        return RouterStatistics(
            received_packets=self.packets, received_lines=self.lines + auth,
            dropped_lines={"bad_line": self.bad_lines, "line_too_long": self.too_long,
                           "auth": auth})

    def take_chunks(self, index: int, *, keep_tail: bool) -> list[bytes]:
        """Pack aggregator ``index``'s pending lines and hand the chunks over.

        Args:
            keep_tail: keep the last chunk pending (it may still fill up); it stays the
                first element of ``pending[index]``.

        Returns:
            The chunks, in order; each at most ``max_chunk_bytes``.
        """
        lines = self.pending[index]
        if not lines:
            return []
        if keep_tail and len(lines) == 1:
            return []
        chunks = pack_lines(lines, self.max_chunk_bytes)
        if keep_tail:
            self.pending[index] = [chunks.pop()]
        else:
            self.pending[index] = []
        return chunks

    def has_pending(self) -> bool:
        """Whether any aggregator has lines or a kept-back chunk waiting."""
        return any(self.pending)
