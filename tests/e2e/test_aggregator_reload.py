"""End to end: a real aggregator (one process, and two workers) under steady load gets a
SIGHUP with its Carbon ring changed from [A] to [A, B] (two harness sinks), and one process
from [A, B] to [B] (A retired: it drains, then closes, while the load goes on).

What must hold afterwards: every counter's total over both sinks is exactly what was sent
(nothing lost, nothing counted twice); no (path, timestamp) is written twice, to one node or
to two (a path may move at the boundary, never be duplicated); every point up to the
boundary each process logged (``event=ring_changed last_timestamp=T``) is where the old
ring places it, every later one where the new ring does; the node in both rings keeps its
connections (one per process); the log level applies at once, a setting that needs a
restart is refused with its line, and a config that does not parse is refused whole while
the aggregator goes on.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from common.ring import CarbonNode, Ring
from harness.client import send_udp
from harness.daemon import parse_logfmt, wait_until
from harness.sink import GraphiteSink
from harness.tallyd import AggregatorProcess, start_aggregator

pytestmark = [pytest.mark.e2e]

NAMES = 100
LINES_PER_DATAGRAM = 20
DATAGRAMS_PER_SECOND = 50  # 1,000 lines/s: steady, and far below any kernel drop
LOAD_SECONDS = 6.0
RELOAD_AFTER_SECONDS = 2.5


class SteadySender(threading.Thread):
    """Counter lines at a fixed pace over `NAMES` names for `LOAD_SECONDS`, counting what
    it sent per name (it is bounded: it stops by itself)."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.sent: Counter[str] = Counter()

    def run(self) -> None:
        import socket

        line = 0
        start = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for n in range(int(LOAD_SECONDS * DATAGRAMS_PER_SECOND)):
                names = [f"reload.c{(line + i) % NAMES}" for i in range(LINES_PER_DATAGRAM)]
                line += LINES_PER_DATAGRAM
                sock.sendto("\n".join(f"{name}:1|c" for name in names).encode(), self.address)
                self.sent.update(names)
                time.sleep(max(0.0, start + (n + 1) / DATAGRAMS_PER_SECOND - time.monotonic()))


def write_config(path: Path, carbon: list[str], workers: int, **extra: object) -> None:
    lines = ['listen = ["udp://127.0.0.1:0"]', "mgmt_port = 0", "flush_interval = 1",
             f"workers = {workers}", f"carbon = {carbon!r}".replace("'", '"'),
             # Idle counters are not flushed as zeros: each point carries its interval's lines.
             "delete_idle_stats = true", 'identity = "reloadtest"']
    lines += [f"{key} = {value!r}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")


def log_events(agg: AggregatorProcess, event: str) -> list[dict[str, str]]:
    return [fields for line in agg.log_text(None).splitlines()
            if (fields := parse_logfmt(line)).get("event") == event]


def ring_of(nodes: list[str]) -> Ring:
    return Ring.from_nodes([CarbonNode("127.0.0.1", int(port), instance)
                            for _, port, instance in (n.split(":") for n in nodes)])


