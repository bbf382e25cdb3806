"""Readiness for systemd's ``Type=notify``: one datagram to ``$NOTIFY_SOCKET``.

systemd's protocol (sd_notify(3)) is a newline-separated ``KEY=VALUE`` message sent as one
datagram to the AF_UNIX socket named by ``NOTIFY_SOCKET`` (a leading ``@`` names an abstract
socket). Written here in a few lines rather than taken from libsystemd or a binding: a
daemon that is not started by systemd has no ``NOTIFY_SOCKET`` and sends nothing.

The daemons send ``READY=1`` once every socket is bound and serving (the aggregator's
supervisor once every worker reported ready; each proxy process, so its unit sets
``NotifyAccess=all``; the ring agent once it listens). deploy/systemd/ has the units.

SHELL (a socket).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Final

from .logging import log_event

LOGGER = logging.getLogger(__name__)

#: The environment variable systemd sets for a ``Type=notify`` service.
NOTIFY_SOCKET_ENV: Final = "NOTIFY_SOCKET"
READY: Final = "READY=1"


def notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` to the service manager; False when there is none or it failed.

    A failure is logged (``event=notify_failed``) and never raised: the daemon serves on
    whether or not anyone listens.
    """
    address = (os.environ if environ is None else environ).get(NOTIFY_SOCKET_ENV, "")
    if not address:
        return False
    if address[0] not in "/@":
        log_event(LOGGER, "notify_failed", level=logging.WARNING, socket=address,
                  error="not an AF_UNIX socket path")
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), target)
    except OSError as e:
        log_event(LOGGER, "notify_failed", level=logging.WARNING, socket=address,
                  error=e.strerror or str(e))
        return False
    return True
