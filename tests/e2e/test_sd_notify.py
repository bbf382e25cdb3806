"""systemd's Type=notify readiness (common/sdnotify.py), with real daemons and a real socket.

Each daemon is started as systemd starts a ``Type=notify`` unit: with ``NOTIFY_SOCKET``
naming an AF_UNIX datagram socket (here one the test binds in tmp_path, or an abstract one).
``READY=1`` must arrive once the daemon serves, from the process that deploy/systemd's
``NotifyAccess=`` allows: the main process (aggregator, its supervisor with workers; ring
agent), or every process of a proxy's ``--processes`` (``NotifyAccess=all``).
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.sdnotify import NOTIFY_SOCKET_ENV, READY, notify
from harness.tallyd import AggregatorProcess, ProxyProcess, TallydProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # the sender's pid, as systemd
    try:
        yield sock, path
    finally:
        sock.close()


def receive(sock: socket.socket, timeout: float) -> tuple[str, int]:
    """One message and its sender's pid (SCM_CREDENTIALS, as systemd reads it)."""
    sock.settimeout(timeout)
    data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = 0
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", payload[:12])[0]
    return data.decode(), pid


def messages_within(sock: socket.socket, seconds: float) -> list[tuple[str, int]]:
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(receive(sock, left))
        except TimeoutError:
            break
    return got


def launch(cls: type[TallydProcess], module: str, args: list[str], path: str) -> TallydProcess:
    env = dict(os.environ, **{NOTIFY_SOCKET_ENV: path})
    return cls([sys.executable, "-m", module, *args, "--http", "127.0.0.1:0"], env=env)


def test_ready_from_the_aggregator_once_it_serves(
        notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    proc = launch(AggregatorProcess, "aggregator",
                  ["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0", "--console",
                   "--flush-interval", "1"], path)
    try:
        message, pid = receive(sock, 30)
        assert (message, pid) == (READY, proc.pid)
        proc.wait_started(10)
        assert proc.http_get("/healthz")[0] == 200  # it serves when it says so
        assert proc.stop() == 0
    finally:
        proc.kill()


def test_ready_from_the_supervisor_once_every_worker_serves(
        notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    proc = launch(AggregatorProcess, "aggregator",
                  ["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0", "--console",
                   "--flush-interval", "1", "--workers", "2"], path)
    try:
        message, pid = receive(sock, 60)
        assert (message, pid) == (READY, proc.pid)  # the main process: NotifyAccess=main
        proc.wait_started(10)
        assert proc.http_get("/readyz")[0] == 200  # both workers answer
        assert messages_within(sock, 1.0) == []  # the workers themselves say nothing
        assert proc.stop() == 0
    finally:
        proc.kill()


def test_ready_from_every_proxy_process(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    proc = launch(ProxyProcess, "proxy",
                  ["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0", "--processes", "2",
                   "--aggregator", "127.0.0.1:9"], path)
    try:
        got = [receive(sock, 60), receive(sock, 30)]
        assert [m for m, _ in got] == [READY, READY]
        assert proc.pid not in {pid for _, pid in got}  # the children: NotifyAccess=all
        assert len({pid for _, pid in got}) == 2
        assert proc.stop() == 0
    finally:
        proc.kill()


def test_ready_from_the_ring_agent(notify_socket: tuple[socket.socket, str],
                                   tmp_path: Path) -> None:
    sock, path = notify_socket
    env = dict(os.environ, **{NOTIFY_SOCKET_ENV: path})
    proc = TallydProcess([sys.executable, "-m", "ringtool", "agent", "--data-dir",
                          str(tmp_path), "--listen", "127.0.0.1:0"], env=env)
    try:
        assert receive(sock, 30) == (READY, proc.pid)
        assert proc.stop() == 0
    finally:
        proc.kill()


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"tallyd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert notify(READY, environ={NOTIFY_SOCKET_ENV: "@" + name})
        sock.settimeout(5)
        assert sock.recv(100) == READY.encode()


def test_notify_without_a_manager_or_a_listener_is_false(tmp_path: Path) -> None:
    assert not notify(READY, environ={})
    assert not notify(READY, environ={NOTIFY_SOCKET_ENV: "relative/path"})
    assert not notify(READY, environ={NOTIFY_SOCKET_ENV: str(tmp_path / "nobody")})
