#!/usr/bin/env python3
"""Run a real carbon-cache on 127.0.0.1 for the quick start and the end-to-end tests.

Standard library only (and the checkout's ``harness.port``, which is too): it runs under any
python3. carbon itself runs from the separate venv that ``tools/bootstrap`` installs into
``.cache/carbon`` (carbon 1.1.10 needs Python 3.11).

    localcarbon.py start --data-dir DIR [--port P] [--instance NAME] [--schema RETENTIONS]
        Writes DIR/conf/{carbon,storage-schemas,storage-aggregation}.conf, starts
        ``carbon-cache.py --nodaemon`` in the background (log: DIR/carbon.log), waits until the
        plaintext line port accepts connections and prints ``port=P pid=PID``.
        Whisper files go to DIR/storage/whisper/<metric path with / for .>.wsp.
    localcarbon.py stop --data-dir DIR
        SIGTERM to the pid in DIR/localcarbon.pid, then waits for it to exit.
    localcarbon.py status --data-dir DIR
        Prints ``running port=P pid=PID`` (exit 0) or ``stopped`` (exit 1).
    localcarbon.py fetch --data-dir DIR METRIC.PATH [--all]
        Prints the series' points as ``TIMESTAMP VALUE`` lines (via the carbon venv's whisper
        module); ``--all`` includes empty slots as ``TIMESTAMP None``. Exit 2 if there is no
        file for that path yet. Tagged series (``stats_counts.hits;env=prod``, what a DogStatsD
        ``|#env:prod`` becomes) are found where carbon stores them, under ``_tagged/`` (see
        :func:`whisper_relpaths`); the tags may be given in any order.
    localcarbon.py web-start --data-dir DIR [--port P] [--bind ADDRESS] [--whisper-dir W...]
        Serves graphite-web (installed in the same venv by tools/bootstrap) on ADDRESS:P
        (default 127.0.0.1, a free port), reading DIR's Whisper files (or those of every
        ``--whisper-dir``: several carbon-caches of one ring shown as one tree): writes
        DIR/webapp/tallyd_graphite_settings.py (data dirs, a SECRET_KEY made once), runs
        ``django-admin migrate`` once (DIR/storage/graphite.db), starts a threaded WSGI server
        (the standard library's wsgiref) in the background (log: DIR/graphite-web.log), waits
        until it answers and prints ``url=http://ADDRESS:P/ pid=PID``. Graphs:
        ``/render?target=stats_counts.demo.hits&from=-10min`` (PNG, ``&format=json`` for JSON).
    localcarbon.py web-stop --data-dir DIR
        SIGTERM to the pid in DIR/graphite-web.pid (written as soon as the server is started,
        so an interrupted web-start leaves it; without it, the pid in DIR/graphite-web.json),
        then waits for it to exit.

Settings that matter (see docs in the generated carbon.conf): every creation allowed at once
(``MAX_CREATES_PER_MINUTE = inf``; carbon's example value 50 silently drops new metrics), no
update rate limit, pickle receiver off, cache-query port on an ephemeral loopback port, write
locking on, tags off, carbon's own metrics off, no per-connection log lines.

Trap: carbon writes its cache to disk about once a second and does not drain it on SIGTERM, so
points sent less than a second or two before ``stop`` can be lost. Wait for the data (``fetch``)
before stopping.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script by a python3 without tallyd installed
    sys.path.append(str(REPO_ROOT))

from harness.port import free_port  # noqa: E402 (importable once the checkout is on the path)

DEFAULT_CARBON_DIR = REPO_ROOT / ".cache" / "carbon"
#: Ten-second points for a day: the statsd default flush interval, enough for a demo.
DEFAULT_SCHEMA = "10s:1d"
DEFAULT_INSTANCE = "a"
STATE_FILE = "localcarbon.json"
PID_FILE = "localcarbon.pid"
LOG_FILE = "carbon.log"
WEB_STATE_FILE = "graphite-web.json"
WEB_PID_FILE = "graphite-web.pid"
WEB_LOG_FILE = "graphite-web.log"
WEB_SETTINGS_MODULE = "tallyd_graphite_settings"
#: The server script's file name, also how web-stop recognises the process in /proc.
WEB_SERVER_SCRIPT = "tallyd_graphite_wsgi.py"

CARBON_CONF = """\
# Written by tools/localcarbon.py; rewritten on every start.
[cache]
STORAGE_DIR = {data}/storage
LOCAL_DATA_DIR = {data}/storage/whisper
WHITELISTS_DIR = {data}/storage/lists
LOG_DIR = {data}/log
PID_DIR = {data}
USER =

