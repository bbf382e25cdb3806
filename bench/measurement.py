"""tallyd alone: zero loss while it flushes a big interval, resident memory per counter name
and per timer sample, and a py-spy profile under load.

SHELL (runs tallyd, blast and py-spy; reads /proc).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from contender import start_tallyd, stop_contender
from harness.blast import BlastResult, run_blast
from harness.port import udp_port_state
from harness.proctree import RssSampler, memory_bytes, process_tree
from harness.tally import TallySink
from report import log
from trial import Case, wait_drained

#: How often the peak memory of tallyd's processes is sampled while it flushes.
PEAK_SAMPLE_SECONDS = 0.02


#: (largest VmRSS of one process, largest VmHWM of one process, summed VmRSS), in KiB.
Memory = tuple[int, int, int]


def tree_memory_kib(pid: int) -> Memory:
    """(largest VmRSS of one process, largest VmHWM of one process, summed VmRSS), in KiB."""
    mems = [m for p in process_tree(pid) if (m := memory_bytes(p)) is not None]
    rss = [r // 1024 for r, _ in mems]
    hwm = [h // 1024 for _, h in mems]
    return max(rss, default=0), max(hwm, default=0), sum(rss)


def wait_after_boundary(interval: float, needed: float) -> None:
    """Sleep until just after a flush boundary if fewer than ``needed`` seconds remain.

    tallyd flushes at wall-clock multiples of its interval.
    """
    left = interval - (time.time() % interval)
    if left < needed:
        time.sleep(left + 0.3)


def flush_under_load(sink: TallySink, half_rate: float,
                     fill_rate: float) -> tuple[str, bool | None]:
    """Zero loss at half the maximum rate while tallyd flushes 100k names + 1M timer samples.

    Phase A fills one interval (100k counter names, then 1M timer samples over 1000 names,
    prefix ``fa``) at ``fill_rate``; phase B (prefix ``fb``, 20 lines/datagram) runs at
    ``half_rate`` from then until 3 s after the flush that carries phase A.
    """
    interval = float(max(10, int(1_100_000 / fill_rate + 4)))
    daemon = start_tallyd(sink.port, interval, 1)
    try:
        port = daemon.udp[1]
        wait_after_boundary(interval, needed=1_100_000 / fill_rate + 2)
        drops0 = udp_port_state(port).drops
        sink.reset()
        a1 = run_blast(port, 100_000, 20, 100_000, fill_rate, "c", prefix="fa")
        a2 = run_blast(port, 1_000_000, 20, 1000, fill_rate, "ms", prefix="fa")
        wait_drained(port, 30)
        drops_a = udp_port_state(port).drops - drops0
        left = interval - (time.time() % interval)
        b_lines = int(half_rate * (left + 3.0))
        queue_max = 0

        def sample() -> None:
            nonlocal queue_max
            queue_max = max(queue_max, udp_port_state(port).queued_bytes)

        b = run_blast(port, b_lines, 20, 1000, half_rate, "c", prefix="fb", on_tick=sample)
        drain, biggest = wait_drained(port, 30)
        done = time.monotonic()
        for _ in range(3):
            t = sink.snapshot()
            if (t.counters.get("fb", 0) == b.sent and t.counters.get("fa", 0) == 100_000
                    and t.timer_counts.get("fa", 0) == 1_000_000):
                break
            done = sink.wait_flush_end(done, interval + 30) or time.monotonic()
        t = sink.snapshot()
        drops_b = udp_port_state(port).drops - drops0 - drops_a
        lost_b = int(b.sent - t.counters.get("fb", 0))
        lost_a = int(a1.sent + a2.sent - t.counters.get("fa", 0)
                     - t.timer_counts.get("fa", 0))
        ok = lost_b == 0 and drops_b == 0
        text = (f"flush of 100k names + 1M timer samples (interval {interval:g}s; "
                f"filled at {a2.rate:,.0f} lines/s: lost={lost_a} of 1,100,000, "
                f"kernel_drops={drops_a}), fed meanwhile at {b.rate:,.0f} lines/s "
                f"(half of {2 * half_rate:,.0f}) for {b.seconds:.1f}s across the flush: "
                f"lost={lost_b} of {b.sent:,}, kernel_drops={drops_b}, "
                f"queue_max={max(queue_max, biggest) // 1024}KiB, drain={drain:.2f}s: "
                f"{'ok' if ok else 'FAIL'}{'' if lost_a == 0 else ' (phase A itself lost lines)'}")
        return text, (ok if lost_a == 0 else None)
    finally:
        stop_contender(daemon)


def blast_measured(sink: TallySink, pid: int, port: int, count: int, names: int, rate: float,
                   kind: str, prefix: str) -> tuple[BlastResult, Memory, Memory, int]:
    """Send ``count`` metrics over ``names`` names (20 per datagram) once the daemon's memory
    is read, wait until it has read them, and read its memory again: what was sent, the
    memory before and after (`tree_memory_kib`), and the kernel's drops meanwhile."""
    base = tree_memory_kib(pid)
    drops0 = udp_port_state(port).drops
    sink.reset()
    sent = run_blast(port, count, 20, names, rate, kind, prefix=prefix)
    wait_drained(port, 60)
    time.sleep(0.3)
    held = tree_memory_kib(pid)
    return sent, base, held, udp_port_state(port).drops - drops0


