"""The proxy as the management protocol (`common.mgmt`) sees it.

``stats`` reports, besides uptime, the membership fingerprint (compare it across proxies),
the lines received, every drop by reason, and per aggregator (by position and address):
its state, why it is down, lines sent, lines buffered and lines dropped by reason.
``health`` is the proxy's own health (a load balancer in front of proxies reads it).
The proxy holds no metric values: it has no ``counters``/``timers``/``gauges`` or ``del*``
commands (``help`` does not list them; they answer a one-line ``ERROR`` saying why).

SHELL (reads the clock for uptime).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from common.listener import IntakeCounters
from common.mgmt import STATELESS_COMMANDS

from .config import ProxyConfig, plain_value
from .forwarders.base import BUFFER_FULL, DESTINATION_DOWN, SHUTDOWN
from .forwarders.tcp import TcpForwarder

if TYPE_CHECKING:
    from .server import Proxy

_SECRET_KEYS = ("auth_tokens", "auth_revoked_tokens")


class ProxyMgmt:
    """Implements `common.mgmt.MgmtTarget` for one proxy process."""

    commands: Sequence[str] = STATELESS_COMMANDS

    def __init__(self, config: ProxyConfig, proxy: Proxy, intake: IntakeCounters) -> None:
        self.config = config
        self.proxy = proxy
        self.intake = intake
        self.health = "up"
        self.started = time.time()

    def stats_lines(self) -> Sequence[tuple[str, object]]:
        proxy = self.proxy
        route = proxy.router.stats
        lines: list[tuple[str, object]] = [
            ("uptime", round(time.time() - self.started)),
            ("proxy.fingerprint", proxy.membership.fingerprint),
            ("proxy.hash", proxy.membership.hash_mode),
            ("proxy.aggregators", len(proxy.membership)),
            ("proxy.packets_received", route.packets),
            ("proxy.lines_received", route.lines + (proxy.auth.statistics().refused
                                                    if proxy.auth is not None else 0)),
            ("proxy.lines_sent", sum(f.stats.sent_lines for f in proxy.forwarders)),
            *((f"intake.{name}", count) for name, count in attrs.asdict(self.intake).items()),
        ]
        lines += [(f"proxy.dropped.{reason}", count)
                  for reason, count in sorted(proxy.dropped().items())]
        if proxy.auth is not None:
            refused = proxy.auth.statistics().refused_lines
            lines += [(f"proxy.auth.{reason}", refused[reason])
                      for reason in ("missing", "invalid", "revoked")]
        for forwarder in proxy.forwarders:
            member = proxy.membership.states[forwarder.index]
            stats = forwarder.stats
            head = f"aggregator.{forwarder.index}"
            lines += [
                (f"{head}.name", forwarder.spec.spec),
                (f"{head}.address", member.address or "unresolved"),
                (f"{head}.state", member.state),
                (f"{head}.reason", member.reason or "none"),
                (f"{head}.transitions", member.transitions),
                (f"{head}.sent_lines", stats.sent_lines),
                (f"{head}.sent_chunks", stats.sent_chunks),
                (f"{head}.buffered_lines", forwarder.queued_lines),
                (f"{head}.buffered_bytes", forwarder.queued_bytes),
            ]
            lines += [(f"{head}.dropped.{reason}", stats.dropped.get(reason, 0))
                      for reason in (BUFFER_FULL, DESTINATION_DOWN, SHUTDOWN)]
            if isinstance(forwarder, TcpForwarder):
                lines += [(f"{head}.connected", int(forwarder.connected)),
                          (f"{head}.connects", forwarder.connects)]
        return lines

    def config_lines(self) -> Sequence[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for f in attrs.fields(ProxyConfig):
            value = plain_value(f.name, getattr(self.config, f.name))
            if f.name in _SECRET_KEYS:
                value = f"<{len(value)} token(s)>"
            out.append((f.name, json.dumps(value)))
        out.append(("fingerprint", json.dumps(self.proxy.membership.fingerprint)))
        return out

    def dump(self, kind: str) -> str | None:
        return None

    def delete(self, kind: str, names: Sequence[str]) -> list[str] | None:
        return None
