"""A second daemon never takes a live address: udp/tcp ports and unix socket paths.

Real processes: the first aggregator binds, the second is given the same address and must
exit 2 with one clear line, leaving the first untouched; sharing happens only when asked.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.checkout import REPO_ROOT
from harness.port import split_host_port
from harness.tallyd import start_aggregator

pytestmark = [pytest.mark.e2e]

BASE = ["--mgmt-port", "0", "--http", "127.0.0.1:0", "--flush-interval", "1", "--no-self-metrics"]


def run_second(*listen: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run a second aggregator to its exit (it must not start: a 30 s timeout fails)."""
    args = [arg for url in listen for arg in ("--listen", url)]
    return subprocess.run([sys.executable, "-m", "aggregator", *args, *BASE, *extra],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def assert_refused(result: subprocess.CompletedProcess[str], url: str) -> None:
    errors = [line for line in result.stderr.splitlines() if "config_error" in line]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and f"cannot bind {url}" in errors[0], result.stderr



@pytest.mark.parametrize("scheme", ["udp", "tcp"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_second_daemon_on_a_live_port_exits_2(scheme: str, workers: str) -> None:
    with start_aggregator(["--listen", f"{scheme}://127.0.0.1:0", *BASE,
                           "--workers", workers]) as first:
        port = split_host_port(first.address(scheme))[1]
        url = f"{scheme}://127.0.0.1:{port}"
        result = run_second(url, extra=("--workers", workers))
        assert_refused(result, url)
        assert "reuse_port" in result.stderr
        assert first.returncode is None


def test_reuse_port_shares_a_port_when_both_ask() -> None:
    with start_aggregator(["--listen", "udp://127.0.0.1:0", *BASE, "--reuse-port"]) as first:
        port = split_host_port(first.address("udp"))[1]
        with start_aggregator(["--listen", f"udp://127.0.0.1:{port}", *BASE,
                               "--reuse-port"]) as second:
            assert second.returncode is None and first.returncode is None


@pytest.mark.parametrize("scheme", ["unix", "unixgram"])
def test_second_daemon_on_a_live_socket_path_exits_2(scheme: str, tmp_path: Path) -> None:
    path = tmp_path / "intake.sock"
    url = f"{scheme}://{path}"
    with start_aggregator(["--listen", url, *BASE]) as first:
        inode = path.stat().st_ino
        assert_refused(run_second(url), url)
        assert path.stat().st_ino == inode  # never unlinked, never replaced
        kind = socket.SOCK_STREAM if scheme == "unix" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_UNIX, kind) as client:
            client.connect(str(path))  # the first daemon still answers on it
        assert first.stop() == 0
    assert not path.exists()  # its own file: removed at exit


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # closed without unlinking: what a killed daemon leaves
    with start_aggregator(["--listen", f"unix://{path}", *BASE]) as agg:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
        assert agg.stop() == 0


def test_socket_file_replaced_by_another_is_left_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "moved.sock"
    with start_aggregator(["--listen", f"unix://{path}", *BASE]) as agg:
        path.unlink()  # an operator (or another daemon, after a stale check) took the path
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            other.bind(str(path))
            other.listen(1)
            assert agg.stop() == 0
            assert path.exists()  # not ours any more: left alone


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
def test_listen_host_that_does_not_resolve_exits_2(scheme: str) -> None:
    url = f"{scheme}://nosuch.invalid:8125"  # .invalid never resolves (RFC 6761)
    result = run_second(url)
    assert_refused(result, url)
    assert "Traceback" not in result.stderr
