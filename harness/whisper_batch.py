"""Read many Whisper series in one process (``LocalCarbon.fetch`` starts two per series).

The carbon venv's ``whisper`` module reads the files that ``tools/localcarbon.py`` locates
(tagged series under ``_tagged/``), all in one subprocess.

SHELL (subprocesses).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable

from harness.carbon import CARBON_DIR, LocalCarbon, Points

_READ_SCRIPT = """
import json, os, sys, whisper
out = {}
for name, path in json.load(sys.stdin).items():
    if not os.path.exists(path):
        out[name] = None
        continue
    (start, end, step), values = whisper.fetch(path, 0)
    out[name] = [[start + i * step, v] for i, v in enumerate(values) if v is not None]
json.dump(out, sys.stdout)
"""


def fetch_many(carbon: LocalCarbon, metrics: Iterable[str]) -> dict[str, Points | None]:
    """Each series' non-empty points, oldest first, or None if it has no file (yet)."""
    paths = {name: str(carbon.whisper_file(name)) for name in metrics}
    result = subprocess.run(
        [str(CARBON_DIR / "bin" / "python"), "-c", _READ_SCRIPT], input=json.dumps(paths),
        capture_output=True, text=True, check=True, timeout=120,
    )
    return {name: None if points is None else [(int(t), float(v)) for t, v in points]
            for name, points in json.loads(result.stdout).items()}


def wait_for_series(carbon: LocalCarbon, metrics: Iterable[str], *, timeout: float = 30.0
                    ) -> dict[str, Points | None]:
    """Poll until every series has a point, or ``timeout`` passes; return what is there then
    (the caller reports what is missing)."""
    wanted = list(metrics)
    deadline = time.monotonic() + timeout
    while True:
        got = fetch_many(carbon, wanted)
        if all(got.values()) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)
