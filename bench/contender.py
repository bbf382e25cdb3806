"""The two daemons bench/compare.py measures, started fresh for each case: tallyd-aggregator
and the reference Etsy statsd, both on 127.0.0.1 and flushing to the benchmark's sink.

tallyd is ready once it has logged ``event=started`` and, with several workers, once every
worker has logged ``event=worker_started``. `stop_contender` ends either with SIGTERM (the
final flush) and then kills any of its processes still alive.

SHELL (subprocesses, signals).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from harness.daemon import DaemonError, parse_logfmt
from harness.etsy import EtsyProcess, start_etsy
from harness.proctree import process_tree
from harness.tallyd import AggregatorProcess, started
from report import log

#: How long tallyd and all its workers may take to start.
START_SECONDS = 60.0


class TallydContender(AggregatorProcess):
    """tallyd-aggregator under benchmark, with what its log says about its UDP intake."""

    def _started_fields(self) -> dict[str, str]:
        for line in self.log_text(None).splitlines():
            fields = parse_logfmt(line)
            if fields.get("event") == "started":
                return fields
        return {}

    @property
    def workers(self) -> int:
        """Processes reading the UDP port (a supervisor logs ``workers=N``)."""
        return int(self._started_fields().get("workers", "1"))

    @property
    def receive_buffer(self) -> int:
        """The UDP receive buffer the kernel granted, in bytes (0 if not logged)."""
        for line in self.log_text(None).splitlines():
            fields = parse_logfmt(line)
            if fields.get("event") == "udp_receive_buffer":
                return int(fields.get("bytes", "0"))
        return 0

    def wait_workers(self, timeout: float) -> None:
        """Block until every worker has logged ``event=worker_started``."""
        deadline = time.monotonic() + timeout
        while (self.workers > 1
               and self.log_text(None).count("event=worker_started") < self.workers):
            if self.returncode is not None:
                raise DaemonError("tallyd exited at start:\n" + self.describe())
            if time.monotonic() > deadline:
                raise DaemonError("tallyd did not start:\n" + self.describe())
            time.sleep(0.05)


Contender = TallydContender | EtsyProcess


def launch_tallyd(sink_port: int, flush_interval: float,
                  workers: int | None) -> TallydContender:
    argv = [sys.executable, "-m", "aggregator", "--listen", "udp://127.0.0.1:0",
            "--carbon", f"127.0.0.1:{sink_port}", "--flush-interval", f"{flush_interval:g}s",
            "--mgmt-address", "127.0.0.1", "--mgmt-port", "0"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    deadline = time.monotonic() + START_SECONDS
    proc = started(TallydContender(argv), START_SECONDS)
    try:
        proc.wait_workers(deadline - time.monotonic())
    except BaseException:
        proc.kill()
        raise
    return proc


def start_tallyd(sink_port: int, interval: float, workers: int | None) -> TallydContender:
    """tallyd with ``--workers W``; for W=1 a tallyd without the flag is the same thing."""
    try:
        return launch_tallyd(sink_port, interval, workers)
    except DaemonError:
        if workers != 1:
            raise
        return launch_tallyd(sink_port, interval, None)


def start_etsy_contender(sink_port: int, flush_interval: float) -> EtsyProcess:
    """Etsy statsd with its default settings but the flush interval and the sink."""
    return start_etsy({"flushInterval": int(flush_interval * 1000),
                       "graphiteHost": "127.0.0.1", "graphitePort": sink_port,
                       "backends": ["./backends/graphite"]})


def stop_contender(daemon: Contender, timeout: float = 30.0) -> int | None:
    """SIGTERM (the final flush), wait; then kill any of its processes still alive."""
    tree = process_tree(daemon.pid) if daemon.returncode is None else []
    try:
        daemon.stop(timeout)
    except DaemonError as exc:
        log(f"  {daemon.name}: {str(exc).splitlines()[0]}")
    for pid in tree[1:]:  # workers a supervisor did not take down
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"aggregator" not in f.read():
                    continue  # gone, and the pid reused
            os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    return daemon.returncode
