"""Each worker's own UDP socket (``worker_listen``) with real processes: the ports ``workers``
lists, lines sent to the wrong worker forwarded to their owner, a restarted worker's port."""

from __future__ import annotations

import os
import signal
from collections import Counter, defaultdict

import pytest

from common.mgmt import parse_workers_reply
from common.shard import WORKER_HASH, worker_index
from harness.client import mgmt_command, send_udp
from harness.daemon import wait_until
from harness.port import split_host_port
from harness.sink import GraphiteSink
from harness.tallyd import AggregatorProcess, start_aggregator

pytestmark = [pytest.mark.e2e]

NAMES = [f"ep.c{i}" for i in range(60)]


def owned_by(worker: int, tag: str) -> list[str]:
    """``tag``'s names that ``worker`` owns (of 2; H2 of the whole name)."""
    return [n for n in NAMES if worker_index(f"{tag}.{n}".encode(), 2) == worker]


def datagrams(tag: str, rounds: int) -> list[bytes]:
    """``rounds`` datagrams, each with every name once: ``<tag>.<name>:<i+1>|c``."""
    lines = [f"{tag}.{name}:{i % 5 + 1}|c" for i, name in enumerate(NAMES)]
    return ["\n".join(lines[j:j + 20]).encode()
            for _ in range(rounds) for j in range(0, len(lines), 20)]


def expected(tag: str, rounds: int) -> dict[str, float]:
    return {f"stats_counts.{tag}.{name}": float(rounds * (i % 5 + 1))
            for i, name in enumerate(NAMES)}


def counts(sink: GraphiteSink, tag: str) -> dict[str, float]:
    """Per path, the sum of every flushed count of ``tag``'s counters."""
    totals: dict[str, float] = defaultdict(float)
    for r in sink.records():
        path, value, _ = r.line.split(" ")
        if path.startswith(f"stats_counts.{tag}."):
            totals[path] += float(value)
    return dict(totals)


def writes(sink: GraphiteSink, tag: str) -> Counter[tuple[str, int | None]]:
    """How often each (path, timestamp) of ``tag`` was written: once, with one writer."""
    return Counter((r.line.split(" ")[0], r.timestamp) for r in sink.records()
                   if r.line.startswith(f"stats_counts.{tag}."))


def stat(agg: AggregatorProcess, name: str) -> float:
    reply = mgmt_command(agg.mgmt, "stats", timeout=10)
    rows = dict(row.split(": ", 1) for row in reply.splitlines() if ": " in row)
    return float(rows[name])


def wait_counts(sink: GraphiteSink, tag: str, rounds: int) -> None:
    want = expected(tag, rounds)
    wait_until(lambda: counts(sink, tag) == want, 20,
               message=f"{tag}: every count at the sink, exactly")


def test_each_worker_port_takes_any_name_and_survives_a_restart() -> None:
    for tag in ("first", "down", "after", "zero"):
        assert owned_by(0, tag) and owned_by(1, tag), "names of both workers in every test"
    with GraphiteSink() as sink:
        args = ["--listen", "udp://127.0.0.1:0", "--carbon", f"127.0.0.1:{sink.port}",
                "--flush-interval", "1", "--mgmt-port", "0", "--workers", "2",
                "--worker-listen", "udp://127.0.0.1:0", "--identity", "eptest"]
        with start_aggregator(args) as agg:
            answer = parse_workers_reply(mgmt_command(agg.mgmt, "workers"))
            assert answer is not None
            count, hashing, ports = answer
            assert (count, hashing, len(ports)) == (2, WORKER_HASH, 2)
            assert len(set(ports)) == 2 and agg.udp[1] not in ports  # ephemeral, resolved
            assert [split_host_port(a) for a in agg.addresses["worker"]] == [
                ("127.0.0.1", p) for p in ports]
            one = ("127.0.0.1", ports[1])

            # Worker 1's port: its own names are kept, worker 0's are forwarded to it.
            send_udp(one, datagrams("first", 3))
            wait_counts(sink, "first", 3)
            owned_by_0 = 3 * len(owned_by(0, "first"))
            wait_until(lambda: stat(agg, "worker.1.aggregator.exchange.forwarded_lines")
                       >= owned_by_0, 10, message="worker 1 forwarded worker 0's names")
            assert stat(agg, "worker.1.aggregator.exchange.forwarded_lines") == owned_by_0
            assert stat(agg, "aggregator.exchange.forwarded_lines") == 0  # worker 0 read none

            # Kill worker 1: the supervisor keeps its socket, so what is sent while it is
            # down waits there, and the next worker 1 reads it and what follows.
            line = agg.wait_for_log(r"event=worker_started worker=1 .*pid=\d+", 15)
            os.kill(int(line.split("pid=")[1].split()[0]), signal.SIGKILL)
            agg.wait_for_log(r"event=worker_died worker=1 .*restarts=1", 15)
            send_udp(one, datagrams("down", 1))
            agg.wait_for_log(r"event=worker_started worker=1 pid=\d+ generation=1", 15)
            assert parse_workers_reply(mgmt_command(agg.mgmt, "workers")) == answer
            send_udp(one, datagrams("after", 2))
            send_udp(("127.0.0.1", ports[0]), datagrams("zero", 2))
            for tag, rounds in (("down", 1), ("after", 2), ("zero", 2)):
                wait_counts(sink, tag, rounds)
            assert agg.stop() == 0
        sink.wait_closed(10)
    for tag, rounds in (("first", 3), ("down", 1), ("after", 2), ("zero", 2)):
        assert counts(sink, tag) == expected(tag, rounds), tag
        twice = {key: n for key, n in writes(sink, tag).items() if n > 1}
        assert not twice, f"{tag}: written more than once: {twice}"
