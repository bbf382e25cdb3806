"""tools/localcarbon.py finds a series where carbon 1.1.10 stores it, tagged series included.

carbon normalises each received name (``TaggedSeries.parse(name).path``) and stores a tagged one
under ``_tagged/`` (``TaggedSeries.encode``). The tool re-implements both in the standard library
(it must run under any python3); this test runs carbon's own code in the carbon venv on the same
names and compares.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

CARBON_SCRIPT = """
import json, os, sys
from carbon.util import TaggedSeries
out = []
for name in json.load(sys.stdin):
    try:
        norm = TaggedSeries.parse(name).path
    except Exception:
        norm = name  # what carbon/cache.py does when the name does not parse
    paths = [TaggedSeries.encode(norm, os.sep, hash_only=True) + ".wsp"]
    if ";" in norm:
        paths.append(TaggedSeries.encode(norm, os.sep, hash_only=False) + ".wsp")
    out.append([norm, paths])
json.dump(out, sys.stdout)
"""

HAND_PICKED = [
    "stats_counts.demo.hits",
    "stats_counts.demo.hits;env=prod",
    "stats_counts.demo.hits;zone=b;env=prod",  # tags are sorted
    "stats.timers.api.lat.upper_90;host=a.b.c",  # dots in a value
    "a;k=v;k=w",  # the last of a repeated tag wins
    "~lead.tilde;x=y",
    "~~",
    "a;flag",  # a bare word (Etsy's DogStatsD tag without ':') does not parse
    "a;=v",
    "a;k=",
    "a;k=~v",
    "a;k!=v",
    "a;k^=v",
    "a;",
    ";k=v",
    'om{env="prod",zone="b"}',
    'om{a="x\\\\"y"}',
    'om{a="1"}{b="2"}',
    '{a="1"}',
    "a;name=other",
    ".leading.dot",
    "",
]


def load_localcarbon() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "localcarbon", REPO_ROOT / "tools" / "localcarbon.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_names(count: int) -> list[str]:
    rng = random.Random(20261201)
    alphabet = "ab.~;=!^{}\",\\_-1"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
            for _ in range(count)]


def test_tagged_paths_match_carbon(carbon_available: Path) -> None:
    localcarbon = load_localcarbon()
    names = HAND_PICKED + generated_names(3000)
    result = subprocess.run(
        [str(carbon_available / "bin" / "python"), "-c", CARBON_SCRIPT],
        input=json.dumps(names), capture_output=True, text=True, check=True, timeout=60,
    )
    expected = json.loads(result.stdout)
    mismatches = [
        (name, norm, paths, localcarbon.normalize_series(name), localcarbon.whisper_relpaths(name))
        for name, (norm, paths) in zip(names, expected, strict=True)
        if localcarbon.normalize_series(name) != norm or localcarbon.whisper_relpaths(name) != paths
    ]
    assert not mismatches, mismatches[:10]
    tagged = sum(";" in norm for norm, _ in expected)
    assert tagged > 100, f"only {tagged} generated names are tagged: the test lost its point"


@pytest.mark.parametrize(("metric", "expected"), [
    ("stats_counts.demo.hits", "stats_counts/demo/hits.wsp"),
    ("stats_counts.demo.hits;env=prod",
     "_tagged/{h0}/{h1}/{h}.wsp"),
])
def test_whisper_relpaths_shape(metric: str, expected: str) -> None:
    import hashlib

    localcarbon = load_localcarbon()
    digest = hashlib.sha256(b"stats_counts.demo.hits;env=prod").hexdigest()
    assert localcarbon.whisper_relpaths(metric)[0] == expected.format(
        h0=digest[:3], h1=digest[3:6], h=digest)


def test_tag_order_does_not_matter() -> None:
    localcarbon = load_localcarbon()
    assert (localcarbon.whisper_relpaths("m;b=2;a=1")
            == localcarbon.whisper_relpaths("m;a=1;b=2"))


# -- web-start / web-stop without graphite-web: a stand-in graphite.wsgi --------------------

FAKE_WSGI = """
import os, time
while os.path.exists(os.path.join(os.path.dirname(__file__), "hold")):
    time.sleep(0.05)  # a slow start: Django importing, a busy machine

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"1.1.10"]
"""


def fake_graphite(tmp_path: Path, *, hold: bool) -> tuple[Path, Path]:
    """A carbon dir whose python is this one and whose graphite.wsgi is `FAKE_WSGI` (which
    waits while DATA/webapp/graphite/hold exists), and the data dir."""
    carbon = tmp_path / "carbon"
    (carbon / "bin").mkdir(parents=True)
    python = carbon / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (carbon / "bin" / "carbon-cache.py").write_text("")
    installed = carbon / "lib" / "python3.11" / "site-packages" / "graphite"
    installed.mkdir(parents=True)
    (installed / "wsgi.py").write_text("")
    data = tmp_path / "data"
    package = data / "webapp" / "graphite"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "wsgi.py").write_text(FAKE_WSGI)
    if hold:
        (package / "hold").write_text("")
    (data / "storage").mkdir()
    (data / "storage" / "graphite.db").write_text("")  # no migrate
    return carbon, data


def web_tool(carbon: Path, *args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "tools" / "localcarbon.py"), "--carbon-dir",
            str(carbon), *args]


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.05)


def kill_if_running(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def server_pid(data: Path) -> int | None:
    """The stand-in server's pid, from /proc (whatever files the tool left)."""
    script = str(data / "webapp" / "tallyd_graphite_wsgi.py").encode()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and script in (proc / "cmdline").read_bytes():
                return int(proc.name)
    return None


