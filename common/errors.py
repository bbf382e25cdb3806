"""The exceptions tallyd raises, under one base class.

Each carries a machine-readable ``reason`` (or ``key``) so callers count and route errors
without parsing messages.
"""

from __future__ import annotations


class StatsdError(Exception):
    """Base class of every error tallyd raises on purpose."""


class ParseError(StatsdError):
    """A StatsD line (or one value segment of it) that cannot be used.

    Attributes:
        reason: a short snake_case name, used as the drop reason in counters and logs
            (``missing_value``, ``missing_type``, ``unknown_type``, ``bad_value``,
            ``bad_sample_rate``, ``negative_timer``, ``empty_key``, ``line_too_long``,
            ``bad_token``).
        line: the offending line, as received.
    """

    def __init__(self, reason: str, line: bytes, detail: str = "") -> None:
        self.reason = reason
        self.line = line
        self.detail = detail
        text = f"{reason}: {line[:200]!r}"
        if detail:
            text += f" ({detail})"
        super().__init__(text)


def find_config_error(exc: BaseException) -> ConfigError | None:
    """The `ConfigError` inside ``exc``, if any (trio wraps task errors in exception groups)."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_config_error(inner)
            if found is not None:
                return found
    return None


class ConfigError(StatsdError):
    """A configuration value (file, flag or mapping) that cannot be accepted.

    Attributes:
        key: the config key at fault, when there is one.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)
