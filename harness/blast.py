"""The C load generator ``blast`` (bench/blast.c): building it, running it, and what it sends.

``blast HOST PORT LINES PER NAMES RATE [KIND [PREFIX]]`` sends ``LINES`` StatsD lines over
UDP, ``PER`` lines per datagram, cycling over ``NAMES`` names, paced at ``RATE`` lines/s
(0: as fast as it can), and prints one ``sent=... packets=... seconds=... rate=...`` line.
Line ``s`` has name ``s % NAMES``; its kind is fixed by ``KIND`` (``c``, ``ms``, ``g``, ``s``)
or, for ``mix30``, by ``s % 10`` (`MIX30`). `expected_totals` says what a daemon must report
for a run, so a benchmark counts lines end to end at its Carbon sink.

SHELL (compiles and runs a subprocess).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from harness.checkout import REPO_ROOT

BLAST_SOURCE = REPO_ROOT / "bench" / "blast.c"
BLAST = REPO_ROOT / "bench" / "blast"
#: blast's first name component when none is given.
DEFAULT_PREFIX = "bench"
#: How often `run_blast` calls its ``on_tick`` while blast runs.
TICK_SECONDS = 0.05
#: blast.c's mix30 kinds, by line number modulo 10.
MIX30 = ("c", "c", "c", "c", "ms", "ms", "ms", "g", "g", "s")

_RESULT = re.compile(r"sent=(\d+) packets=(\d+) seconds=([\d.]+) rate=(\d+)")


class BlastError(RuntimeError):
    """blast could not be built, or a run failed."""


@dataclass(frozen=True)
class BlastResult:
    """What one blast run really did."""

    sent: int
    packets: int
    seconds: float
    rate: float


def build_blast() -> None:
    """Compile bench/blast.c into bench/blast (git-ignored) unless it is up to date.

    Built under a temporary name and renamed, so a concurrent run never executes half a file.

    Raises:
        BlastError: no C compiler (``cc`` or ``gcc``) is installed.
    """
    if BLAST.exists() and BLAST.stat().st_mtime >= BLAST_SOURCE.stat().st_mtime:
        return
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BlastError("a C compiler (cc) is needed to build bench/blast")
    tmp = BLAST.with_name(f".blast.{os.getpid()}")
    subprocess.run([compiler, "-O2", "-o", str(tmp), str(BLAST_SOURCE)], check=True)
    os.replace(tmp, BLAST)


def run_blast(port: int, lines: int, per: int, names: int, rate: float, kind: str = "c", *,
              prefix: str = DEFAULT_PREFIX,
              on_tick: Callable[[], None] | None = None) -> BlastResult:
    """Send to 127.0.0.1:``port`` until blast is done, calling ``on_tick`` meanwhile.

    Raises:
        BlastError: blast exited with an error or printed no result line.
    """
    proc = subprocess.Popen([str(BLAST), "127.0.0.1", str(port), str(lines), str(per),
                             str(names), f"{rate:.0f}", kind, prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if on_tick is not None:
            on_tick()
        time.sleep(TICK_SECONDS)
    out, err = proc.communicate()
    found = _RESULT.search(out)
    if proc.returncode != 0 or not found:
        raise BlastError(f"blast failed ({proc.returncode}): {out} {err}")
    return BlastResult(int(found[1]), int(found[2]), float(found[3]), float(found[4]))


@dataclass(frozen=True)
class Expected:
    """What a daemon must report for one blast run."""

    lines: int
    counters: int
    timers: int
    gauges: dict[int, float]  # name index -> last value
    sets: frozenset[int]  # name indexes that got a line


def expected_totals(kind: str, lines: int, names: int) -> Expected:
    """What ``lines`` lines of ``kind`` over ``names`` names add up to."""
    if kind == "c":
        return Expected(lines, lines, 0, {}, frozenset())
    if kind == "ms":
        return Expected(lines, 0, lines, {}, frozenset())
    if kind != "mix30" or names % 10:
        raise ValueError(f"no expectation for kind {kind!r} over {names} names")
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
    return Expected(lines, counters, timers, gauges, frozenset(sets))
