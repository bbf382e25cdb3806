"""Health probes of aggregators that expose the management protocol (``HOST:PORT:ADMIN``).

A probe connects to the management port, sends ``health`` and reads the first line:
``health: up`` means usable. ``health: down`` means the aggregator is draining (an operator
said ``health down`` before a restart, or it is shutting down): the proxy holds its lines
in the buffer instead of sending them into a stopping process, and sends them when it is
back. No answer, a refused connection or a timeout mean down.

Unlike Etsy's proxy.js, a probe's verdict never changes which aggregator a name goes to;
it only decides whether that aggregator's lines are sent now or held.

A UDP forwarder's probe also asks ``workers`` on the same connection, after ``health``
(each command written once its predecessor was answered: Etsy's statsd reads a whole
``data`` event as one command), and the answer (`proxy.workers`) says whether its lines go
to the aggregator's workers' own ports. The first probe runs at start, before intake.

SHELL.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from typing import TYPE_CHECKING, Final

import attrs
import trio

from .workers import AggregatorWorkers, parse_workers_reply

if TYPE_CHECKING:
    from .forwarders.base import Forwarder

LOGGER = logging.getLogger(__name__)

DRAINING: Final = "draining"
MAX_REPLY_BYTES: Final = 4096


@attrs.frozen
class ProbeResult:
    """What one probe learned: ``reason`` (None: usable) and, when ``workers`` was asked
    and answered at all, the parsed answer (``answered`` true; ``workers`` None for
    ``ERROR`` or an answer that is not one)."""

    reason: str | None
    answered: bool = False
    workers: AggregatorWorkers | None = None


async def _read_line(stream: trio.SocketStream, reply: bytes) -> tuple[bytes, bytes]:
    """The first line of ``reply`` plus what the stream sends, and what follows it."""
    while b"\n" not in reply and len(reply) < MAX_REPLY_BYTES:
        chunk = await stream.receive_some(MAX_REPLY_BYTES)
        if not chunk:
            break
        reply += chunk
    line, _, rest = reply.partition(b"\n")
    return line, rest


def connect_failure(error: OSError) -> str:
    """The reason a connection failed, as a lower-case errno name (``econnrefused``).

    trio's `open_tcp_stream` raises an OSError without an errno once every address it tried
    failed, with those attempts' errors in its ``__cause__`` (an exception group); the first
    of them names the reason. ``connect_error`` when none does.
    """
    number = error.errno
    cause = error.__cause__
    if not number and isinstance(cause, BaseExceptionGroup):
        number = next((e.errno for e in cause.exceptions
                       if isinstance(e, OSError) and e.errno), None)
    elif not number and isinstance(cause, OSError):
        number = cause.errno
    return errno.errorcode.get(number or 0, "connect_error").lower()


async def probe_aggregator(host: str, port: int, *, wait_seconds: float,
                           ask_workers: bool = False) -> ProbeResult:
    """Ask ``host:port`` for its health within ``wait_seconds`` and, with ``ask_workers`` and
    when it is up, its workers within another ``wait_seconds``.

    Health decides the result alone: an aggregator that answers health but not ``workers``
    (too slow, or gone after the first answer) is up, with ``answered`` false, so what the
    forwarder knew of its workers stays as it was.
    """
    try:
        with trio.fail_after(wait_seconds):
            stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        return ProbeResult("timeout")
    except OSError as e:
        return ProbeResult(connect_failure(e))
    async with stream:
        try:
            with trio.fail_after(wait_seconds):
                await stream.send_all(b"health\n")
                first, rest = await _read_line(stream, b"")
        except trio.TooSlowError:
            return ProbeResult("timeout")
        except OSError as e:
            return ProbeResult(connect_failure(e))
        except trio.BrokenResourceError:
            return ProbeResult("connection_reset")
        first = first.strip().lower()
        if first == b"health: down":
            return ProbeResult(DRAINING)
        if first != b"health: up":
            return ProbeResult("no_answer")
        if not ask_workers:
            return ProbeResult(None)
        workers_line = b""
        with trio.move_on_after(wait_seconds), \
                contextlib.suppress(OSError, trio.BrokenResourceError):
            await stream.send_all(b"workers\n")
            workers_line, _ = await _read_line(stream, rest)
    return ProbeResult(None, answered=bool(workers_line.strip()),
                       workers=parse_workers_reply(workers_line))


async def probe_mgmt(host: str, port: int, *, wait_seconds: float) -> str | None:
    """Ask ``host:port`` for its health, within ``wait_seconds``.

    Returns:
        None when it answers ``health: up``; otherwise the reason it is not usable
        (``draining``, ``timeout``, ``econnrefused``, ``no_answer``, ...).
    """
    return (await probe_aggregator(host, port, wait_seconds=wait_seconds)).reason


async def probe_forwarder(forwarder: Forwarder, *, wait_seconds: float) -> str | None:
    """Probe ``forwarder``'s aggregator on its admin port (which it must have); hand a
    ``workers`` answer to the forwarder; return the reason it is unusable, or None."""
    assert forwarder.spec.admin_port is not None
    host = forwarder.sockaddr[0] if forwarder.sockaddr else forwarder.spec.host
    result = await probe_aggregator(host, forwarder.spec.admin_port,
                                    wait_seconds=wait_seconds,
                                    ask_workers=forwarder.wants_workers)
    if result.answered:
        forwarder.learn_workers(result.workers)
    return result.reason


async def run_health_monitor(forwarder: Forwarder, *, interval: float,
                             wait_seconds: float) -> None:
    """Probe ``forwarder``'s aggregator every ``interval`` seconds while it is up, and mark
    it down on a failed probe (its forwarder then probes it until it recovers)."""
    if forwarder.spec.admin_port is None:
        return
    while True:
        await trio.sleep(interval)
        if not forwarder.up:
            continue
        reason = await probe_forwarder(forwarder, wait_seconds=wait_seconds)
        if reason is not None:
            forwarder.fail(reason)
