"""The Etsy admin port under hostile load (issue 8 item 12), real processes on 127.0.0.1.

More silent connections than the admin port serves at once (64), plus slow-loris ones that
send a byte a second and never a line, must not lock out ``health``: an operator still gets
an answer within a second, and a proxy's health probe keeps the aggregator up (before the
fix the 65th connection was closed unanswered, the probe said ``no_answer`` and the proxy
dropped the aggregator's lines as ``destination_down``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from common.mgmt_server import MAX_ADMIN_CONNECTIONS
from harness.client import mgmt_command, send_udp
from harness.daemon import wait_until
from harness.tallyd import AggregatorProcess, start_aggregator

pytestmark = pytest.mark.e2e

SILENT = MAX_ADMIN_CONNECTIONS + 16
SLOW = 16
#: How long the port is kept under load: several of the proxy's probe intervals.
LOAD_SECONDS = 4.0
PROBE_INTERVAL = 0.2


@pytest.fixture
def aggregator() -> Iterator[AggregatorProcess]:
    proc = start_aggregator(["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0",
                             "--flush-interval", "1", "--workers", "2"])
    try:
        yield proc
    finally:
        proc.kill()


def open_hogs(address: tuple[str, int], count: int,
              stack: contextlib.ExitStack) -> list[socket.socket]:
    hogs = []
    for _ in range(count):
        sock = stack.enter_context(socket.create_connection(address, timeout=5))
        sock.setblocking(False)
        hogs.append(sock)
    return hogs


def dribble(hogs: list[socket.socket]) -> None:
    """One byte on each slow-loris connection (ignoring those the server already closed)."""
    for sock in hogs:
        with contextlib.suppress(OSError):
            sock.send(b"x")


def test_admin_port_answers_health_under_silent_and_slow_connections(
        aggregator: AggregatorProcess, proxy_launcher: Callable[..., Any]) -> None:
    udp_port = aggregator.udp[1]
    proxy = proxy_launcher(["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0",
                            "--aggregator", f"127.0.0.1:{udp_port}:{aggregator.mgmt[1]}",
                            "--health-interval", str(PROBE_INTERVAL),
                            "--connect-timeout", "1"])
    try:
        with contextlib.ExitStack() as stack:
            open_hogs(aggregator.mgmt, SILENT, stack)
            slow = open_hogs(aggregator.mgmt, SLOW, stack)
            dribble(slow)
            sent = 0
            slowest = 0.0
            end = time.monotonic() + LOAD_SECONDS
            next_dribble = time.monotonic() + 1
            while time.monotonic() < end:
                started = time.monotonic()
                reply = mgmt_command(aggregator.mgmt, "health", timeout=1.0)
                slowest = max(slowest, time.monotonic() - started)
                assert reply == "health: up\n", f"health under load: {reply!r}"
                send_udp(proxy.udp, [b"load.c:1|c"])
                sent += 1
                if time.monotonic() >= next_dribble:
                    dribble(slow)
                    next_dribble += 1
                time.sleep(PROBE_INTERVAL / 2)
            assert slowest < 1.0
            stats = proxy.stats()
            assert stats["proxy.forwarder.0.state"] == "up", stats
            assert stats["proxy.forwarder.0.transitions"] == "0", stats
            assert stats["proxy.forwarder.0.dropped_lines.destination_down"] == "0", stats
            wait_until(lambda: proxy.stats()["proxy.forwarder.0.sent_lines"] == str(sent), 10,
                       message=f"the proxy sent all {sent} lines")
    finally:
        proxy.kill()
