"""Ports on 127.0.0.1: finding free ones, and the kernel's view of a UDP port.

Daemons under test bind port 0 and report what they got wherever they can; `free_port` is for
the ones that cannot (Etsy statsd, proxy.js, carbon-cache), and is racy by nature: a port free
a moment ago may be taken by the time the daemon binds it, so callers retry on EADDRINUSE.
`udp_port_state` reads ``/proc/net/udp`` (Linux) for a port's receive queue and drop count.

SHELL (sockets, /proc).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Literal

from common.netstat import udp_rows

#: Attempts at finding a port that is free for TCP and UDP at once.
FREE_PORT_BOTH_ATTEMPTS = 50

Kind = Literal["tcp", "udp"]


def free_port(kind: Kind = "tcp", *, host: str = "127.0.0.1") -> int:
    """A ``kind`` port on ``host`` that was free a moment ago."""
    sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, sock_type) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_both(*, host: str = "127.0.0.1") -> int:
    """A port on ``host`` free for TCP and UDP alike (a StatsD port takes both).

    Raises:
        OSError: no such port was found in `FREE_PORT_BOTH_ATTEMPTS` tries.
    """
    for _ in range(FREE_PORT_BOTH_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        return port
    raise OSError(f"no port on {host} free for both TCP and UDP")


def split_host_port(address: str) -> tuple[str, int]:
    """``127.0.0.1:8125`` or ``[::1]:8125`` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class UdpPortState:
    """The kernel's figures for the UDP sockets bound to one port, summed over them (worker
    sockets sharing a port with SO_REUSEPORT count together)."""

    sockets: int
    queued_bytes: int
    drops: int


def udp_port_state(port: int) -> UdpPortState:
    """The sockets bound to UDP ``port`` on this host, their queued bytes and kernel drops."""
    wanted = f":{port:04X}"
    sockets = queued = drops = 0
    for cols in udp_rows():
        if cols[1].endswith(wanted):
            sockets += 1
            queued += int(cols[4].split(":")[1], 16)
            drops += int(cols[-1])
    return UdpPortState(sockets, queued, drops)


def udp_port_bound(port: int) -> bool:
    """True if some socket is bound to UDP ``port``."""
    return udp_port_state(port).sockets > 0
