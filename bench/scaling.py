"""Issue 11's table, side by side in one run: loss-free rates, CPU per line and idle CPU of
Etsy statsd 0.9.0, brubeck (with ``--brubeck PATH``), tallyd with one and two workers, and
tallyd with two workers behind one tallyd-proxy.

Everything runs on 127.0.0.1, one daemon at a time, each fresh per case and per pass, all
with the same flush interval, flushing to a Carbon sink in this process that counts the
lines end to end (bench/compare.py's machinery: `trial.run_trial`, `trial.search`,
`harness.tally.TallySink`; brubeck's names are counted by `harness.tally.brubeck_naming`).

* **Loss-free rate** per case (20 lines/datagram over 1000 names; 1 line/datagram; 20
  lines/datagram over 100k names): the best rate that passed twice (compare.py's search; a
  trial passes when the sink's totals are exact, the kernel dropped nothing on any port a
  line passes, and the queues emptied in time). ">=": no faster paced trial failed.
* **CPU per line**: each daemon is fed ``--rate`` lines/s at 20 lines/datagram for
  ``--seconds`` s (and ``--rate1`` at 1 line/datagram); utime+stime of all its processes
  and threads (`harness.proctree.tree_cpu_ticks`, /proc) from just before the send until the
  sink has counted the lines, divided by the lines counted at the sink. A proxy variant is
  charged for the proxy and the aggregator together (the aggregator alone is printed too).
  Passes alternate the daemons; the table shows the fastest pass, the log the median too.
* **Idle CPU**: ticks of all its processes over ``--idle-seconds`` with nothing sent (a
  fresh daemon, after a settling second), in each pass of the 20 lines/datagram CPU case.

The proxy variants: "W=2 via proxy" is an aggregator with per-worker endpoints
(``--worker-listen``, contract C1) behind a proxy that asks it ``workers`` and sends each
line to its owner's port (C2); it is run only when this tree's aggregator has the setting
(``--help``), and the log says which W the proxy reports sending to
(``proxy.forwarder.0.workers``). "W=2 via proxy, main port" is the same without per-worker
endpoints: the proxy sends to the aggregator's one port.

At the end: the table, the ratios the issue's targets name, and `model`'s prediction for W
= 4, 8 and 16 from this run's costs.

    .venv/bin/python bench/scaling.py                          # full run (about 25 min)
    .venv/bin/python bench/scaling.py --brubeck .cache-local/brubeck/brubeck
    .venv/bin/python bench/scaling.py --short                  # seconds: a smoke test
    .venv/bin/python bench/scaling.py --cases 20/dgram --daemons w1,w2 --passes 5
    .venv/bin/python bench/build_brubeck.py SRC                # build brubeck in SRC

ENTRY.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from compare import machine
from contender import (
    Chain,
    Contender,
    describe,
    root_pids,
    start_chain,
    start_etsy_contender,
    start_tallyd,
    stop_contender,
    supports_worker_listen,
)
from harness.blast import BlastError, build_blast
from harness.brubeck import DEFAULT_THREADS, SERVER_NAME, start_brubeck
from harness.daemon import DaemonError
from harness.etsy import etsy_installed
from harness.proctree import CLOCK_TICKS, tree_cpu_ticks
from harness.tally import TallySink, brubeck_naming
from model import derive_costs, model_rows
from report import fmt_rate, log, print_table
from trial import Case, Trial, run_trial, search

CASES = [
    Case("20/dgram", "20 lines/datagram", 20, 1000, "c", 1_000_000),
    Case("1/dgram", "1 line/datagram", 1, 1000, "c", 400_000),
    Case("100k", "20 lines/datagram, 100k names", 20, 100_000, "c", 1_000_000),
]
#: Seconds a fresh daemon is left alone before its idle CPU is read (start-up work ends).
SETTLE_SECONDS = 1.0
#: --short: the fixed, low rates of its one trial per case (a busy machine must not lose
#: lines at them), and its send time.
SHORT_RATES = {"20/dgram": 20_000.0, "1/dgram": 2_000.0, "100k": 20_000.0}
SHORT_SECONDS = 0.5


@dataclass(frozen=True)
class Daemon:
    key: str
    title: str
    start: Callable[[float], Contender]  # flush interval -> a started daemon
    sink: TallySink


@dataclass
class CpuFigure:
    """CPU per line over the passes of one daemon and case, microseconds."""

    total: list[float] = field(default_factory=list)  # all its processes
    parts: list[tuple[float, ...]] = field(default_factory=list)  # per root (proxy, agg)
    lost: list[int] = field(default_factory=list)

    def best(self) -> float | None:
        return min(self.total) if self.total else None

    def best_parts(self) -> tuple[float, ...] | None:
        if not self.total:
            return None
        return self.parts[self.total.index(min(self.total))]


@dataclass
class Results:
    """Everything one run measured, by (case key, daemon key) or daemon key."""

    lossfree: dict[tuple[str, str], Trial | None] = field(default_factory=dict)
    cpu: dict[tuple[str, str], CpuFigure] = field(default_factory=dict)
    idle: dict[str, list[int]] = field(default_factory=dict)
    #: a proxy variant's ``proxy.forwarder.0.workers`` at each start ("-": no such figure)
    proxy_workers: dict[str, set[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record_cpu(self, case: str, key: str, t: Trial) -> None:
        figure = per_line_us(t)
        if figure is None:
            return
        f = self.cpu.setdefault((case, key), CpuFigure())
        f.total.append(figure[0])
        f.parts.append(figure[1])
        f.lost.append(t.lost)

    def proxied_to_workers(self, key: str) -> bool:
        """Whether the proxy of variant ``key`` sent to 2 worker ports at every start."""
        return self.proxy_workers.get(key, set()) == {"2"}


def per_line_us(trial: Trial) -> tuple[float, tuple[float, ...]] | None:
    """(CPU microseconds per counted line, the same per process tree) of a trial."""
    if trial.counted <= 0:
        return None
    parts = tuple(t / CLOCK_TICKS * 1e6 / trial.counted for t in trial.cpu_ticks)
    return sum(parts), parts


def idle_ticks(daemon: Contender, seconds: float) -> int:
    """Clock ticks all the daemon's processes use over ``seconds`` with nothing sent."""
    time.sleep(SETTLE_SECONDS)
    roots = root_pids(daemon)
    before = sum(tree_cpu_ticks(p) for p in roots)
    time.sleep(seconds)
    return sum(tree_cpu_ticks(p) for p in roots) - before