# Plaintext receiver only, on loopback.
LINE_RECEIVER_INTERFACE = {bind}
LINE_RECEIVER_PORT = {port}
ENABLE_UDP_LISTENER = False
# 0 disables the pickle receiver.
PICKLE_RECEIVER_INTERFACE = {bind}
PICKLE_RECEIVER_PORT = 0
# CarbonLink (cache query) cannot be disabled; port 0 = an ephemeral port on loopback.
CACHE_QUERY_INTERFACE = {bind}
CACHE_QUERY_PORT = 0

# Create every new series at once (the example config's 50/minute silently drops metrics)
# and do not rate-limit updates: tests expect the data on disk within seconds.
MAX_CREATES_PER_MINUTE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CACHE_SIZE = inf
MAX_RECEIVER_CONNECTIONS = inf
WHISPER_LOCK_WRITES = True
WHISPER_AUTOFLUSH = False
ENABLE_TAGS = False
# Tagged series are stored as _tagged/<sha256[0:3]>/<sha256[3:6]>/<sha256>.wsp (carbon's
# default, spelled out because localcarbon.py fetch depends on it).
TAG_HASH_FILENAMES = True
# 0 = carbon does not write its own carbon.agents.* metrics.
CARBON_METRIC_INTERVAL = 0
LOG_LISTENER_CONN_SUCCESS = False
LOG_LISTENER_CONN_LOST = False
LOG_UPDATES = False
LOG_CREATES = False
LOG_CACHE_HITS = False
LOG_CACHE_QUEUE_SORTS = False
"""

SCHEMAS_CONF = """\
# Written by tools/localcarbon.py.
[default]
pattern = .*
retentions = {schema}
"""

# StatsD-style aggregation when points are rolled up into coarser archives (statsd's
# docs/graphite.md): minimum of lower, maximum of upper, sums of sums and counts, else average.
AGGREGATION_CONF = """\
# Written by tools/localcarbon.py.
[min]
pattern = \\.lower(_top\\d+)?$
xFilesFactor = 0.1
aggregationMethod = min

[max]
pattern = \\.upper(_\\d+)?$
xFilesFactor = 0.1
aggregationMethod = max

[sum]
pattern = \\.sum(_\\d+)?$
xFilesFactor = 0
aggregationMethod = sum

[count]
pattern = \\.count(_\\d+)?$
xFilesFactor = 0
aggregationMethod = sum

[count_legacy]
pattern = ^stats_counts\\.
xFilesFactor = 0
aggregationMethod = sum

[default_average]
pattern = .*
xFilesFactor = 0.3
aggregationMethod = average
"""

FETCH_SCRIPT = """\
import sys, whisper
path, want_all = sys.argv[1], sys.argv[2] == "1"
(start, end, step), values = whisper.fetch(path, 0)
for i, value in enumerate(values):
    if value is not None or want_all:
        print(start + i * step, repr(value))
"""


def fail(message: str, code: int = 1) -> None:
    print(f"localcarbon: {message}", file=sys.stderr)
    raise SystemExit(code)


def carbon_paths(carbon_dir: Path) -> tuple[Path, Path]:
    python = carbon_dir / "bin" / "python"
    script = carbon_dir / "bin" / "carbon-cache.py"
    if not python.exists() or not script.exists():
        fail(f"no carbon installation in {carbon_dir}; run tools/bootstrap")
    return python, script


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (an orphaned carbon is reaped by init, or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def pid_is(pid: int, marker: str) -> bool:
    """True if ``pid``'s command line contains ``marker`` (the pid was not reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid_alive(pid)  # no /proc: trust the pidfile
    return marker.encode() in cmdline


def pid_is_carbon(pid: int) -> bool:
    return pid_is(pid, "carbon-cache")


def read_json(path: Path) -> dict[str, object] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def read_state(data_dir: Path) -> dict[str, object] | None:
    return read_json(data_dir / STATE_FILE)


