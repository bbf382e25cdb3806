"""Reading one /status document (docs/admin.md, "GET /status") into a `DaemonView`.

Defensively: keys this reader does not know are ignored, a missing counter is 0, and a
document that is not an object, has another ``schema``, a key of the wrong type, or a
``role`` other than the tier it was listed in makes that daemon a ``bad_status`` (named in
the report, never a crash). Over a window, the counters are the differences between two
readings of the same process (`parse_answer`), each member matched with itself by kind and
name (its index changes when the list does).

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import attrs

from .clustermodel import LEVELS, RETIRED, Counts, DaemonView, MemberView, StatusAnswer

#: The /status schema this reader understands.
STATUS_SCHEMA: Final = 1


def _minus(now: Mapping[str, int], then: Mapping[str, int]) -> dict[str, int]:
    return {key: value - then.get(key, 0) for key, value in now.items()}


def subtract_counts(now: Counts, then: Counts) -> Counts:
    """The counters' growth from ``then`` to ``now``; levels stay ``now``'s."""
    changes: dict[str, Any] = {}
    for field in attrs.fields(Counts):
        a, b = getattr(now, field.name), getattr(then, field.name)
        if field.name in LEVELS:
            changes[field.name] = a
        elif isinstance(a, Mapping):
            changes[field.name] = _minus(a, b)
        else:
            changes[field.name] = a - b
    return Counts(**changes)


def subtract_member(now: MemberView, then: MemberView | None) -> MemberView:
    if then is None:
        return now
    return attrs.evolve(now, sent_lines=now.sent_lines - then.sent_lines,
                        dropped_lines=_minus(now.dropped_lines, then.dropped_lines))


class BadStatus(ValueError):
    """A /status document this reader cannot use."""


def _number(data: Mapping[str, Any], key: str) -> int | float | None:
    """``data[key]`` as a finite number (None when absent or null)."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadStatus(f"{key} is {value!r}, not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadStatus(f"{key} is {value!r}, not a finite number")
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = _number(data, key)
    return 0 if value is None else int(value)


def _by_reason(data: Mapping[str, Any], key: str) -> dict[str, int]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise BadStatus(f"{key} is {value!r}, not an object")
    return {str(reason): _int(value, reason) for reason in value}


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key, "")
    return "" if value is None else str(value)


def _float(data: Mapping[str, Any], key: str) -> float | None:
    value = _number(data, key)
    return None if value is None else float(value)


def parse_rates(data: Any) -> dict[str, Any]:
    """The ``rates`` object: ``interval_seconds``, ``lines_in``, ``lines_out`` (finite
    numbers, 0 when absent) and ``dropped_lines`` by reason; other keys are left out."""
    if not isinstance(data, Mapping):
        raise BadStatus("rates is not an object")
    dropped = data.get("dropped_lines") or {}
    if not isinstance(dropped, Mapping):
        raise BadStatus(f"rates.dropped_lines is {dropped!r}, not an object")
    out: dict[str, Any] = {key: _float(data, key) or 0.0
                           for key in ("interval_seconds", "lines_in", "lines_out")}
    out["dropped_lines"] = {str(reason): _float(dropped, reason) or 0.0 for reason in dropped}
    return out


def parse_counts(data: Any) -> Counts:
    if not isinstance(data, Mapping):
        raise BadStatus("totals is not an object")
    return Counts(lines_in=_int(data, "lines_in"), lines_out=_int(data, "lines_out"),
                  buffered_lines=_int(data, "buffered_lines"),
                  dropped_lines=_by_reason(data, "dropped_lines"),
                  points_flushed=_int(data, "points_flushed"),
                  points_sent=_int(data, "points_sent"),
                  points_buffered=_int(data, "points_buffered"),
                  points_dropped=_by_reason(data, "points_dropped"),
                  self_lines=_int(data, "self_lines"))


def parse_member(data: Any) -> MemberView:
    if not isinstance(data, Mapping):
        raise BadStatus("a member is not an object")
    capacity = data.get("buffer_capacity_lines")
    return MemberView(kind=_str(data, "kind"), index=_int(data, "index"),
                      name=_str(data, "name"), address=_str(data, "address"),
                      state=_str(data, "state") or "up", reason=_str(data, "reason"),
                      sent_lines=_int(data, "sent_lines"),
                      buffered_lines=_int(data, "buffered_lines"),
                      buffer_capacity_lines=None if capacity is None
                      else _int(data, "buffer_capacity_lines"),
                      dropped_lines=_by_reason(data, "dropped_lines"))


