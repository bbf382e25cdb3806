"""Unix signals, turned into calls in one place (never doing the work in a handler).

Every process of every role (a daemon, a worker, a supervisor) reads its signals here:

* SIGTERM, SIGINT: ``on_stop()``, the graceful stop. A second SIGINT (Ctrl-C twice) calls
  ``on_force()`` (a supervisor has none: its children get the Ctrl-C too); a repeated
  SIGTERM is only logged, since supervisors and wrappers such as timeout(1) may deliver it
  twice and the graceful stop is already bounded by its deadline.
* SIGHUP: ``on_reload()``.

SHELL: must run in the main thread (trio.open_signal_receiver requires it).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .errors import find_config_error
from .logging import log_event

LOGGER = logging.getLogger(__name__)


async def run_signal_handler(
    *,
    on_stop: Callable[[], None],
    on_reload: Callable[[], None],
    on_force: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Dispatch signals until cancelled; ``task_status.started()`` once they are ours (a
    signal that comes after it is never a death by its default action)."""
    stopping = False
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            log_event(LOGGER, "signal", signal=signal.Signals(signum).name)
            if signum == signal.SIGHUP:
                on_reload()
            elif stopping:
                if signum == signal.SIGINT and on_force is not None:
                    on_force()
            else:
                stopping = True
                on_stop()


def force_exit() -> None:
    """The second Ctrl-C: exit at once, without the graceful stop's final flush."""
    log_event(LOGGER, "forced_exit", level=logging.WARNING)
    os._exit(1)


def ignore_stop_signal() -> None:
    """Once a process has stopped: a late duplicate SIGTERM (service managers signal the
    whole process group) must not turn its clean exit into a death by signal."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_until_stopped(main: Callable[..., Awaitable[None]], *args: Any) -> int:
    """``trio.run(main, *args)`` for a daemon's entry point: a `ConfigError` raised inside
    (even wrapped in an exception group) comes out as itself, for the CLI's one-line error
    and exit code; once it has stopped, a late duplicate SIGTERM is ignored. Returns 0."""
    try:
        trio.run(main, *args)
    except (Exception, KeyboardInterrupt) as exc:
        error = find_config_error(exc)
        if error is None:
            raise
        raise error from None
    ignore_stop_signal()
    return 0
