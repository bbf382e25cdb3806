"""The quick start as written: tools/run-local's cluster, and the commands of README.md and
docs/quickstart.md run against it.

tools/run-local (what ``make run`` runs after tools/bootstrap) is started with the ``TALLYD_*``
variables set to free ports and a temporary data directory; the docs' ``quickstart-commands``
blocks are then run with bash, their ports and ``run/`` replaced by those, and each command is
checked for what the docs say it does. A command the test does not know fails it, so the docs
cannot grow an untested command. Also: the two proxies really share the one port, the graph URLs
answer (a series of each Carbon node among them), the README's ``TALLYD_*`` table is
harness.localcluster's, and SIGTERM stops every process with exit status 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import localcluster
from harness.carbon import CARBON_DIR, LOCALCARBON, localcarbon
from harness.checkout import REPO_ROOT
from harness.daemon import DaemonProcess
from harness.port import free_port, free_port_both, udp_port_bound, udp_port_state

pytestmark = pytest.mark.e2e

README = REPO_ROOT / "README.md"
QUICKSTART = REPO_ROOT / "docs" / "quickstart.md"
RUN_LOCAL = REPO_ROOT / "tools" / "run-local"
#: The docs' ports, replaced by the test's.
DOC_PORTS = {"8125": "statsd", "8080": "graphite", "8180": "ui"}
COMMAND_TIMEOUT_SECONDS = 30.0
#: Cold: graphite-web's first migrate, and 2 cores shared with other suites.
BRING_UP_TIMEOUT_SECONDS = 150.0
#: Datagrams from as many client sockets, to see both proxies take a share.
CLIENT_SOCKETS = 40


def doc_blocks(path: Path, marker: str) -> list[str]:
    """Every block after ``<!-- marker...-->`` up to the next blank line after its content."""
    blocks = re.findall(rf"<!-- {re.escape(marker)}\b.*?-->\n(.*?)\n\n", path.read_text(), re.S)
    assert blocks, f"{path.name} has no <!-- {marker} --> block"
    return list(blocks)


def doc_commands(path: Path) -> list[str]:
    commands = []
    for block in doc_blocks(path, "quickstart-commands"):
        assert block.startswith("```sh\n") and block.endswith("\n```"), block
        commands += [line for line in block.splitlines()[1:-1] if line.strip()]
    return commands


def quickstart_urls() -> list[str]:
    return re.findall(r"<(http://[^>]+)>", doc_blocks(README, "quickstart-urls")[0])


class RunLocal(DaemonProcess):
    name = "tools/run-local"


Cluster = tuple[RunLocal, dict[str, str]]


def start_run_local(data: Path, ports: dict[str, int]) -> RunLocal:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLYD_")}
    env.update(TALLYD_STATSD_PORT=str(ports["statsd"]), TALLYD_GRAPHITE_PORT=str(ports["graphite"]),
               TALLYD_UI_PORT=str(ports["ui"]), TALLYD_FLUSH_INTERVAL="1",
               TALLYD_DATA_DIR=str(data))
    return RunLocal(["bash", str(RUN_LOCAL)], env=env)


@pytest.fixture(scope="module")
def run_local(carbon_available: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Cluster]:
    """tools/run-local, shared by the tests of this module; stopped with SIGTERM at the end,
    which must stop every daemon with exit status 0 and leave no process behind. Ctrl-C: SIGINT
    to tools/run-local alone (it runs in its own session, as the daemons run in theirs)."""
    data = tmp_path_factory.mktemp("quickstart") / "run"
    ports = {"statsd": free_port_both(), "graphite": free_port(), "ui": free_port()}
    proc = start_run_local(data, ports)
    try:
        proc.wait_for_log(r"Ctrl-C stops everything", timeout=BRING_UP_TIMEOUT_SECONDS)
        yield proc, {**{k: str(v) for k, v in ports.items()}, "data": str(data)}
        with pytest.raises(subprocess.TimeoutExpired):
            proc.proc.wait(0)  # still running: it never died under the commands
        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(90) == 0, proc.describe()
        log = proc.log_text(None)
        for name in ("proxy-0", "proxy-1", "agg-0", "agg-1", "ui"):
            assert f"stopped {name} (exit status 0)" in log, proc.describe()
        assert not list((data / "pids").glob("*.pid")), proc.describe()
        assert not udp_port_bound(ports["statsd"]), "a proxy still holds the StatsD port"
        for sub in ("carbon-a", "carbon-b"):
            status = subprocess.run(["python3", str(LOCALCARBON), "status", "--data-dir",
                                     str(data / sub)], capture_output=True, text=True, timeout=30)
            assert status.stdout.strip() == "stopped", (sub, status)
        assert not (data / "graphite" / localcarbon.WEB_PID_FILE).exists()
    finally:
        if proc.proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session (start_new_session)
        proc.kill()
        localcluster.stop_leftovers(data)  # every daemon, graphite-web, carbon: by pid file


def localize(text: str, ports: dict[str, str]) -> str:
    for default, role in DOC_PORTS.items():
        text = text.replace(default, ports[role])
    return text.replace("run/", ports["data"] + "/")


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
            raise AssertionError(f"quick-start command did not do what it says within "
                                 f"{COMMAND_TIMEOUT_SECONDS}s: {command}\n{result}")
        time.sleep(0.3)


def points_of(result: subprocess.CompletedProcess[str]) -> list[float]:
    return [float(line.split()[1]) for line in result.stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1] != "None"]


def placed(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``tallyd-ring lookup`` output -> {path: instance}."""
    return {path: node.rsplit(":", 1)[1]
            for path, node in (line.split("\t") for line in result.stdout.splitlines())}


