"""The reference Etsy statsd (``node stats.js CONFIG.js``) as a subprocess on 127.0.0.1.

Etsy statsd cannot report its ports, so `start_etsy` picks free ones and writes them into its
config (and retries with new ones if they were taken meanwhile). It is ready once its
management port answers ``health`` and its UDP port shows up in ``/proc/net/udp``.

SHELL (subprocesses, sockets).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.checkout import CACHE_DIR
from harness.client import mgmt_command
from harness.daemon import DaemonError, DaemonProcess, start_on_fresh_ports
from harness.port import free_port, udp_port_bound

ETSY_DIR = CACHE_DIR / "etsy" / "node_modules" / "statsd"
ETSY_STATS_JS = ETSY_DIR / "stats.js"


class EtsyProcess(DaemonProcess):
    """``node stats.js CONFIG.js`` listening on 127.0.0.1 (UDP ``port``, TCP ``mgmt_port``)."""

    name = "etsy-statsd"

    def __init__(self, argv: Sequence[str], *, config: dict[str, Any], config_dir: Path,
                 **kwargs: Any) -> None:
        self.config = config
        self.config_dir = config_dir
        super().__init__(argv, **kwargs)

    @property
    def config_path(self) -> Path:
        return self.config_dir / "config.js"

    @property
    def udp(self) -> tuple[str, int]:
        return "127.0.0.1", int(self.config["port"])

    @property
    def mgmt(self) -> tuple[str, int]:
        return "127.0.0.1", int(self.config["mgmt_port"])

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._join_readers()
                raise DaemonError("Etsy statsd exited during startup\n" + self.describe())
            try:
                reply = mgmt_command(self.mgmt, "health", timeout=1.0)
            except OSError as exc:
                last_error = exc
            else:
                if reply.startswith("health: up") and udp_port_bound(self.udp[1]):
                    return
                last_error = DaemonError(f"health reply {reply!r}")
            time.sleep(0.05)
        raise DaemonError(f"Etsy statsd not ready within {timeout}s ({last_error})\n"
                          + self.describe())

    def _cleanup(self) -> None:
        shutil.rmtree(self.config_dir, ignore_errors=True)

    def stop(self, timeout: float = 15.0) -> int:
        try:
            return super().stop(timeout)
        finally:
            self._cleanup()

    def kill(self) -> None:
        try:
            super().kill()
        finally:
            self._cleanup()


def node_binary() -> str | None:
    return shutil.which("node") or shutil.which("nodejs")


def etsy_installed() -> bool:
    return ETSY_STATS_JS.is_file() and node_binary() is not None


def write_etsy_config(config: Mapping[str, Any], path: Path) -> None:
    """Etsy evaluates its config file as JavaScript; JSON is valid JavaScript."""
    path.write_text(json.dumps(config, indent=2) + "\n")


def start_etsy(
    config: Mapping[str, Any], *, timeout: float = 20.0, attempts: int = 3
) -> EtsyProcess:
    """Run the reference Etsy statsd with ``config`` plus free ports on 127.0.0.1.

    ``port``, ``address``, ``mgmt_port`` and ``mgmt_address`` are filled in (any given values
    are replaced); ``graphiteHost``/``graphitePort`` come from the caller. Retries with new
    ports if the chosen ones were taken in the meantime.
    """
    node = node_binary()
    if node is None or not ETSY_STATS_JS.is_file():
        raise DaemonError(
            f"Etsy statsd is not installed ({ETSY_STATS_JS}); run tools/bootstrap --test")

    def launch() -> EtsyProcess:
        full = dict(config)
        full.update(port=free_port("udp"), address="127.0.0.1",
                    mgmt_port=free_port("tcp"), mgmt_address="127.0.0.1")
        config_dir = Path(tempfile.mkdtemp(prefix="etsy-statsd-"))
        write_etsy_config(full, config_dir / "config.js")
        return EtsyProcess([node, str(ETSY_STATS_JS), str(config_dir / "config.js")],
                           config=full, config_dir=config_dir, cwd=ETSY_DIR)

    return start_on_fresh_ports(launch, lambda proc: proc.wait_ready(timeout),
                                attempts=attempts, port_taken="EADDRINUSE")
