"""Helpers for tests/e2e/test_carbon_ring.py: real carbon-caches, rounds of counters, Whisper reads.

* `Cache`: a `harness.carbon.LocalCarbon` that restarts on the SAME port and data dir, and can be
  SIGKILLed.
* `read_whisper`: reads many .wsp files in ONE subprocess of the carbon venv's python (it has
  ``whisper``), so a poll over a few hundred series costs one process start, not hundreds.
* `send_round`: sends one round of counters in the middle of a flush interval (flushes happen
  at wall-clock multiples of the 1 s interval), so round k lands in exactly one flush whose
  timestamp is known in advance: every counter series then has one point per round, value k at
  that round's timestamp, and a missing flush shows as a missing timestamp.
* `CountingProxy`: a TCP relay in front of a node that counts the connections it accepts.
* `StalledListener`: accepts connections and never reads (a hung carbon-cache).

Nothing here binds a fixed port or sends anywhere but 127.0.0.1. Every class has ``close()``;
the test module's fixtures call it in finalizers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from common.ring import CarbonNode, Ring, parse_carbon_node
from common.stats import path_component
from harness.carbon import CARBON_DIR, LocalCarbon
from harness.client import mgmt_command, send_udp
from harness.tallyd import AggregatorProcess

CARBON_PYTHON = CARBON_DIR / "bin" / "python"
FLUSH_INTERVAL = 1.0
SCHEMA = "1s:1h"

#: Per-node self-metrics the issue names: counts (totals since start), then levels.
SELF_COUNTS = ("sent_lines", "dropped_lines.buffer_full", "dropped_lines.spool_full", "reconnects")
SELF_LEVELS = ("buffered_lines", "spooled_lines", "connected")
SELF_MEASURES = SELF_COUNTS + SELF_LEVELS
#: Etsy-compatible internal metrics every flush carries (legacy namespace, prefix "statsd").
ETSY_EVERY_FLUSH = (
    "statsd.numStats",
    "stats.statsd.processing_time",
    "stats.statsd.graphiteStats.calculationtime",
    "stats.statsd.graphiteStats.last_exception",
    "stats.statsd.graphiteStats.last_flush",
    "stats.statsd.graphiteStats.flush_time",
    "stats.statsd.graphiteStats.flush_length",
)

Points = dict[int, float]

_READ_SCRIPT = """\
import json, sys, whisper
out = {}
for path in json.load(sys.stdin):
    try:
        (start, end, step), values = whisper.fetch(path, 0)
    except (FileNotFoundError, whisper.CorruptWhisperFile):
        out[path] = None
        continue
    out[path] = [[start + i * step, v] for i, v in enumerate(values) if v is not None]
