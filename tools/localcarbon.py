#!/usr/bin/env python3
"""Run a real carbon-cache on 127.0.0.1 for the quick start and the end-to-end tests.

Standard library only: it runs under any python3. carbon itself runs from the separate venv
that ``tools/bootstrap`` installs into ``.cache/carbon`` (carbon 1.1.10 needs Python 3.11).

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
        file for that path yet.

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
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CARBON_DIR = REPO_ROOT / ".cache" / "carbon"
#: Ten-second points for a day: the statsd default flush interval, enough for a demo.
DEFAULT_SCHEMA = "10s:1d"
DEFAULT_INSTANCE = "a"
STATE_FILE = "localcarbon.json"
PID_FILE = "localcarbon.pid"
LOG_FILE = "carbon.log"

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


def free_port(bind: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((bind, 0))
        return int(sock.getsockname()[1])


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


def pid_is_carbon(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid_alive(pid)  # no /proc: trust the pidfile
    return b"carbon-cache" in cmdline


def read_state(data_dir: Path) -> dict[str, object] | None:
    try:
        return json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def port_accepts(bind: str, port: int) -> bool:
    try:
        with socket.create_connection((bind, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(data_dir: Path, lines: int = 30) -> str:
    try:
        text = (data_dir / LOG_FILE).read_text(errors="replace")
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
        port = args.port or free_port(args.bind)
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


def cmd_stop(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir).resolve()
    try:
        pid = int((data_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        print(f"not running (no {PID_FILE} in {data_dir})")
        return
    if pid_alive(pid) and pid_is_carbon(pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + args.timeout
        while pid_alive(pid):
            if time.monotonic() > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                (data_dir / PID_FILE).unlink(missing_ok=True)
                fail(f"pid {pid} ignored SIGTERM for {args.timeout}s; killed it")
            time.sleep(0.05)
        print(f"stopped pid={pid}")
    else:
        print(f"not running (stale pid {pid})")
    (data_dir / PID_FILE).unlink(missing_ok=True)


def cmd_status(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir).resolve()
    state = read_state(data_dir)
    if state and (data_dir / PID_FILE).exists() and pid_alive(int(state["pid"])):
        print(f"running port={state['port']} pid={state['pid']}")
        return
    print("stopped")
    raise SystemExit(1)


def whisper_file(data_dir: Path, metric: str) -> Path:
    return data_dir / "storage" / "whisper" / (metric.replace(".", os.sep) + ".wsp")


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

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return
        raise


if __name__ == "__main__":
    main()