def test_web_stop_finds_a_server_whose_web_start_was_killed_while_it_started(
        tmp_path: Path) -> None:
    """The server runs in its own session: a web-start killed while waiting for it to answer
    (tools/run-local's Ctrl-C) leaves it running, and web-stop must still find it."""
    lc = load_localcarbon()
    carbon, data = fake_graphite(tmp_path, hold=True)
    start = subprocess.Popen(web_tool(carbon, "web-start", "--data-dir", str(data)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: server_pid(data) is not None, "graphite-web process")
        pid = server_pid(data)
        wait_until(lambda: (data / lc.WEB_PID_FILE).exists(), "graphite-web.pid", seconds=10)
        start.kill()
        start.wait()
        assert lc.pid_alive(pid)
        stop = subprocess.run(web_tool(carbon, "web-stop", "--data-dir", str(data)),
                              capture_output=True, text=True, timeout=60)
        assert stop.stdout == f"stopped pid={pid}\n", stop
        assert not lc.pid_alive(pid)
    finally:
        start.kill()
        start.wait()
        kill_if_running(server_pid(data))


def test_web_start_interrupted_stops_its_server_and_web_stop_falls_back_to_the_state_file(
        tmp_path: Path) -> None:
    lc = load_localcarbon()
    carbon, data = fake_graphite(tmp_path, hold=True)
    start = subprocess.Popen(web_tool(carbon, "web-start", "--data-dir", str(data)),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        wait_until(lambda: (data / lc.WEB_PID_FILE).exists(), "graphite-web.pid")
        pid = int((data / lc.WEB_PID_FILE).read_text())
        start.send_signal(signal.SIGINT)  # Ctrl-C: web-start stops what it started
        start.wait(timeout=60)
        assert not lc.pid_alive(pid) and not (data / lc.WEB_PID_FILE).exists()
        # A server started, and its pid file lost (an older web-start): the state file has it.
        (data / "webapp" / "graphite" / "hold").unlink()
        started = subprocess.run(web_tool(carbon, "web-start", "--data-dir", str(data)),
                                 capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        pid = int(started.stdout.split("pid=")[1])
        (data / lc.WEB_PID_FILE).unlink()
        stop = subprocess.run(web_tool(carbon, "web-stop", "--data-dir", str(data)),
                              capture_output=True, text=True, timeout=60)
        assert stop.stdout == f"stopped pid={pid}\n", stop
        assert not lc.pid_alive(pid)
    finally:
        start.kill()
        start.wait()
        if start.stdout is not None:
            start.stdout.close()
        kill_if_running(server_pid(data))
