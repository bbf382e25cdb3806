"""The ring agent's admin routes (`common.admin`): /healthz, /readyz, /status, /metrics.

The agent routes no metric names and has no destinations: its /status has no members,
``flush_interval`` null, and its figures are the agent's counts (``ring.agent.*``) and its
HTTP server's (``ring.http.*``).

SHELL (reads the clock and the data dir).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from common.admin.prometheus import format_readings
from common.admin.status import StatusFacts, build_status, config_fingerprint
from common.stats import Reading


class AgentAdmin:
    """The agent as `common.admin.routes.AdminSource`.

    Args:
        readings: the agent's figures, named.
        data_dir: the directory it serves (ready while it is one).
        settings: its settings as text, for the config fingerprint.
    """

    def __init__(self, *, readings: Callable[[], list[Reading]], data_dir: str,
                 settings: str, version: str) -> None:
        self.readings = readings
        self.data_dir = data_dir
        self.version = version
        self.started = time.time()
        self.config_fingerprint = config_fingerprint(settings)

    def not_ready(self) -> list[str]:
        return [] if os.path.isdir(self.data_dir) else ["data_dir_missing"]

    async def status(self) -> dict[str, object]:
        facts = StatusFacts(
            role="ring-agent", identity=socket.gethostname().split(".")[0],
            version=self.version, pid=os.getpid(), started=self.started, health="up",
            not_ready=self.not_ready(), flush_interval=None, membership_fingerprint="",
            config_fingerprint=self.config_fingerprint)
        return build_status(facts, self.readings(), now=time.time())

    async def metrics(self) -> bytes:
        return format_readings(self.readings())

    async def route(self, name: str) -> dict[str, object] | None:
        return None
