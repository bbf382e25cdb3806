"""Routing and packing: which aggregator gets each line, and how lines travel in batches.

Routing (H1, `common.shard`): a line's aggregator is ``shard_index(name, N)``, where the
name is the line's Graphite name (`LineParser.name_of`: sanitised, tags excluded); when
that aggregator announced W workers with ports of their own (`Router.set_workers`), H2,
``worker_index(name, W)``, picks the worker too. The name depends only on the bytes before
the line's first ``:``, so the router remembers ``raw key -> destination`` and, for a name
it has seen, routing costs one ``partition``, one dict lookup and one ``append``. A batch
of datagrams is routed as one joined block (`Router.route_many`). Lines are forwarded byte
for byte (only an auth token is stripped).

A line is dropped and counted, never forwarded, when:

* it has no ``:`` or its name sanitises to nothing (``bad_line``: no aggregator could use it);
* it is longer than one batch may be (``line_too_long``: a UDP datagram never splits a line);
* auth is on and its token is missing, unknown or revoked (``auth``; `common.auth`).

Packing: each destination's pending lines are joined with ``\\n`` and cut, at line
boundaries only, into chunks of at most ``max_chunk_bytes`` (`pack_lines`), in arrival
order. The last chunk may be kept back (``keep_tail``) so that the next lines can fill it;
the shell sends it anyway after a few milliseconds.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import attrs

from common.auth import TokenAuth
from common.protocol import LineParser
from common.shard import shard_index, worker_index
from common.stats import counter

#: Distinct raw keys remembered before the cache is cleared (about 100 bytes each).
DEFAULT_ROUTE_CACHE_SIZE: Final = 500_000
#: The index returned for a key whose name is unusable.
BAD: Final = -1
#: The "worker" of a destination that is an aggregator's main port (no worker ports known).
MAIN: Final = -1


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
    """Routes StatsD lines to ``n`` aggregators (and their workers) and packs them.

    Every line goes to a *destination*: aggregator ``a`` (H1), and within it, when the
    aggregator advertised its workers' ports (`set_workers`), worker
    ``worker_index(name, W)`` (H2); otherwise the aggregator's main port (`MAIN`). Each
    destination has its own list in `pending`; `destinations` says whose it is. With no
    worker ports known, destination ``a`` is aggregator ``a``.

    The route cache maps a raw key to the ``append`` of its destination's pending list (or
    of the list of bad lines), so routing a known name is one ``partition``, one dict
    lookup and one call; `set_workers` clears it.

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
        #: The W each aggregator's lines are spread over (0: its main port).
        self.workers = [0] * n
        #: Per destination: (aggregator, worker or `MAIN`), and the lines (or kept-back
        #: chunks) waiting, in arrival order. Each list is cleared in place, never replaced,
        #: except by `set_workers` (the cache holds their ``append``).
        self.destinations: list[tuple[int, int]] = [(a, MAIN) for a in range(n)]
        self.pending: list[list[bytes]] = [[] for _ in range(n)]
        self._first = list(range(n))  # each aggregator's first destination
        self._bad: list[bytes] = []  # lines of keys without a usable name, counted then cleared
        self._parser = LineParser(sanitize=sanitize, cache_bytes=0)
        self._cache: dict[bytes, Callable[[bytes], None]] = {}
        self._cache_size = cache_size

    # -- destinations ---------------------------------------------------------------------

    def set_workers(self, aggregator: int, workers: int) -> list[tuple[int, list[bytes]]]:
        """Spread ``aggregator``'s lines over ``workers`` worker destinations from now on
        (0: its main port). Its pending lines are packed and returned first, as
        ``(worker or MAIN, chunks)``: they go where they were batched for."""
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, got {workers}")
        if workers == self.workers[aggregator]:
            return []
        first = self._first[aggregator]
        old = [(worker, self.take_chunks(first + i, keep_tail=False))
               for i, (_, worker) in enumerate(self._destinations_of(aggregator))]
        self.workers[aggregator] = workers
        kept = {dest: lines for dest, lines in zip(self.destinations, self.pending, strict=True)}
        self.destinations = [(a, w) for a in range(self.n)
                             for w in (range(self.workers[a]) if self.workers[a] else (MAIN,))]
        self.pending = [kept.get(dest, []) for dest in self.destinations]
        self._first = [self.destinations.index((a, 0 if self.workers[a] else MAIN))
                       for a in range(self.n)]
        self._cache.clear()
        return [(worker, chunks) for worker, chunks in old if chunks]

    def reshard(self, n: int) -> None:
        """Route to ``n`` aggregators from now on (the list changed), each on its main port
        until `set_workers` says otherwise. Every pending line must have been taken
        (a switch dispatches them first); the counters carry on."""
        if n < 1:
            raise ValueError("a router needs at least one aggregator")
        if self.has_pending():
            raise ValueError("reshard with lines pending: take them first")
        self.n = n
        self.workers = [0] * n
        self.destinations = [(a, MAIN) for a in range(n)]
        self.pending = [[] for _ in range(n)]
        self._first = list(range(n))
        self._cache.clear()

    def _destinations_of(self, aggregator: int) -> list[tuple[int, int]]:
        return [d for d in self.destinations if d[0] == aggregator]

    def index_of_key(self, raw_key: bytes) -> int:
        """The aggregator for the raw key (the bytes before the first ``:``); `BAD` if its
        name is unusable."""
        name = self._parser.name_of(raw_key)
        return shard_index(name, self.n) if name else BAD

    def destination_of_key(self, raw_key: bytes) -> int:
        """The destination (index into `pending`) for the raw key; `BAD` if unusable."""
        name = self._parser.name_of(raw_key)
        if not name:
            return BAD
        aggregator = shard_index(name, self.n)
        workers = self.workers[aggregator]
        first = self._first[aggregator]
        return first + worker_index(name, workers) if workers else first

    def worker_of_chunk(self, aggregator: int, chunk: bytes) -> int:
        """The worker (or `MAIN`) that owns the first line of a packed chunk of
        ``aggregator``'s, under the worker count in force now (a queued chunk's lines may
        go to any worker of their aggregator: the aggregator re-checks)."""
        workers = self.workers[aggregator]
        if not workers:
            return MAIN
        name = self._parser.name_of(chunk[:max(chunk.find(b":"), 0)])
        return worker_index(name, workers) if name else 0

    def index_of(self, line: bytes) -> int:
        """The aggregator for one line, or `BAD` (no ``:``, or no usable name)."""
        key, sep, _ = line.partition(b":")
        if not sep:
            return BAD
        return self.index_of_key(key)

    def _learn(self, raw_key: bytes) -> Callable[[bytes], None]:
        """The ``append`` for the raw key's destination, remembered in the cache."""
        dest = self.destination_of_key(raw_key)
        append = self._bad.append if dest < 0 else self.pending[dest].append
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[raw_key] = append
        return append

    # -- routing --------------------------------------------------------------------------

    def route_many(self, packets: list[bytes]) -> None:
        """Route every line of ``packets`` (datagrams) onto `pending`: joined, so a
        datagram costs one ``join`` step rather than a call (and datagrams of one line
        each are their own lines). Never raises for bad input."""
        if not packets:
            return
        self.packets += len(packets)
        short = max(map(len, packets)) <= self.max_chunk_bytes
        blob = b"\n".join(packets) if len(packets) > 1 else packets[0]
        if short and self.auth is None and blob.count(b"\n") == len(packets) - 1:
            self._route_lines(packets)  # one line per datagram: no split needed
        else:
            self._route_blob(blob, short=short)

    def route(self, packet: bytes) -> None:
        """Route every line of ``packet`` (a datagram or a block of whole lines) onto
        `pending`. Never raises for bad input: refused lines are counted."""
        self.packets += 1
        self._route_blob(packet, short=len(packet) <= self.max_chunk_bytes)

    def _route_blob(self, blob: bytes, *, short: bool) -> None:
        """Route the lines of ``blob``; ``short``: none can be longer than a chunk."""
        lines = blob.split(b"\n") if self.auth is None else self.auth.filter_lines(blob)
        if not short and lines and max(map(len, lines)) > self.max_chunk_bytes:
            limit = self.max_chunk_bytes
            fitting = [line for line in lines if len(line) <= limit]
            self.too_long += len(lines) - len(fitting)
            self.lines += len(lines) - len(fitting)
            lines = fitting
        self._route_lines(lines)

    def _route_lines(self, lines: list[bytes]) -> None:
        """Route lines, each at most a chunk long, past auth."""
        empty = lines.count(b"")
        self.lines += len(lines) - empty
        cache = self._cache
        no_colon = 0
        lines_left = iter(lines)
        while True:
            try:
                for line in lines_left:
                    key, sep, _ = line.partition(b":")
                    if sep:
                        cache[key](line)
                    else:
                        no_colon += 1
                break
            except KeyError:
                self._learn(key)(line)
        bad = self._bad
        self.bad_lines += no_colon - empty + len(bad)
        bad.clear()

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
        """Pack destination ``index``'s pending lines and hand the chunks over.

        Args:
            keep_tail: keep the last chunk pending (it may still fill up); it stays the
                first element of ``pending[index]``.

        Returns:
            The chunks, in order; each at most ``max_chunk_bytes``.
        """
        lines = self.pending[index]
        if not lines or (keep_tail and len(lines) == 1):
            return []
        chunks = pack_lines(lines, self.max_chunk_bytes)
        lines.clear()  # in place: the route cache holds its append
        if keep_tail:
            lines.append(chunks.pop())
        return chunks

    def has_pending(self) -> bool:
        """Whether any aggregator has lines or a kept-back chunk waiting."""
        return any(self.pending)
