"""Speed of tallyd-ring's Whisper merge on a realistic file (10s:1d,1m:30d,10m:5y, 3.8 MB).

    .venv/bin/python bench/merge_bench.py [--repeat N]

Cases, each timed as ``plan_merge`` alone (pure) and as ``merge_into`` on a real file (lock,
read, plan, pwrite, fsync); MB/s is the source file's size over the time:
  - history: the source holds 30 days of points in every archive, the destination only the
    last hour (what carbon wrote since the ring switch): nearly every slot is filled;
  - identical: the same file twice (nothing to write: the cost of the comparison);
  - empty: the destination was created but never written (whole archives are written);
  - verify: `verify_merge` after the history merge.
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ringtool.merge import apply_writes, plan_merge, verify_merge  # noqa: E402
from ringtool.mergefile import merge_into  # noqa: E402

NOW = 1_700_000_033
SCHEMA = ((10, 8640), (60, 43200), (600, 262800))
DAYS = 86400


def build(keep_seconds: int) -> bytes:
    """A file of SCHEMA whose archives hold a point in every slot of the last
    ``keep_seconds`` (0: never written), laid out as whisper lays them out."""
    header = struct.pack("!2LfL", 1, SCHEMA[-1][0] * SCHEMA[-1][1], 0.5, len(SCHEMA))
    offset = 16 + 12 * len(SCHEMA)
    infos, bodies = [], []
    for step, points in SCHEMA:
        infos.append(struct.pack("!3L", offset, step, points))
        offset += points * 12
        last = NOW - NOW % step
        first = last - (points - 1) * step
        body = bytearray(points * 12)
        for j in range(points):
            t = first + j * step
            if keep_seconds and t > NOW - keep_seconds:
                struct.pack_into("!Ld", body, j * 12, t, float(t % 977))
        if keep_seconds and not any(body[:4]):  # the first slot must hold the base
            oldest = next(j for j in range(points) if body[j * 12:j * 12 + 4] != bytes(4))
            body = body[oldest * 12:] + body[:oldest * 12]
        bodies.append(bytes(body))
    return header + b"".join(infos) + b"".join(bodies)


def timed(call: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    src = build(30 * DAYS)
    recent = build(3600)
    empty = build(0)
    size_mb = len(src) / 1e6
    print(f"file: {len(src)} bytes, archives {SCHEMA}")
    plan = plan_merge(src, recent, now=NOW)
    merged = apply_writes(recent, plan.writes)
    print(f"history merge: {plan.result}, {len(plan.writes)} writes, "
          f"{sum(len(b) for _, b in plan.writes)} bytes written")
    cases: dict[str, Callable[[], object]] = {
        "plan history": lambda: plan_merge(src, recent, now=NOW),
        "plan identical": lambda: plan_merge(src, src, now=NOW),
        "plan empty": lambda: plan_merge(src, empty, now=NOW),
        "verify": lambda: verify_merge(src, merged, now=NOW),
    }
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "m.wsp"

        def into(dst: bytes) -> Callable[[], object]:
            def run() -> object:
                path.write_bytes(dst)
                return merge_into(path, src, now=NOW)
            return run

        cases["merge_into history"] = into(recent)
        cases["merge_into empty"] = into(empty)
        for name, call in cases.items():
            seconds = timed(call, repeat)
            print(f"{name:20} {seconds * 1000:8.1f} ms  {size_mb / seconds:7.1f} MB/s")


if __name__ == "__main__":
    main()
