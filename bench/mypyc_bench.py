"""Does compiling the hot pure modules with mypyc pay? `Accumulator.ingest`,
`Splitter.split` and the proxy's `Router.route`, pure against compiled, in one process.

The packages of this tree are copied to a temporary directory, the ``--module`` files
(by default the ingest path: common/protocol.py, aggregator/ingest.py, aggregator/ledger.py,
aggregator/timers.py, common/jsnum.py, and proxy/routing.py) are compiled there with the
project's pinned mypyc (a C compiler and Python's headers are needed), and both trees are
timed with alternating passes on the same blast-shaped packets (bench/ingest_bench.py's for
ingest and split; routing: those packets, and their lines one per datagram, to 4
aggregators): the fastest pass of each, in CPU time, and their ratio.

    .venv/bin/python bench/mypyc_bench.py

Entry: prints figures, changes nothing in the tree.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ingest_bench import DEFAULT_PACKETS, DEFAULT_ROUNDS, compare, make_packets

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODULES = ("common/protocol.py", "aggregator/ingest.py", "aggregator/ledger.py",
                   "aggregator/timers.py", "common/jsnum.py", "proxy/routing.py")
_AGGREGATORS = 4
_MAX_CHUNK_BYTES = 1432


def compile_copy(into: Path, modules: list[str]) -> float:
    """Copy this tree's packages under ``into`` and compile ``modules`` there; the build's
    seconds."""
    for package in ("common", "aggregator", "proxy"):
        shutil.copytree(ROOT / package, into / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    started = time.monotonic()
    mypyc = Path(sys.executable).with_name("mypyc")
    build = subprocess.run([str(mypyc), *modules], cwd=into, capture_output=True, text=True)
    if build.returncode != 0:
        sys.exit(f"mypyc failed:\n{build.stdout[-3000:]}{build.stderr[-3000:]}")
    return time.monotonic() - started


def load_router(tree: Path) -> Any:
    """A `Router` as the code under ``tree`` defines it (imported afresh)."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("common", "proxy")]:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    try:
        routing = importlib.import_module("proxy.routing")
    finally:
        sys.path.remove(str(tree))
    return routing.Router(_AGGREGATORS, max_chunk_bytes=_MAX_CHUNK_BYTES)


def compare_routing(trees: dict[str, Path], packets: int,
                    rounds: int) -> dict[str, dict[str, float]]:
    """CPU seconds per line of each tree's ``Router.route``, 20 lines and 1 line per
    datagram: the fastest of ``rounds`` passes, the trees' passes alternating."""
    twenty = make_packets(packets)
    cases = {"20 lines": twenty, "1 line": [line for p in twenty[:packets // 20]
                                              for line in p.split(b"\n")]}
    routers = {name: load_router(tree) for name, tree in trees.items()}
    best = {name: dict.fromkeys(cases, float("inf")) for name in trees}
    for _ in range(rounds):
        for case, data in cases.items():
            for name, router in routers.items():
                route = router.route
                started = time.process_time()
                for packet in data:
                    route(packet)
                spent = time.process_time() - started
                for queue in router.pending:
                    queue.clear()
                lines = sum(p.count(b"\n") + 1 for p in data)
                best[name][case] = min(best[name][case], spent / lines)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append",
                        help="a file to compile (repeatable; default: the ingest path)")
    parser.add_argument("--packets", type=int, default=DEFAULT_PACKETS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--route-only", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.route_only:
        routing = compare_routing({"pure": ROOT, "mypyc": Path(args.route_only)},
                                  args.packets, args.rounds)
        for case in routing["pure"]:
            slow, fast = routing["pure"][case], routing["mypyc"][case]
            print(f" route, {case}/datagram: pure {slow * 1e6:.3f} us/line, mypyc "
                  f"{fast * 1e6:.3f} us/line, {slow / fast:.2f}x")
        return
    modules = args.module or list(DEFAULT_MODULES)
    with tempfile.TemporaryDirectory() as scratch:
        seconds = compile_copy(Path(scratch), modules)
        print(f"compiled {' '.join(modules)} in {seconds:.0f} s")
        trees = {"pure": ROOT, "mypyc": Path(scratch)}
        figures = compare(trees, args.packets, args.rounds)
        # In a fresh process: one process cannot import a tree's compiled modules twice.
        routed = subprocess.run([sys.executable, __file__, "--route-only", scratch,
                                 "--packets", str(args.packets), "--rounds", str(args.rounds)],
                                check=True, capture_output=True, text=True).stdout
    for name, figure in figures.items():
        print(f"{name:>6}: ingest {1e6 / figure['ingest']:.3f} us/line, "
              f"split {1e6 / figure['split']:.3f} us/line (best of {args.rounds})")
    pure, compiled = figures["pure"], figures["mypyc"]
    print(f" ratio: ingest {compiled['ingest'] / pure['ingest']:.2f}x, "
          f"split {compiled['split'] / pure['split']:.2f}x (mypyc / pure)")
    print(routed, end="")


if __name__ == "__main__":
    main()
