"""The three commands as a user runs them: real processes, their exit status and stderr.

``--version``, the errors for an Etsy user's milliseconds and for a listen URL without a
port, and every bind failure (intake or admin, one process or several): exit 2 with one
clear line on stderr, never a traceback.
"""

from __future__ import annotations

import importlib.metadata
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from harness.checkout import REPO_ROOT

pytestmark = pytest.mark.e2e

COMMANDS = {"tallyd-aggregator": "aggregator", "tallyd-proxy": "proxy",
            "tallyd-ring": "ringtool.cli"}
#: Every run here ends on its own within seconds (a bind failure ends the daemon at start).
RUN_TIMEOUT = 60


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=RUN_TIMEOUT,
                          stdin=subprocess.DEVNULL)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "level=error" in line
            or "configuration error" in line]


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_version_prints_the_package_version(prog: str) -> None:
    result = run(COMMANDS[prog], "--version")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{prog} {importlib.metadata.version('tallyd')}\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--flush-interval", "10000"],
     "tallyd-aggregator: configuration error: flush_interval: '10000' seconds is more than "
     "600 s; a bare number is seconds. If you meant milliseconds (Etsy's flushInterval), "
     "write 10000ms; if you do mean seconds, write 10000s"),
    (["--listen", "udp://127.0.0.1"],
     "tallyd-aggregator: configuration error: listen: bad listen URL 'udp://127.0.0.1': "
     "missing port (expected HOST:PORT)"),
])
def test_a_users_mistake_is_one_line_naming_it(args: list[str], message: str) -> None:
    result = run("aggregator", *args, "--check-config")
    assert (result.returncode, result.stdout, result.stderr) == (2, "", message + "\n")


def test_flush_interval_with_its_unit_is_accepted() -> None:
    result = run("aggregator", "--flush-interval", "10000ms", "--print-config")
    assert result.returncode == 0, result.stderr
    assert "\nflush_interval = 10.0\n" in result.stdout


def below_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port - 1))
        except OSError:
            return False
    return True


@pytest.fixture
def taken() -> Iterator[dict[str, int]]:
    """A TCP port (listening) and a UDP port held on 127.0.0.1 while the test runs; the TCP
    port below the held one was free a moment ago (the proxy's process 0 binds it)."""
    with listening_with_a_free_port_below() as tcp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        yield {"tcp": tcp.getsockname()[1], "udp": udp.getsockname()[1]}


def listening_with_a_free_port_below() -> socket.socket:
    while True:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        if below_is_free(tcp.getsockname()[1]):
            tcp.listen()
            return tcp
        tcp.close()


def bind_cases(ports: dict[str, int]) -> dict[str, tuple[str, list[str], str]]:
    tcp, udp = ports["tcp"], ports["udp"]
    admin_error = f"cannot bind the admin port 127.0.0.1:{tcp}: Address already in use"
    aggregator = ["--listen", "udp://127.0.0.1:0"]
    proxy = ["--listen", "udp://127.0.0.1:0", "--aggregator", "127.0.0.1:9"]
    return {
        "aggregator admin": ("aggregator", [*aggregator, "--workers", "1", "--mgmt-port",
                                            str(tcp)], admin_error),
        "aggregator workers admin": ("aggregator", [*aggregator, "--workers", "2",
                                                    "--mgmt-port", str(tcp)], admin_error),
        "aggregator intake": ("aggregator", ["--listen", f"udp://127.0.0.1:{udp}",
                                             "--workers", "1", "--mgmt-port", "0"],
                              f"cannot bind udp://127.0.0.1:{udp}: Address already in use"),
        "aggregator workers tcp intake": (
            "aggregator", ["--listen", f"tcp://127.0.0.1:{tcp}", "--workers", "2",
                           "--mgmt-port", "0"],
            f"cannot bind tcp://127.0.0.1:{tcp}: Address already in use"),
        "proxy admin": ("proxy", [*proxy, "--mgmt-port", str(tcp)], admin_error),
        # Process 1 of 2 serves its admin protocol on mgmt_port + 1, which is taken.
        "proxy processes admin": ("proxy", [*proxy, "--processes", "2", "--mgmt-port",
                                            str(tcp - 1)], admin_error),
        "proxy intake": ("proxy", ["--listen", f"udp://127.0.0.1:{udp}", "--aggregator",
                                   "127.0.0.1:9", "--mgmt-port", "0"],
                         f"cannot bind udp://127.0.0.1:{udp}: Address already in use"),
    }


@pytest.mark.parametrize("case", sorted(bind_cases({"tcp": 2, "udp": 1})))
def test_every_bind_failure_is_one_line_and_exit_2(taken: dict[str, int], case: str) -> None:
    module, args, message = bind_cases(taken)[case]
    result = run(module, *args, "--http", "127.0.0.1:0")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert "event=config_error" in errors[0] and message in errors[0], result.stderr
