"""Worker ledgers with real processes: ownership, equality with one process, restarts."""

from __future__ import annotations

import json
import os
import signal
from collections import defaultdict

import pytest

from common.shard import worker_index
from harness.client import mgmt_command, send_udp
from harness.daemon import wait_until
from harness.sink import GraphiteSink
from harness.tallyd import start_aggregator

pytestmark = [pytest.mark.e2e]

NAMES = 300


def packets(rounds: int) -> list[bytes]:
    out = []
    for r in range(rounds):
        lines = [f"w.c{i}:{(i % 7) + 1}|c" for i in range(NAMES)]
        lines += [f"w.t{i % 20}:{i}|ms" for i in range(r, r + 40)]
        lines += [f"w.g{i % 5}:+{i}|g" for i in range(10)] + [f"w.s{r % 3}:{r}|s", "bad"]
        for j in range(0, len(lines), 25):
            out.append("\n".join(lines[j:j + 25]).encode())
    return out


def run(workers: int, sink: GraphiteSink, datagrams: list[bytes],
        warnings: list[str] | None = None) -> dict[str, float]:
    """Send ``datagrams``, stop gracefully, and return per-path totals over the whole run
    (the aggregator's warnings go to ``warnings``, to explain a difference).

    Totals rather than one interval's values, so the comparison does not depend on which
    interval each line fell in: counters' counts, timers' counts and sums, set sizes and
    Etsy's internal counters are summed over flushes, gauges keep their last value.
    """
    args = ["--listen", "udp://127.0.0.1:0", "--carbon", f"127.0.0.1:{sink.port}",
            "--flush-interval", "1", "--mgmt-port", "0", "--workers", str(workers),
            "--no-self-metrics"]
    with start_aggregator(args) as agg:
        send_udp(agg.udp, datagrams)
        wait_until(lambda: sum(float(r.line.split()[1]) for r in sink.records()
                               if r.line.startswith("stats_counts.w.c0 ")) >= 3, 30,
                   message="the data reached the sink")
        assert agg.stop() == 0
        sink.wait_closed(10)  # the final flush's lines, numStats among them, all read
        if warnings is not None:
            warnings += [x for x in agg.log_text(tail=None).splitlines() if "level=warn" in x]
    totals: dict[str, float] = defaultdict(float)
    summed = (".count ", ".sum ", "stats_counts.", ".bad_lines_seen ", ".metrics_received ",
              ".packets_received ")
    for r in sink.records():
        path, value, _ = r.line.split(" ")
        if path.startswith(("stats.gauges.w.", "statsd.numStats")):
            totals[path] = float(value)  # a level: the last one
        elif any(mark in path + " " for mark in summed) or path.startswith("stats_counts."):
            totals[path] += float(value)
    return dict(totals)


def test_two_workers_equal_one_process_and_own_disjoint_names() -> None:
    datagrams = packets(3)
    with GraphiteSink() as sink1:
        single = run(1, sink1, datagrams)
    warnings: list[str] = []
    with GraphiteSink() as sink2:
        double = run(2, sink2, datagrams, warnings)
        by_conn: dict[str, set[int]] = defaultdict(set)
        for r in sink2.records():
            by_conn[r.line.split(" ")[0]].add(r.connection)
    differing = {p: (single.get(p), double.get(p)) for p in single.keys() | double.keys()
                 if single.get(p) != double.get(p)}
    assert not differing, f"(W=1, W=2) differ: {differing}; W=2 warnings: {warnings}"
    assert single["stats_counts.w.c6"] == 3 * 7
    assert single["stats.timers.w.t0.count"] == 6
    assert single["stats_counts.statsd.metrics_received"] == 3 * (NAMES + 40 + 10 + 2)
    assert single["stats_counts.statsd.packets_received"] == len(datagrams)
    assert single["stats_counts.statsd.bad_lines_seen"] == 3
    assert single["statsd.numStats"] == NAMES + 20 + 5 + 3 + 3 + 1  # + 3 internal + lag
    shared = {p for p, conns in by_conn.items() if len(conns) > 1}
    assert not {p for p in shared if p.startswith(("stats.w.", "stats_counts.w.", "stats.timers.w.",
                                                   "stats.gauges.w.", "stats.sets.w."))}
    assert len({c for conns in by_conn.values() for c in conns}) >= 2  # both workers wrote


