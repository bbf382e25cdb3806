"""proxy.probe against small management servers on loopback that answer in the ways a real
aggregator (or something else on its admin port) can: the health answer alone decides whether
an aggregator is usable, and the ``workers`` question has its own time bound."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from proxy.probe import DRAINING, probe_aggregator

WAIT = 0.3  # each question's bound in these tests; real probes use health_timeout

Script = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_script(nursery: trio.Nursery, script: Script) -> int:
    """A loopback TCP server running ``script`` on every connection; returns its port."""
    listeners = await nursery.start(partial(trio.serve_tcp, script, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def read_command(stream: trio.SocketStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(100)
        if not chunk:
            break
        data += chunk
    return data


def answering(*replies: bytes | None) -> Script:
    """Answer each command with the next reply; None: never answer (hold the connection)."""
    async def script(stream: trio.SocketStream) -> None:
        for reply in replies:
            await read_command(stream)
            if reply is None:
                await trio.sleep_forever()
            await stream.send_all(reply)
    return script


async def probe(script: Script, *, ask_workers: bool = True) -> tuple[object, float]:
    async with trio.open_nursery() as nursery:
        port = await serve_script(nursery, script)
        started = trio.current_time()
        result = await probe_aggregator("127.0.0.1", port, wait_seconds=WAIT,
                                        ask_workers=ask_workers)
        nursery.cancel_scope.cancel()
    return result, trio.current_time() - started


async def test_probe_reads_health_and_workers_when_both_answer() -> None:
    result, _ = await probe(answering(b"health: up\n", b"workers: 2 blake2b64 9001 9002\n"))
    assert result.reason is None and result.answered  # type: ignore[attr-defined]
    assert result.workers.ports == (9001, 9002)  # type: ignore[attr-defined]


async def test_probe_is_up_when_workers_is_never_answered() -> None:
    """A peer that answers health but not ``workers`` is up (what the forwarder knew of its
    workers stays), and the probe ends within the second bound, not at once as a timeout."""
    result, took = await probe(answering(b"health: up\n", None))
    assert result.reason is None and not result.answered  # type: ignore[attr-defined]
    assert WAIT <= took < 2 * WAIT + 1.0


async def test_probe_is_up_when_the_peer_hangs_up_after_health() -> None:
    result, _ = await probe(answering(b"health: up\n"))
    assert result.reason is None and not result.answered  # type: ignore[attr-defined]


async def test_probe_does_not_ask_workers_unless_told() -> None:
    result, took = await probe(answering(b"health: up\n", None), ask_workers=False)
    assert result.reason is None and not result.answered  # type: ignore[attr-defined]
    assert took < WAIT


@pytest.mark.parametrize(("replies", "reason"), [
    ((None,), "timeout"),
    ((b"health: down\n",), DRAINING),
    ((b"ERROR\n",), "no_answer"),
    ((b"",), "no_answer"),
])
async def test_probe_health_answer_decides(replies: tuple[bytes | None, ...],
                                           reason: str) -> None:
    result, _ = await probe(answering(*replies))
    assert result.reason == reason  # type: ignore[attr-defined]


async def test_probe_refused_connection_names_the_errno() -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on: bound, never listening
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = await probe_aggregator("127.0.0.1", port, wait_seconds=WAIT)
    assert result.reason == "econnrefused"
