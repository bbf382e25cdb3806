"""Reloads: apply a re-read configuration, and change the aggregator list at its instant.

`Reloader.apply` compares the configuration in force with the new one
(`proxy.config.classify_reload`): auth tokens and the log level apply at once; every setting
that needs a restart is refused (``event=reload_refused setting=X
reason=restart_required``) and keeps its value; a changed aggregator list is scheduled at
the instant `proxy.schedule.switch_instant` computes (``event=membership_scheduled``).

The switch (`Reloader.run_switch`), one at a time:

1. at once: start a forwarder for each new aggregator (resolved, and with an admin port
   probed for its health and workers, as at start), routed nothing yet;
2. ``at - switch_guard``: the old list sends what it packed; intake is held;
3. ``at``: the new list is in force (``event=membership_changed``; the fingerprint in
   ``stats`` changes now); forwarders of aggregators in both lists are kept;
4. ``at + switch_guard``: the held lines are routed by the new list, then intake flows;
5. every removed aggregator's forwarder delivers its queue to the old address (for at
   most ``graceful_timeout``; what is left is dropped as ``retired``), then closes
   (``event=aggregator_retired``; a graceful stop after the instant ends it the same way),
   leaving only its counts (`proxy.pipeline.Pipeline.forget_retired`).

A change handed to a starting process (``serve(pending=...)``) is never refused: started
inside the guard it holds at once, after the instant it switches at once.

A reload that changes the list again before step 2 cancels the scheduled switch (its new
forwarders close; ``event=membership_schedule_cancelled``); from step 2 on, the switch
completes first.

SHELL.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

import attrs
import trio

from common.auth import TokenAuth
from common.errors import ConfigError
from common.logging import log_event, set_level

from .config import ProxyConfig, classify_reload
from .forwarders.base import RETIRED, Forwarder
from .membership import Membership
from .pipeline import Pipeline
from .schedule import MembershipChange, SwitchSchedule, plan_change, switch_instant

LOGGER = logging.getLogger(__name__)

#: How much longer than its ``2 * switch_guard`` a hold may last on trio's (monotonic)
#: clock: a wall clock stepped back would lengthen it otherwise.
HOLD_SLACK_SECONDS: Final = 0.05


class StartForwarders(Protocol):
    """Resolve and probe forwarders, then run each one's tasks in a cancel scope of its
    own, put in ``scopes`` (by ``id(forwarder)``) as soon as it runs."""

    def __call__(self, forwarders: Sequence[Forwarder],
                 scopes: dict[int, trio.CancelScope]) -> Awaitable[None]:
        ...


async def sleep_until_wall(wall_clock: Callable[[], float], t: float) -> None:
    """Return once the wall clock reads ``t`` or later."""
    while (left := t - wall_clock()) > 0:  # noqa: ASYNC110 (a deadline, not an event)
        await trio.sleep(left)


@attrs.define
class PendingSwitch:
    """A scheduled change of the list and what it has started so far."""

    config: ProxyConfig
    schedule: SwitchSchedule
    membership: Membership
    change: MembershipChange
    added: dict[int, Forwarder]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    staging: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    #: From the hold on: cancelled only by a graceful stop (which routes what is held).
    holding_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    holding: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)
    #: The removed aggregators' forwarders, from the instant on (retired even when a
    #: graceful stop cut the switch short after the instant).
    removed: list[Forwarder] = attrs.Factory(list)


class Reloader:
    """Applies reloaded configurations to one proxy process (module docstring).

    Args:
        config: the configuration in force.
        pipeline: the process's pipeline.
        nursery: where the switch and the new forwarders' tasks run.
        start_forwarders: see `StartForwarders`.
        scopes: the running forwarders' cancel scopes (to stop a removed one's tasks).
        wall_clock: epoch seconds.
        on_change: called with the new config after each reload and each switch (the
            management console shows it).
    """

    def __init__(self, config: ProxyConfig, pipeline: Pipeline, *, nursery: trio.Nursery,
                 start_forwarders: StartForwarders,
                 scopes: dict[int, trio.CancelScope], wall_clock: Callable[[], float],
                 on_change: Callable[[ProxyConfig, str], None] = lambda c, f: None) -> None:
        self.config = config
        self.pipeline = pipeline
        self.nursery = nursery
        self.start_forwarders = start_forwarders
        self.scopes = scopes
        self.wall_clock = wall_clock
        self.on_change = on_change
        #: The switch scheduled and not yet in its hold (a reload may still call it off).
        self.pending: PendingSwitch | None = None
        #: The switch running, until its held lines are routed.
        self.active: PendingSwitch | None = None

    async def run(self, reload_trigger: Callable[[], Awaitable[ProxyConfig]]) -> None:
        """Apply every configuration ``reload_trigger`` returns, until cancelled."""
        while True:
            await self.apply(await reload_trigger())

    async def apply(self, new: ProxyConfig, *, handed: bool = False) -> None:
        """Apply one reloaded configuration (module docstring); ``handed``: the change a
        supervisor scheduled before this process started, applied before intake runs (never
        refused: `switch_instant`; from its hold on, intake is held at once)."""
        pending = self.pending
        if pending is not None and pending.holding:
            await pending.done.wait()
            pending = self.pending
        target = pending.config if pending is not None else self.config
        changes = classify_reload(target, new)
        for name in changes.refused:
            log_event(LOGGER, "reload_refused", level=logging.WARNING, setting=name,
                      reason="restart_required")
        effective = changes.config
        self.apply_at_once(effective)
        outcome = "unchanged"
        if changes.aggregator_changed:
            outcome = self.reschedule(effective, handed=handed)
            if outcome == "refused":
                effective = attrs.evolve(effective, aggregator=target.aggregator)
        if self.pending is not None:
            self.pending.config = effective
        self.config = attrs.evolve(effective, aggregator=self.config.aggregator)
        self.on_change(self.config, self.pipeline.membership.fingerprint)
        log_event(LOGGER, "reloaded", applied=",".join(changes.applied) or "none",
                  aggregator=outcome, refused=",".join(changes.refused) or "none",
                  level=logging.WARNING if changes.refused else logging.INFO)

    def apply_at_once(self, config: ProxyConfig) -> None:
        """Tokens and the log level (the other settings applied at once are read when the
        next switch is scheduled)."""
        auth = self.pipeline.auth
        if auth is not None:
            fresh = TokenAuth(config.auth_tokens, config.auth_revoked_tokens)
            auth.valid, auth.revoked = fresh.valid, fresh.revoked  # its counters carry on
        set_level(config.log_level)

    def reschedule(self, config: ProxyConfig, *, handed: bool = False) -> str:
        """Schedule ``config``'s list (cancelling a switch not yet holding); return
        ``scheduled``, ``cancelled`` (back to the list in force) or ``refused``."""
        if config.aggregator == self.config.aggregator:
            if self.pending is not None:
                self.cancel(self.pending)
            return "cancelled"
        try:
            at = switch_instant(self.wall_clock(), interval=config.flush_interval,
                                requested=config.aggregators_from,
                                margin=config.switch_margin, guard=config.switch_guard,
                                refuse_passed=not handed)
        except ConfigError as e:
            log_event(LOGGER, "reload_refused", level=logging.ERROR, setting="aggregator",
                      reason="aggregators_from_passed", error=e.message)
            return "refused"
        if self.pending is not None:
            self.cancel(self.pending)
        old = self.pipeline.membership
        membership = Membership(config.aggregator, hash_mode=old.hash_mode,
                                now=trio.current_time())
        change = plan_change(old.aggregators, membership.aggregators)
        schedule = SwitchSchedule(at=at, guard=config.switch_guard,
                                  old_fingerprint=old.fingerprint,
                                  new_fingerprint=membership.fingerprint)
        added = {i: self.pipeline.build_forwarder(i, membership) for i in change.added}
        self.pending = PendingSwitch(config=config, schedule=schedule, membership=membership,
                                     change=change, added=added)
        self.pipeline.scheduled = schedule
        if handed and self.wall_clock() >= schedule.hold_from:
            self.pipeline.hold()  # before the intake's first line (run_switch holds too)
        self.nursery.start_soon(self.run_switch, self.pending)
        log_event(LOGGER, "membership_scheduled", at=f"{at:.3f}", old=old.fingerprint,
                  new=membership.fingerprint,
                  aggregators=",".join(a.spec for a in config.aggregator),
                  added=len(change.added), removed=len(change.removed))
        return "scheduled"

    def cancel(self, pending: PendingSwitch) -> None:
        """Call off a switch that is not holding yet: its new forwarders stop."""
        pending.scope.cancel()
        pending.staging.cancel()
        for forwarder in pending.added.values():
            scope = self.scopes.pop(id(forwarder), None)
            if scope is not None:
                scope.cancel()
            forwarder.close()
        self.pending = None
        self.pipeline.scheduled = None
        pending.done.set()
        log_event(LOGGER, "membership_schedule_cancelled", at=f"{pending.schedule.at:.3f}",
                  new=pending.schedule.new_fingerprint)

    async def stage(self, pending: PendingSwitch) -> None:
        """Step 1: the new forwarders. A switch does not wait for it: a forwarder still
        resolving or probing at the instant queues its lines and sends them when ready."""
        with pending.staging:
            await self.start_forwarders([pending.added[i] for i in sorted(pending.added)],
                                        self.scopes)

    async def run_switch(self, pending: PendingSwitch) -> None:
        """Steps 2-5 of the module docstring (step 1 runs beside it: `stage`)."""
        schedule = pending.schedule
        self.nursery.start_soon(self.stage, pending)
        with pending.scope:
            await sleep_until_wall(self.wall_clock, schedule.hold_from)
            pending.holding = True
        if not pending.holding:
            return
        self.active = pending
        try:
            with pending.holding_scope:
                await self.hold_and_switch(pending)
        finally:  # cancelled too (a graceful stop): every removed forwarder is retired
            self.active = None
            pending.done.set()
            for forwarder in pending.removed:
                self.nursery.start_soon(self.retire, forwarder)

    async def hold_and_switch(self, pending: PendingSwitch) -> None:
        """Steps 2-4 (the removed aggregators' forwarders in ``pending.removed``)."""
        schedule, pipeline = pending.schedule, self.pipeline
        pipeline.hold()
        # The wall clock may step back: trio's clock bounds the hold as well.
        began = trio.current_time()
        with trio.move_on_at(began + schedule.guard + HOLD_SLACK_SECONDS):
            await sleep_until_wall(self.wall_clock, schedule.at)
        late = pipeline.late_lines
        pending.removed = pipeline.switch_to(pending.membership, pending.added,
                                             pending.change)
        late = pipeline.late_lines - late
        self.config = pending.config
        self.pending = None
        self.on_change(self.config, pending.membership.fingerprint)
        log_event(LOGGER, "membership_changed", fingerprint=schedule.new_fingerprint,
                  old=schedule.old_fingerprint, at=f"{schedule.at:.3f}",
                  late_ms=round((self.wall_clock() - schedule.at) * 1000, 1), late_lines=late,
                  level=logging.WARNING if late else logging.INFO,
                  aggregators=",".join(a.spec for a in pending.membership.aggregators))
        with trio.move_on_at(began + 2 * schedule.guard + HOLD_SLACK_SECONDS):
            await sleep_until_wall(self.wall_clock, schedule.release_at)
        held = pipeline.held
        packets = held.total if held is not None else 0
        pipeline.release_all()
        log_event(LOGGER, "membership_released", held_packets=packets)

    async def retire(self, forwarder: Forwarder) -> None:
        """Let a removed aggregator's forwarder deliver its queue, then stop it: its tasks
        cancelled, its sockets closed, only its counts kept (`Pipeline.forget_retired`).
        Cancelled (the end of a graceful stop, which drained it already), it stops too."""
        try:
            with trio.move_on_after(self.config.graceful_timeout):
                while forwarder.queue or forwarder.busy:  # noqa: ASYNC110 (bounded drain)
                    await trio.sleep(0.01)
        finally:
            self.close_retired(forwarder)

    def close_retired(self, forwarder: Forwarder) -> None:
        left = forwarder.drop_all(RETIRED)
        scope = self.scopes.pop(id(forwarder), None)
        if scope is not None:
            scope.cancel()
        forwarder.close()
        self.pipeline.forget_retired(forwarder)
        log_event(LOGGER, "aggregator_retired", aggregator=forwarder.spec.spec,
                  sent_lines=forwarder.sent_lines, dropped_lines=left,
                  level=logging.WARNING if left else logging.INFO)

    def stop(self) -> None:
        """A graceful stop: a switch not holding yet is called off, one holding stops
        where it is (the stop routes the held lines by the list then in force:
        `Pipeline.release_all`)."""
        if self.pending is not None and not self.pending.holding:
            self.cancel(self.pending)
        if self.active is not None:
            self.active.holding_scope.cancel()

