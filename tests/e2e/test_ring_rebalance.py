"""End to end: change the Carbon ring under a real aggregator, then ``tallyd-ring plan``,
``rebalance`` and ``check`` through real agents (issue 12's verification).

Four real carbon-caches (``carbon==1.1.10``, ``1s:1h``), each on its own loopback address
(127.0.0.2-5, so that R=2 has distinct hosts) with its own data dir, port and instance name,
and a real ``tallyd-ring agent`` beside each (the console script), are shared by the module.
Each test starts from empty data dirs (the processes stay up), has its own counter names
(a prefix) and aggregator identities, and judges its own series; the aggregators' own
metrics are moved by every rebalance too, and not judged.

A test: an aggregator on the OLD ring writes rounds 1-3 of known counters (one point per
round, a value unique to (round, counter): see tests/e2e/carbonring_helpers.py), is stopped
once they are on disk, and a new one on the NEW ring writes rounds 4-6. Then the tool runs.
Afterwards every counter series must be, on each node NEW names for it, exactly the six
points sent (a doubled or lost point shows), and on no other node once ``--delete-source``
ran (before that, old copies stay where they were).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from carbonring_helpers import (
    FLUSH_INTERVAL,
    SCHEMA,
    Cache,
    read_whisper,
    send_round,
    wait_for_exact,
)

from common.ring import Ring
from harness.daemon import DaemonProcess, wait_until
from harness.port import free_port
from harness.tallyd import AggregatorProcess, start_aggregator

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TALLYD_RING = str(Path(sys.executable).parent / "tallyd-ring")
ROUNDS_BEFORE = (1, 2, 3)
ROUNDS_AFTER = (4, 5, 6)
COUNTERS = 10


class BoundCache(Cache):
    """A `Cache` on its own loopback address (``--bind``), so nodes are distinct hosts."""

    def __init__(self, data_dir: Path, *, instance: str, bind: str) -> None:
        super().__init__(data_dir, schema=SCHEMA, instance=instance)
        self.bind = bind

    def start(self) -> BoundCache:
        args = ["start", "--data-dir", str(self.data_dir), "--schema", self.schema,
                "--instance", self.instance, "--bind", self.bind]
        if self.port is not None:
            args += ["--port", str(self.port)]
        result = self._run(*args)
        self.port = int(result.stdout.split("port=")[1].split()[0])
        self.pid = int(result.stdout.split("pid=")[1].split()[0])
        return self

    @property
    def address(self) -> tuple[str, int]:
        assert self.port is not None, "carbon-cache not started"
        return self.bind, self.port


class Agent:
    """A real ``tallyd-ring agent`` on 127.0.0.1 serving a cache's Whisper directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: DaemonProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Agent:
        self.proc = DaemonProcess([TALLYD_RING, "agent", "--data-dir", str(self.data_dir),
                                   "--listen", f"127.0.0.1:{self.port}"])
        wait_until(self.answers, 20, interval=0.1, message=f"agent on {self.url}")
        return self

    def answers(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError("agent exited\n" + self.proc.describe())
        try:
            with urllib.request.urlopen(self.url + "/version", timeout=2) as reply:
                return bool(json.load(reply)["agent"] == "tallyd-ring")
        except (OSError, urllib.error.URLError):
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc = None


@attrs.define
class Node:
    cache: BoundCache
    agent: Agent

    @property
    def spec(self) -> str:
        return self.cache.spec


@pytest.fixture(scope="module")
def nodes(carbon_available: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, Node]]:
    """Caches a-d on 127.0.0.2-5, each with its agent; all stopped afterwards."""
    root = tmp_path_factory.mktemp("ring")
    made: dict[str, Node] = {}
    try:
        for i, instance in enumerate("abcd", 2):
            cache = BoundCache(root / f"carbon-{instance}", instance=instance,
                               bind=f"127.0.0.{i}")
            made[instance] = Node(cache, Agent(cache.data_dir / "storage" / "whisper"))
            cache.start()
            made[instance].agent.data_dir.mkdir(parents=True, exist_ok=True)
            made[instance].agent.start()
        yield made
    finally:
        for node in made.values():
            node.agent.kill()
            with contextlib.suppress(Exception):
                node.cache.stop()


@pytest.fixture(autouse=True)
def wiped(request: pytest.FixtureRequest) -> None:
    """Each test starts from empty data dirs (the caches and agents stay up): what earlier
    tests left would be moved again by every rebalance, and only slow the tests down."""
    if "nodes" not in request.fixturenames:
        return
    for node in request.getfixturevalue("nodes").values():
        wipe(node.agent.data_dir)


