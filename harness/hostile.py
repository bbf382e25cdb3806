"""Hostile StatsD input, each line generated together with what a correct daemon must do with it.

A `Traffic` hands out lines and payloads (datagrams, stream contents) drawn from a seeded
`random.Random`, and keeps the ledger the test checks the daemon against:

* ``lines``: non-empty lines handed out; Etsy's ``metrics_received`` must count every one;
* ``aggregated``: of them, the lines a correct daemon aggregates;
* ``refused``: the others, by kind of hostility (for failure messages; a correct daemon
  counts each under some drop reason, the test does not guess which);
* ``totals``: every valid counter's expected total (``stats_counts.<name>`` summed over the
  flushes), always an integer, so float sums are exact;
* ``probes``: names fed finite values whose aggregate overflows (``1e308|c`` twice,
  ``1e308|g`` then ``+1e308|g``, timers whose sums or squares overflow). The line that would
  make an aggregate non-finite is refused; whether the one before it is too depends on the
  limit an implementation picks (a counter's rate, ``count / interval``, overflows sooner
  than its count). So how many of a probe's lines were aggregated is read from Carbon (a
  counter's total / its value, a timer's count, a gauge's presence), not predicted.

Every hostile line has exactly one value segment (at most one ``:`` before any ``|#``), so it
is refused as exactly one unit: Etsy counts ``bad_lines_seen`` per segment, and only for
one-segment lines is ``metrics_received`` = aggregated + refused an identity in lines.

What a correct daemon does, per kind (issue 8, items 5, 6 and 8):

==================  ============================================================  =========
kind                example                                                        fate
==================  ============================================================  =========
valid               ``hz.udp.3:2|c``, ``…:1|c|@0.25``, ``…:5|c\\r``, tagged            aggregated
huge name           ``hz.huge.xxxx…(30 KiB)…:1|c`` (under ``max_line_bytes``)          aggregated
random bytes        any bytes but ``\\n``, never a valid type field                   refused
bad number          ``NaN``, ``Infinity``, ``1e309``, ``0x``, ``1_0``, ``@0``, ``@NaN``      refused
overflow            ``…:1|c|@1e-320``, ``…:1|ms|@1e-320``, ``5e300|c|@1e-10``          refused
overflow probe      ``1e308|c`` twice, ``1e308|g`` then ``+1e308|g``, ``1e200|ms``     see above
empty name          ``:1|c``, ``%%%:1|g``, ``;a=b:1|c``                                  refused
DogStatsD           ``_e{5,4}:hello|text``, ``_sc|hz.check|0``                           refused
line too long       over ``max_line_bytes`` (a unixgram datagram or a stream)           refused
cut stream          a stream that ends inside ``name:12|c`` (a proper prefix), or     refused
                    a whole last line without newline before a reset
==================  ============================================================  =========

Pure: no I/O.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from harness.refusal import (
    BAD_NUMBERS,
    BAD_RATES,
    DOGSTATSD,
    EMPTY_NAMES,
    Probe,
    could_be_valid,
)

#: Distinct lines per refused kind while `Traffic.pooled` is set.
POOL_LINES: Final = 32

@dataclass
class Traffic:
    """A generator of mixed valid and hostile StatsD input, and the ledger of its fate.

    Args:
        rng: the source of every choice (seed it to replay a run).
        prefix: the first component of every name the valid and probe lines use.
    """

    rng: random.Random
    prefix: str = "hz"
    lines: int = 0
    aggregated: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    totals: dict[str, int] = field(default_factory=dict)
    probes: dict[str, Probe] = field(default_factory=dict)
    #: When set, `random_line` and `too_long_line` reuse the first `POOL_LINES` lines they
    #: made: traffic of the same shape whose refused lines have few distinct keys (a daemon
    #: that keeps refused keys then keeps only these; see the RSS check of the e2e test).
    pooled: bool = False
    _pool: dict[str, list[bytes]] = field(default_factory=dict)
    _serial: int = 0

    # -- bookkeeping ------------------------------------------------------------------------

    def _next(self) -> int:
        self._serial += 1
        return self._serial

    def _valid(self, name: str, amount: int) -> None:
        self.lines += 1
        self.aggregated += 1
        self.totals[name] = self.totals.get(name, 0) + amount

    def _refuse(self, kind: str, count: int = 1) -> None:
        self.lines += count
        self.refused[kind] += count

    def _from_pool(self, kind: str) -> bytes | None:
        pool = self._pool.get(kind, [])
        kind = kind.split("/", 1)[0]
        if not self.pooled or len(pool) < POOL_LINES:
            return None
        self._refuse(kind)
        return self.rng.choice(pool)

    def _to_pool(self, kind: str, line: bytes) -> bytes:
        if self.pooled:
            self._pool.setdefault(kind, []).append(line)
        return line

    # -- valid lines ----------------------------------------------------------------------------

    def valid_line(self, group: str, *, names: int = 40) -> bytes:
        """A counter line with one of ``names`` names under ``<prefix>.<group>.``, in one of
        the accepted spellings; its increment is added to `totals`."""
        rng = self.rng
        base = f"{self.prefix}.{group}.c{rng.randrange(names)}"
        shape = rng.randrange(6)
        if shape == 0:  # sample rates that are powers of two keep the sums exact
            value, rate = rng.randrange(1, 9), rng.choice((0.5, 0.25, 0.125))
            self._valid(base, int(value / rate))
            return f"{base}:{value}|c|@{rate}".encode()
        if shape == 1:  # CRLF senders
            value = rng.randrange(1, 100)
            self._valid(base, value)
            return f"{base}:{value}|c\r".encode()
        if shape == 2:  # DogStatsD tags become Graphite tags
            value = rng.randrange(1, 100)
            self._valid(f"{base};env=hz", value)
            return f"{base}:{value}|c|#env:hz".encode()
        value = rng.randrange(1, 1000)
        self._valid(base, value)
        return f"{base}:{value}|c".encode()

    def plain_line(self, group: str, *, names: int = 40, pad: int = 0) -> tuple[str, bytes]:
        """``(name, line)``: ``name:V|c`` with V of two or more digits; its increment is NOT
        recorded (the caller decides: `take_plain` when it sends it whole, `cut` when not)."""
        name = f"{self.prefix}.{group}.c{self.rng.randrange(names)}"
        if pad:
            name += "." + "x" * pad
        return name, f"{name}:{self.rng.randrange(10, 1000)}|c".encode()

    def take_plain(self, name: str, line: bytes) -> bytes:
        """Record a `plain_line` as sent whole."""
        self._valid(name, int(line.rsplit(b":", 1)[1].split(b"|", 1)[0]))
        return line

    def huge_name_line(self, length: int) -> bytes:
        """A valid counter whose name is about ``length`` bytes (letters, dots)."""
        name = f"{self.prefix}.huge{self._next()}." + "".join(
            self.rng.choice("abcdefghij") for _ in range(32)) * (length // 32 + 1)
        name = name[:length]
        value = self.rng.randrange(1, 10)
        self._valid(name, value)
        return f"{name}:{value}|c".encode()

    def bulk_datagram(self, size: int, *, names: int = 2000) -> bytes:
        """Valid counter lines with long names (fewer lines per byte: bursts are about
        bytes) filling ``size`` bytes at most."""
        out: list[bytes] = []
        used = 0
        rng = self.rng
        while True:
            k = rng.randrange(names)
            name = f"{self.prefix}.bulk.{k % 7}.{'b' * 100}.c{k}"
            value = rng.randrange(1, 10)
            line = f"{name}:{value}|c".encode()
            if used + len(line) + 1 > size:
                return b"\n".join(out)
            self._valid(name, value)
            out.append(line)
            used += len(line) + 1

    # -- refused lines --------------------------------------------------------------------------

    def random_line(self, max_bytes: int, *, min_bytes: int = 1, long_key: bool = False) -> bytes:
        """Random bytes (no newline, at most one ``:``), never a valid line.

        Args:
            long_key: the key (what comes before the ``:``) is nearly the whole line: no
                ``:``, or one among the last 16 bytes (random bytes have one every 256 bytes
                or so, and a parser keeps keys, not lines).
        """
        pool = f"random_bytes/{min_bytes}/{max_bytes}/{long_key}"
        pooled = self._from_pool(pool)
        if pooled is not None:
            return pooled
        rng = self.rng
        while True:
            length = rng.randrange(min_bytes, max_bytes + 1)
            raw = bytearray(rng.randbytes(length))
            if rng.random() < 0.5:  # StatsD-looking noise: more of the grammar's symbols
                for _ in range(rng.randrange(1, 6)):
                    raw[rng.randrange(length)] = rng.choice(b":|@#,.c g")
            raw = raw.replace(b"\n", b"")
            if long_key:
                raw = raw.replace(b":", b";")
                if raw and rng.random() < 0.5:
                    raw[rng.randrange(max(0, len(raw) - 16), len(raw))] = ord(":")
            first = raw.find(b":")
            if first >= 0:
                raw = raw[:first + 1] + raw[first + 1:].replace(b":", b";")
            line = bytes(raw)
            if line and not could_be_valid(line):
                self._refuse("random_bytes")
                return self._to_pool(pool, line)

    def bad_number_line(self) -> bytes:
        rng = self.rng
        name = f"{self.prefix}.bad.n{rng.randrange(50)}"
        if rng.random() < 0.6:
            value = rng.choice(BAD_NUMBERS)
            kind = rng.choice((b"c", b"g", b"ms", b"h"))
            line = name.encode() + b":" + value + b"|" + kind
        else:
            line = name.encode() + b":1|c|" + rng.choice(BAD_RATES)
        self._refuse("bad_number")
        return line

    def negative_timer_line(self) -> bytes:
        self._refuse("bad_number")
        name = f"{self.prefix}.bad.t{self.rng.randrange(10)}"
        return f"{name}:-{self.rng.randrange(1, 99)}|ms".encode()

    def overflow_lines(self) -> list[bytes]:
        """Finite input whose aggregate would not be finite (item 8), for one datagram.

        Each name is new, so what it adds up to depends on these lines only; the lines of a
        probe stay in one packet, hence in one interval.
        """
        n = self._next()
        p = self.prefix
        which = self.rng.randrange(6)
        if which == 0:  # 1/rate overflows
            self._refuse("overflow")
            return [f"{p}.ovf.r{n}:1|c|@1e-320".encode()]
        if which == 1:
            self._refuse("overflow")
            return [f"{p}.ovf.r{n}:5e300|c|@1e-10".encode()]
        if which == 2:  # a timer's sample count overflows
            self._refuse("overflow")
            return [f"{p}.ovf.r{n}:1|{self.rng.choice(('ms', 'h'))}|@1e-320".encode()]
        if which == 3:  # a sum that overflows
            return self._probe(Probe("counter", f"{p}.ovf.c{n}", 2, 1e308), "1e308|c", "1e308|c")
        if which == 4:  # a gauge that overflows
            if self.rng.random() < 0.5:
                return self._probe(Probe("gauge", f"{p}.ovf.g{n}", 2, 1e308),
                                   "1e308|g", "+1e308|g")
            return self._probe(Probe("gauge", f"{p}.ovf.g{n}", 2, -1e308), "-1e308|g", "-1e308|g")
        # timer sums and squares
        pick = self.rng.randrange(3)
        name = f"{p}.ovf.t{n}"
        if pick == 0:
            return self._probe(Probe("timer", name, 2, 1e308), "1e308|ms", "1e308|ms")
        if pick == 1:
            return self._probe(Probe("timer", name, 2, -1e300), "-1e300|h", "-1e300|h")
        return self._probe(Probe("timer", name, 1, 1e200), "1e200|ms")

    def _probe(self, probe: Probe, *values: str) -> list[bytes]:
        self.lines += probe.lines
        self.probes[probe.name] = probe
        return [f"{probe.name}:{v}".encode() for v in values]

    def empty_name_line(self) -> bytes:
        self._refuse("empty_name")
        return self.rng.choice(EMPTY_NAMES)

    def dogstatsd_line(self) -> bytes:
        self._refuse("dogstatsd")
        return self.rng.choice(DOGSTATSD)

    def too_long_line(self, length: int) -> bytes:
        """A counter line of ``length`` bytes, to be longer than ``max_line_bytes``."""
        pooled = self._from_pool("too_long")
        if pooled is not None:
            return pooled
        head = f"{self.prefix}.long{self._next()}.".encode()
        self._refuse("too_long")
        return self._to_pool("too_long", head + b"y" * (length - len(head) - 4) + b":1|c")

    def cut(self, line: bytes) -> bytes:
        """A proper, non-empty prefix of a `plain_line`: what a stream cut mid-line leaves.

        ``name:12|c`` cut anywhere before its end lacks a type (or a value, or a ``:``), so
        it is refused; cutting a CRLF or sampled line could leave a valid one, never used."""
        self._refuse("cut_line")
        return line[:self.rng.randrange(1, len(line))]

    def unterminated(self, line: bytes) -> bytes:
        """A whole `plain_line` without its newline, at the end of a stream ended by a reset:
        refused as ``truncated`` (a reset can cut ``x:1|c|@0.1`` to ``x:1|c``)."""
        self._refuse("cut_line")
        return line

    def hostile_line(self, *, max_random: int = 200) -> bytes:
        """One refused line of a random kind (not overflow: that one needs a datagram)."""
        pick = self.rng.randrange(10)
        if pick < 4:
            return self.random_line(max_random)
        if pick < 7:
            return self.bad_number_line()
        if pick == 7:
            return self.empty_name_line()
        if pick == 8:
            return self.dogstatsd_line()
        return self.negative_timer_line()

    def mixed_lines(self, count: int, group: str, *, hostile: float = 0.5,
                    max_random: int = 200) -> Iterator[bytes]:
        """``count`` lines, valid (under ``group``) or hostile with probability ``hostile``."""
        for _ in range(count):
            if self.rng.random() < hostile:
                yield self.hostile_line(max_random=max_random)
            else:
                yield self.valid_line(group)


def count_lines(payload: bytes) -> int:
    """Non-empty lines in ``payload``, as the daemon counts them (split at ``\\n``)."""
    return sum(1 for line in payload.split(b"\n") if line)
