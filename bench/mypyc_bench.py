"""Does compiling the hot pure modules with mypyc pay? `Accumulator.ingest` and
`Splitter.split`, pure against compiled, in one process.

The packages of this tree are copied to a temporary directory, the ``--module`` files
(by default the ingest path: common/protocol.py, aggregator/ingest.py, aggregator/ledger.py,
aggregator/timers.py, common/jsnum.py) are compiled there with the project's pinned mypyc
(a C compiler and Python's headers are needed), and bench/ingest_bench.py times both trees
with alternating passes on the same blast-shaped packets: the fastest pass of each, in CPU
time, and their ratio.

    .venv/bin/python bench/mypyc_bench.py

Entry: prints figures, changes nothing in the tree.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ingest_bench import DEFAULT_PACKETS, DEFAULT_ROUNDS, compare

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODULES = ("common/protocol.py", "aggregator/ingest.py", "aggregator/ledger.py",
                   "aggregator/timers.py", "common/jsnum.py")


def compile_copy(into: Path, modules: list[str]) -> float:
    """Copy this tree's packages under ``into`` and compile ``modules`` there; the build's
    seconds."""
    for package in ("common", "aggregator"):
        shutil.copytree(ROOT / package, into / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    started = time.monotonic()
    mypyc = Path(sys.executable).with_name("mypyc")
    build = subprocess.run([str(mypyc), *modules], cwd=into, capture_output=True, text=True)
    if build.returncode != 0:
        sys.exit(f"mypyc failed:\n{build.stdout[-3000:]}{build.stderr[-3000:]}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append",
                        help="a file to compile (repeatable; default: the ingest path)")
    parser.add_argument("--packets", type=int, default=DEFAULT_PACKETS)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = parser.parse_args()
    modules = args.module or list(DEFAULT_MODULES)
    with tempfile.TemporaryDirectory() as scratch:
        seconds = compile_copy(Path(scratch), modules)
        print(f"compiled {' '.join(modules)} in {seconds:.0f} s")
        figures = compare({"pure": ROOT, "mypyc": Path(scratch)}, args.packets, args.rounds)
    for name, figure in figures.items():
        print(f"{name:>6}: ingest {1e6 / figure['ingest']:.3f} us/line, "
              f"split {1e6 / figure['split']:.3f} us/line (best of {args.rounds})")
    pure, compiled = figures["pure"], figures["mypyc"]
    print(f" ratio: ingest {compiled['ingest'] / pure['ingest']:.2f}x, "
          f"split {compiled['split'] / pure['split']:.2f}x (mypyc / pure)")


if __name__ == "__main__":
    main()