def wipe(data_dir: Path, *, limit_seconds: float = 10.0) -> None:
    """Empty ``data_dir``. A cache may still be writing an earlier test's last points (it
    writes about once a second) while this deletes, and rmtree then meets a file it did not
    list (ENOTEMPTY) or loses one it did: such a pass is repeated until one succeeds."""
    deadline = time.monotonic() + limit_seconds
    while True:
        try:
            for entry in data_dir.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def new_series(cache: Cache, before: set[str]) -> bool:
    return bool(set(cache.series()) - before)


@pytest.fixture
def aggregators() -> Iterator[list[AggregatorProcess]]:
    procs: list[AggregatorProcess] = []
    yield procs
    for proc in procs:
        proc.kill_group()


# -- helpers -------------------------------------------------------------------------------


def ring_of(members: Sequence[Node], r: int) -> Ring:
    return Ring.from_nodes([n.cache.node for n in members], hash_type="carbon_ch",
                           replication_factor=r)


def write_ring_file(path: Path, members: Sequence[Node], r: int) -> str:
    carbon = ", ".join(f'"{n.spec}"' for n in members)
    agents = "\n".join(f'"{n.spec}" = "{n.agent.url}"' for n in members)
    path.write_text(f'carbon = [{carbon}]\nring_hash = "carbon_ch"\nreplication_factor = {r}\n'
                    f"flush_interval = 10  # an aggregator key: ignored\n\n[agents]\n{agents}\n")
    return str(path)


def start_writer(procs: list[AggregatorProcess], members: Sequence[Node], r: int,
                 identity: str) -> AggregatorProcess:
    args = ["--listen", "udp://127.0.0.1:0", "--mgmt-port", "0",
            "--flush-interval", f"{FLUSH_INTERVAL:g}", "--ring-hash", "carbon_ch",
            "--replication-factor", str(r), "--identity", identity, "--delete-idle-stats"]
    for node in members:
        args += ["--carbon", node.spec]
    proc = start_aggregator(args)
    procs.append(proc)
    return proc


def values(names: Sequence[str], k: int) -> dict[str, int]:
    return {name: k * 1000 + i for i, name in enumerate(names)}


def paths_of(names: Sequence[str]) -> list[str]:
    return [p for n in names for p in (f"stats.{n}", f"stats_counts.{n}")]


def expected_points(names: Sequence[str], rounds: dict[int, int]) -> dict[str, dict[int, float]]:
    """Every counter path's points: value of round k at its flush (rate = count at 1 s)."""
    out: dict[str, dict[int, float]] = {}
    for i, name in enumerate(names):
        for path in (f"stats.{name}", f"stats_counts.{name}"):
            out[path] = {ts: float(k * 1000 + i) for k, ts in rounds.items()}
    return out


def by_owner(ring: Ring, members: Sequence[Node], points: dict[str, dict[int, float]]
             ) -> dict[Cache, dict[str, dict[int, float]]]:
    caches = {n.cache.node.identity: n.cache for n in members}
    want: dict[Cache, dict[str, dict[int, float]]] = {n.cache: {} for n in members}
    for path, pts in points.items():
        for owner in ring.nodes_for(path):
            want[caches[owner.identity]][path] = pts
    return want


@attrs.frozen
class Written:
    names: list[str]
    rounds: dict[int, int]  # round -> flush timestamp
    old: Ring
    new: Ring
    old_file: str
    new_file: str


