"""Micro-benchmark of the aggregator's hot path: `Accumulator.ingest` and `Splitter.split`.

Times the per-line work of one worker on generated packets (20 lines a packet, a few
thousand names, the usual mix of counters, timers, gauges and sets, every name already
seen, as in steady traffic) and prints lines per second.

With ``--ref REV`` it compares, in the same run, this tree with the code of commit ``REV``
(exported with ``git archive`` to a temporary directory): the two alternate, one
subprocess per round, so both see the same machine load, and the best round of each is
printed with their ratio.

    .venv/bin/python bench/ingest_bench.py --ref HEAD~3

Entry: prints figures, changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Packets timed per round (20 lines each): long enough to dwarf timer noise, short
#: enough for several rounds in a few seconds.
DEFAULT_PACKETS = 50_000
DEFAULT_ROUNDS = 5
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


def measure(packets: int) -> dict[str, float]:
    """Lines per second of `Accumulator.ingest` and of `Splitter.split` (2 workers)."""
    from aggregator.ledger import Accumulator, LedgerOptions
    from aggregator.workers.codec import Splitter

    data = make_packets(packets)
    lines = packets * _LINES_PER_PACKET
    accumulator = Accumulator(LedgerOptions())
    for packet in data[: _NAMES]:  # every name seen once: the steady state
        accumulator.ingest(packet)
    started = time.perf_counter()
    for packet in data:
        accumulator.ingest(packet)
    ingest = lines / (time.perf_counter() - started)
    splitter = Splitter(accumulator.parser, 0, 2)
    for packet in data[: _NAMES]:
        splitter.split(packet)
    started = time.perf_counter()
    for packet in data:
        splitter.split(packet)
    split = lines / (time.perf_counter() - started)
    return {"ingest": ingest, "split": split}


def export_tree(rev: str, into: str) -> None:
    """The packages of commit ``rev``, written under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "common", "aggregator"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def run_round(tree: Path, packets: int) -> dict[str, float]:
    """One measurement in a fresh interpreter importing the packages of ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, __file__, "--measure", "--packets", str(packets)],
                         check=True, capture_output=True, text=True, env=env, cwd=tree).stdout
    result: dict[str, float] = json.loads(out)
    return result


def best(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: max(r[key] for r in rounds) for key in rounds[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="also measure this commit, alternating with this tree")
    parser.add_argument("--packets", type=int, default=DEFAULT_PACKETS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.packets)))
        return
    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory() as scratch:
        if args.ref:
            export_tree(args.ref, scratch)
            trees[args.ref] = Path(scratch)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                rounds[name].append(run_round(tree, args.packets))
    figures = {name: best(r) for name, r in rounds.items()}
    for name, figure in figures.items():
        print(f"{name:>12}: ingest {figure['ingest'] / 1e6:.3f} M lines/s, "
              f"split {figure['split'] / 1e6:.3f} M lines/s (best of {args.rounds})")
    if args.ref:
        new, old = figures["this tree"], figures[args.ref]
        print(f"{'ratio':>12}: ingest {new['ingest'] / old['ingest']:.3f}, "
              f"split {new['split'] / old['split']:.3f} (this tree / {args.ref})")


if __name__ == "__main__":
    main()
