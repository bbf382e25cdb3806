"""End to end: two proxies under steady load change their aggregator list from [A] to
[A, B] on SIGHUP, at one agreed instant; real processes on 127.0.0.1 (the shell suite's
test_proxy_reload.py drives the same switch in one process).

Each aggregator flushes to a Carbon sink of its own, so a (path, timestamp) written by both
shows up in both sinks. The aggregators run with ``delete_idle_stats = true``: a name that
moved from A to B gets no more lines at A, and without it A would go on writing it (a
counter's 0, a gauge's last value) for every interval B writes it too. One proxy runs
``--processes 2``: its supervisor passes the SIGHUP on to both children.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.ring import CarbonNode, Ring
from common.shard import shard_index
from harness.daemon import parse_logfmt, wait_until
from harness.port import split_host_port
from harness.sink import GraphiteSink
from harness.tallyd import AggregatorProcess, ProxyProcess, start_aggregator

pytestmark = pytest.mark.e2e

NAMES = 60
LINES_PER_DATAGRAM = 20
FLUSH_INTERVAL = 1.0


def start_sinked_aggregator(sink: GraphiteSink) -> AggregatorProcess:
    return start_aggregator(["--listen", "udp://127.0.0.1:0", "--carbon",
                             f"127.0.0.1:{sink.port}", "--flush-interval", str(FLUSH_INTERVAL),
                             "--mgmt-port", "0", "--delete-idle-stats"])


def proxy_toml(aggregators: list[str], *, processes: int, **extra: Any) -> str:
    lines = ['listen = ["udp://127.0.0.1:0"]', "mgmt_port = 0", f"processes = {processes}",
             f"aggregator = {aggregators!r}".replace("'", '"'),
             f"flush_interval = {FLUSH_INTERVAL}", "health_interval = 0.5"]
    lines += [f"{key} = {value!r}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


class Load:
    """Steady counter traffic (``rl.c<i>:1|c``), datagrams alternating between the proxies
    from a few source sockets each (a ``--processes`` proxy's kernel spreads 4-tuples)."""

    def __init__(self, targets: list[tuple[str, int]], period: float = 0.01) -> None:
        self.targets = targets
        self.period = period
        self.sent: collections.Counter[str] = collections.Counter()
        self.per_target = [0] * len(targets)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        number = 0
        try:
            while not self._stop.is_set():
                names = [f"rl.c{(number * LINES_PER_DATAGRAM + j) % NAMES}"
                         for j in range(LINES_PER_DATAGRAM)]
                target = number % len(self.targets)
                sockets[(number // len(self.targets)) % len(sockets)].sendto(
                    "\n".join(f"{n}:1|c" for n in names).encode(), self.targets[target])
                self.sent.update(names)
                self.per_target[target] += len(names)
                number += 1
                time.sleep(self.period)
        finally:
            for sock in sockets:
                sock.close()


def writes(sink: GraphiteSink) -> dict[tuple[str, int], float]:
    """``stats_counts.rl.*`` values by (name, timestamp)."""
    out: dict[tuple[str, int], float] = {}
    for record in sink.records():
        path, value, stamp = record.line.split(" ")
        if path.startswith("stats_counts.rl."):
            key = (path.removeprefix("stats_counts."), int(stamp))
            assert key not in out, f"{key} written twice by one aggregator"
            out[key] = float(value)
    return out


def totals(*sinks: GraphiteSink) -> dict[str, float]:
    summed: dict[str, float] = collections.defaultdict(float)
    for sink in sinks:
        for (name, _), value in writes(sink).items():
            summed[name] += value
    return dict(summed)


@pytest.fixture
def sinks() -> Iterator[list[GraphiteSink]]:
    started = [GraphiteSink().start() for _ in range(2)]
    yield started
    for sink in started:
        sink.close()


@pytest.fixture
def aggregators(sinks: list[GraphiteSink]) -> Iterator[list[AggregatorProcess]]:
    procs: list[AggregatorProcess] = []
    try:
        for sink in sinks:
            procs.append(start_sinked_aggregator(sink))
        yield procs
    finally:
        for proc in procs:
            proc.kill()


def test_two_proxies_switch_at_one_instant_totals_exact_no_interval_written_twice(
    proxy_launcher: Callable[..., ProxyProcess], tmp_path: Path,
    sinks: list[GraphiteSink], aggregators: list[AggregatorProcess],
) -> None:
    a, b = (f"127.0.0.1:{proc.udp[1]}:{proc.mgmt[1]}" for proc in aggregators)
    files = [tmp_path / "p1.toml", tmp_path / "p2.toml"]
    for path, processes in zip(files, (1, 2), strict=True):
        path.write_text(proxy_toml([a], processes=processes))
    proxies = [proxy_launcher(["--config", str(path)]) for path in files]
    try:
        wait_until(lambda: proxies[1].log_text(None).count("event=started") == 2, 20,
                   message="both processes of the second proxy started")
        targets = [split_host_port(p.addresses["udp"][0]) for p in proxies]
        with Load(targets) as load:
            time.sleep(1.5)
            at = math.ceil(time.time() + 3.0)  # one instant for both, given in the file
            for path, processes in zip(files, (1, 2), strict=True):
                path.write_text(proxy_toml([a, b], processes=processes,
                                           aggregators_from=float(at)))
            for proxy in proxies:
                os.kill(proxy.pid, signal.SIGHUP)
            wait_until(lambda: time.time() > at + 2.5, 10, message="after the switch")
        wait_until(lambda: totals(*sinks) == {n: float(v) for n, v in load.sent.items()}, 20,
                   message="every counter's total at the sinks")
        logs = [proxies[0].log_text(None), proxies[1].log_text(None)]
        changed = [parse_logfmt(line) for log in logs for line in log.splitlines()
                   if "event=membership_changed" in line]
        scheduled = [parse_logfmt(line) for log in logs for line in log.splitlines()
                     if "event=membership_scheduled" in line]
        assert [float(s["at"]) for s in scheduled] == [at] * 3  # 1 + 2 processes
        assert len(changed) == 3 and len({c["fingerprint"] for c in changed}) == 1
        stats = proxies[0].stats()
        assert stats["proxy.membership.fingerprint"] == changed[0]["fingerprint"]
        # The proxies' own gauges (self-metrics) go out too: /status counts them apart.
        status = proxies[0].status()
        totals_p0 = status["totals"]
        assert totals_p0["lines_out"] == totals_p0["lines_in"] == load.per_target[0]
        assert status["figures"]["proxy.forwarders.sent_lines"] == \
            load.per_target[0] + totals_p0["self_lines"]
    finally:
        for proxy in proxies:
            proxy.kill()
    # The --processes supervisor was SIGKILLed: the harness removed its private directory.
    runtime_dir = parse_logfmt(proxies[1].wait_for_log("event=supervising", 5))["runtime_dir"]
    assert runtime_dir and not os.path.exists(runtime_dir)
    on_a, on_b = writes(sinks[0]), writes(sinks[1])
    assert not set(on_a) & set(on_b), "a (path, interval) written by both aggregators"
    moved = {name for name, _ in on_b}
    assert moved == {f"rl.c{i}" for i in range(NAMES) if shard_index(f"rl.c{i}".encode(), 2)}
    for name, stamp in on_a:
        assert stamp <= at or name not in moved
    assert all(stamp > at for _, stamp in on_b)
    assert any(stamp == at for name, stamp in on_a if name in moved)  # A wrote the last one


def test_a_supervisor_gives_its_processes_one_instant_of_its_own(
    proxy_launcher: Callable[..., ProxyProcess], tmp_path: Path,
) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    a, b = f"127.0.0.1:{sink.getsockname()[1]}", "127.0.0.1:9"
    path = tmp_path / "proxy.toml"
    path.write_text(proxy_toml([a], processes=2, switch_margin=0.5))
    proc = proxy_launcher(["--config", str(path)])
    try:
        wait_until(lambda: proc.log_text(None).count("event=started") == 2, 20,
                   message="both processes started")
        path.write_text(proxy_toml([a, b], processes=2, switch_margin=0.5,
                                   max_datagram_bytes=512))
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: proc.log_text(None).count("event=membership_changed") == 2, 10,
                   message="both processes switched")
        path.write_text("aggregator = [")  # a broken file changes nothing
        os.kill(proc.pid, signal.SIGHUP)
        proc.wait_for_log("event=reload_failed", 5)
        assert proc.stop() == 0
    finally:
        proc.kill()
        sink.close()
    events = [parse_logfmt(line) for line in proc.log_text(None).splitlines()]
    scheduled = [e["at"] for e in events if e.get("event") == "membership_scheduled"]
    assert len(scheduled) == 2 and len(set(scheduled)) == 1
    assert float(scheduled[0]) % FLUSH_INTERVAL == 0
    refused = [e for e in events if e.get("event") == "reload_refused"]
    assert [(e["setting"], e["reason"]) for e in refused] == [
        ("max_datagram_bytes", "restart_required")]
    assert sum(e.get("event") == "membership_scheduled" for e in events) == 2


def test_a_process_restarted_before_the_instant_switches_with_the_others(
    proxy_launcher: Callable[..., ProxyProcess], tmp_path: Path,
) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    a, b = f"127.0.0.1:{sink.getsockname()[1]}", "127.0.0.1:9"
    path = tmp_path / "proxy.toml"
    path.write_text(proxy_toml([a], processes=2))
    proc = proxy_launcher(["--config", str(path)])
    try:
        wait_until(lambda: proc.log_text(None).count("event=started") == 2, 20,
                   message="both processes started")
        pids = parse_logfmt(proc.wait_for_log("event=supervising", 5))["pids"].split(",")
        at = math.ceil(time.time() + 6.0)
        path.write_text(proxy_toml([a, b], processes=2, aggregators_from=float(at)))
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: proc.log_text(None).count("event=membership_scheduled") == 2, 10,
                   message="both processes scheduled the change")
        os.kill(int(pids[0]), signal.SIGKILL)
        wait_until(lambda: proc.log_text(None).count("event=started") == 3, 20,
                   message="the killed process started again")
        assert time.time() < at - 0.5, "restarted too late for this test to mean anything"
        wait_until(lambda: proc.log_text(None).count("event=membership_changed") == 2, 15,
                   message="both processes switched")
        assert proc.stop() == 0
    finally:
        proc.kill()
        sink.close()
    events = [parse_logfmt(line) for line in proc.log_text(None).splitlines()]
    started = [e for e in events if e.get("event") == "started"]
    assert started[-1]["aggregators"] == a  # the list in force, the change pending
    scheduled = [float(e["at"]) for e in events if e.get("event") == "membership_scheduled"]
    changed = [float(e["at"]) for e in events if e.get("event") == "membership_changed"]
    assert scheduled == [at] * 3 and changed == [at] * 2


