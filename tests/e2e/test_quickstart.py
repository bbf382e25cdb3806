"""The README's quick start, as written: its shell block and its graph URLs against tools/run-local.

tools/run-local (what ``make run`` runs after tools/bootstrap) is started with the ``TALLYD_*``
variables set to free ports and a temporary data directory; the README's commands are then run
with bash, their ports and ``run/carbon`` replaced by those, and each is checked for what the
README says it does. A command the test does not know fails it, so the README cannot grow an
untested command. The ``TALLYD_*`` table of the README is checked against tools/run-local.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.carbon import CARBON_DIR, LOCALCARBON, localcarbon
from harness.checkout import REPO_ROOT
from harness.daemon import DaemonProcess
from harness.port import free_port, free_port_both

pytestmark = pytest.mark.e2e

README = REPO_ROOT / "README.md"
RUN_LOCAL = REPO_ROOT / "tools" / "run-local"
#: The README's ports and data directory, replaced by the test's.
README_DEFAULTS = {"statsd": 8125, "mgmt": 8126, "graphite": 8080}
COMMAND_TIMEOUT_SECONDS = 30.0


def readme_block(marker: str) -> str:
    """The text after ``<!-- marker...-->`` up to the next blank line after its content."""
    text = README.read_text()
    match = re.search(rf"<!-- {re.escape(marker)}\b.*?-->\n(.*?)\n\n", text, re.S)
    assert match, f"README.md has no <!-- {marker} --> block"
    return match[1]


def quickstart_commands() -> list[str]:
    block = readme_block("quickstart-commands")
    assert block.startswith("```sh\n") and block.endswith("\n```"), block
    return [line for line in block.splitlines()[1:-1] if line.strip()]


def quickstart_urls() -> list[str]:
    return re.findall(r"<(http://[^>]+)>", readme_block("quickstart-urls"))


class RunLocal(DaemonProcess):
    name = "tools/run-local"


@pytest.fixture(scope="module")
def run_local(carbon_available: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[RunLocal, dict[str, str]]]:
    """tools/run-local, shared by the tests of this module; stopped with SIGTERM at the end,
    which must end in exit status 0 (the graceful stop)."""
    data = tmp_path_factory.mktemp("quickstart") / "run" / "carbon"
    ports = {"statsd": free_port_both(), "mgmt": free_port(), "carbon": free_port(),
             "graphite": free_port()}
    env = dict(os.environ, TALLYD_STATSD_PORT=str(ports["statsd"]),
               TALLYD_MGMT_PORT=str(ports["mgmt"]), TALLYD_HTTP="127.0.0.1:0",
               TALLYD_CARBON_PORT=str(ports["carbon"]),
               TALLYD_GRAPHITE_PORT=str(ports["graphite"]), TALLYD_FLUSH_INTERVAL="1",
               TALLYD_DATA_DIR=str(data))
    proc = RunLocal(["bash", str(RUN_LOCAL), "--workers", "1"], env=env)
    try:
        proc.wait_for_log(r"event=started", timeout=90)
        yield proc, {**{k: str(v) for k, v in ports.items()}, "data": str(data)}
        with pytest.raises(subprocess.TimeoutExpired):
            proc.proc.wait(0)  # still running: it never died under the commands
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(60) == 0, proc.describe()
    finally:
        if proc.proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session (start_new_session)
        proc.kill()
        for command in ("web-stop", "stop"):
            subprocess.run([sys.executable, str(LOCALCARBON), command, "--data-dir", str(data)],
                           capture_output=True, timeout=60, check=False)


def localize(text: str, ports: dict[str, str]) -> str:
    for role, default in README_DEFAULTS.items():
        text = text.replace(str(default), ports[role])
    return text.replace("run/carbon", ports["data"])


def bash(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_SECONDS, cwd=str(REPO_ROOT),
                          stdin=subprocess.DEVNULL)


def until(command: str, ok: Callable[[subprocess.CompletedProcess[str]], bool]
          ) -> subprocess.CompletedProcess[str]:
    """Run ``command`` until ``ok`` holds (the data appears after the next flush)."""
    deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
    while True:
        result = bash(command)
        if ok(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"README command did not do what it says within "
                                 f"{COMMAND_TIMEOUT_SECONDS}s: {command}\n{result}")
        time.sleep(0.3)


def points_of(result: subprocess.CompletedProcess[str]) -> list[float]:
    return [float(line.split()[1]) for line in result.stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1] != "None"]


def test_readme_quickstart_commands(run_local: tuple[RunLocal, dict[str, str]]) -> None:
    proc, ports = run_local
    commands = quickstart_commands()
    assert len(commands) >= 4, commands
    for line in commands:
        command = localize(line, ports)
        if "> /dev/udp/" in line:
            result = bash(command)
            assert result.returncode == 0, (command, result)
        elif "/dev/tcp/" in line and "health" in line:
            result = bash(command)
            assert result.stdout == "health: up\n", (command, result)
        elif line.startswith("ls "):
            until(command, lambda r: r.returncode == 0 and "hits.wsp" in r.stdout)
        elif "localcarbon.py fetch" in line:
            # every counter the block sends is 1 per flush; idle flushes add zeros
            until(command, lambda r: r.returncode == 0 and 1.0 in points_of(r))
        else:
            pytest.fail(f"README quick-start command the test does not know: {line!r}")
    assert "Traceback" not in proc.log_text(None), proc.describe()


def test_readme_graph_urls(run_local: tuple[RunLocal, dict[str, str]]) -> None:
    proc, ports = run_local
    if not localcarbon.graphite_installed(CARBON_DIR):
        message = f"graphite-web is not installed in {CARBON_DIR}; run tools/bootstrap"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    assert f"http://127.0.0.1:{ports['graphite']}/render" in proc.log_text(None), proc.describe()
    urls = quickstart_urls()
    assert len(urls) == 2, urls
    result = bash(f"echo 'demo.hits:1|c' > /dev/udp/127.0.0.1/{ports['statsd']}")
    assert result.returncode == 0, result
    metric_file = Path(ports["data"]) / "storage/whisper/stats_counts/demo/hits.wsp"
    deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
    while not metric_file.exists():
        assert time.monotonic() < deadline, f"no {metric_file}\n{proc.describe()}"
        time.sleep(0.2)
    for url in urls:
        with urllib.request.urlopen(localize(url, ports), timeout=60) as reply:
            body = reply.read()
            kind = reply.headers.get_content_type()
        if "format=json" in url:
            assert kind == "application/json" and b'"stats_counts.demo.hits"' in body, body
        else:
            assert kind == "image/png" and body.startswith(b"\x89PNG"), body[:64]


def test_readme_documents_run_local_variables() -> None:
    script = RUN_LOCAL.read_text()
    in_script = dict(re.findall(r"\$\{(TALLYD_[A-Z_]+):-([^}]*)\}", script))
    table = dict(re.findall(r"^\| `(TALLYD_[A-Z_]+)` \| `([^`]*)` \|", README.read_text(), re.M))
    assert in_script == table, (in_script, table)