def memory_names(sink: TallySink, names: int, rate: float) -> tuple[str, float | None]:
    """Resident memory of one tallyd worker holding ``names`` distinct counter names."""
    interval = 3600.0  # no flush but the final one, at SIGTERM
    daemon = start_tallyd(sink.port, interval, 1)
    try:
        port = daemon.udp[1]
        time.sleep(0.3)
        sent, base, held, drops = blast_measured(sink, daemon.pid, port, names, names, rate,
                                                 "c", "mem")
        with RssSampler(daemon.pid, period=PEAK_SAMPLE_SECONDS) as sampler:
            stop_contender(daemon, timeout=120)  # the final flush renders all the names
        hwm = max(sampler.high_water_marks().values(), default=0) // 1024
    finally:
        stop_contender(daemon)
    counted = int(sink.snapshot().counters.get("mem", 0))
    text = (f"{names:,} distinct counter names in one worker (sent at {sent.rate:,.0f}/s; "
            f"counted at the sink {counted:,}, kernel_drops={drops}): VmRSS {base[0] / 1024:.0f}"
            f" MiB at start, {held[0] / 1024:.0f} MiB holding them "
            f"({(held[0] - base[0]) * 1024 / max(counted, 1):.0f} bytes/name), VmHWM "
            f"{hwm / 1024:.0f} MiB including their flush")
    return text, (hwm / 1024 if counted == names else None)


def memory_timers(sink: TallySink, samples: int,
                  rate: float) -> tuple[str, float | None]:
    """Resident growth per timer sample: ``samples`` samples over 100 names in one interval."""
    interval = 3600.0
    names = 100
    daemon = start_tallyd(sink.port, interval, 1)
    try:
        port = daemon.udp[1]
        # the 100 names exist (dicts, key cache, arrays) before the measured samples
        run_blast(port, names, 20, names, 0, "ms", prefix="tm")
        wait_drained(port, 10)
        time.sleep(0.3)
        sent, base, held, drops = blast_measured(sink, daemon.pid, port, samples, names, rate,
                                                 "ms", "tm")
        stop_contender(daemon, timeout=60)
    finally:
        stop_contender(daemon)
    counted = int(sink.snapshot().timer_counts.get("tm", 0)) - names
    per_sample = (held[0] - base[0]) * 1024 / max(counted, 1)
    text = (f"{samples:,} timer samples over {names} names in one interval (sent at "
            f"{sent.rate:,.0f}/s; counted at the sink {counted:,}, kernel_drops={drops}): "
            f"VmRSS {base[0] / 1024:.1f} -> {held[0] / 1024:.1f} MiB = "
            f"{per_sample:.1f} bytes/sample")
    return text, (per_sample if counted == samples else None)


def profile_tallyd(sink: TallySink, py_spy: str, case: Case, rate: float, seconds: float,
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
        drops0 = udp_port_state(daemon.udp[1]).drops
        sent = run_blast(daemon.udp[1], int(rate * seconds), case.per, case.names, rate,
                         case.kind)
        wait_drained(daemon.udp[1], 30)
        drops = udp_port_state(daemon.udp[1]).drops - drops0
        _, err = spy.communicate(timeout=seconds + 30)
    finally:
        stop_contender(daemon)
    log(f"profile: {case.title} at {sent.rate:,.0f} lines/s for {sent.seconds:.1f}s, "
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
