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

Beside this file: contender.py starts and stops the two daemons, trial.py runs a trial and
the search, measurement.py the tallyd-only figures, report.py prints. blast, the counting
sink and the launchers they build on are in harness/ (blast, tally, tallyd, etsy).

ENTRY.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from contender import Contender, start_etsy_contender, start_tallyd, stop_contender
from harness.blast import BlastError, build_blast
from harness.checkout import REPO_ROOT
from harness.daemon import DaemonError
from harness.tally import TallySink
from measurement import flush_under_load, memory_names, memory_timers, profile_tallyd
from report import fmt_rate, log, print_table
from trial import Case, Trial, run_trial, search

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
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True).stdout.strip()[:60]
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--",
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

    try:
        build_blast()
    except BlastError as exc:
        sys.exit(str(exc))
    log(f"machine: {machine()}")
    log(f"flush interval {args.flush_interval:g}s for both daemons; tallyd asks for a 32 MiB "
        f"receive buffer (SO_RCVBUFFORCE as root), Etsy statsd keeps the kernel default")
    sink = TallySink()
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
                    daemon: Contender = (start_etsy_contender(sink.port, fi) if kind == "etsy"
                                         else start_tallyd(sink.port, fi, workers[0]))
                    try:
                        # low rates: a shared, busy machine must not make them lose lines
                        rate = 20_000 if case.per > 1 else 2_000
                        t = run_trial(daemon, sink, case, rate, int(rate * 0.5), fi, kind)
                        log(t.line())
                        best[kind] = t if t.lost == 0 and t.kernel_drops == 0 else None
                        failed_short |= best[kind] is None
                    finally:
                        stop_contender(daemon)
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
                daemon = start_etsy_contender(sink.port, args.flush_interval)
                try:
                    e_best, _ = search(daemon, sink, case, seconds=args.seconds,
                                       trials=args.trials, flush_interval=args.flush_interval,
                                       label="etsy")
                finally:
                    stop_contender(daemon)
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
                        stop_contender(daemon)
                    per_w[w] = y_best.rate if y_best else None
                    if y_best is not None and y_best.lower_bound:
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
    print_table(head, table)
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
