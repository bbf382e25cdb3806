"""max_tcp_connections is the daemon's, across worker processes; idle clients never lock
out new ones. Real processes, real sockets: 2,000 clients against ``--workers 2``."""

from __future__ import annotations

import resource
import select
import socket
import time
from collections.abc import Iterator

import pytest

from common.streams import EVICT_IDLE_SECONDS, SWEEP_SECONDS
from harness.daemon import wait_until
from harness.sink import GraphiteSink
from harness.tallyd import start_aggregator

pytestmark = [pytest.mark.e2e]

CLIENTS = 2000
LIMIT = 1024  # the default
#: Places a race between the two workers may leave empty (both back off the last one).
RACE_SLACK = 16


@pytest.fixture
def enough_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = CLIENTS + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def closed_by_server(clients: list[socket.socket]) -> set[int]:
    """Indexes of the clients whose connection the server closed (EOF or reset)."""
    poller = select.poll()
    for s in clients:
        poller.register(s, select.POLLIN)
    by_fd = {s.fileno(): i for i, s in enumerate(clients)}
    closed = set()
    for fd, _ in poller.poll(0):
        try:
            data = clients[by_fd[fd]].recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (ConnectionResetError, BlockingIOError):
            data = b""
        if not data:
            closed.add(by_fd[fd])
    return closed


def counted(sink: GraphiteSink, path: str) -> float:
    return sum(float(r.line.split()[1]) for r in sink.records()
               if r.line.startswith(f"stats_counts.{path} "))


def test_limit_holds_daemon_wide_and_idle_clients_make_room(enough_files: None,
                                                            graphite_sink: GraphiteSink) -> None:
    clients: list[socket.socket] = []
    args = ["--listen", "tcp://127.0.0.1:0", "--carbon", f"127.0.0.1:{graphite_sink.port}",
            "--flush-interval", "1", "--mgmt-port", "0", "--workers", "2",
            "--no-self-metrics"]
    try:
        with start_aggregator(args) as agg:
            for _ in range(CLIENTS):
                s = socket.create_connection(agg.tcp, timeout=10)
                s.sendall(b"conn.c:1|c\n")
                clients.append(s)
            wait_until(lambda: len(closed_by_server(clients)) >= CLIENTS - LIMIT, 60,
                       message=f"at most {LIMIT} connections open")
            closed = closed_by_server(clients)
            assert CLIENTS - LIMIT <= len(closed) <= CLIENTS - LIMIT + RACE_SLACK
            open_before = CLIENTS - len(closed)
            # Every admitted client's line is aggregated (refused ones were never read).
            wait_until(lambda: counted(graphite_sink, "conn.c") >= open_before, 30,
                       message="the admitted clients' lines reached Carbon")

            # The daemon is full of clients idle for longer than the eviction threshold:
            # a newcomer is served, in place of the longest-idle one.
            time.sleep(EVICT_IDLE_SECONDS + 2 * SWEEP_SECONDS)
            newcomer = socket.create_connection(agg.tcp, timeout=10)
            clients.append(newcomer)
            newcomer.sendall(b"conn.new:1|c\n")
            wait_until(lambda: counted(graphite_sink, "conn.new") == 1, 30,
                       message="the newcomer's line reached Carbon")
            now_closed = closed_by_server(clients)
            assert len(clients) - 1 not in now_closed
            assert CLIENTS + 1 - len(now_closed) <= LIMIT
            assert len(now_closed) >= len(closed) + 1 or open_before < LIMIT
            assert agg.stop() == 0
    finally:
        for s in clients:
            s.close()
