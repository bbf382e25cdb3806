"""Fixtures for the shell layer: real trio, real loopback sockets, fake time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial

import pytest
import trio
import trio.testing

from harness.triosink import TrioSink


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def wall_clock() -> Callable[[], float]:
    """Epoch seconds that follow trio's (mocked) clock, starting at a fixed instant."""
    start = trio.current_time

    def now() -> float:
        return 1_700_000_000.0 + start()

    return now


@pytest.fixture
async def sink(nursery: trio.Nursery) -> AsyncIterator[TrioSink]:
    s = TrioSink()
    listeners = await nursery.start(partial(trio.serve_tcp, s.handler, 0, host="127.0.0.1"))
    s.port = listeners[0].socket.getsockname()[1]
    yield s
