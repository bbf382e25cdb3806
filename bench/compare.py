"""Side by side: the highest loss-free rate of Etsy statsd and of tallyd-aggregator.

Set-up, all on 127.0.0.1 and in one run: the C load generator ``blast`` (bench/blast.c,
compiled here) sends StatsD lines over UDP to one daemon at a time; the daemon flushes to a
Carbon plaintext sink in this process, and the lines are counted THERE, end to end, not at
the sender. Both daemons get the same flush interval and their default settings otherwise
(Etsy's legacy namespace; idle names are kept and reported, as both do by default).

A *trial* offers ``rate`` lines/s for ``--seconds`` seconds (blast paces itself and prints
what it really sent), then waits until the daemon has read everything the kernel queued
for it and for the flushes that carry it. It passes when all of these hold:

* exact totals at the sink: the sum of ``stats_counts.bench.m*`` equals the counter lines
  sent and the sum of ``stats.timers.bench.t*.count`` the timer lines sent; every gauge
  ends at the last value sent for it and every set name that got a line is reported;
* no kernel drops on the daemon's UDP port (``drops`` in /proc/net/udp, read before and
  after; it explains where lost lines went);
* the daemon kept up: its receive queue was empty within max(0.2 s, 10% of the send time)
  after blast stopped. Without this, a large receive buffer could hide, for a few seconds,
  a rate the daemon cannot sustain.

The daemon's own ``statsd.metrics_received`` is compared with the lines sent too; a
difference is printed as a warning (it is the daemon's count, not the sink's).

The *search*, per daemon and case: one probe as fast as blast can send gives a capacity
estimate (lines the daemon read / time until its queue was empty); trials start at 90% of
it, go up 1.25x while they pass (down 0.5x while nothing has passed), then bisect until
the bracket is within 5% or ``--trials`` run out. The best passing rate is then run once
more: the loss-free rate is the best rate that passed twice (the lower of its two real
rates; ">=" in the table when no faster trial failed, as the trial budget ran out first).
Daemons run one at a time, each fresh per case.

Cases: 20 lines per datagram, 1 line per datagram, the type mix with 30% timers (blast's
``mix30``: 40% counters, 30% timers, 20% gauges, 10% sets), and 100k distinct names; all
others use 1000 names. tallyd runs once per ``--workers`` value (W > 1: the first two cases
only). Then tallyd alone, one worker: zero loss at half its 20-lines-per-datagram maximum
while it flushes 100k names and 1M timer samples; resident memory with 1M distinct counter
names; bytes per timer sample (resident growth for 1M samples in one interval).

    .venv/bin/python bench/compare.py                 # full run (7 to 9 minutes)
    .venv/bin/python bench/compare.py --short         # seconds, for the test suite
    .venv/bin/python bench/compare.py --cases 20/dgram,1/dgram --workers 1 --no-extras
    .venv/bin/python bench/compare.py --py-spy PATH/py-spy --profile-rate 600000

The machine's other load moves the figures: compare the daemons within one run. The output
ends with the table (case, Etsy loss-free lines/s, tallyd loss-free lines/s per W, ratio of
the first W to Etsy). Exit status: 0, or 1 when a --short trial lost lines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from common.netstat import udp_rows

REPO = Path(__file__).resolve().parents[1]
BLAST_SOURCE = REPO / "bench" / "blast.c"
BLAST = REPO / "bench" / "blast"
ETSY_DIR = REPO / ".cache" / "etsy" / "node_modules" / "statsd"
PREFIX = "bench"  # blast's first name component (one per daemon process: names persist)


# -- small helpers -------------------------------------------------------------------------


def build_blast() -> Path:
    """Compile bench/blast.c into bench/blast (git-ignored) unless it is up to date.

    Built under a temporary name and renamed, so a concurrent run never executes half a file.
    """
    if BLAST.exists() and BLAST.stat().st_mtime >= BLAST_SOURCE.stat().st_mtime:
        return BLAST
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("a C compiler (cc) is needed to build bench/blast")
    tmp = BLAST.with_name(f".blast.{os.getpid()}")
    subprocess.run([compiler, "-O2", "-o", str(tmp), str(BLAST_SOURCE)], check=True)
    os.replace(tmp, BLAST)
    return BLAST


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def udp_port_state(port: int) -> tuple[int, int, int]:
    """(sockets, receive queue bytes, kernel drops) summed over UDP sockets bound to ``port``.

    Sums over every row so that several worker sockets sharing a port (SO_REUSEPORT) count.
    """
    wanted = f":{port:04X}"
    sockets = queued = drops = 0
    for cols in udp_rows():
        if cols[1].endswith(wanted):
            sockets += 1
            queued += int(cols[4].split(":")[1], 16)
            drops += int(cols[-1])
    return sockets, queued, drops


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (worker processes), from /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(parents.get(p, []))
    return tree


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of one process; empty if it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


def tree_memory_kib(pid: int) -> tuple[int, int, int]:
    """(largest VmRSS of one process, largest VmHWM of one process, summed VmRSS)."""
    mems = [memory_kib(p) for p in process_tree(pid)]
    rss = [m.get("VmRSS", 0) for m in mems]
    hwm = [m.get("VmHWM", 0) for m in mems]
    return max(rss, default=0), max(hwm, default=0), sum(rss)


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def log(message: str) -> None:
    print(message, flush=True)


# -- the Carbon sink -----------------------------------------------------------------------


@dataclass
class Tally:
    """What the sink counted since the last reset (only the lines the benchmark checks)."""

    counters: dict[str, float] = field(default_factory=dict)  # prefix -> sum of counts
    timer_counts: dict[str, float] = field(default_factory=dict)  # prefix -> sum of .count
    gauges: dict[str, dict[int, float]] = field(default_factory=dict)  # prefix -> i -> value
    sets: dict[str, set[int]] = field(default_factory=dict)  # prefix -> indexes seen > 0
    metrics_received: float = 0.0
    packets_received: float = 0.0
    bytes: int = 0

    def copy(self) -> Tally:
        return Tally(dict(self.counters), dict(self.timer_counts),
                     {p: dict(g) for p, g in self.gauges.items()},
                     {p: set(s) for p, s in self.sets.items()},
                     self.metrics_received, self.packets_received, self.bytes)


# Literal-first patterns: the regex engine finds a literal prefix with a fast scan, so each
# pattern reads a flush at memory speed; only matching lines reach Python.
_COUNTER = re.compile(rb"stats_counts\.([A-Za-z0-9_]+)\.m\d+ (\S+) ")
_TIMER = re.compile(rb"stats\.timers\.([A-Za-z0-9_]+)\.t\d+\.count (\S+) ")
_GAUGE = re.compile(rb"stats\.gauges\.([A-Za-z0-9_]+)\.g(\d+) (\S+) ")
_SET = re.compile(rb"stats\.sets\.([A-Za-z0-9_]+)\.s(\d+)\.count ([1-9][0-9]*) ")
_INTERNAL = re.compile(rb"stats_counts\.statsd\.(metrics_received|packets_received) (\S+) ")
#: The last line of every flush, in both daemons: the flush's end marker.
_FLUSH_END = b"stats.statsd.graphiteStats.flush_length "


class CarbonSink:
    """A Graphite plaintext receiver on 127.0.0.1:<free port>, in one background thread.

    Etsy statsd opens a connection per flush; tallyd keeps one. Either way lines are cut at
    newlines per connection, and each block of complete lines is scanned with the patterns
    above. Every flush ends with ``stats.statsd.graphiteStats.flush_length``; its arrival
    times are recorded so callers can wait for "the next flush".
    """

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.tally = Tally()
        self.flush_ends: list[float] = []
        self.cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="carbon-sink", daemon=True)
        self._thread.start()

    def _scan(self, block: bytes) -> None:
        counters: dict[bytes, float] = {}
        for prefix, value in _COUNTER.findall(block):
            counters[prefix] = counters.get(prefix, 0.0) + float(value)
        timers: dict[bytes, float] = {}
        for prefix, value in _TIMER.findall(block):
            timers[prefix] = timers.get(prefix, 0.0) + float(value)
        gauges = _GAUGE.findall(block) if b"stats.gauges." in block else []
        sets = _SET.findall(block) if b"stats.sets." in block else []
        internal = _INTERNAL.findall(block) if b"stats_counts.statsd." in block else []
        ends = block.count(_FLUSH_END)
        with self.cond:
            t = self.tally
            t.bytes += len(block)
            for p, v in counters.items():
                t.counters[p.decode()] = t.counters.get(p.decode(), 0.0) + v
            for p, v in timers.items():
                t.timer_counts[p.decode()] = t.timer_counts.get(p.decode(), 0.0) + v
            for p, i, v in gauges:
                t.gauges.setdefault(p.decode(), {})[int(i)] = float(v)
            for p, i, _ in sets:
                t.sets.setdefault(p.decode(), set()).add(int(i))
            for name, v in internal:
                if name == b"metrics_received":
                    t.metrics_received += float(v)
                else:
                    t.packets_received += float(v)
            if ends:
                now = time.monotonic()
                self.flush_ends.extend([now] * ends)
                self.cond.notify_all()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, None)
        partial: dict[socket.socket, bytes] = {}
        while not self._stop:
            for key, _ in sel.select(0.2):
                if key.data is None:
                    try:
                        conn, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                    sel.register(conn, selectors.EVENT_READ, True)
                    partial[conn] = b""
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    data = conn.recv(4 << 20)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    rest = partial.pop(conn, b"")
                    if rest:
                        self._scan(rest + b"\n")
                    sel.unregister(conn)
                    conn.close()
                    continue
                data = partial[conn] + data
                cut = data.rfind(b"\n") + 1
                partial[conn] = data[cut:]
                if cut:
                    self._scan(data[:cut])
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]

    def reset(self) -> Tally:
        """Start counting afresh; return what was counted before."""
        with self.cond:
            old, self.tally = self.tally, Tally()
            return old

    def snapshot(self) -> Tally:
        with self.cond:
            return self.tally.copy()

    def wait_flush_end(self, after: float, timeout: float) -> float | None:
        """Wait for a flush that ends after monotonic time ``after``; return when it ended."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                later = [t for t in self.flush_ends if t > after]
                if later:
                    return later[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.listener.close()


# -- the daemons ---------------------------------------------------------------------------


class DaemonError(RuntimeError):
    pass


class Daemon:
    """A daemon under test: a subprocess whose output is kept (last lines) by a thread."""

    label = "daemon"

    def __init__(self, argv: list[str], *, cwd: Path | None = None) -> None:
        self.argv = argv
        self.lines: deque[str] = deque(maxlen=200)
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(argv, cwd=str(cwd or REPO), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.udp_port = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip())
                self.cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 15) -> str:
        with self.cond:
            return "\n".join(f"    | {line}" for line in list(self.lines)[-n:])

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the final flush), wait; then kill any of its processes still alive."""
        tree = process_tree(self.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in tree[1:]:  # workers a supervisor did not take down
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"aggregator" not in f.read():
                        continue  # gone, and the pid reused
                os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        self._reader.join(5)
        return self.proc.returncode


class Tallyd(Daemon):
    label = "tallyd"

    def __init__(self, sink_port: int, flush_interval: float, workers: int | None,
                 extra: Iterable[str] = ()) -> None:
        argv = [sys.executable, "-m", "aggregator", "--listen", "udp://127.0.0.1:0",
                "--carbon", f"127.0.0.1:{sink_port}", "--flush-interval", str(flush_interval),
                "--mgmt-address", "127.0.0.1", "--mgmt-port", "0", *extra]
        if workers is not None:
            argv += ["--workers", str(workers)]
        super().__init__(argv)
        self.workers = 1
        self.receive_buffer = 0
        deadline = time.monotonic() + 60
        with self.cond:
            while True:
                text = "\n".join(self.lines)
                found = re.search(r"event=listening kind=udp address=\S+:(\d+)", text)
                started = re.search(r"event=started\b.*", text)
                if found and started:
                    # a supervisor (workers > 1) logs started first, then each worker
                    many = re.search(r"\bworkers=(\d+)", started.group(0))
                    self.workers = int(many.group(1)) if many else 1
                    if self.workers == 1 or text.count("event=worker_started") >= self.workers:
                        self.udp_port = int(found.group(1))
                        rcvbuf = re.search(r"event=udp_receive_buffer \S+ bytes=(\d+)", text)
                        self.receive_buffer = int(rcvbuf.group(1)) if rcvbuf else 0
                        return
                if self.proc.poll() is not None:
                    self.cond.release()
                    try:
                        self._reader.join(5)
                    finally:
                        self.cond.acquire()
                    raise DaemonError("tallyd exited at start:\n" + "\n".join(self.lines))
                if time.monotonic() > deadline:
                    self.proc.kill()
                    raise DaemonError("tallyd did not start:\n" + "\n".join(self.lines))
                self.cond.wait(0.2)


class Etsy(Daemon):
    label = "etsy"

    def __init__(self, sink_port: int, flush_interval: float) -> None:
        node = shutil.which("node") or shutil.which("nodejs")
        if node is None or not (ETSY_DIR / "stats.js").is_file():
            raise DaemonError(f"Etsy statsd needs node and {ETSY_DIR / 'stats.js'}")
        self.config_dir = Path(tempfile.mkdtemp(prefix="bench-etsy-"))
        port, mgmt = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
        config = {"port": port, "address": "127.0.0.1", "mgmt_port": mgmt,
                  "mgmt_address": "127.0.0.1", "flushInterval": int(flush_interval * 1000),
                  "graphiteHost": "127.0.0.1", "graphitePort": sink_port,
                  "backends": ["./backends/graphite"]}
        path = self.config_dir / "config.js"
        path.write_text(json.dumps(config, indent=2) + "\n")
        super().__init__([node, str(ETSY_DIR / "stats.js"), str(path)], cwd=ETSY_DIR)
        self.udp_port = port
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonError("Etsy statsd exited at start:\n" + self.tail())
            try:
                with socket.create_connection(("127.0.0.1", mgmt), timeout=1) as s:
                    s.sendall(b"health\n")
                    if s.recv(100).startswith(b"health: up") and udp_port_state(port)[0]:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise DaemonError("Etsy statsd did not start:\n" + self.tail())

    def stop(self, timeout: float = 30.0) -> int | None:
        try:
            return super().stop(timeout)
        finally:
            shutil.rmtree(self.config_dir, ignore_errors=True)


# -- what blast sends ----------------------------------------------------------------------

MIX30 = ("c", "c", "c", "c", "ms", "ms", "ms", "g", "g", "s")  # blast.c's mix30, by s % 10


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    per: int  # lines per datagram
    names: int  # distinct names cycled
    kind: str  # blast KIND
    probe_lines: int  # lines of the as-fast-as-possible probe


@dataclass
class Expected:
    lines: int
    counters: int
    timers: int
    gauges: dict[int, float]  # name index -> last value
    sets: set[int]  # name indexes that got a line


def expected_totals(kind: str, lines: int, names: int) -> Expected:
    """What blast sent (see blast.c's header: line s has name s % names, kind by s)."""
    if kind == "c":
        return Expected(lines, lines, 0, {}, set())
    if kind == "ms":
        return Expected(lines, 0, lines, {}, set())
    assert kind == "mix30" and names % 10 == 0, (kind, names)
    full, rest = divmod(lines, 10)
    per_slot = [full + (1 if slot < rest else 0) for slot in range(10)]
    counters = sum(n for slot, n in enumerate(per_slot) if MIX30[slot] == "c")
    timers = sum(n for slot, n in enumerate(per_slot) if MIX30[slot] == "ms")
    gauges: dict[int, float] = {}
    sets: set[int] = set()
    for i in range(min(names, lines)):
        slot = i % 10  # names % 10 == 0, so name i always has the kind of slot i % 10
        if MIX30[slot] == "g":
            last = i + ((lines - 1 - i) // names) * names
            gauges[i] = float(last % 100)
        elif MIX30[slot] == "s":
            sets.add(i)
    return Expected(lines, counters, timers, gauges, sets)


def run_blast(port: int, lines: int, per: int, names: int, rate: float, kind: str,
              prefix: str = PREFIX, on_tick: Callable[[], None] | None = None) -> dict[str, float]:
    """Run blast to completion (calling ``on_tick`` every 50 ms meanwhile); parse its line."""
    proc = subprocess.Popen([str(BLAST), "127.0.0.1", str(port), str(lines), str(per),
                             str(names), f"{rate:.0f}", kind, prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if on_tick is not None:
            on_tick()
        time.sleep(0.05)
    out, err = proc.communicate()
    found = re.search(r"sent=(\d+) packets=(\d+) seconds=([\d.]+) rate=(\d+)", out)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"blast failed ({proc.returncode}): {out} {err}")
    return {"sent": int(found.group(1)), "packets": int(found.group(2)),
            "seconds": float(found.group(3)), "rate": float(found.group(4))}


def wait_drained(port: int, timeout: float) -> tuple[float, int]:
    """Wait until the port's receive queue is empty; return (seconds waited, max queue)."""
    start = time.monotonic()
    biggest = 0
    while True:
        queued = udp_port_state(port)[1]
        biggest = max(biggest, queued)
        if queued == 0 or time.monotonic() - start > timeout:
            return time.monotonic() - start, biggest
        time.sleep(0.02)


# -- one trial -----------------------------------------------------------------------------


@dataclass
class Trial:
    daemon: str
    case: str
    requested: float
    sent: int
    rate: float  # what blast really achieved
    send_seconds: float
    counted: int  # lines accounted for at the sink (counters + timers + gauges + sets)
    received: int  # the daemon's own metrics_received
    lost: int  # lines sent - lines accounted for
    kernel_drops: int  # datagrams
    queue_max: int  # bytes
    drain_seconds: float
    problems: list[str]
    warnings: list[str]
    lower_bound: bool = False  # set by `search`: no faster paced trial failed

    @property
    def passed(self) -> bool:
        return not self.problems

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAIL " + "; ".join(self.problems)
        if self.warnings:
            verdict += " (warning: " + "; ".join(self.warnings) + ")"
        asked = "max" if self.requested == 0 else fmt_rate(self.requested)
        return (f"  trial {self.daemon:<10} {self.case:<8} asked={asked:>9} "
                f"rate={fmt_rate(self.rate):>9} sent={self.sent:,} counted={self.counted:,} "
                f"lost={self.lost} kernel_drops={self.kernel_drops} "
                f"queue_max={self.queue_max // 1024}KiB drain={self.drain_seconds:.2f}s "
                f"{verdict}")


def run_trial(daemon: Daemon, sink: CarbonSink, case: Case, rate: float, lines: int,
              flush_interval: float, label: str) -> Trial:
    port = daemon.udp_port
    sink.reset()
    drops_before = udp_port_state(port)[2]
    queue_max = 0

    def sample() -> None:
        nonlocal queue_max
        queue_max = max(queue_max, udp_port_state(port)[1])

    result = run_blast(port, lines, case.per, case.names, rate, case.kind, on_tick=sample)
    drain, biggest = wait_drained(port, timeout=60)
    queue_max = max(queue_max, biggest)
    drained_at = time.monotonic()
    want = expected_totals(case.kind, int(result["sent"]), case.names)

    def check(t: Tally) -> list[str]:
        problems = []
        got_c = t.counters.get(PREFIX, 0.0)
        got_t = t.timer_counts.get(PREFIX, 0.0)
        if got_c != want.counters:
            problems.append(f"counters {got_c:.0f}/{want.counters}")
        if got_t != want.timers:
            problems.append(f"timer counts {got_t:.0f}/{want.timers}")
        if want.gauges:
            seen = t.gauges.get(PREFIX, {})
            wrong = sum(1 for i, v in want.gauges.items() if seen.get(i) != v)
            if wrong:
                problems.append(f"{wrong}/{len(want.gauges)} gauges wrong")
        if want.sets:
            missing = len(want.sets - t.sets.get(PREFIX, set()))
            if missing:
                problems.append(f"{missing}/{len(want.sets)} sets missing")
        return problems

    # The first flush that ends after the queue emptied normally holds the rest; if it
    # swapped just before, the next one does (with several workers, one more). Three at most.
    problems: list[str] = []
    after = drained_at
    for _ in range(3):
        ended = sink.wait_flush_end(after, timeout=flush_interval * 2 + 30)
        if ended is None:
            problems = ["no flush arrived"]
            break
        problems = check(sink.snapshot())
        if not problems:
            break
        after = ended
    tally = sink.snapshot()
    kernel_drops = udp_port_state(port)[2] - drops_before
    counted = int(tally.counters.get(PREFIX, 0) + tally.timer_counts.get(PREFIX, 0))
    if case.kind == "mix30":
        # gauges and sets carry no count; count them as sent when their check passed
        gauge_sets = want.lines - want.counters - want.timers
        if not any("gauges" in p or "sets" in p for p in problems):
            counted += gauge_sets
        else:  # the daemon's own count is the best estimate left
            counted += int(max(0, tally.metrics_received - want.counters - want.timers))
    warnings = []
    if tally.metrics_received != want.lines and not problems:
        # with several workers, the others' intake counts may reach the next flush
        sink.wait_flush_end(time.monotonic(), timeout=flush_interval * 2 + 10)
        tally = sink.snapshot()
    if tally.metrics_received != want.lines:
        # the daemon's own count of lines read; a mismatch with exact totals above is a
        # self-metric error, not lost data
        warnings.append(f"statsd.metrics_received {tally.metrics_received:.0f}/{want.lines}")
    if kernel_drops:
        problems.append(f"kernel dropped {kernel_drops} datagrams")
    keep_up = max(0.2, 0.1 * result["seconds"])
    if drain > keep_up:
        problems.append(f"fell behind (queue drained {drain:.2f}s after the send)")
    return Trial(label, case.key, rate, int(result["sent"]), result["rate"], result["seconds"],
                 counted, int(tally.metrics_received), int(result["sent"]) - counted,
                 kernel_drops, queue_max, drain, problems, warnings)


def search(daemon: Daemon, sink: CarbonSink, case: Case, *, seconds: float, trials: int,
           flush_interval: float, label: str) -> tuple[Trial | None, list[Trial]]:
    """Find the highest passing rate.

    A probe as fast as blast can send estimates the capacity; trials start at 90% of it,
    go up 1.25x while they pass or down 0.5x while they fail, then bisect the bracket until
    it is within 5%. ``trials`` trials after the probe, plus up to 4 more while nothing
    has passed yet; then the best passing rate is run again and counts only if it passes
    again (else the next best, up to three).
    """
    done: list[Trial] = []
    if isinstance(daemon, Tallyd):
        log(f"  {label}: pid {daemon.pid}, {daemon.workers} process(es) reading UDP port "
            f"{daemon.udp_port}, receive buffer granted {daemon.receive_buffer:,} bytes")
    else:
        log(f"  {label}: pid {daemon.pid}, UDP port {daemon.udp_port}, receive buffer: "
            f"the kernel default")

    def attempt(rate: float, lines: int) -> Trial:
        t = run_trial(daemon, sink, case, rate, lines, flush_interval, label)
        log(t.line())
        done.append(t)
        return t

    probe = attempt(0, case.probe_lines)
    capacity = probe.received / (probe.send_seconds + probe.drain_seconds)
    best: Trial | None = probe if probe.passed else None
    lo = probe.rate if probe.passed else 0.0  # highest passing rate asked
    hi: float | None = None  # lowest failing rate asked
    rate = 0.9 * capacity
    budget = trials
    while budget > 0 and rate >= 500:
        budget -= 1
        t = attempt(rate, max(1000, int(rate * seconds)))
        if t.passed:
            if best is None or t.rate > best.rate:
                best = t
            lo = max(lo, rate)
        else:
            hi = rate if hi is None else min(hi, rate)
            if best is None and budget == 0 and len(done) <= trials + 4:
                budget = 1  # keep looking for a passing rate
        if hi is None:
            rate = rate * 1.25
        elif not lo:
            rate = rate * 0.5
        elif hi / lo < 1.05:
            break
        else:
            rate = (lo + hi) / 2
    # A single pass can be luck (a loss burst that did not happen to coincide): the result
    # is the best rate that passes twice; the runner-up gets a second chance if it does not.
    passing = sorted((t for t in done if t.passed), key=lambda t: -t.rate)
    for candidate in passing[:3]:
        log(f"  confirming {fmt_rate(candidate.rate)} lines/s:")
        again = attempt(candidate.requested, candidate.sent)
        if again.passed:
            best = min(candidate, again, key=lambda t: t.rate)
            # no paced trial above it failed: the daemon may do better (a lower bound)
            best.lower_bound = not any(t.requested > best.requested and not t.passed
                                       for t in done if t.requested)
            return best, done
    return None, done


# -- tallyd-only measurements --------------------------------------------------------------


def start_tallyd(sink_port: int, interval: float, workers: int | None) -> Tallyd:
    """tallyd with ``--workers W``; for W=1 a tallyd without the flag is the same thing."""
    try:
        return Tallyd(sink_port, interval, workers)
    except DaemonError:
        if workers != 1:
            raise
        return Tallyd(sink_port, interval, None)


def wait_after_boundary(interval: float, needed: float) -> None:
    """Sleep until just after a flush boundary if fewer than ``needed`` seconds remain.

    tallyd flushes at wall-clock multiples of its interval.
    """
    left = interval - (time.time() % interval)
    if left < needed:
        time.sleep(left + 0.3)


class PeakWatcher:
    """Samples the largest VmRSS/VmHWM of a process tree every 20 ms, until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss = self.hwm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, hwm, _ = tree_memory_kib(self.pid)
            self.rss, self.hwm = max(self.rss, rss), max(self.hwm, hwm)
            self._stop.wait(0.02)

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join(5)
        return self.rss, self.hwm


def flush_under_load(sink: CarbonSink, half_rate: float,
                     fill_rate: float) -> tuple[str, bool | None]:
    """Zero loss at half the maximum rate while tallyd flushes 100k names + 1M timer samples.

    Phase A fills one interval (100k counter names, then 1M timer samples over 1000 names,
    prefix ``fa``) at ``fill_rate``; phase B (prefix ``fb``, 20 lines/datagram) runs at
    ``half_rate`` from then until 3 s after the flush that carries phase A.
    """
    interval = float(max(10, int(1_100_000 / fill_rate + 4)))
    daemon = start_tallyd(sink.port, interval, 1)
    try:
        port = daemon.udp_port
        wait_after_boundary(interval, needed=1_100_000 / fill_rate + 2)
        drops0 = udp_port_state(port)[2]
        sink.reset()
        a1 = run_blast(port, 100_000, 20, 100_000, fill_rate, "c", "fa")
        a2 = run_blast(port, 1_000_000, 20, 1000, fill_rate, "ms", "fa")
        wait_drained(port, 30)
        drops_a = udp_port_state(port)[2] - drops0
        left = interval - (time.time() % interval)
        b_lines = int(half_rate * (left + 3.0))
        queue_max = 0

        def sample() -> None:
            nonlocal queue_max
            queue_max = max(queue_max, udp_port_state(port)[1])

        b = run_blast(port, b_lines, 20, 1000, half_rate, "c", "fb", on_tick=sample)
        drain, biggest = wait_drained(port, 30)
        done = time.monotonic()
        for _ in range(3):
            t = sink.snapshot()
            if (t.counters.get("fb", 0) == b["sent"] and t.counters.get("fa", 0) == 100_000
                    and t.timer_counts.get("fa", 0) == 1_000_000):
                break
            done = sink.wait_flush_end(done, interval + 30) or time.monotonic()
        t = sink.snapshot()
        drops_b = udp_port_state(port)[2] - drops0 - drops_a
        lost_b = int(b["sent"] - t.counters.get("fb", 0))
        lost_a = int(a1["sent"] + a2["sent"] - t.counters.get("fa", 0)
                     - t.timer_counts.get("fa", 0))
        ok = lost_b == 0 and drops_b == 0
        text = (f"flush of 100k names + 1M timer samples (interval {interval:g}s; "
                f"filled at {a2['rate']:,.0f} lines/s: lost={lost_a} of 1,100,000, "
                f"kernel_drops={drops_a}), fed meanwhile at {b['rate']:,.0f} lines/s "
                f"(half of {2 * half_rate:,.0f}) for {b['seconds']:.1f}s across the flush: "
                f"lost={lost_b} of {b['sent']:,}, kernel_drops={drops_b}, "
                f"queue_max={max(queue_max, biggest) // 1024}KiB, drain={drain:.2f}s: "
                f"{'ok' if ok else 'FAIL'}{'' if lost_a == 0 else ' (phase A itself lost lines)'}")
        return text, (ok if lost_a == 0 else None)
    finally:
        daemon.stop()


def memory_names(sink: CarbonSink, names: int, rate: float) -> tuple[str, float | None]:
    """Resident memory of one tallyd worker holding ``names`` distinct counter names."""
    interval = 3600.0  # no flush but the final one, at SIGTERM
    daemon = start_tallyd(sink.port, interval, 1)
    try:
        port = daemon.udp_port
        time.sleep(0.3)
        base = tree_memory_kib(daemon.pid)
        drops0 = udp_port_state(port)[2]
        sink.reset()
        sent = run_blast(port, names, 20, names, rate, "c", "mem")
        wait_drained(port, 60)
        time.sleep(0.3)
        held = tree_memory_kib(daemon.pid)
        drops = udp_port_state(port)[2] - drops0
        watcher = PeakWatcher(daemon.pid)
        daemon.stop(timeout=120)  # the final flush renders all the names
        _, hwm = watcher.stop()
    finally:
        daemon.stop()
    counted = int(sink.snapshot().counters.get("mem", 0))
    text = (f"{names:,} distinct counter names in one worker (sent at {sent['rate']:,.0f}/s; "
            f"counted at the sink {counted:,}, kernel_drops={drops}): VmRSS {base[0] / 1024:.0f}"
            f" MiB at start, {held[0] / 1024:.0f} MiB holding them "
            f"({(held[0] - base[0]) * 1024 / max(counted, 1):.0f} bytes/name), VmHWM "
            f"{hwm / 1024:.0f} MiB including their flush")
    return text, (hwm / 1024 if counted == names else None)


def memory_timers(sink: CarbonSink, samples: int,
                  rate: float) -> tuple[str, float | None]:
    """Resident growth per timer sample: ``samples`` samples over 100 names in one interval."""
    interval = 3600.0
    names = 100
    daemon = start_tallyd(sink.port, interval, 1)
    try:
        port = daemon.udp_port
        # the 100 names exist (dicts, key cache, arrays) before the measured samples
        run_blast(port, names, 20, names, 0, "ms", "tm")
        wait_drained(port, 10)
        time.sleep(0.3)
        base = tree_memory_kib(daemon.pid)
        drops0 = udp_port_state(port)[2]
        sink.reset()
        sent = run_blast(port, samples, 20, names, rate, "ms", "tm")
        wait_drained(port, 60)
        time.sleep(0.3)
        held = tree_memory_kib(daemon.pid)
        drops = udp_port_state(port)[2] - drops0
        daemon.stop(timeout=60)
    finally:
        daemon.stop()
    counted = int(sink.snapshot().timer_counts.get("tm", 0)) - names
    per_sample = (held[0] - base[0]) * 1024 / max(counted, 1)
    text = (f"{samples:,} timer samples over {names} names in one interval (sent at "
            f"{sent['rate']:,.0f}/s; counted at the sink {counted:,}, kernel_drops={drops}): "
            f"VmRSS {base[0] / 1024:.1f} -> {held[0] / 1024:.1f} MiB = "
            f"{per_sample:.1f} bytes/sample")
    return text, (per_sample if counted == samples else None)


def profile_tallyd(sink: CarbonSink, py_spy: str, case: Case, rate: float, seconds: float,
                   workers: int | None, out: Path) -> None:
    """Feed tallyd ``case`` at ``rate`` for ``seconds`` under py-spy; print where time goes.

    py-spy samples 100 times a second (it pauses the process for each sample, so a higher
    rate disturbs what it measures); the raw (collapsed) stacks go to ``out``.
    """
    daemon = start_tallyd(sink.port, 2.0, workers)
    try:
        spy = subprocess.Popen([py_spy, "record", "-p", str(daemon.pid), "-d",
                                str(max(1, int(seconds) - 1)), "-r", "100", "-f", "raw",
                                "-o", str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        drops0 = udp_port_state(daemon.udp_port)[2]
        sent = run_blast(daemon.udp_port, int(rate * seconds), case.per, case.names, rate,
                         case.kind)
        wait_drained(daemon.udp_port, 30)
        drops = udp_port_state(daemon.udp_port)[2] - drops0
        _, err = spy.communicate(timeout=seconds + 30)
    finally:
        daemon.stop()
    log(f"profile: {case.title} at {sent['rate']:,.0f} lines/s for {sent['seconds']:.1f}s, "
        f"kernel_drops={drops}; raw stacks in {out}")
    if spy.returncode != 0 or not out.exists():
        log(f"py-spy failed: {err.strip()[-300:]}")
        return
    own: dict[str, int] = {}
    total = 0
    for row in out.read_text().splitlines():
        stack, _, count = row.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or "Thread._bootstrap" in frames[0]:
            continue  # idle helper threads
        total += int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
    log(f"{total} samples of the main thread; own time by line:")
    for frame, samples in sorted(own.items(), key=lambda kv: -kv[1])[:15]:
        log(f"  {100 * samples / max(total, 1):5.1f}%  {frame}")


# -- main ----------------------------------------------------------------------------------

CASES = [
    Case("20/dgram", "20 lines/datagram", 20, 1000, "c", 1_000_000),
    Case("1/dgram", "1 line/datagram", 1, 1000, "c", 400_000),
    Case("mix30", "mix, 30% timers", 20, 1000, "mix30", 1_000_000),
    Case("100k", "100k names", 20, 100_000, "c", 1_000_000),
]


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    def sysctl(name: str) -> str:
        try:
            return Path(f"/proc/sys/net/core/{name}").read_text().strip()
        except OSError:
            return "?"
    node = shutil.which("node")
    node_version = subprocess.run([node, "--version"], capture_output=True,
                                  text=True).stdout.strip() if node else "?"
    try:
        head = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True).stdout.strip()[:60]
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                "aggregator", "common"], capture_output=True,
                               text=True).stdout.count("\n")
        tree = f"tallyd at {head!r}" + (f" + {dirty} uncommitted file(s)" if dirty else "")
    except OSError:
        tree = "tallyd tree unknown"
    return (f"{tree}; {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, node {node_version}, "
            f"rmem_default={sysctl('rmem_default')} rmem_max={sysctl('rmem_max')}, "
            f"uid={os.getuid()}, loadavg={os.getloadavg()[0]:.2f}")


def parse_workers(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    return [int(w) for w in text.split(",") if w.strip()]


def target_lines(rows: list[tuple[str, float | None, dict[int | None, float | None], list[str]]],
                 w_cols: list[int | None],
                 extras: tuple[bool | None, float | None, float | None] | None) -> list[str]:
    """The issue's targets, each with what this run measured."""
    out = []

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "MISSED")

    by_title = {title: (etsy, per_w) for title, etsy, per_w, _ in rows}
    for title in ("20 lines/datagram", "1 line/datagram"):
        if title in by_title:
            etsy, per_w = by_title[title]
            one = per_w.get(w_cols[0])
            ratio = one / etsy if one and etsy else None
            shown = f"{ratio:.2f}x" if ratio else "-"
            out.append(f"target: one worker >= 5x Etsy statsd at {title}: {shown}: "
                       f"{verdict(None if ratio is None else ratio >= 5)}")
    if len(w_cols) > 1 and "20 lines/datagram" in by_title:
        per_w = by_title["20 lines/datagram"][1]
        one, two = per_w.get(w_cols[0]), per_w.get(w_cols[1])
        ratio = two / one if one and two else None
        cores = os.cpu_count() or 1
        shown = f"{ratio:.2f}x" if ratio else "-"
        out.append(f"target: W={w_cols[1]} >= 1.6x W={w_cols[0]} (20 lines/datagram): {shown}: "
                   + (verdict(None if ratio is None else ratio >= 1.6) if cores >= 4 else
                      f"not assessable here ({cores} CPUs, and blast needs one)"))
    if extras is not None:
        flush_ok, names_mib, sample_bytes = extras
        out.append(f"target: zero lost lines at half the maximum rate during a flush of 100k "
                   f"names + 1M timer samples: {verdict(flush_ok)}")
        shown = f"{names_mib:.0f} MiB" if names_mib is not None else "-"
        out.append(f"target: 1M distinct counter names in <= 300 MB resident per worker "
                   f"(VmHWM): {shown}: "
                   f"{verdict(None if names_mib is None else names_mib * 1.048576 <= 300)}")
        shown = f"{sample_bytes:.1f} bytes" if sample_bytes is not None else "-"
        out.append(f"target: timer samples <= 10 bytes each: {shown}: "
                   f"{verdict(None if sample_bytes is None else sample_bytes <= 10)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true",
                        help="one low-rate trial per daemon and case 20/dgram and 1/dgram")
    parser.add_argument("--cases", default=",".join(c.key for c in CASES),
                        help="comma-separated case keys (default: all)")
    parser.add_argument("--workers", default="1,2",
                        help="comma-separated W values passed to tallyd as --workers W "
                             "(default 1,2; W>1 runs the 20/dgram and 1/dgram cases only; a "
                             "tallyd without the flag runs W=1 without it and skips the rest)")
    parser.add_argument("--flush-interval", type=float, default=2.0,
                        help="both daemons' flush interval, seconds (default 2)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="send time of a search trial (default 3)")
    parser.add_argument("--trials", type=int, default=4,
                        help="search trials after the probe, per daemon and case, before the "
                             "confirmation runs (default 4)")
    parser.add_argument("--py-spy", metavar="PATH",
                        help="instead of comparing: profile tallyd with this py-spy binary "
                             "(see --profile-case, --profile-rate)")
    parser.add_argument("--profile-case", default="20/dgram", help="case key to profile")
    parser.add_argument("--profile-rate", type=float, default=500_000,
                        help="lines/s offered while profiling (default 500000)")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the flush-under-load and memory measurements")
    args = parser.parse_args(argv)
    if args.short:
        args.flush_interval = 1.0

    build_blast()
    log(f"machine: {machine()}")
    log(f"flush interval {args.flush_interval:g}s for both daemons; tallyd asks for a 32 MiB "
        f"receive buffer (SO_RCVBUFFORCE as root), Etsy statsd keeps the kernel default")
    sink = CarbonSink()
    workers = parse_workers(args.workers)
    if args.short:
        workers = workers[:1]
    rows: list[tuple[str, float | None, dict[int | None, float | None], list[str]]] = []
    notes: list[str] = []
    extras: tuple[bool | None, float | None, float | None] | None = None
    bounds: set[tuple[str, int | str | None]] = set()  # (case, W or "etsy"): lower bounds
    failed_short = False
    started = time.monotonic()
    try:
        if args.py_spy:
            case = next(c for c in CASES if c.key == args.profile_case)
            profile_tallyd(sink, args.py_spy, case, args.profile_rate, 8.0, workers[0],
                           Path(tempfile.gettempdir()) / "tallyd-profile.txt")
            return 0
        if args.short:
            cases = [CASES[0], CASES[1]]
            for case in cases:
                best: dict[str, Trial | None] = {}
                for kind in ("etsy", "tallyd"):
                    fi = args.flush_interval
                    daemon: Daemon = (Etsy(sink.port, fi) if kind == "etsy"
                                      else start_tallyd(sink.port, fi, workers[0]))
                    try:
                        # low rates: a shared, busy machine must not make them lose lines
                        rate = 20_000 if case.per > 1 else 2_000
                        t = run_trial(daemon, sink, case, rate, int(rate * 0.5), fi, kind)
                        log(t.line())
                        best[kind] = t if t.lost == 0 and t.kernel_drops == 0 else None
                        failed_short |= best[kind] is None
                    finally:
                        daemon.stop()
                e, y = best["etsy"], best["tallyd"]
                rows.append((case.title, e.rate if e else None,
                             {workers[0]: y.rate if y else None}, ["short mode: a fixed low "
                                                                   "rate, not a maximum"]))
        else:
            selected = [c for c in CASES if c.key in args.cases.split(",")]
            tallyd_best: dict[int | None, float] = {}
            for case in selected:
                log(f"case {case.title}: {case.per} lines/datagram, {case.names:,} names, "
                    f"kind {case.kind}")
                daemon = Etsy(sink.port, args.flush_interval)
                try:
                    e_best, _ = search(daemon, sink, case, seconds=args.seconds,
                                       trials=args.trials, flush_interval=args.flush_interval,
                                       label="etsy")
                finally:
                    daemon.stop()
                per_w: dict[int | None, float | None] = {}
                case_notes: list[str] = []
                for w in workers:
                    if w is not None and w > 1 and case.key not in ("20/dgram", "1/dgram"):
                        continue
                    try:
                        daemon = start_tallyd(sink.port, args.flush_interval, w)
                    except DaemonError as exc:
                        msg = str(exc).strip().splitlines()
                        note = (f"W={w} skipped: tallyd-aggregator did not start with "
                                f"--workers {w} ({msg[-1] if msg else 'no output'})")
                        log("  " + note)
                        if note not in notes:
                            notes.append(note)
                        continue
                    label = "tallyd" if w is None else f"tallyd W={w}"
                    try:
                        y_best, _ = search(daemon, sink, case, seconds=args.seconds,
                                           trials=args.trials,
                                           flush_interval=args.flush_interval, label=label)
                    finally:
                        daemon.stop()
                    per_w[w] = y_best.rate if y_best else None
                    if y_best is not None and y_best.lower_bound:
                        bounds.add((case.title, w))
                    if y_best and y_best.lower_bound:
                        bounds.add((case.title, w))
                    if case.key == "20/dgram" and y_best:
                        tallyd_best[w] = y_best.rate
                if e_best is not None and e_best.lower_bound:
                    bounds.add((case.title, "etsy"))
                rows.append((case.title, e_best.rate if e_best else None, per_w, case_notes))
                log(f"  ({time.monotonic() - started:.0f}s elapsed)")
            if not args.no_extras:
                top = tallyd_best.get(workers[0]) or 200_000.0
                log("tallyd alone (one worker): a big flush under load; memory")
                text, flush_ok = flush_under_load(sink, top / 2, min(top * 0.6, 300_000))
                log("  " + text)
                notes.append(text)
                text, names_mib = memory_names(sink, 1_000_000, min(top * 0.5, 200_000))
                log("  " + text)
                notes.append(text)
                text, sample_bytes = memory_timers(sink, 1_000_000, min(top * 0.5, 200_000))
                log("  " + text)
                notes.append(text)
                extras = (flush_ok, names_mib, sample_bytes)
    finally:
        sink.close()

    w_cols = workers
    head = ["case", "Etsy lines/s"] + [
        "tallyd lines/s" if w is None else f"tallyd W={w}" for w in w_cols] + ["ratio"]
    table = []
    for title, etsy_rate, per_w, _ in rows:
        first = per_w.get(w_cols[0])
        ratio = (f"{first / etsy_rate:.2f}x" if first and etsy_rate else "-")
        cells = [(">=" if (title, who) in bounds else "") + fmt_rate(value)
                 for value, who in [(etsy_rate, "etsy"), *((per_w.get(w), w) for w in w_cols)]]
        table.append([title, *cells, ratio])
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
    log("")
    log("| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(head)) + " |")
    log("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        log("| " + " | ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                              for i, c in enumerate(r)) + " |")
    if len(w_cols) > 1 and w_cols[0] is not None:
        for title, _, per_w, _ in rows:
            one, two = per_w.get(w_cols[0]), per_w.get(w_cols[1])
            if one and two:
                log(f"W={w_cols[1]} / W={w_cols[0]} ({title}): {two / one:.2f}x")
    for title, _, _, case_notes in rows:
        for note in case_notes:
            log(f"note ({title}): {note}")
    for note in notes:
        log(f"note: {note}")
    if not args.short:
        for line in target_lines(rows, w_cols, extras):
            log(line)
    log(f"total time {time.monotonic() - started:.0f}s")
    return 1 if failed_short else 0


if __name__ == "__main__":
    sys.exit(main())
