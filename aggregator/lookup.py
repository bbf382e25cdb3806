"""Where a metric name goes inside one aggregator (GET /route/<name>).

`lookup_name` answers from the live state: the worker that owns the name (H2,
`common.shard.worker_index`), every output path the name produces under the naming in
force (a one-name flush rendered by the real `GraphiteRenderer`), each path's Carbon
node(s) on the live ring, and the interval's values so far. The name's types are the ones
the ledger knows it under; a name the ledger does not know is rendered as every type, and
marked ``"seen": false``.

Pure: no I/O (the shell passes the accumulator, the naming and the ring in).
"""

from __future__ import annotations

from array import array
from typing import Any

from common.ring import Ring
from common.shard import worker_index

from .backends.render import GraphiteRenderer, Naming
from .ledger import Accumulator, FlushSnapshot

TYPES = ("counter", "timer", "gauge", "set")


def known_types(accumulator: Accumulator, key: bytes) -> list[str]:
    """The types the ledger holds ``key`` as (now or as a known idle name)."""
    ledger = accumulator.ledger
    found = []
    if key in ledger.counters:
        found.append("counter")
    if key in ledger.timers or key in accumulator.known_timers:
        found.append("timer")
    if key in accumulator.gauges:
        found.append("gauge")
    if key in ledger.sets or key in accumulator.known_sets:
        found.append("set")
    return found


def one_name_snapshot(accumulator: Accumulator | None, key: bytes, types: list[str], *,
                      timestamp: int, interval: float) -> tuple[FlushSnapshot, dict[str, Any]]:
    """A flush of ``key`` alone, with the interval's values so far (0 or idle where this
    process holds none), and those values."""
    ledger = accumulator.ledger if accumulator is not None else None
    counters: dict[bytes, float] = {}
    timers: dict[bytes, array[float]] = {}
    timer_counts: dict[bytes, float] = {}
    gauges: dict[bytes, float] = {}
    sets: dict[bytes, set[bytes]] = {}
    idle_timers: frozenset[bytes] = frozenset()
    idle_sets: frozenset[bytes] = frozenset()
    values: dict[str, Any] = {}
    if "counter" in types:
        counters[key] = ledger.counters.get(key, 0.0) if ledger is not None else 0.0
        values["counter"] = counters[key]
    if "timer" in types:
        samples = ledger.timers.get(key) if ledger is not None else None
        if samples:
            timers[key] = samples
            timer_counts[key] = ledger.timer_counts.get(key, float(len(samples))) \
                if ledger is not None else float(len(samples))
        else:
            idle_timers = frozenset({key})
        values["timer"] = {"samples": len(samples) if samples else 0}
    if "gauge" in types:
        gauge = accumulator.gauges.get(key) if accumulator is not None else None
        gauges[key] = gauge if gauge is not None else 0.0
        values["gauge"] = gauge
    if "set" in types:
        members = ledger.sets.get(key) if ledger is not None else None
        if members:
            sets[key] = members
        else:
            idle_sets = frozenset({key})
        values["set"] = {"members": len(members) if members else 0}
    snapshot = FlushSnapshot(timestamp=timestamp, interval=interval, counters=counters,
                             timers=timers, timer_counts=timer_counts, idle_timers=idle_timers,
                             sets=sets, idle_sets=idle_sets, gauges=gauges)
    return snapshot, values


def lookup_name(name: str, *, accumulator: Accumulator, naming: Naming, ring: Ring | None,
                workers: int, timestamp: int, interval: float,
                here: int = 0) -> dict[str, Any] | None:
    """The /route answer for ``name`` (a StatsD key, tags as ``name;tag=v`` or DogStatsD
    ``|#`` left out), or None when it has no usable name.

    Args:
        here: this process's worker index: only the name's owner holds its values
            (elsewhere they are left out, ``"seen": null``).
    """
    raw = name.encode()
    key = accumulator.parser.stored_key(raw)
    if not key:
        return None
    graphite_name = key.split(b";", 1)[0]
    worker = worker_index(graphite_name, workers) if workers > 1 else 0
    owner_here = worker == here
    types = known_types(accumulator, key) if owner_here else []
    seen = bool(types)
    shown = types or list(TYPES)
    snapshot, values = one_name_snapshot(accumulator if owner_here else None, key, shown,
                                         timestamp=timestamp, interval=interval)
    renderer = GraphiteRenderer(naming)
    paths = []
    for chunk in renderer.render_chunks(snapshot):
        for line in chunk.splitlines():
            path, _, rest = line.partition(b" ")
            value = rest.split(b" ", 1)[0]
            nodes = ring.nodes_for(path) if ring is not None else ()
            paths.append({"path": path.decode("utf-8", "replace"),
                          "value": float(value) if value else None,
                          "carbon": [str(n) for n in nodes]})
    return {"name": name, "key": key.decode("utf-8", "replace"), "worker": worker,
            "workers": workers, "seen": seen if owner_here else None, "types": shown,
            "values": values if owner_here else None,
            "values_held_by_worker": worker, "paths": paths}