def port_accepts(bind: str, port: int) -> bool:
    try:
        with socket.create_connection((bind, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(data_dir: Path, lines: int = 30, *, name: str = LOG_FILE) -> str:
    try:
        text = (data_dir / name).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def write_config(data_dir: Path, *, bind: str, port: int, schema: str) -> Path:
    conf_dir = data_dir / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("storage/whisper", "storage/lists", "log"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    (conf_dir / "carbon.conf").write_text(
        CARBON_CONF.format(data=data_dir, bind=bind, port=port)
    )
    (conf_dir / "storage-schemas.conf").write_text(SCHEMAS_CONF.format(schema=schema))
    (conf_dir / "storage-aggregation.conf").write_text(AGGREGATION_CONF)
    return conf_dir / "carbon.conf"


def cmd_start(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    state = read_state(data_dir)
    if state and pid_alive(int(state["pid"])) and pid_is_carbon(int(state["pid"])):
        fail(f"already running in {data_dir}: port={state['port']} pid={state['pid']}")
    python, script = carbon_paths(Path(args.carbon_dir))
    env = dict(os.environ, GRAPHITE_NO_PREFIX="True")
    attempts = 1 if args.port else 3
    for _ in range(attempts):
        port = args.port or free_port("tcp", host=args.bind)
        conf = write_config(data_dir, bind=args.bind, port=port, schema=args.schema)
        twistd_pid = data_dir / f"carbon-cache-{args.instance}.pid"
        twistd_pid.unlink(missing_ok=True)
        with open(data_dir / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                [str(python), str(script), f"--config={conf}", f"--instance={args.instance}",
                 f"--pidfile={twistd_pid}", "--nodaemon", "start"],
                cwd=str(data_dir), env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if port_accepts(args.bind, port):
                (data_dir / PID_FILE).write_text(f"{proc.pid}\n")
                (data_dir / STATE_FILE).write_text(json.dumps(
                    {"pid": proc.pid, "port": port, "bind": args.bind,
                     "instance": args.instance, "schema": args.schema}
                ) + "\n")
                print(f"port={port} pid={proc.pid}", flush=True)
                # The child lives on in its own session; do not let Popen's finalizer mind it.
                proc.returncode = 0
                return
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            fail(f"carbon-cache did not accept on {args.bind}:{port} within {args.timeout}s\n"
                 + log_tail(data_dir))
        if "Address already in use" in log_tail(data_dir) and not args.port:
            continue
        fail(f"carbon-cache exited with code {proc.returncode}\n" + log_tail(data_dir))
    fail("could not find a free port for carbon-cache\n" + log_tail(data_dir))


def stop_pid_file(data_dir: Path, pid_file: str, marker: str, timeout: float, *,
                  fallback_pid: int | None = None) -> None:
    """SIGTERM the process in DIR/pid_file (if its command line has ``marker``), wait for it.
    Without a readable pid file, ``fallback_pid`` (if given) is the process."""
    try:
        pid = int((data_dir / pid_file).read_text().strip())
    except (OSError, ValueError):
        if fallback_pid is None:
            print(f"not running (no {pid_file} in {data_dir})")
            return
        pid = fallback_pid
    if pid_alive(pid) and pid_is(pid, marker):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                (data_dir / pid_file).unlink(missing_ok=True)
                fail(f"pid {pid} ignored SIGTERM for {timeout}s; killed it")
            time.sleep(0.05)
        print(f"stopped pid={pid}")
    else:
        print(f"not running (stale pid {pid})")
    (data_dir / pid_file).unlink(missing_ok=True)


def cmd_stop(args: argparse.Namespace) -> None:
    stop_pid_file(Path(args.data_dir).resolve(), PID_FILE, "carbon-cache", args.timeout)


# -- graphite-web ---------------------------------------------------------------------------

WEB_SETTINGS = """\
# Written by tools/localcarbon.py web-start; rewritten on every start (the key is kept).
SECRET_KEY = {secret!r}
ALLOWED_HOSTS = {hosts!r}
STORAGE_DIR = {storage!r}
WHISPER_DIR = {whisper!r}
LOG_DIR = {log!r}
INDEX_FILE = {index!r}
# carbon's cache-query port is an ephemeral one (see carbon.conf): read the Whisper files only;
# carbon writes them about once a second.
CARBONLINK_HOSTS = []
# Every Whisper tree graphite-web reads (several carbon-caches of one ring: each series is in one).
STANDARD_DIRS = {dirs!r}
"""

# A threaded WSGI server from the standard library around graphite-web's Django application:
# no extra package, and it can bind port 0 and say which port it got.
WEB_SERVER = """\
# Written by tools/localcarbon.py web-start.
import json, os, socketserver, sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from graphite.wsgi import application

class Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

bind, port, state = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = make_server(bind, port, application, server_class=Server,
                     handler_class=WSGIRequestHandler)
with open(state + ".tmp", "w") as out:
    json.dump({"pid": os.getpid(), "port": server.server_port, "bind": bind}, out)
os.replace(state + ".tmp", state)
print(f"graphite-web: serving on http://{bind}:{server.server_port}/", flush=True)
server.serve_forever()
"""


def graphite_installed(carbon_dir: Path) -> bool:
    return any(carbon_dir.glob("lib/python3*/site-packages/graphite/wsgi.py"))


def web_env(webapp: Path) -> dict[str, str]:
    return dict(
        os.environ, GRAPHITE_NO_PREFIX="True", PYTHONPATH=str(webapp),
        DJANGO_SETTINGS_MODULE="graphite.settings", GRAPHITE_SETTINGS_MODULE=WEB_SETTINGS_MODULE,
        # Django 3.0 imports cgi, deprecated since Python 3.11: not the user's concern.
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )


def write_web_settings(data_dir: Path, bind: str, whisper_dirs: list[str] | None = None) -> Path:
    webapp = data_dir / "webapp"
    webapp.mkdir(parents=True, exist_ok=True)
    for sub in ("storage/whisper", "log/webapp"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    key_file = webapp / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_hex(32) + "\n")
        key_file.chmod(0o600)
    storage = data_dir / "storage"
    hosts = sorted({"127.0.0.1", "localhost", "[::1]", bind})
    (webapp / f"{WEB_SETTINGS_MODULE}.py").write_text(WEB_SETTINGS.format(
        secret=key_file.read_text().strip(), hosts=hosts, storage=str(storage),
        whisper=str(storage / "whisper"), log=str(data_dir / "log" / "webapp"),
        index=str(storage / "index"),
        dirs=[str(Path(d).resolve()) for d in whisper_dirs or [storage / "whisper"]],
    ))
    (webapp / WEB_SERVER_SCRIPT).write_text(WEB_SERVER)
    return webapp


def web_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "version/", timeout=2) as reply:
            return bool(reply.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def cmd_web_start(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir).resolve()
    carbon_dir = Path(args.carbon_dir)
    python, _ = carbon_paths(carbon_dir)
    if not graphite_installed(carbon_dir):
        fail(f"graphite-web is not installed in {carbon_dir}; run tools/bootstrap")
    state_file = data_dir / WEB_STATE_FILE
    state = read_json(state_file)
    if state and pid_alive(int(state["pid"])) and pid_is(int(state["pid"]), WEB_SERVER_SCRIPT):
        fail(f"graphite-web already running for {data_dir}: "
             f"url=http://{state['bind']}:{state['port']}/ pid={state['pid']}")
    webapp = write_web_settings(data_dir, args.bind, args.whisper_dir)
    env = web_env(webapp)
    if not (data_dir / "storage" / "graphite.db").exists():
        # graphite-web's own tables (tags, dashboards, users): made once, about 3 s.
        migrate = subprocess.run(
            [str(python), "-m", "django", "migrate", "--run-syncdb", "--noinput"],
            cwd=str(webapp), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )
        if migrate.returncode != 0:
            fail(f"django-admin migrate failed:\n{migrate.stdout}{migrate.stderr}")
    state_file.unlink(missing_ok=True)
    pid_file = data_dir / WEB_PID_FILE
    # Ctrl-C (and a SIGTERM) while waiting stops what was started, whatever disposition was
    # inherited: a shell's background job starts with SIGINT ignored, and Python then
    # installs no handler of its own.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with open(data_dir / WEB_LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            [str(python), str(webapp / WEB_SERVER_SCRIPT), args.bind, str(args.port),
             str(state_file)],
            cwd=str(webapp), env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    # At once, not once it answers: it lives in its own session, so a web-start interrupted
    # while waiting (Ctrl-C in tools/run-local, a SIGTERM) leaves it running, and web-stop
    # finds it by this file.
    pid_file.write_text(f"{proc.pid}\n")
    try:
        url = wait_for_web(proc, state_file, args.bind, args.timeout)
    except KeyboardInterrupt:
        stop_web_child(proc, pid_file)
        raise
    if url:
        print(f"url={url} pid={proc.pid}", flush=True)
        proc.returncode = 0  # it lives on in its own session
        return
    if proc.poll() is None:
        stop_web_child(proc, pid_file)
        fail(f"graphite-web did not answer within {args.timeout}s\n"
             + log_tail(data_dir, name=WEB_LOG_FILE))
    pid_file.unlink(missing_ok=True)
    fail(f"graphite-web exited with code {proc.returncode}\n"
         + log_tail(data_dir, name=WEB_LOG_FILE))


def wait_for_web(proc: subprocess.Popen[bytes], state_file: Path, bind: str,
                 timeout: float) -> str | None:
    """graphite-web's URL once it answers; None if it exits or does not answer in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        state = read_json(state_file)
        if state:
            url = f"http://{bind}:{state['port']}/"
            if web_answers(url):
                return url
        time.sleep(0.1)
    return None


def stop_web_child(proc: subprocess.Popen[bytes], pid_file: Path) -> None:
    proc.kill()
    proc.wait()
    pid_file.unlink(missing_ok=True)


def cmd_web_stop(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir).resolve()
    # No pid file (an older web-start, interrupted before it wrote one): the server's own
    # state file has its pid too.
    state = read_json(data_dir / WEB_STATE_FILE)
    fallback = state.get("pid") if state else None
    stop_pid_file(data_dir, WEB_PID_FILE, WEB_SERVER_SCRIPT, args.timeout,
                  fallback_pid=fallback if isinstance(fallback, int) else None)


def cmd_status(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir).resolve()
    state = read_state(data_dir)
    if state and (data_dir / PID_FILE).exists() and pid_alive(int(state["pid"])):
        print(f"running port={state['port']} pid={state['pid']}")
        return
    print("stopped")
    raise SystemExit(1)


# -- where carbon 1.1.10 stores a series (carbon/util.py TaggedSeries, carbon/cache.py) --------
#
# carbon-cache first normalises every received name (CacheFeedingProcessor.process:
# ``TaggedSeries.parse(metric).path``): the name loses leading ``~``, and the tags of a
# ``name;k=v;...`` (or OpenMetrics ``name{k="v",...}``) path are written back sorted, the last of
# a repeated tag winning. A name that does not parse is kept as received. The file is then
# (WhisperDatabase.getFilesystemPath, TaggedSeries.encode):
#   untagged   dots become directories:   a/b/c.wsp
#   tagged     _tagged/H[0:3]/H[3:6]/H.wsp, H = sha256 of the normalised name in hex
#              (TAG_HASH_FILENAMES = True, the default), or, with TAG_HASH_FILENAMES = False,
#              _tagged/H[0:3]/H[3:6]/<name with "." replaced by "_DOT_">.wsp (carbon's docstring
#              says "-"; the code says "_DOT_").
# tests/unit/test_localcarbon.py checks these functions against carbon's own code.

#: TaggedSeries.prohibitedTagChars
_PROHIBITED_TAG_CHARS = ";!^="
_OPENMETRICS_TAG = re.compile(r'([^=]+)="((?:[\\]["\\]|[^"\\])+)"(:?,|$)')


class TagError(ValueError):
    """The name does not parse as a tagged series (carbon then stores it as received)."""


def _check_tag(tag: str, value: str) -> None:
    if not tag or not value or value[0] == "~" or ";" in value:
        raise TagError(f"bad tag {tag!r}={value!r}")
    if any(char in tag for char in _PROHIBITED_TAG_CHARS):
        raise TagError(f"bad tag name {tag!r}")


def _format_series(metric: str, tags: dict[str, str]) -> str:
    name = metric.lstrip("~")
    if not name:
        raise TagError(f"empty name in {metric!r}")
    tags["name"] = name
    return name + "".join(sorted(f";{tag}={value}" for tag, value in tags.items()
                                 if tag != "name"))


def normalize_series(path: str) -> str:
    """The name carbon 1.1.10 stores ``path`` under (``TaggedSeries.parse(path).path``)."""
    tags: dict[str, str] = {}
    try:
        if path[-2:] == '"}' and "{" in path:
            parts = path[:-1].split("{", 2)
            if len(parts) != 2 or not parts[0]:
                raise TagError(path)
            metric, raw = parts
            while raw:
                match = _OPENMETRICS_TAG.match(raw)
                if match is None:
                    raise TagError(path)
                value = match[2].replace('\\"', '"').replace("\\\\", "\\")
                _check_tag(match[1], value)
                tags[match[1]] = value
                raw = raw[len(match[0]):]
            return _format_series(metric, tags)
        metric, *segments = path.split(";")
        if not metric:
            raise TagError(path)
        for segment in segments:
            tag, sep, value = segment.partition("=")
            if not sep or not tag:
                raise TagError(path)
            _check_tag(tag, value)
            tags[tag] = value
        return _format_series(metric, tags)
    except TagError:
        return path


def whisper_relpaths(metric: str) -> list[str]:
    """Where carbon 1.1.10 may store ``metric``, relative to its whisper directory, in the order
    to look: the hashed tagged name (carbon's default) before the readable one."""
    name = normalize_series(metric)
    if ";" not in name:
        return [name.replace(".", os.sep).lstrip(os.sep) + ".wsp"]
    digest = hashlib.sha256(name.encode("utf8")).hexdigest()
    folder = os.path.join("_tagged", digest[0:3], digest[3:6])
    return [os.path.join(folder, digest + ".wsp"),
            os.path.join(folder, name.replace(".", "_DOT_") + ".wsp")]


def whisper_file(data_dir: Path, metric: str) -> Path:
    """The Whisper file of ``metric`` under ``data_dir``: the first that exists, else the first
    candidate (where carbon would create it)."""
    root = data_dir / "storage" / "whisper"
    candidates = [root / rel for rel in whisper_relpaths(metric)]
    return next((path for path in candidates if path.exists()), candidates[0])


def cmd_fetch(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir).resolve()
    path = whisper_file(data_dir, args.metric)
    if not path.exists():
        fail(f"no whisper file for {args.metric} ({path})", code=2)
    python, _ = carbon_paths(Path(args.carbon_dir))
    result = subprocess.run(
        [str(python), "-c", FETCH_SCRIPT, str(path), "1" if args.all else "0"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        fail(f"whisper fetch failed:\n{result.stderr}")
    sys.stdout.write(result.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--carbon-dir", default=os.environ.get("TALLYD_CARBON_DIR",
                                                                 str(DEFAULT_CARBON_DIR)),
                        help="the venv with carbon and whisper (default: .cache/carbon)")
    sub = parser.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="start carbon-cache in the background")
    start.add_argument("--data-dir", required=True)
    start.add_argument("--port", type=int, default=0,
                       help="plaintext port (default: a free port on the bind address)")
    start.add_argument("--bind", default="127.0.0.1")
    start.add_argument("--instance", default=DEFAULT_INSTANCE)
    start.add_argument("--schema", default=DEFAULT_SCHEMA,
                       help="retentions for every series, e.g. 1s:1h or 10s:1d,1m:30d")
    start.add_argument("--timeout", type=float, default=30.0)
    start.set_defaults(func=cmd_start)

    stop = sub.add_parser("stop", help="SIGTERM the carbon-cache started in DIR")
    stop.add_argument("--data-dir", required=True)
    stop.add_argument("--timeout", type=float, default=15.0)
    stop.set_defaults(func=cmd_stop)

    status = sub.add_parser("status", help="is the carbon-cache in DIR running?")
    status.add_argument("--data-dir", required=True)
    status.set_defaults(func=cmd_status)

    fetch = sub.add_parser("fetch", help="print the points of one series")
    fetch.add_argument("--data-dir", required=True)
    fetch.add_argument("metric", help="a metric path such as stats_counts.app.hits")
    fetch.add_argument("--all", action="store_true", help="include empty slots")
    fetch.set_defaults(func=cmd_fetch)

    web_start = sub.add_parser("web-start", help="serve graphite-web on DIR's Whisper files")
    web_start.add_argument("--data-dir", required=True)
    web_start.add_argument("--port", type=int, default=0,
                           help="HTTP port (default: a free port on the bind address)")
    web_start.add_argument("--bind", default="127.0.0.1")
    web_start.add_argument("--whisper-dir", action="append", metavar="DIR",
                           help="a Whisper tree to read (repeatable; default DIR/storage/whisper)")
    web_start.add_argument("--timeout", type=float, default=60.0)
    web_start.set_defaults(func=cmd_web_start)

    web_stop = sub.add_parser("web-stop", help="SIGTERM the graphite-web started for DIR")
    web_stop.add_argument("--data-dir", required=True)
    web_stop.add_argument("--timeout", type=float, default=15.0)
    web_stop.set_defaults(func=cmd_web_stop)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return
        raise


if __name__ == "__main__":
    main()
