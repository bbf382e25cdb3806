"""End to end: docker-compose.yml brought up for real on a private dockerd.

The images are built from deploy/Dockerfile and deploy/carbon/Dockerfile with
``--build-arg BASE=local/debian:bookworm``, a base made with debootstrap (no registry is
reachable here; harness.dockerd caches its tarball in .cache/docker-base/). The stack runs with
the configs of deploy/compose/*.toml; the compose file's own load generator, run as a one-off
client container, sends counters to the proxies' service name; every series must then be in the
Whisper files of the carbon-cache the ring names for it (``tallyd-ring lookup`` on the same
aggregator.toml), with the count sent, and in no other. ``down -v`` and the engine's stop run even
when a test fails, and the host must be left as it was found (iptables, ip_forward, docker0).

Needs root and Debian's docker.io, docker-compose, debootstrap and iptables
(tools/bootstrap --test installs them); skips without them, except under CI, where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import whisper

from harness.checkout import REPO_ROOT
from harness.dockerd import (
    BASE_IMAGE,
    EngineError,
    PrivateDockerd,
    host_state,
    missing_tools,
    mounts_under,
    pid_alive,
)
from harness.port import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAMES = 40
PER_NAME = 5
SERVICES = ("carbon-a", "carbon-b", "graphite-web", "aggregator-1", "aggregator-2", "proxy")
CARBON_NODE_TO_SERVICE = {"carbon-a:2003:a": "carbon-a", "carbon-b:2003:b": "carbon-b"}


def _require_engine() -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "a private dockerd needs root"
    elif missing := missing_tools():
        reason = f"missing {', '.join(missing)} (tools/bootstrap --test installs them as root)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


class Stack:
    def __init__(self, engine: PrivateDockerd, graphite_port: int) -> None:
        self.engine = engine
        self.graphite_port = graphite_port

    def compose(self, *args: str, timeout: float = 900.0) -> str:
        os.environ["GRAPHITE_PORT"] = str(self.graphite_port)
        return self.engine.compose(REPO_ROOT, *args, timeout=timeout)

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service, timeout=60).split()

    def health(self, container: str) -> str:
        return self.engine.docker(
            "inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", container,
            timeout=60).strip()

    def wait_healthy(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {s: [self.health(c) for c in self.containers(s)] for s in SERVICES}
            if all(v and all(x == "running healthy" for x in v) for v in states.values()) \
                    and len(states["proxy"]) == 2:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not healthy in {timeout} s: {states}\n{self.logs()}")
            time.sleep(2)

    def logs(self) -> str:
        try:
            return self.compose("logs", "--no-color", "--tail", "40", timeout=60)[-12000:]
        except EngineError as error:
            return str(error)

    def volume_dir(self, service: str) -> Path:
        name = f"tallydtest_{service}"
        mountpoint = self.engine.docker("volume", "inspect", "--format", "{{.Mountpoint}}", name,
                                        timeout=60).strip()
        return Path(mountpoint)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    _require_engine()
    before = host_state()
    engine = PrivateDockerd()
    stack = Stack(engine, free_port())
    try:
        engine.start()
        engine.import_base()
        stack.compose("build", "--build-arg", f"BASE={BASE_IMAGE}", timeout=1500)
        stack.compose("up", "-d", timeout=300)
        stack.wait_healthy()
        yield stack
    finally:
        try:
            stack.compose("down", "-v", "--timeout", "20", timeout=300)
        except Exception as error:  # the engine's stop cleans up
            print(f"docker-compose down failed: {error}", file=sys.stderr)
        finally:
            os.environ.pop("GRAPHITE_PORT", None)
            engine.stop()
    after = host_state()
    assert after == before, "the host was not left as it was found"


@pytest.fixture(scope="module")
def sent(stack: Stack) -> dict[str, object]:
    """What the load generator sent (as a one-off client container) to proxy:8125."""
    out = stack.compose("run", "--rm", "--no-deps", "loadgen", "tallyd-loadgen",
                        "--target", "proxy:8125", "--prefix", "compose", "--names", str(NAMES),
                        "--count", str(NAMES * PER_NAME), "--rate", "400", timeout=120)
    report: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return report


def test_a_failing_test_still_leaves_the_host_as_it_was() -> None:
    """The cleanup the stack fixture relies on, when the code inside it raises."""
    _require_engine()
    before = host_state()
    engine = PrivateDockerd()
    pid = None
    with pytest.raises(RuntimeError, match="on purpose"), engine:
        engine.import_base()
        engine.docker("run", "-d", BASE_IMAGE, "sleep", "600", timeout=120)
        assert Path("/sys/class/net/docker0").exists()
        assert mounts_under(engine.folder), "a running container has mounts"
        pid = int(engine.pidfile.read_text())
        raise RuntimeError("on purpose")
    assert pid is not None and not pid_alive(pid)
    assert not engine.folder.exists() and not mounts_under(engine.folder)
    assert host_state() == before


def test_every_service_runs_under_init_and_not_as_root(stack: Stack) -> None:
    users = {"carbon-a": "2003", "graphite-web": "2003", "aggregator-1": "8125", "proxy": "8125"}
    for service, uid in users.items():
        for container in stack.containers(service):
            init = stack.engine.docker("exec", container, "cat", "/proc/1/comm", timeout=60)
            assert init.strip() == "docker-init", (service, init)
            assert stack.engine.docker("exec", container, "id", "-u",
                                       timeout=60).strip() == uid, service


def ring_nodes(paths: list[str]) -> dict[str, str]:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "tallyd-ring"), "lookup", "--config",
         str(REPO_ROOT / "deploy" / "compose" / "aggregator.toml"), *paths],
        capture_output=True, text=True, check=True, timeout=60)
    nodes = {}
    for line in result.stdout.splitlines():
        path, node = line.split("\t")
        nodes[path] = CARBON_NODE_TO_SERVICE[node]
    return nodes


def whisper_total(root: Path, path: str) -> float | None:
    file = root / "whisper" / (path.replace(".", "/") + ".wsp")
    if not file.exists():
        return None
    (_, _, _), values = whisper.fetch(str(file), int(time.time()) - 3600)
    return sum(v for v in values if v is not None)


def test_both_proxy_replicas_answer_the_service_name(stack: Stack,
                                                     sent: dict[str, object]) -> None:
    addresses = sent["addresses"]
    assert isinstance(addresses, dict)
    assert len(addresses) == 2, addresses
    assert sum(addresses.values()) == NAMES * PER_NAME


def test_every_series_lands_on_the_node_the_ring_names(stack: Stack,
                                                       sent: dict[str, object]) -> None:
    names = sent["names"]
    assert isinstance(names, dict) and len(names) == NAMES
    paths = [f"stats_counts.{name}" for name in names]
    nodes = ring_nodes(paths)
    assert set(nodes.values()) == {"carbon-a", "carbon-b"}, "the ring should use both nodes"
    roots = {service: stack.volume_dir(service) for service in ("carbon-a", "carbon-b")}
    deadline = time.monotonic() + 60  # two flushes of 10 s, and carbon's write-behind
    while True:
        found = {path: {s: whisper_total(root, path) for s, root in roots.items()}
                 for path in paths}
        wrong = {path: totals for path, totals in found.items()
                 if totals[nodes[path]] != PER_NAME
                 or any(v is not None for s, v in totals.items() if s != nodes[path])}
        if not wrong:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(wrong)} series wrong or missing: "
                                 f"{dict(list(wrong.items())[:5])}\n{stack.logs()}")
        time.sleep(2)


def test_graphite_web_reads_the_whole_ring(stack: Stack, sent: dict[str, object]) -> None:
    url = (f"http://127.0.0.1:{stack.graphite_port}/metrics/find?query=stats_counts.compose.*")
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                found = {item["text"] for item in json.load(answer)}
        except OSError:
            found = set()
        if found >= {f"c{i}" for i in range(NAMES)}:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"graphite-web lists {sorted(found)}")
        time.sleep(2)


def test_the_load_generator_scales_up_from_zero(stack: Stack) -> None:
    """``loadgen`` has no container until scaled up; then its own command feeds the ring."""
    assert stack.containers("loadgen") == []
    path = "stats_counts.loadgen.c0"
    root = stack.volume_dir(ring_nodes([path])[path])
    stack.compose("up", "-d", "--no-recreate", "--scale", "loadgen=1", timeout=300)
    try:
        assert len(stack.containers("loadgen")) == 1
        assert len(stack.containers("proxy")) == 2
        deadline = time.monotonic() + 60
        while not whisper_total(root, path):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {path} in {root}\n{stack.logs()}")
            time.sleep(2)
    finally:
        stack.compose("up", "-d", "--no-recreate", "--scale", "loadgen=0", timeout=300)
    assert stack.containers("loadgen") == []
