"""A process and its descendants, read from /proc (Linux): who they are, and their memory.

`process_tree` lists a daemon's pid and every descendant's (a supervisor and its workers);
`memory_bytes` reads one process's resident set size now and at its peak (``VmHWM``),
`rss_bytes` the first, `cpu_seconds` its CPU time (to tell a busy daemon from an idle one),
`cpu_ticks` the same in clock ticks and `tree_cpu_ticks` summed over a process tree (what
a benchmark charges a daemon: every thread of every one of its processes);
`RssSampler` samples a tree in a background thread, keeping each process's peak and last
value (and the kernel's own peak, ``VmHWM``, last read), so a test can bound memory over a
run, not only at its end.

SHELL (reads /proc, a sampling thread).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

PROC = Path("/proc")


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (empty when it is gone)."""
    out: list[int] = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` followed by all its descendants, parents before children."""
    tree = [pid]
    for parent in tree:  # grows while it is walked
        tree += [c for c in children(parent) if c not in tree]
    return tree


def memory_bytes(pid: int) -> tuple[int, int] | None:
    """``(VmRSS, VmHWM)`` of ``pid``: its resident set size now and at its peak; None when
    it has exited (a zombie has neither)."""
    found: dict[str, int] = {}
    try:
        with open(PROC / str(pid) / "status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    found[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        return None
    if "VmRSS" not in found:
        return None
    return found["VmRSS"], found.get("VmHWM", found["VmRSS"])


def rss_bytes(pid: int) -> int | None:
    """The resident set size of ``pid`` (``VmRSS``), or None when it has exited."""
    memory = memory_bytes(pid)
    return None if memory is None else memory[0]


def cpu_ticks(pid: int) -> int:
    """User plus system CPU time ``pid`` (all its threads) has used, in clock ticks
    (``utime + stime`` of /proc/PID/stat; 0 when it is gone)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(") ", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used (0 when it is gone)."""
    return cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")


def tree_cpu_ticks(pid: int) -> int:
    """`cpu_ticks` summed over ``pid`` and all its descendants alive now."""
    return sum(cpu_ticks(p) for p in process_tree(pid))


#: Clock ticks per second (``utime``/``stime`` units).
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def is_running(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie waiting for its parent."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1][:1] not in ("Z", "X")


class RssSampler:
    """Samples the RSS of ``pid``'s process tree every ``period`` seconds until closed.

    Processes that appear later (a restarted worker) are sampled too. ``peak`` and ``last``
    map each pid ever seen to its highest and latest RSS in bytes, ``hwm`` to its latest
    ``VmHWM`` (which includes peaks between two samples).
    """

    def __init__(self, pid: int, *, period: float = 0.05) -> None:
        self.pid = pid
        self.period = period
        self.peak: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.hwm: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> dict[int, int]:
        """Sample now; return ``{pid: rss}`` of the processes alive."""
        now = {p: m for p in process_tree(self.pid) if (m := memory_bytes(p)) is not None}
        with self._lock:
            for p, (rss, hwm) in now.items():
                self.last[p] = rss
                self.peak[p] = max(rss, self.peak.get(p, 0))
                self.hwm[p] = hwm
        return {p: rss for p, (rss, _) in now.items()}

    def reset_peaks(self) -> None:
        """Start a new peak measurement (from the latest samples)."""
        with self._lock:
            self.peak = dict(self.last)

    def peaks(self) -> dict[int, int]:
        with self._lock:
            return dict(self.peak)

    def high_water_marks(self) -> dict[int, int]:
        with self._lock:
            return dict(self.hwm)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
