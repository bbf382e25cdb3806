"""A wrapper around ``tools/localcarbon.py``: a real carbon-cache writing Whisper files.

The tool is run as a subprocess, exactly as the quick start runs it, so these tests also cover it.
carbon writes its cache to disk about once a second and loses the last second on stop, so read
the data with :meth:`LocalCarbon.wait_for_points` (which polls the Whisper file) before stopping.

SHELL (subprocesses).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from harness.checkout import CACHE_DIR, REPO_ROOT

LOCALCARBON = REPO_ROOT / "tools" / "localcarbon.py"
CARBON_DIR = CACHE_DIR / "carbon"

Points = list[tuple[int, float]]


def _load_localcarbon() -> ModuleType:
    spec = importlib.util.spec_from_file_location("localcarbon", LOCALCARBON)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: tools/localcarbon.py as a module (for its carbon path scheme: whisper_file).
localcarbon = _load_localcarbon()


def carbon_installed() -> bool:
    return (CARBON_DIR / ".ok").exists() and (CARBON_DIR / "bin" / "carbon-cache.py").exists()


class LocalCarbon:
    """A carbon-cache in ``data_dir``, started with :meth:`start` and stopped with :meth:`stop`."""

    def __init__(self, data_dir: Path, *, schema: str = "1s:1h", instance: str = "a") -> None:
        self.data_dir = Path(data_dir)
        self.schema = schema
        self.instance = instance
        self.port: int | None = None
        self.pid: int | None = None

    def _run(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, str(LOCALCARBON), *args], capture_output=True, text=True,
            timeout=timeout, cwd=str(REPO_ROOT),
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"localcarbon.py {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    @property
    def address(self) -> tuple[str, int]:
        assert self.port is not None, "carbon-cache not started"
        return "127.0.0.1", self.port

    @property
    def endpoint(self) -> str:
        host, port = self.address
        return f"{host}:{port}"

    def start(self) -> LocalCarbon:
        result = self._run("start", "--data-dir", str(self.data_dir), "--schema", self.schema,
                           "--instance", self.instance)
        match = re.search(r"port=(\d+) pid=(\d+)", result.stdout)
        if match is None:
            raise RuntimeError(f"unexpected output from localcarbon.py start: {result.stdout!r}")
        self.port, self.pid = int(match[1]), int(match[2])
        return self

    def stop(self) -> None:
        if self.pid is not None:
            self._run("stop", "--data-dir", str(self.data_dir))
            self.pid = None

    def whisper_file(self, metric: str) -> Path:
        """Where carbon stores ``metric`` (tagged series under ``_tagged/``)."""
        return Path(localcarbon.whisper_file(self.data_dir, metric))

    def fetch(self, metric: str) -> Points | None:
        """The series' non-empty points, oldest first, or None if it has no file yet."""
        result = self._run("fetch", "--data-dir", str(self.data_dir), metric, check=False)
        if result.returncode == 2:
            return None
        if result.returncode != 0:
            raise RuntimeError(f"localcarbon.py fetch {metric} failed: {result.stderr}")
        points = []
        for line in result.stdout.splitlines():
            ts, value = line.split()
            points.append((int(ts), float(value)))
        return points

    def wait_for_points(
        self,
        metric: str,
        predicate: Callable[[Points], bool],
        *,
        timeout: float = 20.0,
        describe: str = "",
    ) -> Points:
        """Poll the series until ``predicate(points)`` holds; fail with the last points seen."""
        deadline = time.monotonic() + timeout
        points: Points | None = None
        while True:
            points = self.fetch(metric)
            if points is not None and predicate(points):
                return points
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"carbon series {metric!r}: {describe or 'condition'} not met within "
                    f"{timeout}s; points: {points!r} (file {self.whisper_file(metric)})\n"
                    f"series on disk: {self.series()[:50]}"
                )
            time.sleep(0.3)

    def series(self) -> list[str]:
        """Every metric path that has a Whisper file."""
        root = self.data_dir / "storage" / "whisper"
        return sorted(
            str(path.relative_to(root))[: -len(".wsp")].replace("/", ".")
            for path in root.rglob("*.wsp")
        )

    def __enter__(self) -> LocalCarbon:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
