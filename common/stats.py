"""Statistics: every component's figures as frozen snapshots, and the one way they are named.

Every long-lived component (a Carbon sender, the worker exchange, a proxy forwarder, ...)
has a ``statistics()`` method that returns a frozen attrs ``*Statistics`` object: a copy of
its figures at that moment, never a live view. Readers (the Etsy ``stats`` command, the
flushed self-metrics, the HTTP ``/status`` and ``/metrics`` to come) only ever see snapshots,
so no reader reaches into a component's attributes.

Names. A figure is called ``<role>.<component>[.<instance>].<measure>[.<key>]``:

* ``role`` and ``component`` come from `COMPONENTS`, the only place they are spelled;
* ``instance`` tells several components of one kind apart (a Carbon node as a path
  component, `path_component`; a forwarder's position);
* ``measure`` is the snapshot's field name, and a field that holds a mapping (drops by
  reason) adds one ``.<key>`` per entry.

Kinds, declared on each field with `counter`, `level` or `text`:

* a **counter** only grows: a total since the process started (``sent_lines``). Self-metrics
  publish the total, so a lost flush loses nothing and a rate is Graphite's
  ``nonNegativeDerivative``;
* a **level** is a current value that goes up and down (``buffered_lines``, ``connected``);
* a **text** is shown by ``stats`` and ``/status`` but never published to Carbon
  (a state, an address, a fingerprint).

A field declared with none of these (e.g. the node a snapshot describes) is not a figure.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

COUNTER: Final = "counter"
LEVEL: Final = "level"
TEXT: Final = "text"
KINDS: Final = (COUNTER, LEVEL, TEXT)

#: Every role's components: the only place their names are spelled.
COMPONENTS: Final[Mapping[str, frozenset[str]]] = {
    "aggregator": frozenset({
        "intake",     # datagrams, stream connections and lines refused before parsing
        "ledger",     # lines refused after parsing (overflow, DogStatsD events, ...)
        "auth",       # lines refused by token authentication
        "exchange",   # lines between workers
        "workers",    # worker deaths and their loss bound (worker 0 reports them)
        "worker",     # this worker (its generation)
        "carbon",     # one sender per Carbon node
        "console",    # the console output
        "flusher",    # the output lines each flush rendered
    }),
    "proxy": frozenset({
        "intake",      # as for the aggregator
        "router",      # packets and lines routed
        "auth",        # lines refused by token authentication
        "membership",  # the aggregator list in force
        "forwarders",  # every forwarder summed, and every drop (the process's totals)
        "forwarder",   # one per aggregator
        "self",        # the proxy's own self-metric lines
    }),
    "ring": frozenset({
        "agent",       # the ring agent on a Carbon host
        "http",        # its HTTP server (connections, answers by status)
    }),
}


def _field(kind: str, help: str, **kwargs: Any) -> Any:
    return attrs.field(metadata={"kind": kind, "help": help}, **kwargs)


def counter(*, help: str, **kwargs: Any) -> Any:
    """Declare a snapshot field that is a counter (a total since start)."""
    return _field(COUNTER, help, **kwargs)


def level(*, help: str, **kwargs: Any) -> Any:
    """Declare a snapshot field that is a level (a current value)."""
    return _field(LEVEL, help, **kwargs)


def text(*, help: str, **kwargs: Any) -> Any:
    """Declare a snapshot field that is text (shown, never published to Carbon)."""
    return _field(TEXT, help, **kwargs)


@attrs.frozen
class Reading:
    """One named figure of one snapshot."""

    name: str
    value: int | float | str
    kind: str
    help: str = ""
    #: Where the figure comes from, as `read` named it (empty when unknown): what
    #: ``/metrics`` turns into a metric name and labels (`common.admin.prometheus`).
    role: str = ""
    component: str = ""
    instance: str | None = None
    measure: str = ""
    key: str | None = None


def path_component(text: str) -> str:
    """``text`` as one Graphite path component: every character but letters, digits, ``-``
    and ``_`` becomes ``_`` (``127.0.0.1:2003:a`` -> ``127_0_0_1_2003_a``)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def statistic_name(role: str, component: str, *parts: str) -> str:
    """The dotted name of a figure; raises ValueError for a role or component that
    `COMPONENTS` does not declare."""
    components = COMPONENTS.get(role)
    if components is None:
        raise ValueError(f"unknown role {role!r}")
    if component not in components:
        raise ValueError(f"unknown component {component!r} of role {role!r}")
    return ".".join((role, component, *parts))


def read(role: str, component: str, snapshot: Any, *,
         instance: str | None = None) -> list[Reading]:
    """The figures of one snapshot, named, in field order (mapping keys sorted).

    Args:
        role, component: where the snapshot comes from (declared in `COMPONENTS`).
        snapshot: an attrs instance whose figures are declared with `counter`, `level`
            or `text`.
        instance: which of several components of this kind (already a path component).
    """
    head = (instance,) if instance is not None else ()
    out: list[Reading] = []
    for field in attrs.fields(type(snapshot)):
        kind = field.metadata.get("kind")
        if kind is None:
            continue
        value = getattr(snapshot, field.name)
        help_text = field.metadata.get("help", "")
        base = statistic_name(role, component, *head, field.name)
        where = {"role": role, "component": component, "instance": instance,
                 "measure": field.name}
        if isinstance(value, Mapping):
            out.extend(Reading(f"{base}.{key}", _plain(value[key], kind), kind, help_text,
                               key=str(key), **where)
                       for key in sorted(value))
        else:
            out.append(Reading(base, _plain(value, kind), kind, help_text, **where))
    return out


def _plain(value: Any, kind: str) -> int | float | str:
    if kind == TEXT:
        return str(value)
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, int | float):
        raise TypeError(f"a {kind} must be a number, not {type(value).__name__}")
    return value


def numeric(readings: Iterable[Reading]) -> dict[str, float]:
    """The figures Carbon receives (counters and levels), by name."""
    return {r.name: r.value for r in readings if r.kind != TEXT}  # type: ignore[misc]


def stats_lines(readings: Iterable[Reading]) -> list[tuple[str, object]]:
    """The figures as ``(name, value)`` lines for the management ``stats`` command."""
    return [(r.name, r.value) for r in readings]
