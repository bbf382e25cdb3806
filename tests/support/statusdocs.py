"""/status documents shaped per the contract (docs/admin.md, "GET /status"), for the tests
of the cluster report: every key a daemon serves, and one from the future that readers must
ignore."""

from __future__ import annotations

from typing import Any


def member(kind: str, index: int, name: str, *, sent: int = 0, buffered: int = 0,
           dropped: dict[str, int] | None = None, state: str = "up",
           reason: str = "") -> dict[str, Any]:
    return {"kind": kind, "index": index, "name": name, "address": name, "state": state,
            "reason": reason, "sent_lines": sent, "buffered_lines": buffered,
            "buffer_capacity_lines": None, "dropped_lines": dropped or {}}


def status(role: str, identity: str, *, members: list[dict[str, Any]] | None = None,
           membership: str = "m1", pid: int = 10, started: float = 1000.0,
           **totals: Any) -> dict[str, Any]:
    base = {"lines_in": 0, "lines_out": 0, "buffered_lines": 0, "dropped_lines": {}}
    if role == "aggregator":
        base.update(points_flushed=0, points_sent=0, points_buffered=0, points_dropped={})
    base.update(totals)
    return {"schema": 1, "version": "0.1.0", "role": role, "identity": identity, "pid": pid,
            "now": 2000.0, "started": started, "uptime_seconds": 1000.0, "health": "up",
            "ready": True, "not_ready": [], "flush_interval": 10.0,
            "fingerprints": {"membership": membership, "config": "c"},
            "members": members or [], "workers": 1, "totals": base,
            "rates": {"interval_seconds": 10.0, "lines_in": 5.0, "lines_out": 5.0,
                      "dropped_lines": {}},
            "figures": {}, "a_key_from_the_future": [1, 2]}