def write_history(procs: list[AggregatorProcess], tmp_path: Path, prefix: str,
                  old_members: Sequence[Node], new_members: Sequence[Node], *,
                  r_old: int = 1, r_new: int = 1) -> Written:
    """Rounds 1-3 through an aggregator on OLD, rounds 4-6 through one on NEW, each waited
    for on disk (the runbook's "wait for the old caches to write out")."""
    names = [f"{prefix}.c{i}" for i in range(COUNTERS)]
    old, new = ring_of(old_members, r_old), ring_of(new_members, r_new)
    first = start_writer(procs, old_members, r_old, f"{prefix}1")
    rounds = {k: send_round(first.udp, values(names, k)) for k in ROUNDS_BEFORE}
    wait_for_exact(by_owner(old, old_members, expected_points(names, rounds)),
                   what="rounds on OLD", extra=first.describe)
    first.stop()
    second = start_writer(procs, new_members, r_new, f"{prefix}2")
    # The runbook's check: the aggregator logs the fingerprint plan prints for new.toml.
    assert f"ring={new.fingerprint()}" in second.log_text(None), second.describe()
    after = {k: send_round(second.udp, values(names, k)) for k in ROUNDS_AFTER}
    # Now each NEW owner holds rounds 4-6, and rounds 1-3 too where it was an OLD owner.
    everything = expected_points(names, rounds | after)
    later = expected_points(names, after)
    members = list({id(n): n for n in [*old_members, *new_members]}.values())
    now: dict[Cache, dict[str, dict[int, float]]] = {n.cache: {} for n in members}
    caches = {n.cache.node.identity: n.cache for n in members}
    for path in later:
        before = {o.identity for o in old.nodes_for(path)}
        for owner in new.nodes_for(path):
            now[caches[owner.identity]][path] = (everything if owner.identity in before
                                                 else later)[path]
    wait_for_exact(now, what="rounds on NEW", extra=second.describe)
    rounds.update(after)
    return Written(names, rounds, old, new,
                   write_ring_file(tmp_path / "old.toml", old_members, r_old),
                   write_ring_file(tmp_path / "new.toml", new_members, r_new))


def tool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TALLYD_RING, *args], capture_output=True, text=True,
                          timeout=timeout)


def placement(members: Sequence[Node], paths: Sequence[str]
              ) -> dict[str, dict[str, dict[int, float]]]:
    """``{path: {instance: points}}`` for every copy of each path on ``members``."""
    files = {(n.cache.instance, p): n.cache.path_of(p) for n in members for p in paths}
    data = read_whisper(files.values())
    out: dict[str, dict[str, dict[int, float]]] = {p: {} for p in paths}
    for (instance, path), file in files.items():
        if data[file] is not None:
            out[path][instance] = data[file]  # type: ignore[assignment]
    return out


def assert_placed(w: Written, members: Sequence[Node], *, old_copies: bool) -> None:
    """Every counter path on exactly NEW's owners with all six points; other copies only
    when ``old_copies`` (and then only where OLD put them)."""
    want = expected_points(w.names, w.rounds)
    got = placement(members, list(want))
    instances = {n.cache.node.identity: n.cache.instance for n in members}
    problems = []
    for path, pts in want.items():
        owners = {instances[o.identity] for o in w.new.nodes_for(path)}
        for instance in owners:
            if got[path].get(instance) != pts:
                problems.append(f"{path} on {instance}: {got[path].get(instance)} != {pts}")
        strays = set(got[path]) - owners
        allowed = {instances[o.identity] for o in w.old.nodes_for(path)} if old_copies else set()
        if strays - allowed:
            problems.append(f"{path}: copies on {sorted(strays - allowed)}")
    assert not problems, "\n".join(problems)


def moving(w: Written) -> list[str]:
    """The counter paths whose OLD holders are not all NEW owners."""
    return [p for p in paths_of(w.names)
            if {o.identity for o in w.old.nodes_for(p)} - {o.identity for o in w.new.nodes_for(p)}]


def check_prefix(ring_file: str, prefix: str) -> tuple[int, list[dict[str, Any]]]:
    result = tool("check", "--ring", ring_file, "--json")
    report = json.loads(result.stdout)
    assert all(a["error"] is None for a in report["agents"]), report["agents"]
    return result.returncode, [m for m in report["misplaced"] if f".{prefix}." in m["name"]]


# -- tests ---------------------------------------------------------------------------------


def test_adding_a_node_moves_every_point_and_deletes_only_when_asked(
        nodes: dict[str, Node], aggregators: list[AggregatorProcess], tmp_path: Path) -> None:
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    w = write_history(aggregators, tmp_path, "add", [a, b], [a, b, c])
    assert moving(w), "the names must make some series move"

    plan = tool("plan", "--from", w.old_file, "--to", w.new_file, "--json")
    assert plan.returncode == 0, plan.stderr
    lines = [json.loads(line) for line in plan.stdout.splitlines()]
    planned = {m["move"]["name"] for m in lines if "move" in m}
    assert set(moving(w)) <= planned
    assert "summary" in lines[-1]
    assert all(m["move"]["targets"] == [c.spec] for m in lines
               if "move" in m and ".add." in f'.{m["move"]["name"]}')

    first = tool("rebalance", "--from", w.old_file, "--to", w.new_file)
    assert first.returncode == 0, first.stdout + first.stderr
    assert_placed(w, [a, b, c], old_copies=True)
    status, misplaced = check_prefix(w.new_file, "add")
    assert status == 1 and {m["name"] for m in misplaced} == set(moving(w))
    assert all(m["duplicated_on"] == [c.spec] for m in misplaced)

    second = tool("rebalance", "--from", w.old_file, "--to", w.new_file, "--delete-source")
    assert second.returncode == 0, second.stdout + second.stderr
    assert_placed(w, [a, b, c], old_copies=False)
    assert check_prefix(w.new_file, "add")[1] == []


