"""Forwarders: one per aggregator, each with its own bounded buffer and failure handling.

Intake hands packed chunks to `Forwarder.offer`, a synchronous call that never blocks:
when the aggregator is up and nothing is queued, a UDP chunk is sent on the spot (no task
switch on the hot path); otherwise it is queued. The queue is a `common.queue.ChunkQueue`
bounded in bytes: past the bound the OLDEST chunks are dropped and their lines counted under
this aggregator's name, as ``destination_down`` while it is down and ``buffer_full`` while it
is up but slow. One aggregator's trouble therefore never touches another's traffic or the
intake.

`Forwarder.statistics` is a frozen `ForwarderStatistics`: this forwarder's figures and its
aggregator's state in the membership, read as ``proxy.forwarder.<index>.<measure>``.

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
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
import trio

from common.backoff import backoff_delay
from common.logging import log_event
from common.queue import ChunkQueue
from common.stats import counter, level, text

from ..membership import AggregatorSpec, Membership
from ..routing import MAIN, count_lines
from ..workers import AggregatorWorkers

LOGGER = logging.getLogger(__name__)

BUFFER_FULL: Final = "buffer_full"
DESTINATION_DOWN: Final = "destination_down"
SHUTDOWN: Final = "shutdown"
#: Still queued when an aggregator removed from the list had its drain time (a reload).
RETIRED: Final = "retired"
#: Every reason a forwarder drops lines for (each is reported, zero or not).
DROP_REASONS: Final = (BUFFER_FULL, DESTINATION_DOWN, SHUTDOWN)

SockAddr = tuple[Any, ...]


@attrs.frozen
class ForwarderStatistics:
    """One forwarder and its aggregator, at one moment."""

    aggregator: str = text(help="the aggregator as configured (HOST:PORT[:ADMIN_PORT])")
    address: str = text(help="the address its name resolved to (or unresolved)")
    state: str = text(help="up or down")
    reason: str = text(help="why it is down (or none)")
    transitions: int = counter(help="changes between up and down")
    sent_lines: int = counter(help="lines handed to the kernel for this aggregator")
    sent_chunks: int = counter(help="datagrams (or TCP batches) handed to the kernel")
    send_errors: int = counter(help="sends that failed with an error")
    workers: int = level(help="the workers its lines are spread over, each on its own port "
                              "(0: the aggregator's main port)")
    buffered_lines: int = level(help="lines waiting in the queue")
    buffered_bytes: int = level(help="bytes waiting in the queue")
    dropped_lines: dict[str, int] = counter(
        help="lines dropped, by reason (buffer_full: queue full while up; destination_down: "
             "queue full while down; shutdown: still queued at the end of a graceful stop)")


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
        self.queue = ChunkQueue(buffer_bytes, lines=count_lines)
        self.sent_lines = 0
        self.sent_chunks = 0
        self.send_errors = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.family: int = socket.AF_INET
        self.sockaddr: SockAddr | None = None
        #: The aggregator's workers' ports in use (() = its main port), and who applies a
        #: change (the pipeline: router first, then `set_worker_ports`).
        self.worker_ports: tuple[int, ...] = ()
        self.on_workers: Callable[[int, tuple[int, ...]], None] = self._apply_ports
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

    # -- workers --------------------------------------------------------------------------

    #: Whether probes ask the aggregator for its workers (UDP forwarders only).
    wants_workers = False

    def learn_workers(self, answer: AggregatorWorkers | None) -> None:
        """A ``workers`` answer arrived (None: ``ERROR`` or not an answer)."""
        ports = answer.send_ports if answer is not None and self.wants_workers else ()
        if ports != self.worker_ports:
            self.on_workers(self.index, ports)

    def _apply_ports(self, index: int, ports: tuple[int, ...]) -> None:
        self.set_worker_ports(ports)

    def set_worker_ports(self, ports: tuple[int, ...]) -> None:
        """Send to these worker ports from now on (() = the main port)."""
        self.worker_ports = ports

    # -- the queue ------------------------------------------------------------------------

    @property
    def queued_lines(self) -> int:
        return self.queue.total_lines

    @property
    def queued_bytes(self) -> int:
        return self.queue.total_bytes

    def enqueue(self, chunks: Iterable[bytes]) -> None:
        evicted = self.queue.extend(chunks)
        if evicted:
            reason = BUFFER_FULL if self.up else DESTINATION_DOWN
            for chunk in evicted:
                self.drop(chunk, reason)
        self._wake.set()

    def requeue_front(self, chunks: list[bytes]) -> None:
        """Put chunks that could not be delivered back at the head of the queue."""
        self.queue.push_front(chunks)

    def pop(self) -> tuple[bytes, int]:
        """Take the oldest chunk out, with its line count."""
        return self.queue.take()

    def drop(self, chunk: bytes, reason: str) -> int:
        """Count a chunk (already out of the queue) as dropped; return its lines."""
        lines = count_lines(chunk)
        self.dropped[reason] = self.dropped.get(reason, 0) + lines
        return lines

    def drop_all(self, reason: str) -> int:
        """Drop what is still queued (at the end of a graceful stop); return the lines."""
        return sum(self.drop(chunk, reason) for chunk in self.queue.clear())

    def statistics(self) -> ForwarderStatistics:
        member = self.membership.states[self.index]
        return ForwarderStatistics(
            aggregator=self.spec.spec, address=member.address or "unresolved",
            state=member.state, reason=member.reason or "none",
            transitions=member.transitions, sent_lines=self.sent_lines,
            sent_chunks=self.sent_chunks, send_errors=self.send_errors,
            workers=len(self.worker_ports),
            buffered_lines=self.queued_lines, buffered_bytes=self.queued_bytes,
            dropped_lines=dict(self.dropped))

    def offer(self, chunks: list[bytes], worker: int = MAIN) -> None:
        """Hand chunks over for delivery (all for ``worker``, or `MAIN`). Never blocks."""
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

