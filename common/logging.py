"""Logging as ``key=value`` lines on stderr (logfmt), in one place for every role.

Call sites log an event name and fields::

    log_event(LOGGER, "listening", kind="udp", address="127.0.0.1:8125")
    -> ts=2026-11-21T12:00:00.123Z level=info logger=common.listener event=listening
       kind=udp address=127.0.0.1:8125   (one line)

Values with spaces, quotes or ``=`` are quoted. Nothing here is on a per-packet path:
bad lines are counted per packet and logged at a bounded rate by the caller.

SHELL: configures the process-wide ``logging`` module.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final

_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO,
                  "warning": logging.WARNING, "error": logging.ERROR}


def _quote(value: Any) -> str:
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    # unicode_escape turns newlines, tabs and other non-printables into \n, \t, \xNN.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                      for c in escaped)
    return '"' + escaped + '"'


def format_fields(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


class LogfmtFormatter(logging.Formatter):
    """Formats records as logfmt; ``extra={"fields": {...}}`` supplies the key=values."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        level = record.levelname.lower()
        head = f"ts={ts}.{int(record.msecs):03d}Z level={level} logger={record.name}"
        fields = getattr(record, "fields", None)
        body = format_fields(fields) if fields else f"msg={_quote(record.getMessage())}"
        if record.exc_info:
            body += " exc=" + _quote(self.formatException(record.exc_info))
        return f"{head} {body}"


def configure_logging(level: str = "info") -> None:
    """Send every logger's records to stderr as logfmt at ``level``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))


def set_level(level: str) -> None:
    logging.getLogger().setLevel(_LEVELS.get(level, logging.INFO))


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO,
              **fields: Any) -> None:
    """Log ``event`` with ``fields`` as one logfmt line."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": {"event": event, **fields}})


class RateLimiter:
    """Allows at most ``per_second`` events per second; counts the ones it suppresses.

    Args:
        per_second: events let through in any one-second window.
        clock: a function returning seconds (injected so tests control time).
    """

    def __init__(self, per_second: int, clock: Any = time.monotonic) -> None:
        self.per_second = per_second
        self._clock = clock
        self._window = -1.0
        self._used = 0
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._clock()
        if now - self._window >= 1.0:
            self._window, self._used = now, 0
        if self._used < self.per_second:
            self._used += 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count
