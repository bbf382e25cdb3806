"""A trio Carbon stand-in for in-process tests: records every plaintext line it receives.

SHELL (trio).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio


@attrs.define
class TrioSink:
    """A Carbon stand-in: accepts plaintext connections and records every line."""

    port: int = 0
    lines: list[bytes] = attrs.Factory(list)
    connections: int = 0
    read: bool = True
    arrived: trio.Event = attrs.Factory(trio.Event)

    async def handler(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        if not self.read:
            await trio.sleep_forever()
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines.extend(complete)
            self.arrived.set()

    async def wait_for(self, predicate: Callable[[list[bytes]], bool]) -> None:
        while not predicate(self.lines):
            self.arrived = trio.Event()
            await self.arrived.wait()

    def values(self, path: bytes) -> list[float]:
        return [float(line.split()[1]) for line in self.lines if line.split()[0] == path]
