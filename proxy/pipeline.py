"""`Pipeline`: one proxy process's components, from intake to the forwarders.

It owns the membership, the auth filter, the router, one forwarder per aggregator and the
intake counters, and runs the hand-over between them:

    intake sockets --route(packet)--> Router (H1 + packing) --chunks--> one Forwarder per
    aggregator (bounded queue; UDP datagrams or one TCP stream) --> aggregators

Datagram intake reads until the socket would block (or `DATAGRAMS_PER_BATCH` datagrams),
routes the batch as one block, then hands every destination's full datagrams (one per
aggregator, or per worker of an aggregator that announced its workers' ports:
`apply_workers`) to the aggregator's forwarder at once;
the last, partly filled one waits for more lines until its oldest line is
``max_batch_delay_ms`` old (the tail flusher sends it then; at high rates it fills first, so
no partly filled datagram leaves). A drop reporter logs new drops every `DROP_LOG_PERIOD_SECONDS`.

`Pipeline.readings` names every component's statistics snapshot (`common.stats.read`):
``proxy.membership.*``, ``proxy.router.*``, ``proxy.intake.*``, ``proxy.auth.*`` (with
auth on), ``proxy.forwarders.*`` (the process's totals: lines sent by every forwarder, and
every drop by reason, the router's included) and ``proxy.forwarder.<index>.*``, in that
order.

SHELL.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Final

import attrs
import trio

from common.auth import make_auth
from common.listener import BoundSocket, DatagramReader, IntakeCounters
from common.logging import log_event
from common.stats import Reading, counter, read

from .config import ProxyConfig
from .forwarders.base import Forwarder
from .forwarders.tcp import TcpForwarder
from .forwarders.udp import UdpForwarder
from .membership import Membership
from .routing import MAIN, Router
from .schedule import HeldPackets, MembershipChange, SwitchSchedule, SwitchStatistics

LOGGER = logging.getLogger(__name__)

#: Datagrams routed before their chunks are handed to the forwarders and other tasks run.
DATAGRAMS_PER_BATCH: Final = 256
#: Datagrams read per pass when the intake is drained at a graceful stop.
DATAGRAMS_PER_DRAIN: Final = 10_000
#: How often drops are summarised in the log (only when there are new ones).
DROP_LOG_PERIOD_SECONDS: Final = 10.0


@attrs.define
class ClosedForwarder:
    """What the retired forwarders of one aggregator sent and dropped, once closed (summed
    over every change that removed it: the process's counters never go down)."""

    name: str
    address: str
    sent_lines: int = 0
    dropped_lines: dict[str, int] = attrs.Factory(dict)


@attrs.frozen
class ForwardersStatistics:
    """The whole process's output: every forwarder summed, and every drop."""

    sent_lines: int = counter(help="lines handed to the kernel, all aggregators summed")
    dropped_lines: dict[str, int] = counter(
        help="every line dropped, by reason: the router's (bad_line, line_too_long, auth) "
             "and the forwarders' (buffer_full, destination_down, shutdown), all "
             "aggregators summed")


class Pipeline:
    """The components of one proxy process and the hand-over between them."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.membership = Membership(config.aggregator, now=trio.current_time())
        self.auth = make_auth(config.auth, config.auth_tokens, config.auth_revoked_tokens)
        self.router = Router(len(self.membership), max_chunk_bytes=config.max_chunk_bytes,
                             sanitize=config.key_name_sanitize, auth=self.auth)
        self.intake = IntakeCounters()
        self.forwarders = [self.build_forwarder(i, self.membership)
                           for i in range(len(self.membership))]
        for forwarder in self.forwarders:
            self._attach(forwarder)
        #: While a list change holds intake (proxy.schedule): what arrived, not yet routed.
        self.held: HeldPackets | None = None
        #: Holds cut short because what they held reached its cap (`hold`).
        self.hold_cuts = 0
        #: Old-list lines still queued at the instants of the list changes (`switch_to`).
        self.late_lines = 0
        #: Forwarders of aggregators a list change removed, until drained and closed
        #: (`forget_retired`; their counters stay in the totals: `closed`).
        self.retired: list[Forwarder] = []
        #: The counts of retired forwarders closed since, by aggregator spec.
        self.closed: dict[str, ClosedForwarder] = {}
        #: The list change a reload scheduled (set by proxy.switch), and those applied.
        self.scheduled: SwitchSchedule | None = None
        self.switches = 0
        self.keep_tails = config.max_batch_delay_ms > 0
        #: When the oldest line of each destination's kept-back tail arrived, by
        #: (aggregator, worker): the tail flusher sends a tail once it is that old
        #: plus ``max_batch_delay_ms``, not sooner (a tail filled meanwhile left full).
        self.tail_since: dict[tuple[int, int], float] = {}
        self.tails_waiting = trio.Event()

    def build_forwarder(self, index: int, membership: Membership) -> Forwarder:
        """A forwarder for ``membership``'s aggregator ``index`` (not yet routed to)."""
        config = self.config
        if config.forward == "udp":
            return UdpForwarder(index, membership, source_sockets=config.source_sockets,
                                buffer_bytes=config.aggregator_buffer_bytes,
                                retry_base=config.retry_base, retry_max=config.retry_max,
                                connect_timeout=config.connect_timeout)
        return TcpForwarder(index, membership, write_timeout=config.write_timeout,
                            buffer_bytes=config.aggregator_buffer_bytes,
                            retry_base=config.retry_base, retry_max=config.retry_max,
                            connect_timeout=config.connect_timeout)

    def _attach(self, forwarder: Forwarder) -> None:
        """Route to ``forwarder`` at its index: workers changes go through the router."""
        forwarder.on_workers = self.apply_workers
        if isinstance(forwarder, UdpForwarder):
            forwarder.worker_of = partial(self.router.worker_of_chunk, forwarder.index)

    def apply_workers(self, index: int, ports: tuple[int, ...]) -> None:
        """Aggregator ``index``'s workers' ports changed (() = its main port): lines
        already packed go where they were packed for, new lines to the new ports."""
        forwarder = self.forwarders[index]
        for worker, chunks in self.router.set_workers(index, len(ports)):
            forwarder.offer(chunks, worker)
        for destination in [d for d in self.tail_since if d[0] == index]:
            del self.tail_since[destination]  # its tails left just now
        forwarder.set_worker_ports(ports)
        log_event(LOGGER, "aggregator_workers", index=index, aggregator=forwarder.name,
                  workers=len(ports), ports=",".join(map(str, ports)) or "main")

    # -- the hand-over --------------------------------------------------------------------

    def dispatch(self, *, final: bool = False) -> None:
        """Hand every aggregator's packed chunks to its forwarder (keeping the partly
        filled last one back, at most ``max_batch_delay_ms`` after its oldest line
        arrived, unless ``final``)."""
        keep = self.keep_tails and not final
        router = self.router
        take, forwarders, pending = router.take_chunks, self.forwarders, router.pending
        tails = self.tail_since
        now = trio.current_time() if keep else 0.0
        for index, destination in enumerate(router.destinations):
            if not pending[index]:
                continue
            chunks = take(index, keep_tail=keep)
            if chunks:
                forwarders[destination[0]].offer(chunks, destination[1])
                if keep:  # the tail now held back holds only lines of this batch
                    tails[destination] = now
            elif destination not in tails:  # a tail began with this batch
                tails[destination] = now
        if not keep:
            tails.clear()
        elif tails:
            self.tails_waiting.set()

    def flush_tails(self, now: float, delay: float) -> None:
        """Send the kept-back tails whose oldest line is ``delay`` seconds old at ``now``."""
        router, tails = self.router, self.tail_since
        for index, destination in enumerate(router.destinations):
            since = tails.get(destination)
            if since is not None and since + delay <= now:  # the sleep's very sum: no spin
                del tails[destination]
                chunks = router.take_chunks(index, keep_tail=False)
                if chunks:
                    self.forwarders[destination[0]].offer(chunks, destination[1])
        for destination in [d for d in tails if d not in router.destinations]:
            del tails[destination]  # a destination gone with a change of workers

    def handle_block(self, block: bytes) -> None:
        """A stream's block of whole lines: route it and hand it over at once (or hold it,
        during a list change)."""
        if self.held is not None:
            self.held.append(block)
            if self.held.full:
                self.cut_hold()
            return
        self.router.route(block)
        self.dispatch()

    def make_datagram_reader(self, bound: BoundSocket) -> DatagramReader:
        return DatagramReader(bound, stats=self.intake, refused=self.router.count_refused)

    async def run_datagram_intake(self, bound: BoundSocket) -> None:
        """Route one datagram socket's traffic until cancelled."""
        sock, route = bound.sock, self.router.route_many
        reader = self.make_datagram_reader(bound)
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                batch = reader.receive(DATAGRAMS_PER_BATCH)
                if batch and self.held is not None:
                    self.held.extend(batch)
                    if self.held.full:
                        self.cut_hold()
                elif batch:
                    route(batch)
                    self.dispatch()
                if len(batch) < DATAGRAMS_PER_BATCH:
                    break
                await trio.lowlevel.checkpoint()

    def drain_datagrams(self, bound: BoundSocket) -> None:
        """Route what the kernel already queued on a datagram socket (graceful stop)."""
        reader = self.make_datagram_reader(bound)
        while True:  # until a read finds less than a full batch queued
            batch = reader.receive(DATAGRAMS_PER_DRAIN)
            if self.held is not None:
                self.held.extend(batch)
            else:
                self.router.route_many(batch)
            if len(batch) < DATAGRAMS_PER_DRAIN:
                break

    async def run_tail_flusher(self) -> None:
        """Send each partly filled last chunk ``max_batch_delay_ms`` after its oldest line
        arrived, unless more lines filled it first (then it left full, and a tail that
        began later waits its own delay)."""
        delay = self.config.max_batch_delay_ms / 1000.0
        while True:
            await self.tails_waiting.wait()
            self.tails_waiting = trio.Event()
            while self.tail_since:
                await trio.sleep_until(min(self.tail_since.values()) + delay)
                self.flush_tails(trio.current_time(), delay)

    # -- changing the list (proxy.switch runs the steps at their times) -------------------

    def hold(self) -> None:
        """From now on hold what intake receives; send what the old list has packed
        (once: a hold already begun goes on).

        What is held is bounded by ``aggregator_buffer_bytes`` per aggregator of the list
        in force: past that the hold ends early (`cut_hold`), so a burst or a hold
        lengthened by a slow host costs at most what the forwarders' queues may hold.
        """
        if self.held is None:
            self.dispatch(final=True)
            self.held = HeldPackets(self.config.aggregator_buffer_bytes * len(self.membership))

    def cut_hold(self) -> None:
        """End a hold whose packets reached their cap: route them, and what follows, by
        the list in force now (an interval may then be split between two lists: logged
        and counted, never a drop)."""
        held = self.held
        if held is None:
            return
        self.hold_cuts += 1
        log_event(LOGGER, "switch_hold_cut", level=logging.WARNING, reason="held_bytes",
                  held_bytes=held.bytes, held_lines=held.lines, limit_bytes=held.limit_bytes,
                  fingerprint=self.membership.fingerprint)
        self.release_all()

    def switch_to(self, membership: Membership, added: dict[int, Forwarder],
                  change: MembershipChange) -> list[Forwarder]:
        """Route by ``membership`` from now on (while holding): kept forwarders move to
        their new positions, with their aggregators' states; ``added`` (by new index) join;
        the removed ones are returned, detached (they drain what they queued). The lines
        still queued for the old list are counted in `late_lines`: they reach their
        aggregators after the boundary (docs/proxy.md, "Changing the aggregator list")."""
        old, kept = self.membership, self.forwarders
        self.late_lines += sum(forwarder.queued_lines for forwarder in kept)
        placed = {new_index: added[new_index] for new_index in change.added}
        for old_index, new_index in change.kept:
            forwarder = kept[old_index]
            membership.states[new_index] = old.states[old_index]
            forwarder.index, forwarder.membership = new_index, membership
            placed[new_index] = forwarder
        forwarders = [placed[i] for i in range(len(membership))]
        removed = [kept[i] for i in change.removed]
        self.router.reshard(len(membership))
        self.membership, self.forwarders = membership, forwarders
        self.tail_since.clear()
        for forwarder in forwarders:
            self._attach(forwarder)
            if forwarder.worker_ports:
                self.router.set_workers(forwarder.index, len(forwarder.worker_ports))
        for forwarder in removed:
            forwarder.on_workers = forwarder._apply_ports
            if isinstance(forwarder, UdpForwarder):
                forwarder.worker_of = lambda chunk: MAIN  # any worker re-checks
        self.retired += removed
        self.scheduled = None
        self.switches += 1
        return removed

    def forget_retired(self, forwarder: Forwarder) -> None:
        """A retired forwarder drained and closed: keep only its counts (in `closed`), so
        `retired` does not grow with every change."""
        if forwarder not in self.retired:
            return
        self.retired.remove(forwarder)
        stats = forwarder.statistics()
        closed = self.closed.setdefault(stats.aggregator, ClosedForwarder(
            name=stats.aggregator, address=stats.address))
        closed.sent_lines += forwarder.sent_lines
        for reason, lines in forwarder.dropped.items():
            closed.dropped_lines[reason] = closed.dropped_lines.get(reason, 0) + lines

    def release_all(self) -> None:
        """Route everything held by the list in force, in one pass (bounded by the hold's
        cap, so intake cannot keep it from emptying), then route intake as it comes."""
        held = self.held
        if held is None:
            return
        self.held = None
        batch = held.take_all()
        if batch:
            self.router.route_many(batch)
            self.dispatch()

    # -- what it reports ------------------------------------------------------------------

    def readings(self) -> list[Reading]:
        """Every component's figures, named (module docstring)."""
        out = [*read("proxy", "membership", self.membership.statistics()),
               *read("proxy", "membership", self.switch_statistics()),
               *read("proxy", "router", self.router.statistics()),
               *read("proxy", "intake", self.intake.statistics())]
        if self.auth is not None:
            out += read("proxy", "auth", self.auth.statistics())
        out += read("proxy", "forwarders", self.statistics())
        for forwarder in self.forwarders:
            out += read("proxy", "forwarder", forwarder.statistics(),
                        instance=str(forwarder.index))
        return out

    def switch_statistics(self) -> SwitchStatistics:
        scheduled = self.scheduled
        return SwitchStatistics(
            scheduled=scheduled.new_fingerprint if scheduled else "none",
            scheduled_at=scheduled.at if scheduled else 0.0, switches=self.switches,
            held_packets=len(self.held) if self.held is not None else 0,
            held_lines=self.held_lines, hold_cuts=self.hold_cuts, late_lines=self.late_lines)

    @property
    def held_lines(self) -> int:
        """Lines received during a list change's hold, not yet routed."""
        return self.held.lines if self.held is not None else 0

    def statistics(self) -> ForwardersStatistics:
        """The totals of this process so far (`ForwardersStatistics`)."""
        return ForwardersStatistics(
            sent_lines=sum(forwarder.sent_lines
                           for forwarder in [*self.forwarders, *self.retired])
            + sum(closed.sent_lines for closed in self.closed.values()),
            dropped_lines=self.tally_drops()[0])

    def tally_drops(self) -> tuple[dict[str, int], dict[str, int]]:
        """Every drop of this process so far, in lines: by reason (all aggregators summed),
        and per aggregator (``aggregator_<index>``, only those that dropped any)."""
        totals = dict(self.router.statistics().dropped_lines)
        per: dict[str, int] = {}
        for forwarder in [*self.forwarders, *self.retired]:
            dropped = forwarder.dropped
            for reason, lines in dropped.items():
                totals[reason] = totals.get(reason, 0) + lines
            if sum(dropped.values()):
                key = "retired" if forwarder in self.retired else f"aggregator_{forwarder.index}"
                per[key] = per.get(key, 0) + sum(dropped.values())
        for closed in self.closed.values():
            for reason, lines in closed.dropped_lines.items():
                totals[reason] = totals.get(reason, 0) + lines
            if sum(closed.dropped_lines.values()):
                per["retired"] = per.get("retired", 0) + sum(closed.dropped_lines.values())
        return totals, per

    async def run_drop_reporter(self) -> None:
        """Log the drops by reason that are new since the last report, until cancelled."""
        reported: dict[str, int] = {}
        while True:
            await trio.sleep(DROP_LOG_PERIOD_SECONDS)
            totals, per = self.tally_drops()
            new = {k: v - reported.get(k, 0) for k, v in totals.items()
                   if v > reported.get(k, 0)}
            if new:
                log_event(LOGGER, "lines_dropped", level=logging.WARNING,
                          **dict(sorted(new.items())), **per)
            reported = totals
