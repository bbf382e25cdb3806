"""Clients for a daemon's four intake transports, careful never to lose a byte themselves.

A test that checks a daemon's counts must know that every byte it sent reached the daemon's
socket; the clients here make sure of it, so a count that is off is the daemon's:

* UDP: before each datagram, wait while the daemon's socket queue (``rx_queue`` in
  /proc/net/udp) holds more than ``udp_queue_limit`` bytes; `Wire.udp_burst` waits for an
  empty queue, then sends a whole burst back to back (for bursts the daemon must read in
  one go). Whether the kernel dropped anything anyway is `Wire.udp_drops`.
* unixgram: a blocking socket (the kernel queue of a Unix datagram socket is short,
  ``net.unix.max_dgram_qlen``; a blocking sender waits instead of losing datagrams).
* TCP and Unix streams: ``sendall``, then the end of the stream: a FIN (``close``), or a reset
  (``SO_LINGER`` 0) sent only once the daemon's kernel has acknowledged every byte
  (``TIOCOUTQ`` 0): bytes acknowledged are in its receive queue, and Linux still delivers
  them before reporting the reset.

Every socket has a timeout, so a daemon that stops reading fails the test instead of hanging it.

SHELL (sockets).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from collections.abc import Iterable

from harness.port import udp_port_state

#: How long one send may wait for the daemon to make room.
SEND_TIMEOUT_SECONDS = 20.0
#: Default bound on the daemon's UDP queue before the next datagram is sent.
UDP_QUEUE_LIMIT_BYTES = 4 * 1024 * 1024


class WireError(RuntimeError):
    """The daemon did not take what was sent in time."""


class Wire:
    """Senders to one daemon's ``udp``, ``tcp``, ``unix`` and ``unixgram`` listeners.

    Args:
        udp, tcp: ``(host, port)`` of the listeners (loopback).
        unix, unixgram: socket paths.
        udp_queue_limit: see `UDP_QUEUE_LIMIT_BYTES`.
    """

    def __init__(self, *, udp: tuple[str, int], tcp: tuple[str, int], unix: str, unixgram: str,
                 udp_queue_limit: int = UDP_QUEUE_LIMIT_BYTES) -> None:
        self.udp_address = udp
        self.tcp_address = tcp
        self.unix_path = unix
        self.unixgram_path = unixgram
        self.udp_queue_limit = udp_queue_limit
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        self._unixgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._unixgram.settimeout(SEND_TIMEOUT_SECONDS)
        self.bytes_sent = 0

    def close(self) -> None:
        self._udp.close()
        self._unixgram.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- datagrams ---------------------------------------------------------------------------

    def udp_state(self) -> tuple[int, int]:
        state = udp_port_state(self.udp_address[1])
        if not state.sockets:
            raise WireError(f"no UDP socket on port {self.udp_address[1]}")
        return state.queued_bytes, state.drops

    def udp_drops(self) -> int:
        """Datagrams the kernel dropped at the daemon's UDP socket (its queue was full)."""
        return self.udp_state()[1]

    def wait_udp_queue(self, limit: int, timeout: float = SEND_TIMEOUT_SECONDS) -> None:
        """Block until the daemon's UDP queue holds at most ``limit`` bytes."""
        deadline = time.monotonic() + timeout
        while self.udp_state()[0] > limit:
            if time.monotonic() > deadline:
                raise WireError(f"the daemon's UDP queue stayed above {limit} bytes for "
                                f"{timeout}s: {self.udp_state()}")
            time.sleep(0.002)

    def udp(self, datagram: bytes) -> None:
        self.wait_udp_queue(self.udp_queue_limit)
        self._udp.sendto(datagram, self.udp_address)
        self.bytes_sent += len(datagram)

    def udp_burst(self, datagrams: Iterable[bytes]) -> None:
        """Wait for an empty queue, then send every datagram without a pause."""
        self.wait_udp_queue(0)
        for datagram in datagrams:
            self._udp.sendto(datagram, self.udp_address)
            self.bytes_sent += len(datagram)

    def unixgram(self, datagram: bytes) -> None:
        self._unixgram.sendto(datagram, self.unixgram_path)
        self.bytes_sent += len(datagram)

    # -- streams -----------------------------------------------------------------------------

    def stream(self, kind: str, chunks: Iterable[bytes], *, reset: bool = False) -> None:
        """Connect to the ``tcp`` or ``unix`` listener, send ``chunks``, end the stream.

        Args:
            reset: end with a reset instead of a FIN (after every byte is acknowledged).
        """
        if kind == "tcp":
            sock = socket.create_connection(self.tcp_address, timeout=SEND_TIMEOUT_SECONDS)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(SEND_TIMEOUT_SECONDS)
            sock.connect(self.unix_path)
        with sock:
            for chunk in chunks:
                sock.sendall(chunk)
                self.bytes_sent += len(chunk)
            if reset and kind == "tcp":
                deadline = time.monotonic() + SEND_TIMEOUT_SECONDS
                while _unacknowledged(sock):
                    if time.monotonic() > deadline:
                        raise WireError("the daemon did not acknowledge a TCP stream")
                    time.sleep(0.002)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes of a TCP socket's send queue the peer has not acknowledged (Linux TIOCOUTQ)."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0])
