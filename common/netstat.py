"""Kernel-side drop counters of our own UDP sockets, read from /proc/net/udp{,6}.

When a UDP receive buffer overflows, the kernel drops datagrams before any program sees
them; the only trace is the ``drops`` column of the socket's row in /proc/net/udp. Reading
it (matched by the socket's inode) turns that silent loss into a counted one.

SHELL (reads /proc). Linux only: elsewhere the count is None.
"""

from __future__ import annotations

import os
import socket


def udp_socket_drops(sock: socket.socket) -> int | None:
    """The kernel's drop count for ``sock`` (a UDP socket), or None if unavailable."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return None
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for row in f:
                    cols = row.split()
                    if len(cols) >= 13 and cols[9] == inode:
                        return int(cols[-1])
        except OSError:
            continue
    return None
