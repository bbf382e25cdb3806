"""Forwarders: one per aggregator, each with its own bounded buffer and failure handling.

Intake hands packed chunks to `Forwarder.offer`, a synchronous call that never blocks:
when the aggregator is up and nothing is queued, a UDP chunk is sent on the spot (no task
switch on the hot path); otherwise it is queued. The queue is bounded in bytes: past the
bound the OLDEST chunks are dropped and their lines counted under this aggregator's name,
as ``destination_down`` while it is down and ``buffer_full`` while it is up but slow.
One aggregator's trouble therefore never touches another's traffic or the intake.

Each forwarder's task (`run`) empties the queue, and while the aggregator is down waits
with exponential backoff and jitter, probes it, and resumes by itself when it answers.

Transports: `proxy.forwarders.udp.UdpForwarder` (packed datagrams) and
`proxy.forwarders.tcp.TcpForwarder` (one persistent newline-framed stream).

SHELL.
"""

from __future__ import annotations

import logging
import random
import socket
from collections import deque
from collections.abc import Iterable
from typing import Any, Final

import attrs
import trio

from common.backoff import backoff_delay
from common.logging import log_event

from ..membership import AggregatorSpec, Membership
from ..routing import count_lines

LOGGER = logging.getLogger(__name__)

BUFFER_FULL: Final = "buffer_full"
DESTINATION_DOWN: Final = "destination_down"
SHUTDOWN: Final = "shutdown"

SockAddr = tuple[Any, ...]


@attrs.define
class ForwarderStatistics:
    """Lines and chunks delivered to one aggregator, and lines dropped by reason."""

    sent_lines: int = 0
    sent_chunks: int = 0
    dropped: dict[str, int] = attrs.Factory(dict)
    send_errors: int = 0


class Forwarder:
    """What both transports share: the bounded queue, drop counting, state changes.

    Args:
        index: the aggregator's position in the list.
        membership: shared state of every aggregator (this one's entry is ``index``).
        buffer_bytes: the queue's bound.
        retry_base: first backoff delay (seconds); doubles per failure up to ``retry_max``.
        connect_timeout: seconds allowed for a probe or a connect.
    """

    def __init__(self, index: int, membership: Membership, *, buffer_bytes: int,
                 retry_base: float, retry_max: float, connect_timeout: float) -> None:
        self.index = index
        self.membership = membership
        self.spec: AggregatorSpec = membership.aggregators[index]
        self.name = str(self.spec)
        self.buffer_bytes = buffer_bytes
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.connect_timeout = connect_timeout
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.stats = ForwarderStatistics()
        self.family: int = socket.AF_INET
        self.sockaddr: SockAddr | None = None
        self._wake = trio.Event()

    # -- state ----------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.membership.is_up(self.index)

    def fail(self, reason: str) -> None:
        """Mark the aggregator down (logged once per outage)."""
        if self.membership.mark_down(self.index, reason, trio.current_time()):
            log_event(LOGGER, "aggregator_down", level=logging.WARNING, index=self.index,
                      aggregator=self.name, reason=reason, buffered_lines=self.queued_lines)
        self.wake()

    def recovered(self) -> None:
        if self.membership.mark_up(self.index, trio.current_time()):
            log_event(LOGGER, "aggregator_up", index=self.index, aggregator=self.name,
                      buffered_lines=self.queued_lines)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def wait_woken(self) -> None:
        await self._wake.wait()
        self._wake = trio.Event()

    def set_address(self, family: int, sockaddr: SockAddr) -> None:
        """Send to ``sockaddr`` from now on (after a DNS change, or the first look-up)."""
        self.family, self.sockaddr = family, sockaddr
        self.wake()

    async def backoff(self) -> None:
        failures = self.membership.states[self.index].failures
        await trio.sleep(backoff_delay(max(failures, 1), base=self.retry_base,
                                       cap=self.retry_max, jitter=random.random()))

    # -- the queue ------------------------------------------------------------------------

    @property
    def queued_lines(self) -> int:
        return sum(count_lines(c) for c in self.queue)

    def enqueue(self, chunks: Iterable[bytes]) -> None:
        queue = self.queue
        for chunk in chunks:
            queue.append(chunk)
            self.queued_bytes += len(chunk)
        if self.queued_bytes > self.buffer_bytes:
            reason = BUFFER_FULL if self.up else DESTINATION_DOWN
            while self.queued_bytes > self.buffer_bytes and queue:
                self.drop(self.pop(), reason)
        self._wake.set()

    def requeue_front(self, chunks: list[bytes]) -> None:
        """Put chunks that could not be delivered back at the head of the queue."""
        for chunk in reversed(chunks):
            self.queue.appendleft(chunk)
            self.queued_bytes += len(chunk)

    def pop(self) -> bytes:
        chunk = self.queue.popleft()
        self.queued_bytes -= len(chunk)
        return chunk

    def drop(self, chunk: bytes, reason: str) -> int:
        """Count a chunk (already out of the queue) as dropped; return its lines."""
        lines = count_lines(chunk)
        dropped = self.stats.dropped
        dropped[reason] = dropped.get(reason, 0) + lines
        return lines

    def drop_all(self, reason: str) -> int:
        """Drop what is still queued (at the end of a graceful stop); return the lines."""
        lines = 0
        while self.queue:
            lines += self.drop(self.pop(), reason)
        return lines

    def offer(self, chunks: list[bytes]) -> None:
        """Hand chunks over for delivery. Never blocks."""
        self.enqueue(chunks)

    async def wait_empty(self) -> None:
        """Return once everything queued was handed to the kernel, or the aggregator is
        down (graceful stop)."""
        while (self.queue or self.busy) and self.up:  # noqa: ASYNC110 (a bounded stop only)
            await trio.sleep(0.01)

    @property
    def busy(self) -> bool:
        return False

    def close(self) -> None:
        """Release sockets (at the end of `serve`)."""

    async def run(self) -> None:
        """Deliver the queue until cancelled (each transport implements it)."""
        raise NotImplementedError

