"""The proxy as the management protocol (`common.mgmt`) sees it.

``stats`` reports the uptime, then every figure of the proxy's components as
``<full name>: <value>`` (`common.stats`), from readings it asks for on each command: the
membership (its fingerprint: compare it across proxies), the router (lines received and
refused by reason), the intake, auth (when on), the process's totals (lines sent by every
forwarder, every drop by reason), and each forwarder by position (its aggregator's state,
why it is down, lines sent, buffered and dropped by reason).
``health`` is the proxy's own health (a load balancer in front of proxies reads it).
The proxy holds no metric values: it has no ``counters``/``timers``/``gauges`` or ``del*``
commands (``help`` does not list them; they answer a one-line ``ERROR`` saying why).

SHELL (reads the clock for uptime).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import attrs

from common.mgmt import STATELESS_COMMANDS
from common.stats import Reading, stats_lines

from .config import ProxyConfig, plain_value

_SECRET_KEYS = ("auth_tokens", "auth_revoked_tokens")


class ProxyMgmt:
    """Implements `common.mgmt.MgmtTarget` for one proxy process.

    Args:
        config: the configuration (``config`` command).
        readings: returns the components' figures, named (``stats`` command).
        fingerprint: the membership fingerprint (``config`` command).
    """

    commands: Sequence[str] = STATELESS_COMMANDS

    def __init__(self, config: ProxyConfig, readings: Callable[[], Sequence[Reading]], *,
                 fingerprint: str) -> None:
        self.config = config
        self.readings = readings
        self.fingerprint = fingerprint
        self.health = "up"
        self.started = time.time()

    def stats_lines(self) -> Sequence[tuple[str, object]]:
        return [("uptime", round(time.time() - self.started)),
                *stats_lines(self.readings())]

    def config_lines(self) -> Sequence[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for f in attrs.fields(ProxyConfig):
            value = plain_value(f.name, getattr(self.config, f.name))
            if f.name in _SECRET_KEYS:
                value = f"<{len(value)} token(s)>"
            out.append((f.name, json.dumps(value)))
        out.append(("fingerprint", json.dumps(self.fingerprint)))
        return out

    def dump(self, kind: str) -> str | None:
        return None

    def delete(self, kind: str, names: Sequence[str]) -> list[str] | None:
        return None