def parse_status(answer: StatusAnswer) -> DaemonView:
    """The `DaemonView` of one document.

    Raises:
        BadStatus: for a document this reader cannot use (the module docstring).
    """
    doc = answer.document
    if not isinstance(doc, Mapping):
        raise BadStatus("the answer is not a JSON object")
    if doc.get("schema") != STATUS_SCHEMA:
        raise BadStatus(f"schema {doc.get('schema')!r}: this tool reads schema "
                        f"{STATUS_SCHEMA}")
    fingerprints = doc.get("fingerprints") or {}
    members = doc.get("members") or []
    rates = doc.get("rates") or {}
    not_ready = doc.get("not_ready") or []
    if not isinstance(fingerprints, Mapping) or not isinstance(members, list) \
            or not isinstance(rates, Mapping) or not isinstance(not_ready, list):
        raise BadStatus("fingerprints, members, rates or not_ready of the wrong type")
    pid = doc.get("pid")
    return DaemonView(
        url=answer.url, tier=answer.tier, position=answer.position, reachable=True,
        role=_str(doc, "role"), identity=_str(doc, "identity"), version=_str(doc, "version"),
        pid=pid if isinstance(pid, int) else None, started=_float(doc, "started"),
        uptime_seconds=_float(doc, "uptime_seconds"), health=_str(doc, "health"),
        ready=doc.get("ready") is True, not_ready=tuple(str(r) for r in not_ready),
        flush_interval=_float(doc, "flush_interval"),
        membership=_str(fingerprints, "membership"), config=_str(fingerprints, "config"),
        workers=_int(doc, "workers") or 1, totals=parse_counts(doc.get("totals") or {}),
        rates=parse_rates(rates), members=tuple(parse_member(m) for m in members))


def parse_answer(answer: StatusAnswer, before: StatusAnswer | None) -> DaemonView:
    """The `DaemonView` of ``answer``; with ``before`` (the window's first reading of the
    same daemon), its counters over the window.

    An error, a bad document or a daemon of another role than its tier is an unreachable
    view whose ``error_kind`` is ``unreachable`` or ``bad_status``.
    """
    unreachable = DaemonView(url=answer.url, tier=answer.tier, position=answer.position,
                             reachable=False)
    if answer.error is not None:
        return attrs.evolve(unreachable, error=answer.error, error_kind="unreachable")
    try:
        view = parse_status(answer)
    except BadStatus as exc:
        return attrs.evolve(unreachable, error=str(exc), error_kind="bad_status")
    if view.role != answer.tier:
        return attrs.evolve(unreachable, identity=view.identity, error_kind="bad_status",
                            error=f"listed as a {answer.tier}, but its role is {view.role!r}")
    if before is None:
        return view
    try:
        first = parse_status(before) if before.error is None else None
    except BadStatus:
        first = None
    if first is None or (first.pid, first.started) != (view.pid, view.started):
        return attrs.evolve(view, restarted=first is not None)
    return attrs.evolve(view, windowed=True, totals=subtract_counts(view.totals, first.totals),
                        members=_subtract_members(view.members, first.members))


def _subtract_members(now: tuple[MemberView, ...], then: tuple[MemberView, ...]
                      ) -> tuple[MemberView, ...]:
    """Each member's counters since its first reading, matched by kind and name, not by
    index: a list change moves a member to another index, or retires it (state
    ``retired``), and its counters still run from the same start. A name retired within
    the window and live again is a new member (counting from its start) beside the retired
    one (the old member)."""
    live_then = {(m.kind, m.name): m for m in then if m.state != RETIRED}
    retired_then = {(m.kind, m.name): m for m in then if m.state == RETIRED}
    retired_now = {(m.kind, m.name) for m in now if m.state == RETIRED}
    out = []
    for m in now:
        key = (m.kind, m.name)
        if m.state == RETIRED:
            before = retired_then.get(key) or live_then.get(key)
        elif key in retired_now and key not in retired_then:
            before = None  # retired in the window, then added back: a new member
        else:
            before = live_then.get(key)
        out.append(subtract_member(m, before))
    return tuple(out)