def wsp_files(data: str, placement: dict[str, str]) -> dict[str, Path]:
    return {path: Path(localcarbon.whisper_file(Path(data) / f"carbon-{inst}", path))
            for path, inst in placement.items()}


def on_other_node(data: str, path: str, instance: str) -> list[Path]:
    return [Path(localcarbon.whisper_file(Path(data) / f"carbon-{other}", path))
            for other in localcluster.CARBON_INSTANCES if other != instance]


@pytest.mark.parametrize("doc", [README, QUICKSTART], ids=lambda p: p.name)
def test_quickstart_commands_do_what_the_docs_say(run_local: Cluster, doc: Path) -> None:
    proc, ports = run_local
    commands = doc_commands(doc)
    assert len(commands) >= 4, commands
    placement: dict[str, str] = {}
    for line in commands:
        command = localize(line, ports)
        if re.search(r"> /dev/(udp|tcp)/", line) or "import statsd" in line:
            result = bash(command)
            assert result.returncode == 0, (command, result)
        elif "tallyd-ring lookup" in line:
            result = bash(command)
            assert result.returncode == 0 and result.stdout, (command, result)
            found = placed(result)
            placement.update(found)
            for path, wsp in wsp_files(ports["data"], found).items():  # on the node named
                deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
                while not wsp.exists():
                    assert time.monotonic() < deadline, f"no {wsp}\n{proc.describe()}"
                    time.sleep(0.2)
                assert not any(p.exists() for p in on_other_node(ports["data"], path,
                                                                 found[path])), path
        elif line.startswith(("find ", "ls ")):
            wanted = [str(p) for p in wsp_files(ports["data"], placement).values()]
            until(command, lambda r, wanted=wanted: r.returncode == 0 and bool(r.stdout)
                  and all(w in r.stdout or Path(w).name in r.stdout for w in wanted))
        elif "localcarbon.py fetch" in line:
            # what the docs send is non-zero in some flush; idle flushes add zeros
            until(command, lambda r: r.returncode == 0 and any(points_of(r)))
        elif "tallyd-ring cluster" in line:
            until(command, lambda r: r.returncode == 0 and "cluster: ok" in r.stdout)
        else:
            pytest.fail(f"{doc.name} quick-start command the test does not know: {line!r}")
    assert "Traceback" not in proc.log_text(None), proc.describe()


def http_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())


def test_two_proxies_share_the_one_statsd_port(run_local: Cluster) -> None:
    """Datagrams from many client sockets to the one address: both proxies take a share, and
    every line is theirs (none dropped)."""
    proc, ports = run_local
    ring = (Path(ports["data"]) / "ring.toml").read_text()
    proxies = re.findall(r'"(http://[^"]+)"', ring.split("proxies = ", 1)[1].split("\n")[0])
    assert len(proxies) == 2, ring
    before = [http_json(p + "/status")["totals"]["lines_in"] for p in proxies]  # type: ignore[index]
    for i in range(CLIENT_SOCKETS):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(f"demo.spread:{i}|c".encode(), ("127.0.0.1", int(ports["statsd"])))
    deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
    while True:
        now = [http_json(p + "/status")["totals"] for p in proxies]
        taken = [t["lines_in"] - b for t, b in zip(now, before, strict=True)]  # type: ignore[index]
        if sum(taken) >= CLIENT_SOCKETS or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sum(taken) == CLIENT_SOCKETS and min(taken) > 0, (taken, proc.describe())
    assert all(not t["dropped_lines"] or not any(t["dropped_lines"].values())  # type: ignore[index]
               for t in now), now


