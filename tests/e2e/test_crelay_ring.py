"""End to end: a live carbon-c-relay on loopback places every path where tallyd's ring says.

Debian's ``/usr/bin/carbon-c-relay`` (3.7.3) runs with one consistent-hash cluster of four
local Graphite sinks (`harness.sink.GraphiteSink`, one port each, all on 127.0.0.1) and
listens on a free loopback port. The test sends plain paths, tagged paths
(``name;tag=value``) and paths with bytes >= 0x80 over TCP, each with a unique value, and
checks that each line arrives at exactly the sinks `common.ring.Ring.nodes_for` names for the
name the relay forwarded, with the mode's default tag key (``name_only``).

Why a live relay and not only its test mode (tests/unit/test_ring_crelay.py): the test mode
hashes a tagged path whole, the running relay only the name before the first ``;``; and the
running relay rewrites bytes outside ``[A-Za-z0-9]`` and its allowed characters (``-_:#``)
to ``_`` before it hashes and forwards. Both are checked here.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.ring import CarbonNode, Ring
from harness.port import free_port
from harness.sink import GraphiteSink
from tests.support.crelay_vectors import RELAY, relay_config, run_test_mode

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not RELAY.exists(), reason=f"{RELAY} is absent (tools/bootstrap --test "
                                                  "installs Debian's carbon-c-relay 3.7.3)"),
]

START_ATTEMPTS = 3  # the free port may be taken by the time the relay binds it
START_TIMEOUT = 10.0
ARRIVAL_TIMEOUT = 20.0
# name -> what the live relay forwards (its dispatcher's rewrite of the name part).
SENT = {
    "e2e.crelay.plain.a": "e2e.crelay.plain.a",
    "e2e.crelay.plain.b.count": "e2e.crelay.plain.b.count",
    "e2e.crelay.disk.used;host=a;dc=eu": "e2e.crelay.disk.used;host=a;dc=eu",
    "e2e.crelay.disk.used;dc=eu;host=a": "e2e.crelay.disk.used;dc=eu;host=a",
    "e2e.crelay.disk.used;host=b": "e2e.crelay.disk.used;host=b",
    "e2e.crelay.cpu;env=prod;région=été": "e2e.crelay.cpu;env=prod;région=été",
    "e2e.crelay.m\u00fcller.temp": "e2e.crelay.m__ller.temp",
    "e2e.crelay.caf\u00e9;x=y": "e2e.crelay.caf__;x=y",
    "e2e.crelay.dash-and_under:colon#hash": "e2e.crelay.dash-and_under:colon#hash",
    **{f"e2e.crelay.svc{i}.hits;dc=eu;rack=r{i % 7}": f"e2e.crelay.svc{i}.hits;dc=eu;rack=r{i % 7}"
       for i in range(60)},
    **{f"e2e.crelay.host{i}.load": f"e2e.crelay.host{i}.load" for i in range(60)},
}  # fmt: skip
LAYOUTS = {  # mode: (replication factor, instance per sink: None = none)
    "crelay_carbon_ch": (2, ["a", "b", "c", "d"]),
    "crelay_fnv1a_ch": (2, ["a", None, "c", None]),
    "jump_fnv1a_ch": (2, ["2", "10", None, "x"]),
}


@pytest.fixture
def sinks() -> Iterator[list[GraphiteSink]]:
    """Four Carbon stand-ins on 127.0.0.1, each its own port."""
    started = [GraphiteSink().start() for _ in range(4)]
    try:
        yield started
    finally:
        for sink in started:
            sink.close()


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator[object]:
    """Starts carbon-c-relay for a config (``listen`` filled in) and stops every relay it
    started when the test ends, failed or not."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(mode: str, factor: int, members: list[str]) -> int:
        for attempt in range(START_ATTEMPTS):
            port = free_port()
            config = tmp_path / f"relay{attempt}.conf"
            config.write_text(relay_config(mode, factor, members, listen=f"127.0.0.1:{port}"),
                              encoding="utf-8")
            log = tmp_path / f"relay{attempt}.log"
            proc = subprocess.Popen([str(RELAY), "-f", str(config), "-w", "1", "-l", str(log)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.STDOUT)
            procs.append(proc)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                if _accepting(port):
                    return port
                time.sleep(0.05)
            proc.kill()
            proc.wait()
        log_text = log.read_text(errors="replace") if log.exists() else ""
        pytest.fail(f"carbon-c-relay did not start in {START_ATTEMPTS} attempts:\n{log_text}")

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _send(port: int, names: list[str]) -> None:
    now = int(time.time())
    data = "".join(f"{name} {index} {now}\n" for index, name in enumerate(names)).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)


def _arrivals(sinks: list[GraphiteSink], names: list[str], factor: int
              ) -> dict[int, list[tuple[int, str]]]:
    """value -> [(sink index, forwarded name)], once every sent line arrived ``factor`` times."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while True:
        got: dict[int, list[tuple[int, str]]] = {}
        for index, sink in enumerate(sinks):
            for record in sink.records():
                name, value, _ = record.line.split(" ")
                if name.startswith("e2e.crelay."):
                    got.setdefault(int(value), []).append((index, name))
        if sum(map(len, got.values())) >= len(names) * factor or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.mark.parametrize("mode", LAYOUTS)
def test_the_live_relay_places_every_path_where_the_ring_says(
    mode: str, sinks: list[GraphiteSink], start_relay: object
) -> None:
    factor, instances = LAYOUTS[mode]
    members = [CarbonNode("127.0.0.1", sink.port, instance)
               for sink, instance in zip(sinks, instances, strict=True)]
    ring = Ring.from_nodes(members, hash_type=mode, replication_factor=factor)
    assert ring.tag_key == "name_only"  # the mode's default: what the live relay does
    port = start_relay(mode, factor, [str(member) for member in members])  # type: ignore[operator]
    names = list(SENT)
    _send(port, names)
    got = _arrivals(sinks, names, factor)

    wrong = []
    for index, name in enumerate(names):
        arrived = got.get(index, [])
        forwarded = {text for _, text in arrived}
        assert forwarded == {SENT[name]}, (name, arrived)
        where = sorted((members[sink] for sink, _ in arrived), key=str)
        if len(arrived) != factor or where != sorted(ring.nodes_for(SENT[name]), key=str):
            wrong.append((name, where, ring.nodes_for(SENT[name])))
    assert wrong == []
    assert sum(map(len, got.values())) == len(names) * factor  # nothing else, no duplicates

    # The disagreement the live relay exists to show: the test mode hashes tagged paths whole.
    tagged = [SENT[name] for name in names if ";" in SENT[name]]
    test_mode = run_test_mode(mode, factor, [str(member) for member in members], tagged)
    as_received = Ring.from_nodes(members, hash_type=mode, replication_factor=factor,
                                  tag_key="as_received")
    assert test_mode.placements == [
        tuple(f"{m.host}:{m.port}" for m in as_received.nodes_for(name)) for name in tagged]
    assert any(as_received.nodes_for(name) != ring.nodes_for(name) for name in tagged)
