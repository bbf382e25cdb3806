"""Unix signals, turned into calls in one place (never doing the work in a handler).

* SIGTERM, SIGINT: ``on_stop()``, the graceful stop. A second SIGINT (Ctrl-C twice) calls
  ``on_force()``; a repeated SIGTERM is only logged, since supervisors and wrappers such as
  timeout(1) may deliver it twice and the graceful stop is already bounded by its deadline.
* SIGHUP: ``on_reload()``.

SHELL: must run in the main thread (trio.open_signal_receiver requires it).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio

from .logging import log_event

LOGGER = logging.getLogger(__name__)


async def run_signal_handler(*, on_stop: Callable[[], None], on_force: Callable[[], None],
                             on_reload: Callable[[], None]) -> None:
    """Dispatch signals until cancelled."""
    stopping = False
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            log_event(LOGGER, "signal", signal=name)
            if signum == signal.SIGHUP:
                on_reload()
            elif stopping:
                if signum == signal.SIGINT:
                    on_force()
            else:
                stopping = True
                on_stop()