json.dump(out, sys.stdout)
"""


# -- carbon-cache processes ----------------------------------------------------------------


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


class Cache(LocalCarbon):
    """A real carbon-cache with its own data dir and instance name, on 127.0.0.1."""

    def start(self) -> Cache:
        """Start; a restart reuses the port of the first start (the ring entry stays valid)."""
        if self.port is None:
            super().start()
            return self
        result = self._run("start", "--data-dir", str(self.data_dir), "--schema", self.schema,
                           "--instance", self.instance, "--port", str(self.port))
        self.pid = int(result.stdout.split("pid=")[1].split()[0])
        return self

    def kill(self) -> None:
        """SIGKILL the cache (it loses what it has not written yet) and wait until it is gone."""
        assert self.pid is not None, "not running"
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not _pid_gone(self.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"carbon-cache pid {self.pid} survived SIGKILL")
            time.sleep(0.02)
        self.stop()  # clears the pidfile ("not running (stale pid)")

    @property
    def node(self) -> CarbonNode:
        host, port = self.address
        return parse_carbon_node(f"{host}:{port}:{self.instance}")

    @property
    def spec(self) -> str:
        """The ``--carbon`` argument: ``127.0.0.1:PORT:INSTANCE``."""
        return str(self.node)

    def path_of(self, metric: str) -> str:
        return str(self.whisper_file(metric))

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.data_dir / "carbon.log").read_text(errors="replace")
        except OSError:
            return "(no carbon.log)"
        return "\n".join(text.splitlines()[-lines:])


def read_whisper(paths: Iterable[str]) -> dict[str, Points | None]:
    """``{path: {timestamp: value}}`` for every non-empty slot, None for a missing file."""
    wanted = sorted(set(paths))
    if not wanted:
        return {}
    result = subprocess.run(
        [str(CARBON_PYTHON), "-c", _READ_SCRIPT], input=json.dumps(wanted),
        capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"whisper read failed: {result.stderr}")
    raw = json.loads(result.stdout)
    return {path: None if pts is None else {int(ts): float(v) for ts, v in pts}
            for path, pts in raw.items()}


def read_series(cache: Cache, metrics: Iterable[str]) -> dict[str, Points | None]:
    """The points of ``metrics`` in ``cache`` (None: no file)."""
    metrics = list(metrics)
    data = read_whisper(cache.path_of(m) for m in metrics)
    return {m: data[cache.path_of(m)] for m in metrics}


# -- naming --------------------------------------------------------------------------------


def self_metric(identity: str, node: CarbonNode | str, measure: str) -> str:
    return (f"stats.statsd.tallyd.aggregator.{identity}.carbon."
            f"{path_component(str(node))}.{measure}")


def every_flush_paths(identity: str, nodes: Sequence[CarbonNode]) -> list[str]:
    """Paths an aggregator writes at EVERY flush: Etsy's internal metrics and tallyd's
    per-node self-metrics (whatever the traffic)."""
    return [*ETSY_EVERY_FLUSH,
            *(self_metric(identity, node, m) for node in nodes for m in SELF_MEASURES)]


def names_by_node(ring: Ring, prefix: str, per_node: int, *,
                  kind: Callable[[str], list[str]] = lambda n: [f"stats_counts.{n}"],
                  limit: int = 100_000) -> dict[CarbonNode, list[str]]:
    """``per_node`` counter names under ``prefix`` for each node, chosen so that EVERY output
    path of the name (``kind(name)``) is placed on that node by the ring."""
    found: dict[CarbonNode, list[str]] = {node: [] for node in ring.nodes}
    for i in range(limit):
        name = f"{prefix}.m{i}"
        owners = {ring.node_for(path) for path in kind(name)}
        if len(owners) == 1:
            owner = owners.pop()
            if len(found[owner]) < per_node:
                found[owner].append(name)
        if all(len(names) == per_node for names in found.values()):
            return found
    raise AssertionError(f"could not find {per_node} names per node under {prefix}")


def counter_paths(name: str) -> list[str]:
    """A counter's two legacy-namespace paths: the rate and the count."""
    return [f"stats.{name}", f"stats_counts.{name}"]


# -- sending rounds ------------------------------------------------------------------------


def send_round(udp: tuple[str, int], values: Mapping[str, int | float], *,
               max_datagram: int = 1400) -> int:
    """Send ``name:value|c`` for each name in the middle of a flush interval; return the
    timestamp of the flush that will carry it (the next whole second).

    Flushes happen at wall-clock multiples of the 1 s interval, so sending at x.5 leaves half
    a second on each side: round k is in exactly one flush.
    """
    now = time.time()
    target = math.floor(now - 0.5) + 1.5  # the first x.5 strictly after now
    time.sleep(max(0.0, target - time.time()))
    lines = [f"{name}:{value:g}|c".encode() for name, value in values.items()]
    datagrams: list[bytes] = []
    current = b""
    for line in lines:
        if current and len(current) + 1 + len(line) > max_datagram:
            datagrams.append(current)
            current = b""
        current = current + b"\n" + line if current else line
    if current:
        datagrams.append(current)
    send_udp(udp, datagrams)
    flush = math.floor(target) + 1
    late = time.time() - (flush - 0.2)
    assert late < 0, f"round sent {late + 0.2:.3f}s before its flush; machine overloaded?"
    return flush


