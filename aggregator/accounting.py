"""The aggregator's loss accounting: its /status totals and Carbon members, from readings.

Everything here is computed from figures by their full names (`common.stats`), so worker 0
of several computes each other worker's part from that worker's ``stats`` answer just as
it computes its own, and adds them up (`common.admin.status.add_totals`).

Per process (a worker), with ``received`` its ledger's ``received_lines`` (lines read on
its own sockets, authentication's refusals aside):

* ``lines_in = received + auth refusals``;
* ``lines_out = received - forwarded - too_large + received from the other workers - the
  ledger's refused lines``: the lines aggregated into its own ledger, a line counting as
  aggregated when any of its segments reached the ledger (``x:1|c:zz`` is out, its bad
  segment counted only in Etsy's ``bad_lines_seen``);
* ``dropped_lines``: the ledger's refused lines by reason (``bad_line``, ``overflow``,
  ``dogstatsd_event``, ``dogstatsd_service_check``: whole lines, not segments), ``auth_<reason>``,
  ``exchange_<reason>`` and ``kernel_overflow`` (datagrams, not lines: left out of the
  equation, see `common.admin.status`).

Summed over the workers, ``lines_in == lines_out + sum(dropped_lines)`` holds when the
exchange delivered or counted every line it was handed (nothing in flight): which is what
the equation checks. The points: ``points_flushed`` (lines rendered by the flushes) ==
``points_sent + points_buffered (memory and spool) + sum(points_dropped)`` over the Carbon
nodes, with one node per path (replication 1) and Carbon the only output.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from common.admin.status import KERNEL_OVERFLOW, Member, Totals

LEDGER: Final = "aggregator.ledger."
AUTH_REFUSED: Final = "aggregator.auth.refused_lines."
EXCHANGE: Final = "aggregator.exchange."
CARBON: Final = "aggregator.carbon."
KERNEL_DROPS: Final = "aggregator.intake.kernel_drops"
FLUSHED: Final = "aggregator.flusher.flushed_lines"
#: The index of a retired member: it has no place in the ring in force.
RETIRED_INDEX: Final = -1


def _int(values: Mapping[str, object], name: str) -> int:
    value = values.get(name, 0)
    return int(value) if isinstance(value, int | float) else 0


def _by_key(values: Mapping[str, object], prefix: str) -> dict[str, int]:
    return {name[len(prefix):]: _int(values, name) for name in values
            if name.startswith(prefix) and "." not in name[len(prefix):]}


def carbon_instances(values: Mapping[str, object]) -> list[str]:
    """Every Carbon node (as a path component) with figures in ``values``: the ring's, and
    the ones a reload retired (their sent lines stay part of what was flushed)."""
    tail = ".sent_lines"
    return sorted({name[len(CARBON):-len(tail)] for name in values
                   if name.startswith(CARBON) and name.endswith(tail)
                   and "." not in name[len(CARBON):-len(tail)]})


def aggregator_totals(values: Mapping[str, object], *, carbon_nodes: Sequence[str] = (),
                      kernel_drops: bool = True) -> Totals:
    """One process's totals from its figures by full name.

    Args:
        carbon_nodes: the instances (path components) of the Carbon nodes whose figures are
            summed (`carbon_instances`: every node that has any).
        kernel_drops: whether this process reads the shared sockets' kernel drops (with
            several workers, worker 0 reads them, each worker its own socket's).
    """
    received = _int(values, LEDGER + "received_lines")
    ledger_drops = _by_key(values, LEDGER + "refused_lines.")
    auth = _by_key(values, AUTH_REFUSED)
    exchange = _by_key(values, EXCHANGE + "dropped_lines.")
    forwarded = _int(values, EXCHANGE + "forwarded_lines")
    from_peers = _int(values, EXCHANGE + "received_lines")
    lines_out = (received - forwarded - exchange.get("too_large", 0) + from_peers
                 - sum(ledger_drops.values()))
    dropped: dict[str, int] = {"bad_line": 0, **ledger_drops}
    dropped.update({f"auth_{reason}": n for reason, n in auth.items()})
    dropped.update({reason if reason.startswith("exchange_") else f"exchange_{reason}": n
                    for reason, n in exchange.items()})
    dropped[KERNEL_OVERFLOW] = _int(values, KERNEL_DROPS) if kernel_drops else 0
    sent = buffered = 0
    points_dropped: dict[str, int] = {}
    for node in carbon_nodes:
        head = f"{CARBON}{node}."
        sent += _int(values, head + "sent_lines")
        buffered += _int(values, head + "buffered_lines") + _int(values, head + "spooled_lines")
        for reason, n in _by_key(values, head + "dropped_lines.").items():
            points_dropped[reason] = points_dropped.get(reason, 0) + n
    return Totals(lines_in=received + sum(auth.values()), lines_out=lines_out,
                  buffered_lines=0, dropped_lines=dropped,
                  points_flushed=_int(values, FLUSHED), points_sent=sent,
                  points_buffered=buffered, points_dropped=points_dropped)


def carbon_members(nodes: Sequence[tuple[str, str, str]],
                   parts: Sequence[Mapping[str, object]], *,
                   known: Mapping[str, tuple[str, str]] | None = None) -> list[Member]:
    """The Carbon nodes as /status members, summed over ``parts`` (each worker's figures):
    the ring's, in ring order, then every other node with figures in a part (one a reload
    retired, whose counts the totals include: `carbon_instances`) with state ``retired``
    and index `RETIRED_INDEX` (no place in the ring in force; as a proxy lists the
    aggregators a list change removed).

    Args:
        nodes: ``(name as configured, host:port, instance path component)`` in ring order.
        known: a retired node's ``(name, host:port)`` by instance, where known; else its
            name is its instance and its address ``""``.
    """
    live = {instance for _, _, instance in nodes}
    retired = sorted({i for p in parts for i in carbon_instances(p)} - live)
    names = known or {}
    every = [*((name, address, instance, False) for name, address, instance in nodes),
             *((*names.get(i, (i, "")), i, True) for i in retired)]
    members = []
    for index, (name, address, instance, gone) in enumerate(every):
        head = f"{CARBON}{instance}."
        connected = any(_int(p, head + "connected") for p in parts)
        dropped: dict[str, int] = {}
        for part in parts:
            for reason, n in _by_key(part, head + "dropped_lines.").items():
                dropped[reason] = dropped.get(reason, 0) + n
        members.append(Member(
            kind="carbon", index=RETIRED_INDEX if gone else index, name=name, address=address,
            state="retired" if gone else "up" if connected else "down",
            reason="" if connected or gone else "not_connected",
            sent_lines=sum(_int(p, head + "sent_lines") for p in parts),
            buffered_lines=sum(_int(p, head + "buffered_lines") + _int(p, head + "spooled_lines")
                               for p in parts),
            buffer_capacity_lines=None, dropped_lines=dropped))
    return members


def parse_stats_text(reply: str) -> dict[str, int | float | str]:
    """A ``stats`` answer (``name: value`` lines, then ``END``) as figures by name; a value
    that is not a number stays text."""
    out: dict[str, int | float | str] = {}
    for line in reply.splitlines():
        name, sep, text = line.partition(": ")
        if not sep:
            continue
        try:
            out[name] = int(text)
        except ValueError:
            try:
                out[name] = float(text)
            except ValueError:
                out[name] = text
    return out
