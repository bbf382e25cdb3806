"""Figures for ``tallyd-ring rebalance`` and ``plan`` (issue 12's closing note). Not a test.

1. **Throughput**: N real Whisper files (the ``whisper`` package writes them, with points) in
   one agent's data dir, an empty agent beside it, and ``rebalance`` from a ring of the first
   to a ring of the second: every file moves agent to agent (pull, merge, verify). Prints
   files moved, MB and MB/s from the tool's ``--json`` outcome, and the wall time.
2. **Memory**: ``plan`` against an agent whose data dir holds M files (default 1,000,000)
   and an empty second node: M hard links to a few small Whisper files make M directory entries
   cheap. Prints the peak RSS of the ``tallyd-ring plan`` process (``ru_maxrss`` from
   ``wait4``, i.e. its VmHWM) and its time. The links are removed afterwards.

    .venv/bin/python bench/rebalance_bench.py [--files 2000] [--inventory 1000000]
        [--schema 1s:1h] [--workers 4] [--keep]

Agents listen on 127.0.0.1 (free ports); nodes are named ``127.0.0.1:2003:src`` and
``127.0.0.1:2004:dst`` (no carbon-cache is needed: only the agents are asked).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import whisper  # type: ignore[import-untyped]

from harness.port import free_port

TALLYD_RING = str(Path(sys.executable).parent / "tallyd-ring")
SRC, DST = "127.0.0.1:2003:src", "127.0.0.1:2004:dst"


def start_agent(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([TALLYD_RING, "agent", "--data-dir", str(data_dir),
                             "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url + "/version", timeout=2):
                return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"agent on {url} did not start") from None
            time.sleep(0.1)


def ring_file(path: Path, nodes: dict[str, str]) -> str:
    carbon = ", ".join(f'"{node}"' for node in nodes)
    agents = "\n".join(f'"{node}" = "{url}"' for node, url in nodes.items())
    path.write_text(f"carbon = [{carbon}]\n\n[agents]\n{agents}\n")
    return str(path)


def parse_schema(text: str) -> list[tuple[int, int]]:
    return [whisper.parseRetentionDef(part) for part in text.split(",")]


def make_files(root: Path, count: int, schema: str) -> int:
    """``count`` Whisper files under ``root`` with an hour of points each; total bytes."""
    archives = parse_schema(schema)
    now = int(time.time())
    total = 0
    for i in range(count):
        path = root / "bench" / f"g{i % 100}" / f"m{i}.wsp"
        path.parent.mkdir(parents=True, exist_ok=True)
        whisper.create(str(path), archives)
        whisper.update_many(str(path), [(now - s, float(i + s)) for s in range(1, 600, 7)])
        total += path.stat().st_size
    return total


def bench_throughput(work: Path, files: int, schema: str, workers: int) -> None:
    src_dir, dst_dir = work / "src", work / "dst"
    src_dir.mkdir()
    dst_dir.mkdir()
    started = time.monotonic()
    size = make_files(src_dir, files, schema)
    print(f"made {files} files, {size / 1e6:.1f} MB ({schema}) in "
          f"{time.monotonic() - started:.1f}s")
    src, src_url = start_agent(src_dir)
    dst, dst_url = start_agent(dst_dir)
    try:
        old = ring_file(work / "old.toml", {SRC: src_url})
        new = ring_file(work / "new.toml", {DST: dst_url})
        started = time.monotonic()
        result = subprocess.run([TALLYD_RING, "rebalance", "--from", old, "--to", new,
                                 "--workers", str(workers), "--json"],
                                capture_output=True, text=True)
        wall = time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(f"rebalance exited {result.returncode}: {result.stdout[-2000:]}"
                               f"{result.stderr[-2000:]}")
        report = json.loads(result.stdout)
        outcome = report["outcome"]
        moved = outcome["bytes_transferred"]
        print(f"rebalance: {outcome['moves_verified']} files moved and verified, "
              f"{moved / 1e6:.1f} MB in {wall:.2f}s wall (the tool's own "
              f"{report['seconds']:.2f}s, listing included): {moved / 1e6 / wall:.2f} MB/s, "
              f"{outcome['moves_verified'] / wall:.0f} files/s, workers {workers}")
    finally:
        for proc in (src, dst):
            proc.kill()
            proc.wait()


#: Hard links per seed file: ext4 allows 65,000 links to one inode.
LINKS_PER_SEED = 50_000


def make_links(root: Path, count: int) -> None:
    """``count`` hard links to small Whisper files (a new seed every `LINKS_PER_SEED`),
    1000 per directory."""
    seed = root / "seed.wsp"
    for i in range(count):
        if i % LINKS_PER_SEED == 0:
            seed.unlink(missing_ok=True)
            whisper.create(str(seed), [(60, 10)])
        folder = root / "inv" / f"d{i // 1000}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        os.link(seed, folder / f"m{i}.wsp")
    seed.unlink(missing_ok=True)


def bench_plan_memory(work: Path, count: int) -> None:
    big = work / "big"
    empty = work / "empty"
    big.mkdir()
    empty.mkdir()
    started = time.monotonic()
    make_links(big, count)
    print(f"made {count} hard links in {time.monotonic() - started:.1f}s")
    a, a_url = start_agent(big)
    b, b_url = start_agent(empty)
    try:
        old = ring_file(work / "one.toml", {SRC: a_url})
        new = ring_file(work / "two.toml", {SRC: a_url, DST: b_url})
        started = time.monotonic()
        plan = subprocess.Popen([TALLYD_RING, "plan", "--from", old, "--to", new, "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert plan.stdout is not None and plan.stderr is not None
        last = b""
        for line in plan.stdout:  # read as it comes; keep the summary line only
            last = line
        _, status, usage = os.wait4(plan.pid, 0)
        wall = time.monotonic() - started
        plan.returncode = os.waitstatus_to_exitcode(status)
        err = plan.stderr.read().decode(errors="replace")
        if plan.returncode != 0:
            raise RuntimeError(f"plan exited {plan.returncode}: {err[-2000:]}")
        summary = json.loads(last)["summary"]
        print(f"plan over {summary['files']} files ({summary['moves']} to move): peak RSS "
              f"{usage.ru_maxrss / 1024:.1f} MiB (ru_maxrss of the tallyd-ring process), "
              f"{wall:.1f}s, {summary['files'] / wall:.0f} files/s")
    finally:
        for proc in (a, b):
            proc.kill()
            proc.wait()
        started = time.monotonic()
        shutil.rmtree(big, ignore_errors=True)
        print(f"removed the links in {time.monotonic() - started:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="files to move (throughput)")
    parser.add_argument("--schema", default="1s:1h", help="their retentions (whisper syntax)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--inventory", type=int, default=1_000_000,
                        help="files in the inventory for the plan's memory (0: skip)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rebalance-bench-"))
    try:
        if args.files:
            bench_throughput(work, args.files, args.schema, args.workers)
        if args.inventory:
            bench_plan_memory(work, args.inventory)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