def test_readme_graph_urls_and_both_nodes_in_graphite(run_local: Cluster) -> None:
    proc, ports = run_local
    if not localcarbon.graphite_installed(CARBON_DIR):
        message = f"graphite-web is not installed in {CARBON_DIR}; run tools/bootstrap"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    assert f"http://127.0.0.1:{ports['graphite']}/render" in proc.log_text(None), proc.describe()
    config = Path(ports["data"]) / "aggregator.toml"
    paths = ["stats_counts.demo.hits", *(f"stats_counts.demo.node{i}" for i in range(12))]
    placement = placed(bash(f".venv/bin/tallyd-ring lookup --config {config} " + " ".join(paths)))
    one_each = {inst: next(p for p in paths[1:] if placement[p] == inst)
                for inst in localcluster.CARBON_INSTANCES}
    wanted = {p: placement[p] for p in [paths[0], *one_each.values()]}
    for path in wanted:
        name = path.removeprefix("stats_counts.")
        assert bash(f"echo '{name}:1|c' > /dev/udp/127.0.0.1/{ports['statsd']}").returncode == 0
    for wsp in wsp_files(ports["data"], wanted).values():
        deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
        while not wsp.exists():
            assert time.monotonic() < deadline, f"no {wsp}\n{proc.describe()}"
            time.sleep(0.2)
    urls = quickstart_urls()
    assert len(urls) == 2, urls
    doc_urls = re.findall(r"<(http://127\.0\.0\.1:[^>]+)>", QUICKSTART.read_text())
    assert len(doc_urls) >= 3, doc_urls
    for url in urls + doc_urls:
        with urllib.request.urlopen(localize(url, ports), timeout=60) as reply:
            body = reply.read()
            kind = reply.headers.get_content_type()
        if ":8180/" in url:
            assert kind == "text/html" and b"<html" in body.lower(), body[:64]
        elif "format=json" in url:
            assert kind == "application/json" and b'"stats_counts.demo.hits"' in body, body
        else:
            assert kind == "image/png" and body.startswith(b"\x89PNG"), body[:64]
    # one graphite-web over both Whisper trees: the docs' wildcard shows a series of each node
    wildcard = next(u for u in doc_urls if "demo.*" in u)
    series = http_json(localize(wildcard, ports) + "&format=json")
    got = {s["target"] for s in series}  # type: ignore[attr-defined]
    assert set(one_each.values()) <= got, (one_each, got)


def pid_of(data: Path, name: str) -> int:
    return int((data / "pids" / f"{name}.pid").read_text())


def test_a_killed_run_is_cleaned_up_and_a_dead_daemon_stops_the_cluster(
        carbon_available: Path, tmp_path: Path) -> None:
    """run-local SIGKILLed leaves its daemons: the next run stops them by their pid files before
    it binds anything (no stale proxy shares the port). A daemon that dies stops the whole
    cluster, exit status 1. Without graphite-web and the page (their variables at 0)."""
    data = tmp_path / "run"
    ports = {"statsd": free_port_both(), "graphite": 0, "ui": 0}
    runs = [start_run_local(data, ports)]
    try:
        runs[0].wait_for_log(r"Ctrl-C stops everything", timeout=BRING_UP_TIMEOUT_SECONDS)
        left = {name: pid_of(data, name) for name in ("proxy-0", "proxy-1", "agg-0", "agg-1")}
        runs[0].proc.kill()  # the launcher only: its daemons live on in their own sessions
        runs[0].proc.wait(10)
        assert all(localcarbon.pid_alive(pid) for pid in left.values())
        runs.append(start_run_local(data, ports))
        runs[1].wait_for_log(r"Ctrl-C stops everything", timeout=BRING_UP_TIMEOUT_SECONDS)
        log = runs[1].log_text(None)
        for name, pid in left.items():
            assert f"stopping {name} (pid {pid}) left by an earlier run" in log, log
            assert not localcarbon.pid_alive(pid), name
        assert udp_port_state(int(ports["statsd"])).sockets == 2, "only the new proxies"
        assert "graph: " not in log and "cluster page (" not in log, log
        os.kill(pid_of(data, "agg-1"), signal.SIGKILL)
        assert runs[1].proc.wait(90) == 1, runs[1].describe()
        assert "agg-1 exited" in runs[1].log_text(None), runs[1].describe()
        assert not list((data / "pids").glob("*.pid")), runs[1].describe()
        assert not udp_port_bound(int(ports["statsd"]))
    finally:
        for run in runs:
            run.kill()
        localcluster.stop_leftovers(data)


def test_readme_documents_run_local_variables() -> None:
    table = dict(re.findall(r"^\| `(TALLYD_[A-Z_]+)` \| `([^`]*)` \|", README.read_text(), re.M))
    assert table == {name: default for name, (default, _) in localcluster.ENVIRONMENT.items()}


def test_run_local_refuses_arguments() -> None:
    result = bash(f"{RUN_LOCAL} --workers 1")
    assert result.returncode == 2 and "TALLYD_" in result.stdout, result


def test_run_local_refuses_a_taken_statsd_port(tmp_path: Path) -> None:
    """Its proxies set reuse_port: without this check they would share the port with anyone
    else who set it too (another checkout's run-local), and split its traffic."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        port = other.getsockname()[1]
        result = bash(f"TALLYD_STATSD_PORT={port} TALLYD_GRAPHITE_PORT=0 TALLYD_UI_PORT=0 "
                      f"TALLYD_DATA_DIR={tmp_path / 'run'} {RUN_LOCAL}")
    assert result.returncode == 1 and f"127.0.0.1:{port} is taken" in result.stdout, result
    assert not list((tmp_path / "run" / "pids").glob("*.pid"))
