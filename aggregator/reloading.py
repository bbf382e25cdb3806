"""Reloads (SIGHUP): apply each reloaded configuration to a running aggregator.

`aggregator.reload` (core) decides what a reload changes; `run_reloads` carries it out:
the settings applied at once (naming, ledger options, log level, tokens), the Carbon ring
at the next flush boundary (`aggregator.flusher.Flusher.at_next_boundary`,
`aggregator.backends.carbon.CarbonOutput.change_ring_at_boundary`), and a log line for
every refused change.

SHELL.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

from common.errors import ConfigError
from common.logging import log_event, set_level

from .admin import AggregatorAdmin
from .components import Components
from .config import AggregatorConfig
from .flusher import Flusher
from .mgmt import AggregatorMgmt
from .reload import RESTART_REQUIRED, plan_reload, tokens_for

LOGGER = logging.getLogger(__name__)


async def run_reloads(
    reload_trigger: Callable[[], Awaitable[AggregatorConfig]],
    config: AggregatorConfig,
    flusher: Flusher,
    components: Components,
    *,
    on_applied: Callable[[AggregatorConfig], None] | None = None,
) -> None:
    """Apply each reloaded config as `aggregator.reload.plan_reload` classifies it: the
    settings applied at once now, a changed Carbon ring at the next flush boundary, and
    every other change refused (logged; the old value stays). A config that cannot be
    applied is refused whole (``reload_failed``) and the one in force stays.
    ``on_applied`` gets the config now in force after each reload (what the management
    ``config`` command and /status show)."""
    current = config
    worker = components.exchange.context.index if components.exchange is not None else 0
    while True:
        new = await reload_trigger()
        try:
            plan = plan_reload(current, new)
            tokens = tokens_for(plan.config) if components.auth is not None else None
        except ConfigError as e:
            log_event(LOGGER, "reload_failed", level=logging.ERROR, worker=worker, error=str(e))
            continue
        for refusal in plan.refused:
            log_event(LOGGER, "reload_refused", level=logging.WARNING, setting=refusal.setting,
                      reason=RESTART_REQUIRED, worker=worker, detail=refusal.detail)
        current = plan.config
        flusher.reconfigure(current.naming, self_metrics=current.self_metrics)
        components.accumulator.reconfigure(current.ledger_options)
        set_level(current.log_level)
        if components.auth is not None and tokens is not None:
            # The intake reads these sets on every packet: the next one meets the new tokens.
            components.auth.valid, components.auth.revoked = tokens
        carbon, target = components.carbon, plan.target
        if carbon is not None and target is not None:
            # The output moves to the config's ring at the next boundary: when the ring
            # changed (the latest reload replaces a ring still waiting, even to go back to
            # the one in force), or when it is not the one in force yet (a change that failed
            # at its boundary is tried again).
            live = carbon.placement.ring.fingerprint()
            if target.fingerprint() != live:
                log_event(LOGGER, "ring_scheduled", old=live, new=target.fingerprint(),
                          worker=worker)
            if plan.ring is not None or target.fingerprint() != live:
                flusher.at_next_boundary("ring", partial(carbon.change_ring_at_boundary,
                                                         target, worker=worker))
        if on_applied is not None:
            on_applied(current)
        log_event(LOGGER, "reloaded", worker=worker, applied=",".join(plan.at_once) or "none",
                  at_next_flush=",".join(plan.at_flush) or "none",
                  refused=",".join(r.setting for r in plan.refused) or "none",
                  level=logging.WARNING if plan.refused else logging.INFO)


def show_config(mgmt: AggregatorMgmt, admin: AggregatorAdmin, config: AggregatorConfig
                ) -> None:
    """The management console's ``config`` and /status show a reloaded config."""
    mgmt.config = config
    admin.reconfigure(config)
