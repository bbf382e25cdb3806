"""Health probes of aggregators that expose the management protocol (``HOST:PORT:ADMIN``).

A probe connects to the management port, sends ``health`` and reads the first line:
``health: up`` means usable. ``health: down`` means the aggregator is draining (an operator
said ``health down`` before a restart, or it is shutting down): the proxy holds its lines
in the buffer instead of sending them into a stopping process, and sends them when it is
back. No answer, a refused connection or a timeout mean down.

Unlike Etsy's proxy.js, a probe's verdict never changes which aggregator a name goes to;
it only decides whether that aggregator's lines are sent now or held.

SHELL.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from .forwarders.base import Forwarder

LOGGER = logging.getLogger(__name__)

DRAINING: Final = "draining"
MAX_REPLY_BYTES: Final = 4096


async def probe_mgmt(host: str, port: int, *, wait_seconds: float) -> str | None:
    """Ask ``host:port`` for its health, within ``wait_seconds``.

    Returns:
        None when it answers ``health: up``; otherwise the reason it is not usable
        (``draining``, ``timeout``, ``econnrefused``, ``no_answer``, ...).
    """
    reply = b""
    try:
        with trio.fail_after(wait_seconds):
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(b"health\n")
                while b"\n" not in reply and len(reply) < MAX_REPLY_BYTES:
                    chunk = await stream.receive_some(MAX_REPLY_BYTES)
                    if not chunk:
                        break
                    reply += chunk
    except trio.TooSlowError:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, "connect_error").lower()
    except trio.BrokenResourceError:
        return "connection_reset"
    first = reply.split(b"\n", 1)[0].strip().lower()
    if first == b"health: up":
        return None
    if first == b"health: down":
        return DRAINING
    return "no_answer"


async def run_health_monitor(forwarder: Forwarder, *, interval: float,
                             wait_seconds: float) -> None:
    """Probe ``forwarder``'s aggregator every ``interval`` seconds while it is up, and mark
    it down on a failed probe (its forwarder then probes it until it recovers)."""
    admin_port = forwarder.spec.admin_port
    if admin_port is None:
        return
    while True:
        await trio.sleep(interval)
        if not forwarder.up:
            continue
        host = forwarder.sockaddr[0] if forwarder.sockaddr else forwarder.spec.host
        reason = await probe_mgmt(host, admin_port, wait_seconds=wait_seconds)
        if reason is not None:
            forwarder.fail(reason)
