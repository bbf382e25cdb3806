"""Simple clients of a daemon's ports: datagrams to a UDP listener, and one command to the
Etsy-style management port. (`harness.wire` has the careful intake clients that never lose
a byte themselves.)

SHELL (sockets).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable

import trio


def mgmt_command(address: tuple[str, int], command: str, *, timeout: float = 2.0) -> str:
    """Send one Etsy-style management command and return the reply received within ``timeout``.

    The reply is read until the server closes, ``END\\n\\n`` arrives, or (for ``health`` and
    ``workers``, one-line answers) the first line is complete.
    """
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(command.encode() + b"\n")
        reply = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            reply += chunk
            one_line = command.startswith(("health", "workers"))
            if reply.endswith(b"END\n\n") or (one_line and b"\n" in reply):
                break
        return reply.decode("utf-8", "replace")


def send_udp(address: tuple[str, int], datagrams: Iterable[bytes]) -> None:
    """Send each datagram to ``address``, which must be on loopback."""
    host, _ = address
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"tests only send to loopback, not {host}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams:
            sock.sendto(datagram, address)


async def mgmt_stats(address: str) -> dict[str, str]:
    """The management ``stats`` reply of ``HOST:PORT`` as a dict, from inside trio (tests
    that run a daemon's ``serve()`` in-process)."""
    host, _, port = address.rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"stats\n")
        reply = b""
        while not reply.endswith(b"END\n\n"):
            reply += await stream.receive_some(65_536)
    return dict(line.split(": ", 1) for line in reply.decode().splitlines() if ": " in line)
