"""The side-by-side benchmark (bench/compare.py) runs to completion in --short mode.

Its figures are not asserted (the machine is shared): the run must complete, print the
table, and lose no line at its low short-mode rates, for Etsy statsd and for tallyd.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_compare_short_completes_with_zero_loss(etsy_available: Path) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("a C compiler is needed to build bench/blast")
    result = subprocess.run([sys.executable, str(REPO / "bench" / "compare.py"), "--short"],
                            cwd=REPO, capture_output=True, text=True, timeout=110)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr

    assert re.search(r"^\| case\s+\| Etsy lines/s\s+\| tallyd", out, re.M), out
    for title in ("20 lines/datagram", "1 line/datagram"):
        row = re.search(rf"^\| {title}\s+\|\s+([\d,]+) \|\s+([\d,]+) \|", out, re.M)
        assert row, f"no figures for {title}:\n{out}"

    lost: dict[str, list[int]] = {}
    for found in re.finditer(r"^\s+trial (etsy|tallyd)\b.* lost=(-?\d+) kernel_drops=(\d+)",
                             out, re.M):
        lost.setdefault(found.group(1), []).append(int(found.group(2)) + int(found.group(3)))
    assert set(lost) == {"etsy", "tallyd"}, out
    assert all(n == 0 for counts in lost.values() for n in counts), out