def aggregator_toml(path: Path, carbon: list[str]) -> None:
    path.write_text("\n".join([
        'listen = ["udp://127.0.0.1:0"]', "mgmt_port = 0", f"flush_interval = {FLUSH_INTERVAL}",
        f"carbon = {carbon!r}".replace("'", '"'), "delete_idle_stats = true"]) + "\n")


def test_ring_and_list_change_together_under_load(
    proxy_launcher: Callable[..., ProxyProcess], tmp_path: Path,
) -> None:
    """The cluster-wide change an operator makes when growing both tiers: the proxies go
    from [A] to [A, B] at one instant while each aggregator's Carbon ring goes from one
    node to two (its own pair of sinks, so every point says which aggregator wrote it), all
    under steady load. Every counter's total is exact over the four sinks; no (path,
    interval) is written by both aggregators, or to both nodes of one aggregator; after its
    logged boundary every point of an aggregator is where its new ring places it."""
    sinks = {name: GraphiteSink().start() for name in ("a1", "a2", "b1", "b2")}
    ports = {name: sink.port for name, sink in sinks.items()}
    nodes = {name: f"127.0.0.1:{port}:{name}" for name, port in ports.items()}
    configs = {agg: tmp_path / f"{agg}.toml" for agg in ("a", "b")}
    aggs: dict[str, AggregatorProcess] = {}
    proxies: list[ProxyProcess] = []
    try:
        for agg, path in configs.items():
            aggregator_toml(path, [nodes[f"{agg}1"]])
            aggs[agg] = start_aggregator(["--config", str(path)])
        a, b = (f"127.0.0.1:{proc.udp[1]}:{proc.mgmt[1]}" for proc in aggs.values())
        files = [tmp_path / "p1.toml", tmp_path / "p2.toml"]
        for path in files:
            path.write_text(proxy_toml([a], processes=1))
        proxies = [proxy_launcher(["--config", str(path)]) for path in files]
        targets = [split_host_port(p.addresses["udp"][0]) for p in proxies]
        with Load(targets) as load:
            time.sleep(1.5)
            at = math.ceil(time.time() + 3.0)
            for agg, path in configs.items():
                aggregator_toml(path, [nodes[f"{agg}1"], nodes[f"{agg}2"]])
                os.kill(aggs[agg].pid, signal.SIGHUP)
            for path in files:
                path.write_text(proxy_toml([a, b], processes=1, aggregators_from=float(at)))
            for proxy in proxies:
                os.kill(proxy.pid, signal.SIGHUP)
            wait_until(lambda: time.time() > at + 2.5, 10, message="after the switch")
        per_sink = lambda: {name: writes(sink) for name, sink in sinks.items()}  # noqa: E731
        wait_until(lambda: totals(*sinks.values()) == {n: float(v) for n, v in load.sent.items()},
                   20, message="every counter's total at the sinks")
        boundaries = {agg: int(parse_logfmt(proc.wait_for_log("event=ring_changed", 5))[
            "last_timestamp"]) for agg, proc in aggs.items()}
        written = per_sink()
    finally:
        for proc in [*proxies, *aggs.values()]:
            proc.kill()
        for sink in sinks.values():
            sink.close()
    by_agg = {agg: set(written[f"{agg}1"]) | set(written[f"{agg}2"]) for agg in ("a", "b")}
    assert not by_agg["a"] & by_agg["b"], "a (path, interval) written by both aggregators"
    for agg in ("a", "b"):
        assert not set(written[f"{agg}1"]) & set(written[f"{agg}2"]), f"{agg}: on both nodes"
        ring = Ring.from_nodes([CarbonNode("127.0.0.1", ports[f"{agg}{i}"], f"{agg}{i}")
                                for i in (1, 2)])
        for i in (1, 2):
            for name, stamp in written[f"{agg}{i}"]:
                if stamp > boundaries[agg]:
                    owner = ring.node_for(f"stats_counts.{name}")
                    assert owner.instance == f"{agg}{i}", (name, stamp)
                else:
                    assert i == 1, (agg, name, stamp)  # the old ring had only node 1
        assert written[f"{agg}2"], f"{agg}'s new node received nothing"
    assert all(stamp > at for _, stamp in by_agg["b"])
