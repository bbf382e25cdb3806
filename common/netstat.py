"""Kernel-side facts about our sockets: UDP drop counters from /proc/net/udp{,6}, sysctls.

When a UDP receive buffer overflows, the kernel drops datagrams before any program sees
them; the only trace is the ``drops`` column of the socket's row in /proc/net/udp. Reading
it (matched by the socket's inode) turns that silent loss into a counted one.

SHELL (reads /proc). Linux only: elsewhere the count is None.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator


def udp_rows() -> Iterator[list[str]]:
    """The rows of /proc/net/udp and /proc/net/udp6, split into columns (none elsewhere).

    Columns used here and by the tests and benchmarks: 1 local address (``IP:PORT``, port in
    hex), 4 ``tx_queue:rx_queue`` (hex bytes), 9 inode, last ``drops``.
    """
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for row in f:
                    cols = row.split()
                    if len(cols) >= 13:
                        yield cols
        except OSError:
            continue


def udp_socket_drops(sock: socket.socket) -> int | None:
    """The kernel's drop count for ``sock`` (a UDP socket), or None if unavailable."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return None
    for cols in udp_rows():
        if cols[9] == inode:
            return int(cols[-1])
    return None


def udp_drops_total(socks: Iterable[socket.socket]) -> int:
    """The kernel's drop counts of ``socks`` (UDP sockets) summed; 0 where unavailable."""
    return sum(udp_socket_drops(sock) or 0 for sock in socks)


def read_sysctl(name: str, *, root: str = "/proc/sys") -> int | None:
    """An integer kernel setting, e.g. ``read_sysctl("net/unix/max_dgram_qlen")``; None
    when it cannot be read (not Linux, or hidden in a container)."""
    try:
        with open(os.path.join(root, name), encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