def wait_for_phase() -> None:
    """Sleep until 0.1-0.3 s after a flush boundary, to stop or kill a node well away from
    a flush: bytes written just before the peer died are lost in any TCP sender, and that
    is not what these tests are about."""
    while not 0.1 <= time.time() % FLUSH_INTERVAL < 0.3:
        time.sleep(0.02)


def timestamps(first: int, last: int) -> set[int]:
    return set(range(first, last + 1))


# -- waiting for Whisper data --------------------------------------------------------------


Expectation = Mapping[str, Points]  # metric -> exact points


def wait_for_exact(expected: Mapping[Cache, Expectation], *, timeout: float = 30.0,
                   what: str = "points", extra: Callable[[], str] = str) -> None:
    """Poll until every listed series holds exactly the expected points (same timestamps,
    same values, nothing else). Fails with a per-series diff."""
    deadline = time.monotonic() + timeout
    while True:
        problems = _diff_exact(expected)
        if not problems:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not as expected after {timeout:.0f}s ({len(problems)} series):\n"
                + "\n".join(problems[:15]) + "\n" + extra())
        time.sleep(0.4)


def _diff_exact(expected: Mapping[Cache, Expectation]) -> list[str]:
    paths = {cache.path_of(m) for cache, exp in expected.items() for m in exp}
    data = read_whisper(paths)
    problems = []
    for cache, exp in expected.items():
        for metric, want in exp.items():
            got = data[cache.path_of(metric)]
            if got != want:
                missing = sorted(set(want) - set(got or {}))
                wrong = sorted(t for t in set(want) & set(got or {}) if got and got[t] != want[t])
                unexpected = sorted(set(got or {}) - set(want))
                problems.append(
                    f"  {cache.instance}:{metric}: "
                    + ("no file" if got is None else
                       f"missing ts {missing} wrong {[(t, got[t], want[t]) for t in wrong]} "
                       f"unexpected {[(t, got[t]) for t in unexpected]}"))
    return problems


def wait_for_timestamps(expected: Mapping[Cache, Mapping[str, set[int]]], *,
                        timeout: float = 30.0, what: str = "flushes",
                        extra: Callable[[], str] = str) -> None:
    """Poll until each listed series has a point at each listed timestamp (values unchecked)."""
    deadline = time.monotonic() + timeout
    while True:
        paths = {cache.path_of(m) for cache, exp in expected.items() for m in exp}
        data = read_whisper(paths)
        problems = []
        for cache, exp in expected.items():
            for metric, want in exp.items():
                got = data[cache.path_of(metric)]
                missing = sorted(want - set(got or {}))
                if missing:
                    problems.append(f"  {cache.instance}:{metric}: "
                                    + ("no file" if got is None else f"missing ts {missing}"))
        if not problems:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: gaps after {timeout:.0f}s ({len(problems)} series):\n"
                + "\n".join(problems[:15]) + "\n" + extra())
        time.sleep(0.4)


def misplaced_series(caches: Sequence[Cache], ring: Ring) -> list[str]:
    """Every Whisper file, on every cache, that the ring does not place on that cache.

    Nodes are matched by their ring identity ``(host, instance)``: a ring entry may name a
    proxy's port in front of the cache."""
    wrong = []
    for cache in caches:
        for metric in cache.series():
            owners = [node.identity for node in ring.nodes_for(metric)]
            if cache.node.identity not in owners:
                wrong.append(f"{metric} is on {cache.instance}, ring says {owners}")
    return wrong


# -- the aggregator's admin port -----------------------------------------------------------