def start_tallyd_w(sink_port: int, interval: float, *, workers: int) -> Contender:
    return start_tallyd(sink_port, interval, workers)


def daemon_table(args: argparse.Namespace, sink: TallySink, brubeck_sink: TallySink,
                 notes: list[str]) -> list[Daemon]:
    """The daemons of ``--daemons`` this run can start; a note for each it cannot."""
    wanted = [k.strip() for k in args.daemons.split(",") if k.strip()]
    out: list[Daemon] = []
    for key in wanted:
        if key == "etsy":
            if not etsy_installed():
                notes.append("Etsy statsd skipped: not installed (tools/bootstrap --test)")
                continue
            out.append(Daemon(key, "Etsy 0.9.0",
                              lambda fi: start_etsy_contender(sink.port, fi), sink))
        elif key == "brubeck":
            if not args.brubeck:
                notes.append("brubeck skipped: no --brubeck PATH given "
                             "(bench/build_brubeck.py builds one)")
                continue
            out.append(Daemon(key, f"brubeck (C, {DEFAULT_THREADS} threads)",
                              partial(start_brubeck, Path(args.brubeck), brubeck_sink.port),
                              brubeck_sink))
        elif key in ("w1", "w2"):
            w = int(key[1])
            out.append(Daemon(key, f"tallyd W={w}",
                              partial(start_tallyd_w, sink.port, workers=w), sink))
        elif key == "w2-proxy":
            if not supports_worker_listen():
                notes.append("tallyd W=2 via proxy (per-worker endpoints): not supported by "
                             "this tree (the aggregator has no worker_listen setting, C1)")
                continue
            out.append(Daemon(key, "tallyd W=2 via proxy",
                              lambda fi: start_chain(sink.port, fi, 2, worker_listen=True),
                              sink))
        elif key == "w2-proxy-main":
            out.append(Daemon(key, "W=2 via proxy, main port",
                              lambda fi: start_chain(sink.port, fi, 2, worker_listen=False),
                              sink))
        else:
            sys.exit(f"unknown daemon {key!r} (etsy, brubeck, w1, w2, w2-proxy, "
                     f"w2-proxy-main)")
    return out


