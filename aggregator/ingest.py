"""How lines become aggregates: the inline fast path and the checked general path.

`Accumulator.ingest` (`aggregator.ledger`) hands every packet to `ingest_packet`. Most lines
have the plain shape ``name:value|type`` with a name seen before; those are aggregated
inline (no lists, no tuples, one `LineParser.cached_key` lookup, the types read from
`common.protocol.TYPE_KINDS`). Anything else (sample rates, tags, several values, a new
name, a bad line, a value too large for the inline checks) goes through `ingest_line`,
which parses with `LineParser.parse_line` and checks every result. The two must always
agree (tests/unit/test_ledger.py checks it on generated lines).

Before the line loop, a packet of counter lines only (``name:value|c``, the commonest
StatsD traffic) is tried whole (`_ingest_counters`): a few byte counts and splits of the
packet check its shape, C loops (`map`, `itertools.compress`) look its names up and add
its values, in order, as the inline path would. A packet it does not fully cover is left
untouched to the loop.

Overflow: nothing non-finite may reach Carbon. Where each check is:

* The inline path takes only values with ``|v| <= 2**969`` (`_FAST_LIMIT`). Adding such a
  value to any finite double never gives infinity: near the largest double (just under
  2**1024) one unit in the last place is 2**971, and a value under half of it rounds back
  (IEEE 754 round-to-nearest). So counters, gauge deltas and timer counts stay finite with
  one comparison per line, and only for values that are not plain digits or not "1".
  Larger values go through `ingest_line`, which checks the result itself.
* A counter is written twice: its count and its rate, count / interval, with an interval
  of at least 0.1 s (`aggregator.config`). So the checked path keeps counters and timer
  counts within `_COUNT_LIMIT` (a tenth of the largest double), and the rate is finite.
  (The inline path could pass it only by adding 2**969 about 10**16 times in one
  interval; the renderer refuses any non-finite value anyway.)
* Timer samples are only stored; the statistics derived at flush (sums, squares) are made
  finite where they are computed (`aggregator.timers`).

A sample refused that way is an `OVERFLOW`; the aggregate keeps its value and the line's
other samples count.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import sys
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from itertools import compress, repeat
from operator import add, not_
from typing import Final, Protocol, cast

from common.errors import ParseError
from common.protocol import (
    COUNTER,
    DELTA_SIGNS,
    GAUGE,
    GAUGE_DELTA,
    HISTOGRAM,
    SET,
    TIMER,
    TYPE_KINDS,
    LineParser,
)

#: The drop reason of a line refused because it would make an aggregate non-finite.
OVERFLOW: Final = "overflow"

_MAX_DOUBLE: Final = sys.float_info.max
_FAST_LIMIT: Final = 2.0**969
_MIN_FLUSH_INTERVAL_SECONDS: Final = 0.1
_COUNT_LIMIT: Final = _MAX_DOUBLE * _MIN_FLUSH_INTERVAL_SECONDS
_NO_FOREIGN: Final[Mapping[bytes, list[bytes]]] = {}
#: Packets of fewer lines take the line loop: the whole-packet path's fixed cost (a dozen
#: C calls) outweighs its gain below that (bench/ingest_bench.py --blast).
_WHOLE_PACKET_LINES: Final = 4
_ONE_LINE_END: Final = b":1|c"
_COUNTER_END: Final = b"|c"


def _add_ones_python(counts: dict[bytes, float], keys: Iterable[bytes]) -> None:
    for key in keys:
        counts[key] = counts.get(key, 0) + 1


try:
    # What `collections.Counter.update` runs: ``counts[key] = counts.get(key, 0) + 1`` for
    # each key, in order, in C. Adding the int 1 to a float adds 1.0: bit for bit the
    # inline path's sums (every key is made present, as a float, before it runs).
    from collections import _count_elements as _add_ones  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - another Python than CPython
    _add_ones = _add_ones_python

#: Consumes an iterator in C (the idiom of itertools' recipes).
_drain: Final[Callable[[Iterable[object]], None]] = deque[object](maxlen=0).extend


class Interval(Protocol):
    """What one interval accumulates (`aggregator.ledger.Ledger`); gauges outlive it."""

    counters: dict[bytes, float]
    timers: dict[bytes, array[float]]
    timer_counts: dict[bytes, float]
    sets: dict[bytes, set[bytes]]
    gauges_touched: set[bytes]


def _ingest_counters(packet: bytes, counters: dict[bytes, float],
                     cached_key: Callable[[bytes], bytes | None], max_line: int,
                     batch_of: Callable[[bytes], list[bytes] | None]) -> int:
    """`ingest_packet` for a packet of plain counter lines only, in C loops (no bytecode
    per line): the lines are aggregated in order, exactly as the inline path would.

    Taken only when every line is ``name:value|c`` (one ``:``, one ``|``) with a cached
    name, or a name in `foreign` (``batch_of``), a value the inline path takes (a number,
    ``|v| <= _FAST_LIMIT``, no ``_``), and no line over ``max_line``; nothing is changed
    before all of that is known.

    Returns:
        The number of lines, or -1 (nothing done) for any other packet.
    """
    if packet[-1:] == b"\n":  # trailing empty lines
        packet = packet.rstrip(b"\n")
    lines = packet.count(b"\n") + 1
    colons = packet.count(b":")
    if colons != lines:  # one ":" a line is the only shape taken here
        return -1
    # Every line must end as split, i.e. no piece may hold a newline. A "|" in a name is
    # read as the inline path reads it: the key cache decides, and it never holds a raw
    # name with "|#" (tags).
    ones = False
    if packet[-4:] == _ONE_LINE_END:  # perhaps "name:1|c" lines only
        names: list[bytes] | tuple[bytes, ...] = packet[:-4].split(b":1|c\n")
        ones = len(names) == lines
        if ones and len(packet) > max_line and max(map(len, names)) + 4 > max_line:
            return -1
    if not ones:
        if packet[-2:] != _COUNTER_END:
            return -1
        texts = packet[:-2].split(b"|c\n")
        if len(texts) != lines or (len(packet) > max_line
                                   and max(map(len, texts)) + 2 > max_line):
            return -1
        names, seps, values = zip(*map(bytes.partition, texts, repeat(b":")), strict=True)
        if not all(seps):  # then one line has two ":", another none
            return -1
        try:
            numbers = list(map(float, values))
        except ValueError:
            return -1
        # inf, nan (no comparison holds), too large, or 1_000 (float() takes it, JS not)
        if not all(map(_FAST_LIMIT.__ge__, map(abs, numbers))) or b"_" in b"".join(values):
            return -1
    keys = list(map(cached_key, names))
    own = cast("list[bytes]", keys)
    if not all(keys):  # names this worker has no key for: another worker's, or new
        strangers = list(compress(names, map(not_, keys)))
        found = list(map(batch_of, strangers))
        if None in found:
            return -1
        batches = cast("list[list[bytes]]", found)
        own = cast("list[bytes]", list(compress(keys, keys)))
        if ones:
            _drain(map(list.append, batches, map(add, strangers, repeat(_ONE_LINE_END))))
        else:
            _drain(map(list.append, batches,
                       map(add, compress(texts, map(not_, keys)), repeat(_COUNTER_END))))
            numbers = list(compress(numbers, keys))
    if ones:
        known = len(counters)
        _add_ones(counters, own)
        if len(counters) != known:  # a new name's count is an int: make every one a float
            _drain(map(counters.__setitem__, own, map(float, map(counters.__getitem__, own))))
    else:
        # In order, each sum read after the previous line's is stored (map is lazy).
        _drain(map(counters.__setitem__, own,
                   map(add, map(counters.get, own, repeat(0.0)), numbers)))
    return lines


def ingest_packet(packet: bytes, ledger: Interval, gauges: dict[bytes, float],
                  parser: LineParser, checked: Callable[[bytes], None],
                  foreign: Mapping[bytes, list[bytes]] = _NO_FOREIGN) -> int:
    """Aggregate the lines of ``packet`` (newline-separated) into ``ledger`` and ``gauges``.

    Args:
        parser: the owner's parser (its key cache decides which lines are plain).
        checked: called with each line the inline path does not take (`ingest_line`,
            bound to the owner's counting of refusals; with several workers, the
            worker's `Splitter.route`, which decides first whose line it is).
        foreign: with several workers, the raw names (the text before the first ``:``)
            known to belong to another worker, each with the list that worker's lines
            are appended to (`aggregator.workers.codec.Splitter`). Such a name is never
            in the parser's key cache, so this costs a look-up only for lines the inline
            path would not take anyway; with one worker it is empty.

    Returns:
        The number of lines (empty ones aside).
    """
    counters = ledger.counters
    cached_key = parser.cached_key
    max_line = parser.max_line_bytes
    batch_of = foreign.get
    if packet.count(b"\n") >= _WHOLE_PACKET_LINES - 1:
        lines = _ingest_counters(packet, counters, cached_key, max_line, batch_of)
        if lines >= 0:
            return lines
    timers = ledger.timers
    timer_counts = ledger.timer_counts
    sets = ledger.sets
    touch = ledger.gauges_touched.add
    kinds = TYPE_KINDS
    signs = DELTA_SIGNS
    slow = checked
    fast_limit = _FAST_LIMIT
    lines = 0
    for line in packet.split(b"\n"):
        if not line:
            continue
        lines += 1
        name, _, rest = line.partition(b":")
        value, _, kind = rest.partition(b"|")
        key = cached_key(name)
        fast = kinds.get(kind)
        if fast is None or not key or len(line) > max_line:
            if not key:
                batch = batch_of(name)
                if batch is not None:  # another worker's: forwarded as read
                    batch.append(line)
                    continue
            slow(line)
            continue
        if fast == SET:
            if b":" in value:  # "s:a:b|s" is two segments
                slow(line)
                continue
            members = sets.get(key)
            if members is None:
                members = sets[key] = set()
            members.add(value or b"0")
            continue
        if value == b"1":
            number = 1.0
        elif value.isdigit():  # the common case: no sign, dot, exponent, inf or "_"
            number = float(value)
            if number > fast_limit:  # 400 digits: too large for the inline path
                slow(line)
                continue
        else:
            try:
                number = float(value)
            except ValueError:
                slow(line)
                continue
            # inf, nan (no comparison holds), too large, or 1_000
            if not -fast_limit <= number <= fast_limit or b"_" in value:
                slow(line)
                continue
        if fast == COUNTER:
            counters[key] = counters.get(key, 0.0) + number
        elif fast == TIMER:
            if number < 0.0:
                slow(line)
                continue
            timer = timers.get(key)
            if timer is None:
                timer = timers[key] = array("d")
            timer.append(number)
            timer_counts[key] = timer_counts.get(key, 0.0) + 1.0
        elif fast == GAUGE:
            if value[0] in signs:
                gauges[key] = gauges.get(key, 0.0) + number
            else:
                gauges[key] = number
            touch(key)
        else:  # HISTOGRAM
            timer = timers.get(key)
            if timer is None:
                timer = timers[key] = array("d")
            timer.append(number)
            timer_counts[key] = timer_counts.get(key, 0.0) + 1.0
    return lines


def ingest_line(line: bytes, ledger: Interval, gauges: dict[bytes, float],
                parser: LineParser, refuse: Callable[[list[ParseError]], None]) -> int:
    """The general path: parse ``line`` and apply every sample, checked.

    Args:
        refuse: called, in order, with the line's bad segments (one list) and with each
            sample refused as an `OVERFLOW` (a list of one).

    Returns:
        The number of samples applied (0: no segment of the line reached the ledger).
    """
    samples, errors = parser.parse_line(line)
    if errors:
        refuse(errors)
    applied = len(samples)
    for kind, key, value, rate in samples:
        if kind == COUNTER:
            if rate != 1.0:
                value = value * (1.0 / rate)  # type: ignore[operator]
            total = ledger.counters.get(key, 0.0) + value  # type: ignore[operator]
            if not -_COUNT_LIMIT <= total <= _COUNT_LIMIT:  # also false for nan
                refuse([ParseError(OVERFLOW, line, "counter")])
                applied -= 1
                continue
            ledger.counters[key] = total
        elif kind == TIMER or kind == HISTOGRAM:
            counts = ledger.timer_counts
            count = counts.get(key, 0.0) + (1.0 / rate)
            if count > _COUNT_LIMIT:
                refuse([ParseError(OVERFLOW, line, "timer count")])
                applied -= 1
                continue
            timer = ledger.timers.get(key)
            if timer is None:
                timer = ledger.timers[key] = array("d")
            timer.append(value)  # type: ignore[arg-type]
            counts[key] = count
        elif kind == GAUGE:
            gauges[key] = value  # type: ignore[assignment]
            ledger.gauges_touched.add(key)
        elif kind == GAUGE_DELTA:
            gauge = gauges.get(key, 0.0) + value  # type: ignore[operator]
            if not -_MAX_DOUBLE <= gauge <= _MAX_DOUBLE:
                refuse([ParseError(OVERFLOW, line, "gauge")])
                applied -= 1
                continue
            gauges[key] = gauge
            ledger.gauges_touched.add(key)
        elif kind == SET:
            members = ledger.sets.get(key)
            if members is None:
                members = ledger.sets[key] = set()
            members.add(value)  # type: ignore[arg-type]
    return applied
