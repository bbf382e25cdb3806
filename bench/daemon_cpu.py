"""CPU per line of one tallyd-aggregator, for before/after comparisons of two trees.

Starts ``python -m aggregator`` from TREE (a checkout: its own aggregator, harness and
bench modules are used) with W workers in front of a counting sink, measures 5 s idle, then
sends ``RATE * 10`` lines with bench/blast (PER lines per datagram, 1000 names) and prints
the utime + stime of every process of the daemon (from /proc) per line sent.

    .venv/bin/python bench/daemon_cpu.py TREE W PER RATE

Run it for two trees in turn, alternating, and compare within one session.
"""

import sys
import time

tree = sys.argv[1]
sys.path[:0] = [tree, tree + "/bench"]

from contender import launch_tallyd, stop_contender  # noqa: E402
from harness.blast import run_blast  # noqa: E402
from harness.proctree import cpu_seconds, process_tree  # noqa: E402
from harness.tally import TallySink  # noqa: E402

SECONDS = 10
NAMES = 1000


def main() -> None:
    workers, per, rate = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    sink = TallySink()
    daemon = launch_tallyd(sink.port, 2.0, workers)
    try:
        time.sleep(2)

        def cpu() -> float:
            return sum(cpu_seconds(p) for p in process_tree(daemon.pid))

        idle_start = cpu()
        time.sleep(5)
        idle = cpu() - idle_start
        start = cpu()
        result = run_blast(daemon.udp[1], int(rate * SECONDS), per, NAMES, rate)
        time.sleep(0.5)
        used = cpu() - start
        print(f"W={workers} per={per} rate={rate:.0f} idle5s_cpu={idle:.2f}s "
              f"load_cpu={used:.2f}s sent={result.sent} "
              f"us_per_line={used / result.sent * 1e6:.3f} blast_rate={result.rate:.0f}",
              flush=True)
    finally:
        stop_contender(daemon)


if __name__ == "__main__":
    main()
