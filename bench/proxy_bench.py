"""Proxy forwarding throughput: tallyd-proxy beside Etsy's proxy.js, in the same run.

Set-up, all on 127.0.0.1: the C load generator ``blast`` (compiled here from blast.c)
sends counter lines to the proxy under test, ``PER`` lines per datagram; the proxy
forwards them to two aggregator stand-ins, UDP sinks in this process that count the lines
they receive (and answer ``health`` on an admin port, which proxy.js needs to keep them in
its ring). A trial offers ``RATE`` lines/s for about a second; its throughput is counted
at the receiving side: lines received / (last arrival - first arrival). A trial counts
only if nothing was lost (received == sent). Offered rates rise 1.5x per trial until a
trial loses lines, then two bisection trials refine it; the best lossless throughput is
reported. The machine's other load moves the figures: compare the two proxies within
one run, not across runs.

    python bench/proxy_bench.py            # full run (about a minute)
    python bench/proxy_bench.py --short    # a few small trials (for the test suite)
    python bench/proxy_bench.py --cpu      # CPU per line at fixed rates (no proxy.js)
    python bench/proxy_bench.py --cpu --tree /tmp/old    # ... this tree and /tmp/old, alternating

``--cpu`` decides a change by CPU time, not by a lossless rate (which moves with the
machine's other load): each proxy gets a fixed offered rate (`CPU_RATES`) for a few seconds
and its utime+stime (from /proc, the process and its children) is divided by the lines it
forwarded; each tree is measured ``--passes`` times, the trees alternating, and the fastest
pass of each is reported.

Each proxy runs as one process (tallyd: ``--processes 1``; proxy.js: ``forkCount: 0``).
Prints one line per trial and a summary with the ratios; exits 1 if a short run lost lines
in every trial of a configuration.

ENTRY.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from harness.blast import BlastError, build_blast, run_blast
from harness.daemon import DaemonError, DaemonProcess
from harness.etsy import ETSY_DIR, node_binary
from harness.port import free_port, udp_port_bound
from harness.standin import AggregatorStandIns
from harness.tallyd import ProxyProcess, start_proxy, started

PROXY_JS = ETSY_DIR / "proxy.js"
NAMES = 1000  # distinct metric names cycled by blast
#: How long proxy.js may take to bind its UDP port.
PROXY_JS_START_SECONDS = 15.0


#: ``--cpu``: offered lines/s per lines-per-datagram, below what either variant loses.
CPU_RATES = {1: 100_000, 20: 400_000}
#: ``--cpu``: seconds of load per pass.
CPU_SECONDS = 3.0


def start_tallyd(sinks: AggregatorStandIns, tree: Path | None = None,
                 extra: list[str] | None = None) -> tuple[DaemonProcess, int]:
    args = ["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0", *(extra or [])]
    for port, _ in sinks.ports():
        args += ["--aggregator", f"127.0.0.1:{port}"]
    try:
        if tree is None:  # its own figures would add lines to what the stand-ins count
            proc = start_proxy([*args, "--no-self-metrics"])
        else:  # `python -m proxy` from that tree: its directory comes first on sys.path
            proc = started(ProxyProcess([sys.executable, "-m", "proxy", *args], cwd=tree), 30)
    except DaemonError as exc:
        sys.exit(f"tallyd-proxy did not start: {exc}")
    return proc, proc.udp[1]


def start_proxy_js(sinks: AggregatorStandIns, workdir: Path) -> tuple[DaemonProcess, int]:
    node = node_binary()
    if node is None or not PROXY_JS.is_file():
        sys.exit(f"node or {PROXY_JS} missing (tools/bootstrap --test installs them)")
    port = free_port("udp")
    config = {"nodes": [{"host": "127.0.0.1", "port": p, "adminport": a}
                        for p, a in sinks.ports()],
              "address": "127.0.0.1", "port": port, "mgmt_address": "127.0.0.1",
              "mgmt_port": free_port("tcp"), "forkCount": 0,
              "checkInterval": 1000, "cacheSize": 10000}
    path = workdir / "proxy-config.js"
    path.write_text(json.dumps(config))
    proc = DaemonProcess([node, str(PROXY_JS), str(path)], cwd=PROXY_JS.parent)
    deadline = time.monotonic() + PROXY_JS_START_SECONDS
    while not udp_port_bound(port):
        if time.monotonic() > deadline or proc.returncode is not None:
            proc.kill()
            sys.exit("proxy.js did not start\n" + proc.describe())
        time.sleep(0.05)
    time.sleep(0.5)  # its first health-check round
    return proc, port


def blast(port: int, lines: int, per: int, rate: float) -> None:
    run_blast(port, lines, per, NAMES, rate, "c")


def trial(sinks: AggregatorStandIns, port: int, per: int, rate: float,
          seconds: float) -> tuple[float, int]:
    """Offer ``rate`` lines/s for ``seconds``; return (received lines/s, lines lost)."""
    lines = int(rate * seconds)
    sinks.wait_quiet(1 << 62, timeout=5, quiet=0.3)  # late lines of the previous trial
    sinks.reset()
    blast(port, lines, per, rate)
    sinks.wait_quiet(lines, timeout=seconds + 10)
    received = sinks.lines
    span = max(sinks.last - sinks.first, 1e-6)
    return received / span, lines - received


def measure(label: str, sinks: AggregatorStandIns, port: int, per: int, start: float, *,
            seconds: float, steps: int, refine: int) -> float:
    """Raise the offered rate 1.5x per trial until one loses lines (halve it while none
    was lossless yet), then bisect between the last lossless rate and the lossy one
    ``refine`` times; return the best lossless throughput measured."""
    blast(port, 20_000, per, 200_000)  # warm-up: caches, sockets
    sinks.wait_quiet(20_000, timeout=10)
    best, good, bad, rate = 0.0, 0.0, 0.0, start
    for _ in range(steps + refine):
        throughput, lost = trial(sinks, port, per, rate, seconds)
        print(f"  {label:9} per_datagram={per:2} offered={rate:>10,.0f}/s "
              f"received={throughput:>10,.0f}/s lost={lost}", flush=True)
        if lost:
            bad = rate
        else:
            best, good = max(best, throughput), rate
        if not bad:
            rate *= 1.5
        elif not good:
            rate /= 2  # even the first rate lost lines: come down
        elif refine:
            refine -= 1
            rate = (good + bad) / 2
        else:
            break
    return best


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants, in seconds (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def measure_cpu(trees: list[Path | None], *, passes: int, extra: list[str]) -> int:
    """CPU per forwarded line of each tree's proxy, at the fixed `CPU_RATES`; the trees'
    passes alternate (module docstring)."""
    running = []
    try:
        for tree in trees:
            sinks = AggregatorStandIns(2)
            proc, port = start_tallyd(sinks, tree, extra)
            running.append((str(tree or "this tree"), sinks, proc, port))
        for per, rate in CPU_RATES.items():
            best: dict[str, float] = {}
            for _, sinks, _, port in running:  # warm-up: caches, sockets
                blast(port, 20_000, per, 200_000)
                sinks.wait_quiet(20_000, timeout=10)
            for _ in range(passes):
                for label, sinks, proc, port in running:
                    lines = int(rate * CPU_SECONDS)
                    sinks.reset()
                    before = cpu_seconds(proc.pid)
                    blast(port, lines, per, rate)
                    sinks.wait_quiet(lines, timeout=CPU_SECONDS + 10, quiet=0.5)
                    used = cpu_seconds(proc.pid) - before
                    per_line = used / max(sinks.lines, 1) * 1e6
                    best[label] = min(best.get(label, per_line), per_line)
                    print(f"  {label:24} per_datagram={per:2} offered={rate:,}/s "
                          f"cpu_per_line={per_line:.3f}us lost={lines - sinks.lines}",
                          flush=True)
            for label, value in best.items():
                print(f"best per_datagram={per:2} {label:24} cpu_per_line={value:.3f}us")
    finally:
        for _, sinks, proc, _ in running:
            proc.stop(10)
            sinks.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="small, quick trials")
    parser.add_argument("--skip-proxy-js", action="store_true")
    parser.add_argument("--cpu", action="store_true",
                        help="measure CPU per line at fixed rates instead (tallyd only)")
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="with --cpu: also measure the proxy of this checkout "
                             "(repeatable); the trees' passes alternate")
    parser.add_argument("--passes", type=int, default=5, help="with --cpu: passes per tree")
    parser.add_argument("--proxy-arg", action="append", default=[],
                        help="with --cpu: an extra tallyd-proxy argument (repeatable)")
    args = parser.parse_args(argv)
    try:
        build_blast()
    except BlastError as exc:
        sys.exit(str(exc))
    if args.cpu:
        return measure_cpu([None, *args.tree], passes=args.passes, extra=args.proxy_arg)
    seconds, steps, refine = (0.3, 2, 0) if args.short else (1.0, 8, 2)
    results: dict[tuple[str, int], float] = {}
    starts: dict[tuple[str, int], float] = {("tallyd", 1): 100_000, ("tallyd", 20): 400_000,
                                          ("proxy.js", 1): 20_000, ("proxy.js", 20): 20_000}
    if args.short:
        starts = {k: v / 4 for k, v in starts.items()}
    names = ["tallyd"] if args.skip_proxy_js else ["tallyd", "proxy.js"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            sinks = AggregatorStandIns(2)
            if name == "tallyd":
                proc, port = start_tallyd(sinks)
            else:
                proc, port = start_proxy_js(sinks, Path(tmp))
            try:
                for per in (1, 20):
                    results[(name, per)] = measure(name, sinks, port, per, starts[(name, per)],
                                                   seconds=seconds, steps=steps,
                                                   refine=refine)
            finally:
                proc.stop(10)
                sinks.close()
    print(f"summary (lines/s forwarded with 0 lost, one process each; cpus={os.cpu_count()})")
    for per in (1, 20):
        ours = results[("tallyd", per)]
        line = f"  per_datagram={per:2} tallyd={ours:,.0f}"
        theirs = results.get(("proxy.js", per))
        if theirs is not None:
            ratio = ours / theirs if theirs else float("inf")
            line += f" proxy.js={theirs:,.0f} ratio={ratio:.1f}x"
        print(line)
    return 1 if any(v == 0 for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
