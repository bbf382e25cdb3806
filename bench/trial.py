"""One benchmark trial (offer a rate, count what reaches the sink) and the search for the
highest rate that passes twice; see bench/compare.py for the rules.

SHELL (runs blast, reads /proc, waits on the sink).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from contender import Contender, describe, intake_ports, root_pids
from harness.blast import DEFAULT_PREFIX, expected_totals, run_blast
from harness.port import UdpPortState, udp_port_state
from harness.proctree import tree_cpu_ticks
from harness.tally import Tally, TallySink
from report import fmt_rate, log

#: blast's first name component in every trial (one per daemon process: names persist).
PREFIX = DEFAULT_PREFIX


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    per: int  # lines per datagram
    names: int  # distinct names cycled
    kind: str  # blast KIND
    probe_lines: int  # lines of the as-fast-as-possible probe


def ports_state(ports: int | list[int]) -> UdpPortState:
    """`udp_port_state` summed over several ports (a proxy's and its aggregator's)."""
    states = [udp_port_state(p) for p in ([ports] if isinstance(ports, int) else ports)]
    return UdpPortState(sum(s.sockets for s in states), sum(s.queued_bytes for s in states),
                        sum(s.drops for s in states))


def wait_drained(port: int | list[int], timeout: float) -> tuple[float, int]:
    """Wait until the ports' receive queues are empty; return (seconds waited, max queue)."""
    start = time.monotonic()
    biggest = 0
    while True:
        queued = ports_state(port).queued_bytes
        biggest = max(biggest, queued)
        if queued == 0 or time.monotonic() - start > timeout:
            return time.monotonic() - start, biggest
        time.sleep(0.02)


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
    #: CPU clock ticks each of the daemon's process trees (`root_pids`) used from just before
    #: the send until the sink had counted everything (or gave up)
    cpu_ticks: tuple[int, ...] = ()

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


def run_trial(daemon: Contender, sink: TallySink, case: Case, rate: float, lines: int,
              flush_interval: float, label: str) -> Trial:
    port = daemon.udp[1]
    watched = intake_ports(daemon)  # every hop's queue and drops
    sink.reset()
    drops_before = ports_state(watched).drops
    queue_max = 0

    def sample() -> None:
        nonlocal queue_max
        queue_max = max(queue_max, ports_state(watched).queued_bytes)

    roots = root_pids(daemon)
    ticks_before = [tree_cpu_ticks(p) for p in roots]
    result = run_blast(port, lines, case.per, case.names, rate, case.kind, on_tick=sample)
    drain, biggest = wait_drained(watched, timeout=60)
    queue_max = max(queue_max, biggest)
    drained_at = time.monotonic()
    want = expected_totals(case.kind, result.sent, case.names)

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
    cpu_ticks = tuple(tree_cpu_ticks(p) - b for p, b in zip(roots, ticks_before, strict=True))
    tally = sink.snapshot()
    kernel_drops = ports_state(watched).drops - drops_before
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
    keep_up = max(0.2, 0.1 * result.seconds)
    if drain > keep_up:
        problems.append(f"fell behind (queue drained {drain:.2f}s after the send)")
    return Trial(label, case.key, rate, int(result.sent), result.rate, result.seconds,
                 counted, int(tally.metrics_received), int(result.sent) - counted,
                 kernel_drops, queue_max, drain, problems, warnings, cpu_ticks=cpu_ticks)


def search(daemon: Contender, sink: TallySink, case: Case, *, seconds: float, trials: int,
           flush_interval: float, label: str) -> tuple[Trial | None, list[Trial]]:
    """Find the highest passing rate.

    A probe as fast as blast can send estimates the capacity; trials start at 90% of it,
    go up 1.25x while they pass or down 0.5x while they fail, then bisect the bracket until
    it is within 5%. ``trials`` trials after the probe, plus up to 4 more while nothing
    has passed yet; then the best passing rate is run again and counts only if it passes
    again (else the next best, up to three).
    """
    done: list[Trial] = []
    log(describe(daemon, label))

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
