"""Micro-benchmark of the aggregator's hot path: `Accumulator.ingest` and `Splitter.split`.

Times the per-line work of one worker on generated packets (20 lines a packet, a few
thousand names, the usual mix of counters, timers, gauges and sets, every name already
seen, as in steady traffic) and prints lines per second.

With ``--ref REV`` it compares, in the same process, this tree with the code of commit
``REV`` (exported with ``git archive`` to a temporary directory and imported beside this
tree's): their passes alternate, so both see the same machine load, and the fastest pass
of each (in CPU time) is printed with their ratio.

    .venv/bin/python bench/ingest_bench.py --ref HEAD~3

Entry: prints figures, changes nothing.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Packets timed per pass (20 lines each): long enough to dwarf timer noise, short enough
#: for a pass to run undisturbed on a loaded machine.
DEFAULT_PACKETS = 5_000
DEFAULT_ROUNDS = 15
_NAMES = 4_000
_LINES_PER_PACKET = 20


def make_packets(count: int) -> list[bytes]:
    """``count`` packets of `_LINES_PER_PACKET` lines over `_NAMES` names."""
    shapes = (b"app.req.%d:1|c", b"app.lat.%d:%d|ms", b"app.pool.%d:%d|g",
              b"app.users.%d:u%d|s", b"app.bytes.%d:%d|c", b"app.size.%d:%d|h")
    packets = []
    n = 0
    for _ in range(count):
        lines = []
        for _ in range(_LINES_PER_PACKET):
            shape = shapes[n % len(shapes)]
            name = n % _NAMES
            lines.append(shape % ((name,) if shape.count(b"%") == 1 else (name, n % 977)))
            n += 1
        packets.append(b"\n".join(lines))
    return packets


def load(tree: Path) -> tuple[Any, Any]:
    """``(Accumulator, Splitter)`` as the code under ``tree`` defines them (the packages
    are imported afresh, so two trees' classes live side by side in one process)."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("common", "aggregator")]:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    try:
        ledger = importlib.import_module("aggregator.ledger")
        codec = importlib.import_module("aggregator.workers.codec")
    finally:
        sys.path.remove(str(tree))
    accumulator = ledger.Accumulator(ledger.LedgerOptions())
    return accumulator, codec.Splitter(accumulator.parser, 0, 2)


def cpu_seconds(call: Callable[[bytes], object], data: list[bytes]) -> float:
    """The CPU time of one pass (a loaded machine delays a pass without making it use
    more CPU)."""
    started = time.process_time()
    for packet in data:
        call(packet)
    return time.process_time() - started


def export_tree(rev: str, into: str) -> None:
    """The packages of commit ``rev``, written under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "common", "aggregator"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def compare(trees: dict[str, Path], packets: int, rounds: int) -> dict[str, dict[str, float]]:
    """Lines per second of each tree's ingest and split: the fastest of ``rounds``
    passes, the trees' passes alternating."""
    data = make_packets(packets)
    subjects = {name: load(tree) for name, tree in trees.items()}
    for accumulator, splitter in subjects.values():
        for packet in make_packets(_NAMES):  # every name seen once: the steady state
            accumulator.ingest(packet)
            splitter.split(packet)
    fastest = {name: {"ingest": float("inf"), "split": float("inf")} for name in trees}
    for _ in range(rounds):
        for name, (accumulator, splitter) in subjects.items():
            best = fastest[name]
            best["ingest"] = min(best["ingest"], cpu_seconds(accumulator.ingest, data))
            best["split"] = min(best["split"], cpu_seconds(splitter.split, data))
    lines = packets * _LINES_PER_PACKET
    return {name: {k: lines / v for k, v in best.items()} for name, best in fastest.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="also measure this commit, alternating with this tree")
    parser.add_argument("--packets", type=int, default=DEFAULT_PACKETS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = parser.parse_args()
    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory() as scratch:
        if args.ref:
            export_tree(args.ref, scratch)
            trees[args.ref] = Path(scratch)
        figures = compare(trees, args.packets, args.rounds)
    for name, figure in figures.items():
        print(f"{name:>12}: ingest {figure['ingest'] / 1e6:.3f} M lines/s, "
              f"split {figure['split'] / 1e6:.3f} M lines/s (best of {args.rounds})")
    if args.ref:
        new, old = figures["this tree"], figures[args.ref]
        print(f"{'ratio':>12}: ingest {new['ingest'] / old['ingest']:.3f}, "
              f"split {new['split'] / old['split']:.3f} (this tree / {args.ref})")


if __name__ == "__main__":
    main()