def admin_stats(proc: AggregatorProcess) -> dict[str, str]:
    """The admin ``stats`` reply as ``{name: value}``."""
    reply = mgmt_command(proc.mgmt, "stats")
    assert reply.endswith("END\n\n"), f"admin stats reply not terminated: {reply!r}"
    return dict(line.split(": ", 1) for line in reply.splitlines() if ": " in line)


def node_stat(stats: Mapping[str, str], node: CarbonNode | str, measure: str) -> int:
    """One node's figure; a figure kept by reason (``dropped_lines``) is summed."""
    key = f"aggregator.carbon.{path_component(str(node))}.{measure}"
    parts = [value for name, value in stats.items() if name.startswith(key + ".")]
    assert key in stats or parts, f"admin stats has no {key}; has {sorted(stats)}"
    return int(stats[key]) if key in stats else sum(int(value) for value in parts)


# -- sockets in front of nodes -------------------------------------------------------------


class _AcceptingServer:
    """A threaded TCP listener on 127.0.0.1:<free port> that counts what it accepts and keeps
    the connections; `_serve` says what happens to each one.

    With ``listen=False`` the port is only bound (connections to it are refused) until
    `open` is called.
    """

    def __init__(self, name: str, *, sockopts: tuple[tuple[int, int], ...] = (),
                 listen: bool = True) -> None:
        self.accepted = 0
        self._name = name
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for option, value in sockopts:
            self._listener.setsockopt(socket.SOL_SOCKET, option, value)
        self._listener.bind(("127.0.0.1", 0))
        self._closing = False
        if listen:
            self.open()

    def open(self) -> None:
        self._listener.listen(16)
        accepter = threading.Thread(target=self._accept_loop, daemon=True, name=self._name)
        with self._lock:
            self._threads.append(accepter)
        accepter.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                self.accepted += 1
                self._sockets.append(conn)
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        """Called (on the accept thread) for each accepted connection."""

    def close(self) -> None:
        with self._lock:
            self._closing = True
            socks = list(self._sockets)
            threads = list(self._threads)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)
        for sock in socks:
            sock.close()


class CountingProxy(_AcceptingServer):
    """A TCP relay on 127.0.0.1:<free port> to ``upstream``, counting accepted connections."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        super().__init__("counting-proxy", sockopts=((socket.SO_REUSEADDR, 1),))

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=5)
            server.settimeout(None)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.append(server)
            pumps = [threading.Thread(target=self._pump, args=(client, server), daemon=True),
                     threading.Thread(target=self._pump, args=(server, client), daemon=True)]
            self._threads += pumps
        for pump in pumps:
            pump.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class StalledListener(_AcceptingServer):
    """A "carbon-cache" that accepts connections and never reads from them.

    Its receive buffer is made as small as the kernel allows, so a sender's writes block soon.
    """

    def __init__(self) -> None:
        super().__init__("stalled-listener", sockopts=((socket.SO_RCVBUF, 1024),))


def dir_bytes(path: Path) -> int:
    """Total size of the regular files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class LateListener(_AcceptingServer):
    """A Graphite node that is down until `open` is called, then records every line.

    Until then its port is bound but not listening, so connections to it are refused, as
    they are by a stopped carbon-cache; the port stays reserved for the test meanwhile.
    """

    def __init__(self) -> None:
        #: (arrival time.monotonic(), line without "\n")
        self.lines: list[tuple[float, str]] = []
        super().__init__("late-listener", sockopts=((socket.SO_REUSEADDR, 1),), listen=False)

    def _serve(self, conn: socket.socket) -> None:
        reader = threading.Thread(target=self._read_loop, args=(conn,), daemon=True)
        with self._lock:
            self._threads.append(reader)
        reader.start()

    def _read_loop(self, conn: socket.socket) -> None:
        partial = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            now = time.monotonic()
            *complete, partial = (partial + data).split(b"\n")
            with self._lock:
                self.lines += [(now, raw.decode()) for raw in complete]

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.lines)

