"""The receiving half of every Carbon sink here: accept plaintext connections, cut lines.

`LineReceiver` listens on 127.0.0.1 port 0 (so no test needs a fixed port; a test whose
Carbon hosts are network namespaces gives Carbon's own 2003) and serves every connection from
one background thread with a selector; `LineReceiver.peers` names each connection's sender.
It keeps each connection's unfinished last line and hands a `LineHandler` what arrives: a
connection opened; a block of complete lines (each ending in ``\\n``) with its arrival time;
a connection closed, with what it left after its last newline. The sinks decide what to keep
(`harness.sink` every line, `harness.tally` sums); a handler is called from the receiver's
thread and takes its own lock.

SHELL (sockets, a thread).
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from typing import Protocol

#: Most bytes read from one connection at once.
DEFAULT_READ_BYTES = 65536
#: How often the thread looks at its stop flag while idle.
POLL_SECONDS = 0.2
#: Pending connections the listener queues.
BACKLOG = 64


class LineHandler(Protocol):
    def opened(self, connection: int, now: float) -> None:
        """Connection number ``connection`` (0, 1, ...) was accepted at ``now``."""

    def received(self, connection: int, lines: bytes, now: float, wall: float) -> None:
        """Complete lines arrived at ``now`` (time.monotonic()) and ``wall`` (time.time())."""

    def closed(self, connection: int, rest: bytes, now: float, wall: float) -> None:
        """The sender closed (or the receiver stopped); ``rest`` is an unfinished last line."""


class LineReceiver:
    """Accepts connections on ``host`` port 0 and feeds their lines to ``handler``.

    Args:
        receive_buffer_bytes: ``SO_RCVBUF`` of each accepted connection (None: the default).
        read_bytes: the most read from a connection at once.
    """

    def __init__(self, handler: LineHandler, host: str = "127.0.0.1", *, port: int = 0,
                 receive_buffer_bytes: int | None = None,
                 read_bytes: int = DEFAULT_READ_BYTES) -> None:
        self.handler = handler
        #: connection number -> the sender's address (host, as accept() gave it)
        self.peers: dict[int, str] = {}
        self.receive_buffer_bytes = receive_buffer_bytes
        self.read_bytes = read_bytes
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(BACKLOG)
        self._listener.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="line-receiver", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (open connections are reported closed) and close the listener."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._listener.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        partial: dict[socket.socket, tuple[int, bytes]] = {}
        serial = 0
        while not self._stop.is_set():
            for key, _ in selector.select(POLL_SECONDS):
                if key.data is None:
                    try:
                        conn, peer = self._listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    if self.receive_buffer_bytes is not None:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                        self.receive_buffer_bytes)
                    selector.register(conn, selectors.EVENT_READ, conn)
                    partial[conn] = (serial, b"")
                    self.peers[serial] = str(peer[0])
                    self.handler.opened(serial, time.monotonic())
                    serial += 1
                    continue
                conn = key.data
                try:
                    data = conn.recv(self.read_bytes)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                now, wall = time.monotonic(), time.time()
                ident, rest = partial[conn]
                if not data:
                    del partial[conn]
                    selector.unregister(conn)
                    conn.close()
                    self.handler.closed(ident, rest, now, wall)
                    continue
                data = rest + data
                cut = data.rfind(b"\n") + 1
                partial[conn] = (ident, data[cut:])
                if cut:
                    self.handler.received(ident, data[:cut], now, wall)
        for conn, (ident, rest) in partial.items():
            selector.unregister(conn)
            conn.close()
            self.handler.closed(ident, rest, time.monotonic(), time.time())
        selector.close()
