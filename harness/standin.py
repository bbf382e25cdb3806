"""Stand-ins for a proxy's aggregators: UDP sinks that count lines, with admin ports.

A proxy under test forwards to them as to real aggregators; they only count the lines that
arrive and note the first and last arrival (so a rate is measured at the receiving side).
Each also answers ``health`` on a TCP admin port with ``health: up``, which Etsy's proxy.js
needs to keep a node in its ring. The receive buffers are 32 MiB (past ``net.core.rmem_max``
with ``SO_RCVBUFFORCE`` when running as root), so a burst is not lost here.

SHELL (sockets, threads).
"""

from __future__ import annotations

import selectors
import socket
import threading
import time

#: Linux's SO_RCVBUFFORCE, which Python's socket module does not export.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
#: Each sink's receive buffer.
RECEIVE_BUFFER_BYTES = 32 << 20
#: How often the receiving thread looks at its stop flag while idle.
POLL_SECONDS = 0.2


class AggregatorStandIns:
    """``count`` UDP sinks counting the lines they receive, each with an admin port that
    answers ``health: up``; one thread receives, one per admin port answers."""

    def __init__(self, count: int) -> None:
        self.udp = []
        self.admin = []
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:  # past net.core.rmem_max when running as root
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            self.udp.append(sock)
            admin = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            admin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            admin.bind(("127.0.0.1", 0))
            admin.listen(16)
            self.admin.append(admin)
        self.lines = 0
        self.first = 0.0
        self.last = 0.0
        self._lock = threading.Lock()
        self._stop = False
        self._threads = [threading.Thread(target=self._receive, daemon=True),
                         *(threading.Thread(target=self._answer, args=(a,), daemon=True)
                           for a in self.admin)]
        for thread in self._threads:
            thread.start()

    def ports(self) -> list[tuple[int, int]]:
        return [(u.getsockname()[1], a.getsockname()[1])
                for u, a in zip(self.udp, self.admin, strict=True)]

    def _receive(self) -> None:
        selector = selectors.DefaultSelector()
        for sock in self.udp:
            selector.register(sock, selectors.EVENT_READ, sock)
        while not self._stop:
            for key, _ in selector.select(POLL_SECONDS):
                receiver: socket.socket = key.data
                while True:
                    try:
                        data = receiver.recv(65535)
                    except BlockingIOError:
                        break
                    if not data:
                        continue
                    now = time.perf_counter()
                    with self._lock:
                        if not self.lines:
                            self.first = now
                        self.lines += data.count(b"\n") + 1
                        self.last = now

    def _answer(self, listener: socket.socket) -> None:
        while not self._stop:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(1.0)
                    if conn.recv(1024):
                        conn.sendall(b"health: up\n")
                except OSError:
                    pass

    def reset(self) -> None:
        with self._lock:
            self.lines, self.first, self.last = 0, 0.0, 0.0

    def wait_quiet(self, expected: int, timeout: float, quiet: float = 1.5) -> None:
        deadline = time.monotonic() + timeout
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self._lock:
                lines = self.lines
            if lines >= expected:
                return
            if lines != seen:
                seen, quiet_since = lines, time.monotonic()
            elif time.monotonic() - quiet_since > quiet:
                return
            time.sleep(0.05)

    def close(self) -> None:
        self._stop = True
        for sock in self.udp + self.admin:
            sock.close()