def test_killed_worker_is_restarted_and_counted() -> None:
    with GraphiteSink() as sink:
        args = ["--listen", "udp://127.0.0.1:0", "--carbon", f"127.0.0.1:{sink.port}",
                "--flush-interval", "1", "--mgmt-port", "0", "--workers", "2",
                "--identity", "wtest"]
        with start_aggregator(args) as agg:
            agg.wait_for_log(r"event=worker_started worker=1 ", 15)
            line = agg.wait_for_log(r"event=worker_started worker=1 .*pid=\d+", 15)
            pid = int(line.split("pid=")[1].split()[0])
            os.kill(pid, signal.SIGKILL)
            agg.wait_for_log(r"event=worker_died worker=1 .*restarts=1", 15)
            agg.wait_for_log(r"event=worker_started worker=1 pid=\d+ generation=1", 15)
            generation = "stats.statsd.tallyd.aggregator.wtest-w1.worker.generation 1 "
            wait_until(lambda: any(r.line.startswith(generation) for r in sink.records()), 15)
            send_udp(agg.udp, [b"\n".join(f"after.c{i}:1|c".encode() for i in range(50))])
            wait_until(lambda: sum(1 for r in sink.records()
                                   if r.line.startswith("stats_counts.after.c")
                                   and r.line.split()[1] == "1") == 50, 15)
            assert agg.stop() == 0
        stamps = defaultdict(set)
        for r in sink.records():
            if r.line.startswith("stats_counts.after.c") and r.line.split()[1] == "1":
                stamps[r.timestamp].add(r.connection)
        assert len(stamps) == 1, "both workers' shares of one interval carry one timestamp"


def test_workers_stop_when_the_supervisor_is_killed() -> None:
    with GraphiteSink() as sink:
        args = ["--listen", "udp://127.0.0.1:0", "--carbon", f"127.0.0.1:{sink.port}",
                "--flush-interval", "1", "--mgmt-port", "0", "--workers", "2"]
        with start_aggregator(args) as agg:
            pids = []
            for index in (0, 1):
                line = agg.wait_for_log(rf"event=worker_started worker={index} pid=\d+", 15)
                pids.append(int(line.split("pid=")[1].split()[0]))
            agg.kill()

            def gone(pid: int) -> bool:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return True
                with open(f"/proc/{pid}/stat") as f:  # a zombie awaiting its reaper is gone too
                    return f.read().split(") ", 1)[1].startswith("Z")

            wait_until(lambda: all(gone(p) for p in pids), 20, message="workers exited")


def test_admin_commands_see_and_reach_every_worker() -> None:
    """Worker 0 owns the admin port; dumps, deletes and stats join every worker's part."""
    names = [f"adm.c{i}" for i in range(40)]
    with GraphiteSink() as sink:
        args = ["--listen", "udp://127.0.0.1:0", "--carbon", f"127.0.0.1:{sink.port}",
                "--flush-interval", "86400s", "--mgmt-port", "0", "--workers", "2"]
        with start_aggregator(args) as agg:
            agg.wait_for_log(r"event=worker_started worker=1 ", 15)
            lines = [f"{n}:2|c" for n in names] + ["adm.t0:5|ms", "adm.t1:7|ms", "adm.g:3|g"]
            send_udp(agg.udp, ["\n".join(lines).encode()])

            def counters() -> dict[str, float]:
                reply = mgmt_command(agg.mgmt, "counters", timeout=10)
                assert reply.endswith("\nEND\n\n"), reply
                return dict(json.loads(reply.removesuffix("END\n\n")))

            wait_until(lambda: all(n in counters() for n in names), 15,
                       message="every worker's counters in one dump")
            owners = {worker_index(n.encode(), 2) for n in names}
            assert owners == {0, 1}, "the names must spread over both workers"
            dump = counters()
            assert all(dump[n] == 2 for n in names)
            assert dump["statsd.packets_received"] == 1  # live, summed over the workers
            assert dump["statsd.metrics_received"] == len(lines)

            timers = json.loads(mgmt_command(agg.mgmt, "timers", timeout=10)
                                .removesuffix("END\n\n"))
            assert timers["adm.t0"] == [5] and timers["adm.t1"] == [7]

            far = [n for n in names if worker_index(n.encode(), 2) == 1][:2]
            reply = mgmt_command(agg.mgmt, f"delcounters {far[0]} {far[1]} adm.none",
                                 timeout=10)
            assert reply == (f"deleted: {far[0]}\ndeleted: {far[1]}\n"
                             "metric adm.none not found\nEND\n\n")
            assert not set(far) & set(counters())
            reply = mgmt_command(agg.mgmt, "delcounters adm.*", timeout=10)
            assert reply.count("deleted: ") == len(names) - 2
            assert not [n for n in counters() if n.startswith("adm.")]

            stats = mgmt_command(agg.mgmt, "stats", timeout=10)
            assert "\nworker.1.uptime: " in stats and stats.startswith("uptime: ")
            assert mgmt_command(agg.mgmt, "workers") == "workers: 2 blake2b64\n"  # no ports
            assert agg.stop() == 0