def started(d: Daemon, interval: float, res: Results, *,
            announce: bool = True) -> Contender | None:
    """``d`` started, or None with a note (and the reason logged); ``announce``: log what
    runs (`trial.search` does it itself)."""
    try:
        daemon = d.start(interval)
    except (DaemonError, OSError) as exc:
        lines = str(exc).strip().splitlines()
        note = f"{d.title} did not start: {lines[0] if lines else 'no output'}"
        log("  " + note)
        if note not in res.notes:
            res.notes.append(note)
        return None
    if isinstance(daemon, Chain):
        time.sleep(0.5)  # the proxy's first answer to `workers` (C2)
        res.proxy_workers.setdefault(d.key, set()).add(daemon.forwarder_workers())
    if announce:
        log(describe(daemon, d.title))
    return daemon


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(c.key for c in CASES),
                        help="comma-separated loss-free cases (default: 20/dgram,1/dgram,100k)")
    parser.add_argument("--daemons", default="etsy,brubeck,w1,w2,w2-proxy,w2-proxy-main",
                        help="comma-separated: etsy, brubeck, w1, w2, w2-proxy (per-worker "
                             "endpoints), w2-proxy-main (default: all)")
    parser.add_argument("--brubeck", metavar="PATH", help="a brubeck binary (else skipped)")
    parser.add_argument("--short", action="store_true",
                        help="a few seconds: one low-rate trial per case and daemon, which "
                             "also gives the CPU figures (a smoke test, not a measurement)")
    parser.add_argument("--rate", type=float, default=500_000,
                        help="lines/s of the CPU-per-line run at 20 lines/datagram "
                             "(default 500000)")
    parser.add_argument("--rate1", type=float, default=100_000,
                        help="lines/s of the CPU-per-line run at 1 line/datagram "
                             "(default 100000)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="send time of a CPU-per-line run (default 10)")
    parser.add_argument("--passes", type=int, default=3,
                        help="CPU passes per daemon, alternating the daemons (default 3)")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="window of the idle measurement (default 5)")
    parser.add_argument("--trial-seconds", type=float, default=3.0,
                        help="send time of a loss-free search trial (default 3)")
    parser.add_argument("--trials", type=int, default=4,
                        help="search trials after the probe (default 4), then confirmations")
    parser.add_argument("--flush-interval", type=float, default=2.0,
                        help="every daemon's flush interval, s (default 2; brubeck: whole s)")
    args = parser.parse_args(argv)
    if args.short:
        args.flush_interval = 1.0
        args.idle_seconds = 1.0
    try:
        build_blast()
    except BlastError as exc:
        sys.exit(str(exc))
    log(f"machine: {machine()}")
    started_at = time.monotonic()
    sink = TallySink()
    brubeck_sink = TallySink(brubeck_naming(SERVER_NAME))
    res = Results()
    cases = [c for c in CASES if c.key in args.cases.split(",")]
    try:
        daemons = daemon_table(args, sink, brubeck_sink, res.notes)
        for note in res.notes:
            log(note)
        if args.short:
            run_short(daemons, cases, args, res)
        else:
            run_full(daemons, cases, args, res)
    finally:
        sink.close()
        brubeck_sink.close()
    report(daemons, cases, args, res)
    log(f"total time {time.monotonic() - started_at:.0f}s")
    return 0


