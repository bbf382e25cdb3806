"""A stop signal that reaches the supervisor while its workers start is a graceful stop.

The supervisor owns SIGTERM before it spawns a worker: a service manager that stops the
daemon at once (or a test that signals right after ``event=started``) gets exit 0, the
``stopped`` line, and no socket file or runtime dir left behind, never a death by the
signal's default action.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from harness.tallyd import AggregatorProcess, aggregator_argv

pytestmark = [pytest.mark.e2e]


@pytest.mark.parametrize("when", ["spawning", "started"])
def test_sigterm_while_workers_start_stops_cleanly(tmp_path: Path, when: str) -> None:
    path = tmp_path / "intake.sock"
    proc = AggregatorProcess(aggregator_argv([
        "--listen", f"unix://{path}", "--mgmt-port", "0", "--flush-interval", "1",
        "--no-self-metrics", "--workers", "2"]))
    try:
        # "spawning": the supervisor has bound its sockets and is starting the workers.
        proc.wait_for_log("event=worker_started" if when == "spawning" else "event=started",
                          timeout=30)
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.stop(timeout=30)
        log = proc.log_text(tail=None)
        assert code == 0, proc.describe()
        assert re.search(r"logger=aggregator\.workers\.pool event=stopped", log), proc.describe()
        runtime = re.search(r"runtime_dir=(\S+)", log)
        if runtime:
            assert not Path(runtime.group(1)).exists(), proc.describe()
        assert not path.exists(), proc.describe()
    finally:
        proc.kill()
