"""The /status document: one JSON object per daemon, built from its readings and role facts.

Its keys are a contract (docs/admin.md, "GET /status"): the ``tallyd-ring cluster`` report
and the cluster page read them, and ignore keys they do not know, so keys are added, never
renamed. ``schema`` changes only when a key changes meaning.

The loss-accounting equations the ``totals`` hold (tests check them on real processes):

* proxy: ``lines_in == lines_out + sum(dropped_lines) + buffered_lines``;
* aggregator, once intake is idle: ``lines_in == lines_out + sum(dropped_lines)``, where
  ``kernel_overflow`` (datagrams the kernel dropped before any line was read: a count of
  datagrams, not lines) is left out of the sum;
* aggregator: ``points_flushed == points_sent + points_buffered + sum(points_dropped)``.

`RateTracker` turns two samples of the totals taken one interval apart into per-second
rates ("over the last completed interval").

Pure: no I/O; the clock's readings come in as arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from common.stats import TEXT, Reading

#: The document's shape; readers check it and ignore keys they do not know.
SCHEMA: Final = 1
#: A reason, in ``totals.dropped_lines``, for datagrams the kernel dropped (its count is
#: datagrams: their lines were never read).
KERNEL_OVERFLOW: Final = "kernel_overflow"


@attrs.frozen
class Member:
    """One destination of this daemon: a proxy's aggregator, an aggregator's Carbon node."""

    kind: str
    index: int
    name: str
    address: str = ""
    state: str = "up"
    reason: str = ""
    sent_lines: int = 0
    buffered_lines: int = 0
    buffer_capacity_lines: int | None = None
    dropped_lines: Mapping[str, int] = attrs.Factory(dict)

    def as_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["dropped_lines"] = dict(self.dropped_lines)
        return out


@attrs.frozen
class Totals:
    """Counters since start (and the levels ``buffered_lines``, ``points_buffered``).

    The ``points_*`` fields are the aggregator's (None on other roles: left out of the
    document); ``self_lines`` is the proxy's own self-metric lines, routed like client
    lines but counted apart from ``lines_in``.
    """

    lines_in: int = 0
    lines_out: int = 0
    buffered_lines: int = 0
    dropped_lines: Mapping[str, int] = attrs.Factory(dict)
    points_flushed: int | None = None
    points_sent: int | None = None
    points_buffered: int | None = None
    points_dropped: Mapping[str, int] | None = None
    self_lines: int | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in attrs.fields(Totals):
            value = getattr(self, field.name)
            if value is None:
                continue
            out[field.name] = dict(value) if isinstance(value, Mapping) else value
        return out


def add_totals(parts: Iterable[Totals]) -> Totals:
    """Several processes' totals as one (the workers of one aggregator)."""
    items = list(parts)
    if not items:
        return Totals()

    def total(name: str) -> int | None:
        values = [getattr(t, name) for t in items if getattr(t, name) is not None]
        return sum(values) if values else None

    def merged(name: str) -> dict[str, int] | None:
        maps = [getattr(t, name) for t in items if getattr(t, name) is not None]
        if not maps:
            return None
        out: dict[str, int] = {}
        for one in maps:
            for key, value in one.items():
                out[key] = out.get(key, 0) + value
        return out

    return Totals(lines_in=total("lines_in") or 0, lines_out=total("lines_out") or 0,
                  buffered_lines=total("buffered_lines") or 0,
                  dropped_lines=merged("dropped_lines") or {},
                  points_flushed=total("points_flushed"), points_sent=total("points_sent"),
                  points_buffered=total("points_buffered"),
                  points_dropped=merged("points_dropped"), self_lines=total("self_lines"))


def totals_from_json(data: Mapping[str, Any]) -> Totals:
    """`Totals` back from `Totals.as_json` (what a worker hands worker 0)."""
    names = {f.name for f in attrs.fields(Totals)}
    return Totals(**{k: v for k, v in data.items() if k in names})


@attrs.frozen
class StatusFacts:
    """What a role knows about itself besides its readings.

    Args:
        not_ready: why ``/readyz`` fails (empty: ready); the same list in /status.
        flush_interval: seconds (None: the role has none, the ring agent).
    """

    role: str
    identity: str
    version: str
    pid: int
    started: float
    health: str
    not_ready: Sequence[str]
    flush_interval: float | None
    membership_fingerprint: str
    config_fingerprint: str
    members: Sequence[Member] = ()
    workers: int = 1
    totals: Totals = attrs.Factory(Totals)


class RateTracker:
    """The totals' per-second rates over the last completed interval.

    The shell calls `sample` once per interval (at each boundary); `rates` compares the
    last two samples. Before two samples there is no completed interval: the rates are 0
    over an interval of 0 seconds.
    """

    def __init__(self) -> None:
        self._samples: list[tuple[float, Totals]] = []

    def sample(self, now: float, totals: Totals) -> None:
        self._samples = [*self._samples[-1:], (now, totals)]

    def rates(self) -> dict[str, Any]:
        if len(self._samples) < 2:
            return {"interval_seconds": 0.0, "lines_in": 0.0, "lines_out": 0.0,
                    "dropped_lines": {}}
        (t0, a), (t1, b) = self._samples
        span = t1 - t0
        if span <= 0:
            span = 1e-9

        def rate(x: int, y: int) -> float:
            return round(max(y - x, 0) / span, 3)

        dropped = {key: rate(a.dropped_lines.get(key, 0), value)
                   for key, value in b.dropped_lines.items()}
        return {"interval_seconds": round(span, 3), "lines_in": rate(a.lines_in, b.lines_in),
                "lines_out": rate(a.lines_out, b.lines_out), "dropped_lines": dropped}


def format_figures(readings: Iterable[Reading]) -> dict[str, int | float | str]:
    """Every reading by its full name (texts included), for ``figures``."""
    return {r.name: r.value for r in readings}


def build_status(facts: StatusFacts, readings: Iterable[Reading], *, now: float,
                 rates: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The /status document (module docstring; docs/admin.md lists every key)."""
    return {
        "schema": SCHEMA,
        "version": facts.version,
        "role": facts.role,
        "identity": facts.identity,
        "pid": facts.pid,
        "now": now,
        "started": facts.started,
        "uptime_seconds": round(max(now - facts.started, 0.0), 3),
        "health": facts.health,
        "ready": not facts.not_ready,
        "not_ready": list(facts.not_ready),
        "flush_interval": facts.flush_interval,
        "fingerprints": {"membership": facts.membership_fingerprint,
                         "config": facts.config_fingerprint},
        "members": [m.as_json() for m in facts.members],
        "workers": facts.workers,
        "totals": facts.totals.as_json(),
        "rates": dict(rates) if rates is not None else RateTracker().rates(),
        "figures": format_figures(readings),
    }


def config_fingerprint(toml_text: str, secret_keys: Iterable[str] = ()) -> str:
    """sha256 (first 16 hex digits) of the ``--print-config`` text without the lines of
    ``secret_keys``: equal settings give equal fingerprints on every daemon of a tier."""
    secrets = tuple(f"{key} =" for key in secret_keys)
    kept = [line for line in toml_text.splitlines() if not line.startswith(secrets)]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()[:16]


def numeric_readings(readings: Iterable[Reading]) -> list[Reading]:
    """The readings that are numbers (counters and levels)."""
    return [r for r in readings if r.kind != TEXT]