def run_short(daemons: list[Daemon], cases: list[Case], args: argparse.Namespace,
              res: Results) -> None:
    """One daemon instance each: idle, then one low-rate trial per case (CPU from it too)."""
    fi = args.flush_interval
    for d in daemons:
        daemon = started(d, fi, res)
        if daemon is None:
            continue
        try:
            res.idle.setdefault(d.key, []).append(idle_ticks(daemon, args.idle_seconds))
            for case in cases:
                rate = SHORT_RATES[case.key]
                t = run_trial(daemon, d.sink, case, rate, int(rate * SHORT_SECONDS), fi,
                              d.key)
                log(t.line())
                res.lossfree[(case.key, d.key)] = t if t.passed else None
                res.record_cpu(case.key, d.key, t)
        finally:
            stop_contender(daemon)


def run_full(daemons: list[Daemon], cases: list[Case], args: argparse.Namespace,
             res: Results) -> None:
    fi = args.flush_interval
    for case in cases:
        log(f"loss-free, case {case.title}: {case.per} lines/datagram, {case.names:,} names")
        for d in daemons:
            daemon = started(d, fi, res, announce=False)
            if daemon is None:
                continue
            try:
                best, _ = search(daemon, d.sink, case, seconds=args.trial_seconds,
                                 trials=args.trials, flush_interval=fi, label=d.key)
            finally:
                stop_contender(daemon)
            res.lossfree[(case.key, d.key)] = best
    cpu_cases = [(CASES[0], args.rate), (CASES[1], args.rate1)]
    for case, rate in cpu_cases:
        log(f"CPU per line, {case.title} at {rate:,.0f} lines/s for {args.seconds:g}s, "
            f"{args.passes} pass(es)" + (f"; idle over {args.idle_seconds:g}s first"
                                         if case is CASES[0] else ""))
        for n in range(args.passes):
            for d in daemons:
                daemon = started(d, fi, res)
                if daemon is None:
                    continue
                try:
                    if case is CASES[0]:
                        ticks = idle_ticks(daemon, args.idle_seconds)
                        res.idle.setdefault(d.key, []).append(ticks)
                        log(f"  idle {d.key}: {ticks} ticks in {args.idle_seconds:g}s")
                    t = run_trial(daemon, d.sink, case, rate, int(rate * args.seconds), fi,
                                  d.key)
                    log(t.line())
                    res.record_cpu(case.key, d.key, t)
                    figure = per_line_us(t)
                    if figure is not None:
                        log(f"  pass {n + 1} {d.key}: {figure[0]:.3f} us/line "
                            f"(per process tree: "
                            + ", ".join(f"{p:.3f}" for p in figure[1]) + ")")
                finally:
                    stop_contender(daemon)