@pytest.mark.parametrize(("workers", "change"), [(1, "add"), (2, "add"), (1, "retire")])
def test_ring_reload_under_load_loses_and_doubles_nothing(tmp_path: Path, workers: int,
                                                          change: str) -> None:
    """``add``: [A] -> [A, B] (the brief's case); ``retire``: [A, B] -> [B], A drains and
    closes its connection while the load goes on."""
    config = tmp_path / "aggregator.toml"
    with GraphiteSink() as a, GraphiteSink() as b:
        sinks = {"a": a, "b": b}
        node_a, node_b = f"127.0.0.1:{a.port}:a", f"127.0.0.1:{b.port}:b"
        before, after = ([node_a], [node_a, node_b]) if change == "add" else (
            [node_a, node_b], [node_b])
        write_config(config, before, workers)
        with start_aggregator(["--config", str(config)]) as agg:
            sender = SteadySender(agg.udp)
            sender.start()
            time.sleep(RELOAD_AFTER_SECONDS)
            write_config(config, after, workers, max_line_bytes=4096, log_level="debug")
            agg.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: len(log_events(agg, "ring_changed")) == workers, 15,
                       message="every process changed its ring")
            if change == "retire":
                wait_until(lambda: len(log_events(agg, "carbon_retired")) == workers, 15,
                           message="every process retired A")
                a.wait_closed(10)  # while the aggregator still runs
            sender.join(LOAD_SECONDS + 10)
            assert not sender.is_alive()
            config.write_text("carbon = [\n")  # not TOML: refused whole
            agg.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: len(log_events(agg, "reload_failed")) == workers, 15,
                       message="the bad config was refused")
            assert agg.stop() == 0
            log = agg.log_text(None)
        a.wait_closed(10)
        b.wait_closed(10)
        records = {name: sink.records() for name, sink in sinks.items()}
        connections = {name: sink.connection_count() for name, sink in sinks.items()}

    changed = log_events(agg, "ring_changed")
    # The supervisor passed the signal on: each worker changed its ring once, and each
    # refused the unparsable file.
    assert sorted(int(c["worker"]) for c in changed) == list(range(workers))
    assert sorted(int(f["worker"]) for f in log_events(agg, "reload_failed")) == list(
        range(workers))
    old_ring, new_ring = ring_of(before), ring_of(after)
    started = log_events(agg, "started" if workers == 1 else "worker_started")
    assert {c["old"] for c in changed} == {s["ring"] for s in started} == {
        old_ring.fingerprint()}
    assert {c["new"] for c in changed} == {new_ring.fingerprint()}
    refused = log_events(agg, "reload_refused")
    assert [(r["setting"], r["reason"]) for r in refused] == [
        ("max_line_bytes", "restart_required")] * workers, log
    assert "level=debug" in log.split("event=reloaded", 1)[1]  # log_level: at once
    if change == "retire":
        retired = log_events(agg, "carbon_retired")
        assert {r["drained"] for r in retired} == {"True"}
        assert {r["node"] for r in retired} == {node_a}

    # Every counter exact over both sinks; no (path, timestamp) written twice anywhere.
    written: Counter[tuple[str, int]] = Counter()
    where: dict[tuple[str, int], str] = {}
    totals: dict[str, float] = defaultdict(float)
    for sink, recs in records.items():
        for r in recs:
            path, value, stamp = r.line.rsplit(" ", 2)
            written[(path, int(stamp))] += 1
            where[(path, int(stamp))] = sink
            if path.startswith("stats_counts.reload."):
                totals[path.removeprefix("stats_counts.")] += float(value)
    doubled = {key: n for key, n in written.items() if n > 1}
    assert not doubled, f"written twice: {sorted(doubled)[:10]}"
    assert totals == {name: float(n) for name, n in sender.sent.items()}
    assert sum(sender.sent.values()) == LOAD_SECONDS * DATAGRAMS_PER_SECOND * LINES_PER_DATAGRAM

    # Up to the earliest boundary: where the old ring places it; after the latest: where
    # the new ring does. (With two workers each switches at its own next boundary after
    # the signal; each path has one owner worker, so a path's interval is never split.)
    first = min(int(c["last_timestamp"]) for c in changed)
    last = max(int(c["last_timestamp"]) for c in changed)
    assert last - first <= 1  # one flush interval apart at most
    misplaced = []
    for (path, stamp), sink in where.items():
        ring = old_ring if stamp <= first else new_ring if stamp > last else None
        if ring is not None and ring.node_for(path).instance != sink:
            misplaced.append((path, stamp, sink))
    assert not misplaced, misplaced[:10]
    moved = {p for (p, s), sink in where.items() if p.startswith("stats_counts.reload.")
             and s > last and old_ring.node_for(p) != new_ring.node_for(p)}
    assert moved, "no counter moved at the change"
    # The node in both rings kept its connections (one per process); the retired one's
    # were closed, and it got nothing after the boundary.
    kept = "a" if change == "add" else "b"
    assert connections[kept] == workers
    if change == "retire":
        assert max(s for (p, s), sink in where.items() if sink == "a") <= last
    else:
        assert min(s for (p, s), sink in where.items() if sink == "b") > first


def test_token_reload_applies_at_once_in_every_worker(tmp_path: Path) -> None:
    """Two workers, token authentication: after SIGHUP the new token is accepted and the
    revoked one refused by each worker (lines sent to each worker's own socket,
    ``worker_listen``, are authenticated by that worker)."""
    config = tmp_path / "aggregator.toml"
    with GraphiteSink() as sink:
        node = f"127.0.0.1:{sink.port}:a"
        settings = {"auth": "token", "worker_listen": "udp://127.0.0.1:0"}
        write_config(config, [node], 2, auth_tokens=["old"], **settings)
        with start_aggregator(["--config", str(config)]) as agg:
            write_config(config, [node], 2, auth_tokens=["new"], auth_revoked_tokens=["old"],
                         **settings)
            agg.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: len(log_events(agg, "reloaded")) == 2, 15,
                       message="both workers reloaded")
            endpoints = [agg.address("worker", i) for i in range(2)]
            for endpoint in endpoints:
                host, port = endpoint.rsplit(":", 1)
                send_udp((host, int(port)), [b"new.tok.ok:1|c\nold.tok.no:1|c"] * 100)
            wait_until(lambda: sum(float(r.line.split()[1]) for r in sink.records()
                                   if r.line.startswith("stats_counts.tok.ok ")) >= 200, 15,
                       message="the new token's lines arrived")
            assert agg.stop() == 0
        sink.wait_closed(10)
    assert {f["applied"] for f in log_events(agg, "reloaded")} == {
        "auth_tokens,auth_revoked_tokens"}
    assert not [r for r in sink.records() if r.line.startswith("stats_counts.tok.no ")]
    assert sum(float(r.line.split()[1]) for r in sink.records()
               if r.line.startswith("stats_counts.tok.ok ")) == 200
    revoked: dict[str, float] = defaultdict(float)
    for r in sink.records():
        path, value, _ = r.line.rsplit(" ", 2)
        if path.endswith(".auth.refused_lines.revoked"):
            worker = path.split("reloadtest-")[1].split(".")[0]
            revoked[worker] = max(revoked[worker], float(value))  # a total since start
    assert revoked == {"w0": 100.0, "w1": 100.0}
