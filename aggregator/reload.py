"""What a reload (SIGHUP) changes on an aggregator: every changed setting, classified.

A setting's ``reloadable`` metadata (`common.config.setting`) says when a new value takes
effect:

* ``True``, at once: the naming and the timer statistics, the idle-name rules, the
  self-metrics switch, ``log_level``, and the auth tokens (``auth_tokens``,
  ``auth_revoked_tokens``). The next flush renders with them, the next line is checked
  against the new tokens.
* `RELOAD_AT_FLUSH`, at the next flush boundary: the Carbon ring (``carbon``,
  ``ring_hash``, ``ring_tag_key``, ``replication_factor``). The interval in progress is
  placed on the old ring and the next one on the new ring, so one interval's point of a
  path is written to one placement, never split between two (`aggregator.flusher`
  applies it right after a flush is handed to the backends).
* ``False``: a restart is required. The old value stays in force, and the reload says so
  (``event=reload_refused setting=X reason=restart_required``), every time it is seen.

Two ring changes are refused although the ring is reloadable: from no Carbon node to some,
and from some to none. The Carbon output is built (or not) when the aggregator starts.

Pure: no I/O; `plan_reload` takes both configs and returns the plan.
"""

from __future__ import annotations

from typing import Final

import attrs

from common.auth import TokenAuth
from common.config import RELOAD_AT_FLUSH
from common.errors import ConfigError
from common.ring import Ring

from .config import AggregatorConfig, carbon_ring

#: The reason logged for every refused setting (``reason=restart_required``).
RESTART_REQUIRED: Final = "restart_required"


@attrs.frozen
class Refusal:
    """A changed setting the reload does not apply (the old value stays)."""

    setting: str
    detail: str


@attrs.frozen
class ReloadPlan:
    """What one reload does.

    Args:
        config: the configuration in force once the plan is carried out: the old one with
            every accepted change (at once and at the flush boundary), refused ones left out.
        at_once: the changed settings applied now, in declaration order.
        at_flush: the changed ring settings, applied at the next flush boundary.
        refused: the changed settings that need a restart.
        ring: the new Carbon ring when it places paths differently from the old one (by
            fingerprint); None when the ring stays (also when only its spelling changed).
        target: the Carbon ring of ``config`` (None without Carbon nodes): what the output
            must be on once the next flush boundary is passed.
    """

    config: AggregatorConfig
    at_once: tuple[str, ...] = ()
    at_flush: tuple[str, ...] = ()
    refused: tuple[Refusal, ...] = ()
    ring: Ring | None = None
    target: Ring | None = None

    @property
    def changed(self) -> bool:
        """Whether anything differs from the old configuration."""
        return bool(self.at_once or self.at_flush or self.refused)


def changed_settings(old: AggregatorConfig, new: AggregatorConfig) -> list[str]:
    """The names of the settings whose values differ, in declaration order."""
    return [f.name for f in attrs.fields(AggregatorConfig)
            if getattr(new, f.name) != getattr(old, f.name)]


def plan_reload(old: AggregatorConfig, new: AggregatorConfig) -> ReloadPlan:
    """Classify every setting that differs between ``old`` (in force) and ``new`` (read).

    Raises:
        ConfigError: the new ring cannot be built (the CLI's checks normally catch it first).
    """
    fields = {f.name: f for f in attrs.fields(AggregatorConfig)}
    at_once: list[str] = []
    at_flush: list[str] = []
    refused: list[Refusal] = []
    ring_refusal = _ring_refusal(old, new)
    for name in changed_settings(old, new):
        when = fields[name].metadata["reloadable"]
        if when is True:
            at_once.append(name)
        elif when == RELOAD_AT_FLUSH and ring_refusal is None:
            at_flush.append(name)
        elif ring_refusal is not None and when == RELOAD_AT_FLUSH:
            refused.append(Refusal(name, ring_refusal))
        else:
            refused.append(Refusal(name, "not reloadable"))
    config = attrs.evolve(old, **{name: getattr(new, name) for name in (*at_once, *at_flush)})
    target = carbon_ring(config) if config.carbon else None
    ring = None
    if at_flush and target is not None and target.fingerprint() != carbon_ring(old).fingerprint():
        ring = target
    return ReloadPlan(config=config, at_once=tuple(at_once), at_flush=tuple(at_flush),
                      refused=tuple(refused), ring=ring, target=target)


def _ring_refusal(old: AggregatorConfig, new: AggregatorConfig) -> str | None:
    """Why the ring settings cannot change without a restart, or None if they can."""
    if not old.carbon and new.carbon:
        return "no Carbon output was started (carbon was empty at start)"
    if old.carbon and not new.carbon:
        return "the Carbon output cannot be removed (carbon would be empty)"
    return None


def tokens_for(config: AggregatorConfig) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """The valid and revoked token sets of ``config``, as `common.auth.TokenAuth` holds
    them (a reload of an aggregator with ``auth = "token"`` puts them in place).

    Raises:
        ConfigError: a malformed token, one both valid and revoked, or no valid one.
    """
    auth = TokenAuth(config.auth_tokens, config.auth_revoked_tokens)
    if not auth.valid:
        raise ConfigError('auth = "token" needs at least one token in auth_tokens',
                          key="auth_tokens")
    return auth.valid, auth.revoked