def fmt_us(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} us"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def report(daemons: list[Daemon], cases: list[Case], args: argparse.Namespace,
           res: Results) -> None:
    lossfree, cpu, idle, notes = res.lossfree, res.cpu, res.idle, res.notes
    keys = [d.key for d in daemons]
    head = ["case", *(d.title for d in daemons)]
    table = []
    for case in cases:
        row = [case.title]
        for k in keys:
            t = lossfree.get((case.key, k))
            if (case.key, k) not in lossfree:
                row.append("n/a")
            elif t is None:
                row.append("-")
            else:
                row.append((">=" if t.lower_bound else "") + fmt_rate(t.rate))
        table.append(row)
    for case in (CASES[0], CASES[1]):
        row = [f"CPU per line, {case.per} line{'s' if case.per > 1 else ''}/dgram"]
        for k in keys:
            f = cpu.get((case.key, k))
            cell = fmt_us(f.best() if f else None)
            if f and len(f.total) > 1:
                cell += f" (med {statistics.median(f.total):.2f})"
            if f and any(f.lost):
                cell += " lossy"
            row.append(cell)
        table.append(row)
    row = [f"idle CPU (ticks in {args.idle_seconds:g} s)"]
    for k in keys:
        ticks = idle.get(k)
        row.append("-" if not ticks else (f"{min(ticks)}" if min(ticks) == max(ticks)
                                          else f"{min(ticks)}-{max(ticks)}"))
    table.append(row)
    if args.short:
        log("short mode: fixed low rates, not maxima; CPU from those trials (noise)")
    print_table(head, table)

    def best(case: str, k: str, part: int | None = None) -> float | None:
        f = cpu.get((case, k))
        if f is None or f.best() is None:
            return None
        if part is None:
            return f.best()
        parts = f.best_parts()
        return parts[part] if parts and len(parts) > part else None

    for key in ("20/dgram", "1/dgram"):
        w1 = best(key, "w1")
        log(f"CPU per line {key}: W=2 / W=1 {ratio(best(key, 'w2'), w1)} (target <= 1.3x)")
        for k, name, target in (("w2-proxy", "via proxy, worker ports", " (target <= 1.1x)"),
                                ("w2-proxy-main", "via proxy, main port", "")):
            if (key, k) in cpu:
                log(f"CPU per line {key}: W=2 {name}: aggregator alone / W=1 "
                    f"{ratio(best(key, k, 1), w1)}{target}, "
                    f"proxy + aggregator / W=1 {ratio(best(key, k), w1)}, "
                    f"proxy alone {fmt_us(best(key, k, 0))}")
        b = best(key, "brubeck")
        if b:
            log(f"CPU per line {key}: tallyd W=1 / brubeck {ratio(w1, b)}, "
                f"W=2 / brubeck {ratio(best(key, 'w2'), b)}")
    for case in cases:
        one, two = lossfree.get((case.key, "w1")), lossfree.get((case.key, "w2"))
        if one and two:
            log(f"loss-free {case.title}: W=2 / W=1 {ratio(two.rate, one.rate)}")
    for note in notes:
        log(f"note: {note}")
    for k, seen in res.proxy_workers.items():
        log(f"{k}: the proxy reported proxy.forwarder.0.workers = {', '.join(sorted(seen))} "
            "(2: it sent each line to its owner's port; 0 or -: to the main port)")
    if "w2-proxy" in res.proxy_workers and not res.proxied_to_workers("w2-proxy"):
        log("model: W=2 via proxy did not send to worker ports (no C2 in this tree's proxy), "
            "so its figure is not used as the proxied cost")
    proxied = best("20/dgram", "w2-proxy", 1) if res.proxied_to_workers("w2-proxy") else None
    print_model(best("20/dgram", "w1"), best("1/dgram", "w1"), best("20/dgram", "w2"),
                proxied, lossfree.get(("20/dgram", "w1")))


def print_model(w1: float | None, w1_per1: float | None, w2: float | None,
                w2_proxied: float | None, base: Trial | None) -> None:
    """`model`'s table from this run's costs: lines/s when W=1's loss-free rate at 20
    lines/datagram was found, else rates as multiples of W=1's."""
    if not (w1 and w1_per1 and w2):
        log("model: not printed (needs tallyd W=1 and W=2 CPU figures at 20 and 1 "
            "lines/datagram)")
        return
    costs = derive_costs(w1_per20_us=w1, w1_per1_us=w1_per1, w2_direct_us=w2,
                         w2_proxied_us=w2_proxied, base_rate=base.rate if base else 1.0)
    log(f"model (bench/model.py), from this run: receive {costs.receive_us:.3f} us/datagram, "
        f"ingest {costs.ingest_us:.3f} us/line, forward {costs.forward_us:.3f} us per "
        f"foreign line, spread "
        + (f"{costs.spread_us:.3f} us/line" if w2_proxied is not None
           else "not measured (no per-worker endpoints), taken as 0")
        + (f"; W=1 loss-free {fmt_rate(costs.base_rate)} lines/s at 20 lines/datagram" if base
           else "; no loss-free rate for W=1 at 20 lines/datagram: rates as multiples of W=1's"))

    def shown(rate: float) -> str:
        return fmt_rate(rate) if base else f"{rate:.2f}x"

    unit = "lines/s" if base else "x W=1"
    print_table(["W (cores)", "direct: us/line", f"direct: {unit}", "via proxies: us/line",
                 f"via proxies: {unit}"],
                [[str(w), f"{cd:.3f}", shown(rd), f"{cp:.3f}", shown(rp)]
                 for w, cd, rd, cp, rp in model_rows(costs)])


if __name__ == "__main__":
    sys.exit(main())
