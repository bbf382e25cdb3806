"""The StatsD line protocol, parsed from bytes the way Etsy statsd reads it.

Grammar, in the order the parser applies it::

    line     := body [ "|#" tags ]          split at the FIRST "|#"; a second "|#" and what
                                            follows it are ignored, as in Etsy statsd
    body     := key ( ":" segment )+        one key, one or more value segments
    segment  := value "|" type [ "|" "@" rate ] ( "|" ignored )*
    tags     := tag ( "," tag )*            DogStatsD tags
    type     := "c" | "g" | "ms" | "h" | "d" | "s"   (surrounding white space is ignored:
                                            CRLF senders)

Examples::

    api.requests:1|c                 counter +1
    api.requests:1|c|@0.1            counter +10: the value is scaled by 1/rate
    db.pool:7|g   db.pool:-2|g       gauge: an unsigned value sets, a signed one is a delta
    api.latency:320|ms|@0.5          timer sample; it counts as 2 events in `count`
    api.size:1024|h                  histogram: aggregated exactly like a timer
    api.size:1024|d                  DogStatsD distribution: exactly like "h"
    api.users:alice|s                set member (any bytes; an empty value means "0")
    a:1|c:2|c:7|ms                   several segments share one key
    req:1|c|#env:prod,az:b           key "req;env=prod;az=b" (Graphite 1.1 tags)

The key, tags included, is then sanitised as Etsy statsd does: each run of white space
becomes one ``_``, ``/`` becomes ``-``, and every byte outside ``[A-Za-z0-9_.;=-]`` is
removed. In a DogStatsD tag only the first ``;`` becomes ``_`` and the first ``:`` becomes
``=`` (Etsy's rule, kept so series names stay identical after a migration).

DogStatsD events (``_e{5,4}:title|text...``) and service checks (``_sc|name|0...``) are
recognised by their first bytes and refused whole, under their own reasons
(`UNSUPPORTED_REASONS`): they are not metrics, and not bad lines either.

A bad segment never spoils the others: each one is reported as its own `ParseError`
and the valid segments of the same line are still returned::

    good:1|c:oops|c:2|x
         ^^^ valid  ^^^^^^ bad_value    ^^^ unknown_type

Where Etsy statsd accepts garbage, this parser refuses it (docs/compatibility.md has the
full list): unknown or empty types, non-finite values, sample rates that are not a finite
number above 0, and keys that sanitise to nothing are all bad segments.

This module is pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final, TypeAlias

from .errors import ParseError

# Sample kinds. Plain ints: they are compared on the hot path.
COUNTER: Final = 0
GAUGE: Final = 1  # sets the gauge
GAUGE_DELTA: Final = 2  # adds to the gauge
TIMER: Final = 3  # "ms"
HISTOGRAM: Final = 4  # "h" and DogStatsD's "d": aggregated as a timer, may be negative
SET: Final = 5

KIND_NAMES: Final = {
    COUNTER: "c",
    GAUGE: "g",
    GAUGE_DELTA: "g",
    TIMER: "ms",
    HISTOGRAM: "h",
    SET: "s",
}

#: One parsed value: (kind, key, value, sample rate). The value is a float, or the raw
#: member bytes for a set.
Sample: TypeAlias = tuple[int, bytes, "float | bytes", float]

#: The type field of a segment -> its sample kind (an unsigned "g" sets; `DELTA_SIGNS` make
#: a gauge value a delta). The only table of metric types: the ledger's fast path reads it
#: (a plain dict, for the speed of its ``get``; typed read-only).
TYPE_KINDS: Final[Mapping[bytes, int]] = {
    b"c": COUNTER, b"g": GAUGE, b"ms": TIMER, b"h": HISTOGRAM, b"d": HISTOGRAM, b"s": SET}

#: Refusal reasons of lines that are valid DogStatsD but not metrics: counted under their
#: own names, apart from the bad lines (Etsy's ``bad_lines_seen``).
DOGSTATSD_EVENT: Final = "dogstatsd_event"
DOGSTATSD_SERVICE_CHECK: Final = "dogstatsd_service_check"
UNSUPPORTED_REASONS: Final = frozenset({DOGSTATSD_EVENT, DOGSTATSD_SERVICE_CHECK})
_EVENT_HEAD: Final = b"_e{"
_SERVICE_CHECK_HEAD: Final = b"_sc|"
_ASCII_WS: Final = b" \t\n\v\f\r"
#: A gauge value starting with one of these bytes ("+", "-") is a delta, not a new value.
DELTA_SIGNS: Final = (0x2B, 0x2D)
_INF: Final = float("inf")

# The bytes the sanitiser deletes: everything but [A-Za-z0-9_.;=-].
_KEEP: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.;=-"
)
_DELETE: Final = bytes(b for b in range(256) if b not in _KEEP)
_ASCII_WS_RUN: Final = re.compile(rb"[ \t\n\v\f\r]+")
# JavaScript's \s, which Etsy's sanitiser uses on the decoded UTF-8 text.
_JS_WS_RUN: Final = re.compile(
    "[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+"
)

#: Bytes of raw key -> stored key entries one parser remembers before its cache is cleared.
#: Sanitising is a regex plus two byte passes; the cache turns it into one dict lookup per
#: line, and the ledger's fast path only takes lines whose key is cached, so the cache must
#: hold every live name: 256 MiB holds about 2M names of typical length (~30 bytes, ~120
#: bytes an entry, the old cap of 2M entries), while a sender of long keys (4 KiB each)
#: can make it hold no more than ~60k of them. The bound is in bytes because keys may be
#: up to ``max_line_bytes`` long; only keys of lines that parsed are cached (a bad line
#: costs nothing once refused).
DEFAULT_KEY_CACHE_BYTES: Final = 256 * 1024 * 1024
#: What one cache entry costs besides the bytes of its keys (measured with tracemalloc,
#: CPython 3.11, x86-64): the dict's slot and index (~50 bytes at its usual fill) and the
#: raw key's object header (33 bytes). A stored key that is not the raw key object adds
#: its own header (`_KEY_HEADER_BYTES`). Other caches keyed by names (the workers' owner
#: cache) use the same estimate.
KEY_CACHE_ENTRY_BYTES: Final = 83
_KEY_HEADER_BYTES: Final = 33


def sanitize_key(raw: bytes) -> bytes:
    """Apply Etsy statsd's key sanitising to ``raw``.

    Args:
        raw: the key as received (UTF-8; invalid bytes are dropped like any non-ASCII).

    Returns:
        The key with white-space runs turned into ``_``, ``/`` into ``-``, and every byte
        outside ``[A-Za-z0-9_.;=-]`` removed. May be empty.
    """
    if raw.isascii():
        if _ASCII_WS_RUN.search(raw) is not None:
            raw = _ASCII_WS_RUN.sub(b"_", raw)
        return raw.replace(b"/", b"-").translate(None, _DELETE)
    text = _JS_WS_RUN.sub("_", raw.decode("utf-8", "replace")).replace("/", "-")
    return text.encode("ascii", "ignore").translate(None, _DELETE)


def _dogstatsd_tag(tag: bytes) -> bytes:
    # Etsy replaces only the first ";" and the first ":" of each tag.
    return tag.replace(b";", b"_", 1).replace(b":", b"=", 1)


def parse_number(text: bytes) -> float | None:
    """Read a value the way JavaScript's ``Number()`` does, finite values only.

    Accepts decimal and exponent notation with surrounding white space, and the unsigned
    ``0x``/``0o``/``0b`` integer literals. Refuses ``_`` digit separators (Python allows
    them, JavaScript does not), the empty string, and anything non-finite (``Infinity``,
    ``NaN``, ``1e400``).

    Returns:
        The value, or None when ``text`` is not a usable number.
    """
    try:
        value = float(text)
    except ValueError:
        stripped = text.strip(_ASCII_WS)
        prefix = stripped[:2].lower()
        if prefix not in (b"0x", b"0o", b"0b") or b"_" in stripped:
            return None
        try:
            value = float(int(stripped[2:], {b"0x": 16, b"0o": 8, b"0b": 2}[prefix]))
        except (ValueError, OverflowError):
            return None
    if not -_INF < value < _INF or b"_" in text:
        return None
    return value


def parse_sample_rate(field: bytes) -> float | None:
    """Read a ``@rate`` field: ``@`` then a decimal number (``0.1``, ``1e-1``, `` 0.5``).

    Returns:
        The rate, or None unless it is finite and above 0. Hex and other JavaScript-only
        forms are refused here: Etsy itself reads only the digits and dots after the ``@``.
    """
    if field[:1] != b"@":
        return None
    text = field[1:]
    try:
        rate = float(text)
    except ValueError:
        return None
    if not 0.0 < rate < _INF or b"_" in text:
        return None
    return rate


class LineParser:
    """Parses StatsD lines into samples, remembering sanitised keys.

    One parser belongs to one owner (a listener, a ledger): it keeps a cache of raw key
    -> stored key, so it is not shared between threads or processes. Only the keys of
    lines that gave at least one sample are cached, within ``cache_bytes``.

    Args:
        sanitize: apply Etsy's key sanitising at intake (``key_name_sanitize``). When
            false the key is stored as sent and only the Graphite name is cleaned on
            output, as Etsy does.
        max_line_bytes: longer lines are refused whole (``line_too_long``).
        cache_bytes: see `DEFAULT_KEY_CACHE_BYTES`; 0 caches nothing.
    """

    def __init__(
        self,
        *,
        sanitize: bool = True,
        max_line_bytes: int = 65_536,
        cache_bytes: int = DEFAULT_KEY_CACHE_BYTES,
    ) -> None:
        self.sanitize = sanitize
        self.max_line_bytes = max_line_bytes
        self.cache_bytes = cache_bytes
        #: What the entries of `keys` cost, by the estimate of `KEY_CACHE_ENTRY_BYTES`.
        self.cached_bytes = 0
        # Raw key (plus ":" and the DogStatsD tag text, if any) -> stored key, for keys of
        # lines that parsed. Cleared when full, never replaced: `cached_key` is bound to it.
        self._keys: dict[bytes, bytes] = {}
        #: A read-only view of the key cache.
        self.keys: Mapping[bytes, bytes] = MappingProxyType(self._keys)
        #: ``cached_key(raw)``: the stored key of an untagged raw key seen in a line that
        #: parsed, else None. The fast API for per-line callers (the ledger's inline path
        #: takes a line only when its key is here): one C-level dict lookup, no Python
        #: frame. Never true of a tagged key (its cache entry holds a ":").
        self.cached_key: Callable[[bytes], bytes | None] = self._keys.get

    def stored_key(self, raw: bytes, tagpart: bytes = b"") -> bytes:
        """Return the key a ledger stores for ``raw`` with DogStatsD ``tagpart``.

        Empty when the key's name (the part before any ``;``) sanitises to nothing.
        Looks in the cache but adds nothing to it (`parse_line` does, for lines that parse).
        """
        # ":" never occurs in a raw key, so a tagged entry can never be mistaken for an
        # untagged key (the ledger's fast path looks raw keys up directly).
        key = self._keys.get(raw + b":" + tagpart if tagpart else raw)
        return self._make_key(raw, tagpart) if key is None else key

    def _make_key(self, raw: bytes, tagpart: bytes) -> bytes:
        key = raw
        if tagpart:
            tagpart = tagpart.split(b"|#", 1)[0]
            key += b";" + b";".join(_dogstatsd_tag(t) for t in tagpart.split(b","))
        if self.sanitize:
            key = sanitize_key(key)
            if key == raw:
                key = raw  # share the object: most keys are already clean
        name = key.split(b";", 1)[0]
        if not (sanitize_key(name) if not self.sanitize else name):
            return b""
        return key

    def _remember(self, cache_key: bytes, key: bytes) -> None:
        cost = KEY_CACHE_ENTRY_BYTES + len(cache_key)
        if key is not cache_key:
            cost += _KEY_HEADER_BYTES + len(key)
        if self.cached_bytes + cost > self.cache_bytes:
            self._keys.clear()
            self.cached_bytes = 0
            if cost > self.cache_bytes:
                return
        self._keys[cache_key] = key
        self.cached_bytes += cost

    def name_of(self, line: bytes) -> bytes:
        """The Graphite name a line's samples are stored under, tags excluded.

        This is what sharding hashes: two spellings that sanitise to one Graphite path
        give the same name, and every tag variant of a series gives the same name.
        Empty when the line has no usable key. ``line`` may be a bare key.
        """
        body, _, tagpart = line.partition(b"|#")
        key = self.stored_key(body.split(b":", 1)[0], tagpart)
        name = key.split(b";", 1)[0]
        return name if self.sanitize else sanitize_key(name)

    def line_name(self, line: bytes) -> bytes:
        """`name_of` for a whole line, but empty unless the line gives a sample.

        For deciding which worker aggregates a line: a line that cannot be used is counted
        where it was read, and its key is neither cached nor remembered anywhere.
        """
        body, _, tagpart = line.partition(b"|#")
        raw = body.split(b":", 1)[0]
        key = self._keys.get(raw + b":" + tagpart if tagpart else raw)
        if key is None:
            samples, _ = self.parse_line(line)
            if not samples:
                return b""
            key = samples[0][1]
        name = key.split(b";", 1)[0]
        return name if self.sanitize else sanitize_key(name)

    def parse_line(self, line: bytes, *,
                   remember: bool = True) -> tuple[list[Sample], list[ParseError]]:
        """Parse one line (without its newline).

        Args:
            remember: cache the line's key when it gives a sample; false to parse without
                touching the cache (a worker deciding which worker owns a line keeps only
                its own names there: `aggregator.workers.codec.Splitter`).

        Returns:
            ``(samples, errors)``: every valid segment as a `Sample`, and one `ParseError`
            per bad segment (or one for the whole line when it has no usable key, or is a
            DogStatsD event or service check). The line's key is cached when there is at
            least one sample.
        """
        if len(line) > self.max_line_bytes:
            return [], [ParseError("line_too_long", line, f"over {self.max_line_bytes} bytes")]
        if line[:4] == _SERVICE_CHECK_HEAD:
            return [], [ParseError(DOGSTATSD_SERVICE_CHECK, line)]
        if line[:3] == _EVENT_HEAD:
            return [], [ParseError(DOGSTATSD_EVENT, line)]
        body, _, tagpart = line.partition(b"|#")
        segments = body.split(b":")
        raw_key = segments[0]
        cache_key = raw_key + b":" + tagpart if tagpart else raw_key
        cached = self._keys.get(cache_key)
        key = self._make_key(raw_key, tagpart) if cached is None else cached
        if len(segments) == 1:
            return [], [ParseError("missing_value", line, "no ':' after the key")]
        if not key:
            return [], [ParseError("empty_key", line)] * (len(segments) - 1)
        samples: list[Sample] = []
        errors: list[ParseError] = []
        for segment in segments[1:]:
            fields = segment.split(b"|")
            if len(fields) < 2:
                errors.append(ParseError("missing_type", line))
                continue
            kind = TYPE_KINDS.get(fields[1])
            if kind is None:
                kind = TYPE_KINDS.get(fields[1].strip(_ASCII_WS))
                if kind is None:
                    errors.append(ParseError("unknown_type", line, repr(fields[1])))
                    continue
            rate = 1.0
            if len(fields) > 2:
                parsed_rate = parse_sample_rate(fields[2])
                if parsed_rate is None:
                    errors.append(ParseError("bad_sample_rate", line, repr(fields[2])))
                    continue
                rate = parsed_rate
            raw = fields[0]
            if kind == SET:
                samples.append((SET, key, raw or b"0", rate))
                continue
            value = parse_number(raw)
            if value is None:
                errors.append(ParseError("bad_value", line, repr(raw)))
                continue
            if kind == GAUGE:
                if raw and raw[0] in DELTA_SIGNS:
                    kind = GAUGE_DELTA
            elif kind == TIMER and value < 0.0:
                errors.append(ParseError("negative_timer", line))
                continue
            samples.append((kind, key, value, rate))
        if samples and cached is None and remember:
            self._remember(cache_key, key)
        return samples, errors
