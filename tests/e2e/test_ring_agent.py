"""End to end: the real ``tallyd-ring agent`` process (the console script) beside a real
carbon-cache receiving real plaintext points, driven over HTTP by ringtool.client.

carbon (tools/localcarbon.py: 1 s points, ``WHISPER_LOCK_WRITES = True``) writes the Whisper
files; the agent lists them, serves them under the same flock, and merges into them while carbon
runs; the ``whisper`` package reads what was served. SIGTERM stops the agent with exit 0.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import whisper

from harness.carbon import LocalCarbon
from harness.tallyd import TallydProcess
from ringtool.client import AgentClient, AgentError, FileEntry

pytestmark = pytest.mark.e2e

TALLYD_RING = Path(sys.executable).parent / "tallyd-ring"
TOKEN = "e2e-cluster-token"
_names = itertools.count()
T = TypeVar("T")


class AgentProcess(TallydProcess):
    name = "tallyd-ring agent"

    @property
    def url(self) -> str:
        return f"http://{self.address('http')}"


def start_agent(data_dir: Path, *flags: str) -> AgentProcess:
    agent = AgentProcess([str(TALLYD_RING), "agent", "--data-dir", str(data_dir),
                          "--listen", "127.0.0.1:0", *flags])
    try:
        agent.wait_started(15.0)
    except BaseException:
        agent.kill()
        raise
    return agent


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def agent(carbon: LocalCarbon, token_file: Path) -> Iterator[AgentProcess]:
    """An agent on carbon's whisper directory, with a token; killed if a test leaves it."""
    proc = start_agent(carbon.data_dir / "storage" / "whisper", "--token-file", str(token_file))
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def prefix() -> str:
    return f"e2e.agent.p{os.getpid()}n{next(_names)}"


def call(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


def send_plaintext(carbon: LocalCarbon, lines: list[str]) -> None:
    with socket.create_connection(carbon.address, timeout=5) as sock:
        sock.sendall("".join(f"{line}\n" for line in lines).encode())


def stable_bytes(path: Path, *, settle: float = 1.5, timeout: float = 15.0) -> bytes:
    """The file's bytes once carbon has stopped changing it for ``settle`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = path.read_bytes(), time.monotonic()
    while time.monotonic() - since < settle:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} kept changing for {timeout}s")
        time.sleep(0.2)
        now = path.read_bytes()
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_agent_lists_and_serves_what_carbon_wrote(
        carbon: LocalCarbon, agent: AgentProcess, prefix: str, tmp_path: Path) -> None:
    base = int(time.time()) - 30
    points = {f"{prefix}.cpu.user": [(base + i, float(i)) for i in range(5)],
              f"{prefix}.cpu.zero": [(base + 2, 0.0)]}
    send_plaintext(carbon, [f"{m} {v} {t}" for m, pts in points.items() for t, v in pts])
    for metric, sent in points.items():
        carbon.wait_for_points(metric, lambda got, sent=sent: got == sent,
                               describe=f"the points {sent}")
    client = AgentClient(agent.url, token=TOKEN, timeout=10.0)

    async def listing() -> list[FileEntry]:
        return [entry async for entry in client.iter_files()]

    entries = {e.name: e for e in call(listing)}
    assert set(points) <= set(entries)
    path = carbon.whisper_file(f"{prefix}.cpu.user")
    on_disk = stable_bytes(path)
    assert entries[f"{prefix}.cpu.user"].size == len(on_disk)

    fetched = call(lambda: client.fetch(f"{prefix}.cpu.user"))
    assert fetched == on_disk
    copy = tmp_path / "fetched.wsp"
    copy.write_bytes(fetched)
    (start, _end, step), values = whisper.fetch(str(copy), base - 10, base + 10)
    got = [(start + i * step, v) for i, v in enumerate(values) if v is not None]
    assert got == points[f"{prefix}.cpu.user"] == carbon.fetch(f"{prefix}.cpu.user")
    assert call(lambda: client.exists(f"{prefix}.cpu.zero"))
    assert not call(lambda: client.exists(f"{prefix}.cpu.none"))


def test_merge_beside_a_running_carbon_is_read_by_carbon(
        carbon: LocalCarbon, agent: AgentProcess, prefix: str) -> None:
    base = int(time.time()) - 60
    send_plaintext(carbon, [f"{prefix}.live {v} {base + t}" for t, v in ((0, 1.0), (2, 3.0))])
    carbon.wait_for_points(f"{prefix}.live", lambda got: len(got) == 2, describe="2 points")
    client = AgentClient(agent.url, token=TOKEN, timeout=10.0)
    source = call(lambda: client.fetch(f"{prefix}.live"))
    # A copy under a new name (created), then points carbon's file lacks merged into it.
    created = call(lambda: client.merge(f"{prefix}.moved", source))
    assert created["created"] is True and created["verification"]["ok"] is True
    assert carbon.fetch(f"{prefix}.moved") == [(base, 1.0), (base + 2, 3.0)]
    send_plaintext(carbon, [f"{prefix}.other {v} {base + t}" for t, v in ((1, 2.0), (2, 9.0))])
    carbon.wait_for_points(f"{prefix}.other", lambda got: len(got) == 2, describe="2 points")
    other = call(lambda: client.fetch(f"{prefix}.other"))
    merged = call(lambda: client.merge(f"{prefix}.live", other))
    assert (merged["filled"], merged["conflicts"]) == (1, 1)  # base+1 filled, base+2 kept
    assert carbon.fetch(f"{prefix}.live") == [(base, 1.0), (base + 1, 2.0), (base + 2, 3.0)]
    assert call(lambda: client.delete(f"{prefix}.moved")) is True
    assert carbon.fetch(f"{prefix}.moved") is None


def test_token_is_needed_and_sigterm_exits_0(carbon: LocalCarbon, agent: AgentProcess) -> None:
    anonymous = AgentClient(agent.url, timeout=10.0)
    assert call(anonymous.version)["agent"] == "tallyd-ring"
    with pytest.raises(AgentError) as caught:
        call(lambda: anonymous.fetch("anything.at.all"))
    assert caught.value.status == 401
    assert agent.stop() == 0, agent.describe()
    assert "event=stopped" in agent.log_text()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TALLYD_RING), "agent", *args], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)


def test_bad_input_exits_2_with_one_error_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    cases = [
        ([], "--data-dir DIR is required"),
        (["--data-dir", str(tmp_path / "missing")], "not a directory"),
        (["--data-dir", str(tmp_path), "--listen", "localhost"], "missing port"),
        (["--data-dir", str(tmp_path), "--max-connections", "0"], "positive"),
        (["--data-dir", str(tmp_path), "--token-file", str(empty)], "is empty"),
        (["--data-dir", str(tmp_path), "--token-file", str(tmp_path / "none")], "cannot read"),
        (["--data-dir", str(tmp_path), "--listen", "192.0.2.1:0"], "cannot listen"),
    ]
    for args, words in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if "level=" not in line]
        assert len(lines) == 1 and lines[0].startswith("tallyd-ring: error: "), result.stderr
        assert words in lines[0], (args, lines)
