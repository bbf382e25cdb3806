"""DNS re-resolution of aggregator names, so a moved aggregator is followed without restart.

statsdcc resolved its destinations once, at start. Here every aggregator given by name is
looked up again every ``resolve_interval`` seconds; when the first address returned
changes, its forwarder sends to the new one (UDP: new connected sockets; TCP: a new
connection). The aggregator's *position* in the list is unchanged, so no metric name moves.
A failed look-up keeps the last good address (and is logged); an aggregator that never
resolved is down (``unresolved``) and its lines are buffered.

SHELL.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Any

import trio

from common.address import format_host_port
from common.logging import log_event

from .forwarders.base import Forwarder

LOGGER = logging.getLogger(__name__)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    """The first address ``host:port`` resolves to: ``(family, sockaddr)``.

    Raises:
        OSError: (``socket.gaierror``) when the name does not resolve.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise socket.gaierror(f"no address for {host}")
    family, _, _, _, sockaddr = infos[0]
    return int(family), tuple(sockaddr)


async def resolve_one(forwarder: Forwarder) -> bool:
    """Look up one forwarder's aggregator and apply a changed address; True on success."""
    spec = forwarder.spec
    try:
        family, sockaddr = await resolve(spec.host, spec.port)
    except OSError as e:
        log_event(LOGGER, "resolve_failed", level=logging.WARNING, aggregator=spec.spec,
                  error=str(e), keeping=forwarder.sockaddr[0] if forwarder.sockaddr else "none")
        if forwarder.sockaddr is None:
            forwarder.fail("unresolved")
        return False
    address = format_host_port(str(sockaddr[0]), int(sockaddr[1]))
    if forwarder.membership.set_address(forwarder.index, address):
        if forwarder.sockaddr is not None:
            log_event(LOGGER, "aggregator_address_changed", index=forwarder.index,
                      aggregator=spec.spec, address=address)
        forwarder.set_address(family, sockaddr)
    return True


async def run_resolver(forwarders: Sequence[Forwarder], *, interval: float) -> None:
    """Re-resolve every named aggregator each ``interval`` seconds, until cancelled."""
    named = [f for f in forwarders if not is_ip_literal(f.spec.host)]
    if not named:
        return
    while True:
        await trio.sleep(interval)
        for forwarder in named:
            await resolve_one(forwarder)