def test_removing_a_node_drains_it(
        nodes: dict[str, Node], aggregators: list[AggregatorProcess], tmp_path: Path) -> None:
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    w = write_history(aggregators, tmp_path, "remove", [a, b, c], [a, c])
    result = tool("rebalance", "--from", w.old_file, "--to", w.new_file, "--delete-source")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_placed(w, [a, b, c], old_copies=False)
    assert not [m for m in b.cache.series() if ".remove." in f".{m}"]


def test_replication_two_copies_to_every_owner(
        nodes: dict[str, Node], aggregators: list[AggregatorProcess], tmp_path: Path) -> None:
    a, b, c, d = nodes["a"], nodes["b"], nodes["c"], nodes["d"]
    w = write_history(aggregators, tmp_path, "repl", [a, b, c], [a, b, c, d], r_new=2)
    result = tool("rebalance", "--from", w.old_file, "--to", w.new_file, "--delete-source",
                  "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout)["outcome"]
    assert outcome["failed"] == 0 and outcome["transfers_verified"] > 0
    assert_placed(w, [a, b, c, d], old_copies=False)


def test_rebalance_killed_midway_then_rerun_finishes_without_doubling(
        nodes: dict[str, Node], aggregators: list[AggregatorProcess], tmp_path: Path) -> None:
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    w = write_history(aggregators, tmp_path, "resume", [a, b], [b, c])
    on_c = set(c.cache.series())
    slow = subprocess.Popen([TALLYD_RING, "rebalance", "--from", w.old_file, "--to", w.new_file,
                             "--delete-source", "--workers", "1", "--rate", "400k"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: new_series(c.cache, on_c), 30, interval=0.05,
                   message="a first file moved to c")
        slow.send_signal(signal.SIGKILL)
    finally:
        slow.kill()
        slow.communicate(timeout=10)
    assert slow.returncode == -signal.SIGKILL, "the rebalance ended before it was killed"
    left = [p for p in moving(w) if Path(a.cache.path_of(p)).exists()]
    assert left, "killed too late: every move from a was done"
    rerun = tool("rebalance", "--from", w.old_file, "--to", w.new_file, "--delete-source")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_placed(w, [a, b, c], old_copies=False)


def test_an_agent_dying_during_the_move_fails_and_deletes_nothing_of_it(
        nodes: dict[str, Node], aggregators: list[AggregatorProcess], tmp_path: Path) -> None:
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    w = write_history(aggregators, tmp_path, "dies", [a, b], [a, b, c])
    sources = {w.old.node_for(p).identity for p in moving(w)}
    assert sources == {a.cache.node.identity, b.cache.node.identity}, "a and b must both lose"
    before_b = set(b.cache.series())
    on_c = set(c.cache.series())
    run = subprocess.Popen([TALLYD_RING, "rebalance", "--from", w.old_file, "--to", w.new_file,
                            "--delete-source", "--workers", "1", "--rate", "400k"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The moves run in NEW's node order (a, b, c): once a's first file reached c, b's
        # agent dies; b's moves must all fail and leave b's files alone.
        wait_until(lambda: new_series(c.cache, on_c), 30, interval=0.05,
                   message="a first file moved to c")
        b.agent.kill()
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
        b.agent.start()
    assert run.returncode == 1, out + err
    assert "FAILED" in out and str(b.cache.node) in out
    assert set(b.cache.series()) >= before_b  # nothing deleted (the aggregator may add)
    assert [p for p in moving(w) if w.old.node_for(p).identity == b.cache.node.identity
            and Path(b.cache.path_of(p)).exists()], "b's files must still be there"
    rerun = tool("rebalance", "--from", w.old_file, "--to", w.new_file, "--delete-source")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_placed(w, [a, b, c], old_copies=False)


def test_bad_ring_file_exits_2(nodes: dict[str, Node], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f'carbon = ["{nodes["a"].spec}"]\n')
    result = tool("plan", "--from", str(bad), "--to", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith("tallyd-ring: error: agents: no agent for")
