"""The quick start's local cluster (``make run`` = tools/bootstrap + tools/run-local): every tier
of a real deployment, on loopback, started, watched and stopped by one process.

    clients --UDP/TCP 127.0.0.1:8125--> proxy-0, proxy-1   (one port, both bound SO_REUSEPORT)
            --each name to one aggregator (H1)--> agg-0, agg-1   (2 workers each, worker ports)
            --each output path to one node of the ring--> carbon-cache a, b (Whisper files)
    graphite-web reads both Whisper trees as one; ``tallyd-ring ui`` draws every /status.

**Two proxies behind one address.** Both bind 127.0.0.1:8125 with ``reuse_port`` and the kernel
spreads the sockets over them: a UDP datagram goes to the proxy its source address and port hash
to (one client socket sticks to one proxy, as a UDP client that resolved a round-robin name once
does), a TCP connection to one proxy for its life; a stopped proxy's share goes to the other at
once. The name is ``localhost``, which every system resolves to 127.0.0.1 already. Two addresses
(127.0.0.1 and 127.0.0.2 answer on Linux's loopback) would need one name with two A records:
an /etc/hosts edit or a DNS server, so a system change; docs/dns.md is the real thing.

Every other port is the kernel's choice (port 0, read back from the daemons' ``event=listening``
lines), so a second checkout or a test run never collides; the fixed ones are the variables of
`ENVIRONMENT`. Readiness is each daemon's own /readyz. Ctrl-C or SIGTERM stops the tiers in data
order (proxies drain, aggregators flush their last interval, carbon writes it) and the exit status
is 0 only if every daemon stopped cleanly. Pid files under ``DIR/pids`` let the next run stop what
a killed run left behind.

SHELL (subprocesses, files, signals).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from harness.carbon import LOCALCARBON, localcarbon
from harness.checkout import REPO_ROOT
from harness.daemon import DaemonError
from harness.tallyd import TallydProcess

#: The variables of tools/run-local (README.md lists them): name -> (default, meaning).
ENVIRONMENT = {
    "TALLYD_STATSD_PORT": ("8125", "where clients send: both proxies' port, UDP and TCP"),
    "TALLYD_GRAPHITE_PORT": ("8080", "graphite-web's HTTP port; `0`: no graphite-web"),
    "TALLYD_UI_PORT": ("8180", "the cluster page (`tallyd-ring ui`); `0`: none"),
    "TALLYD_FLUSH_INTERVAL": ("10", "flush interval in whole seconds, also the Whisper step"),
    "TALLYD_DATA_DIR": ("run", "configs, Whisper files, logs and pid files"),
}
PROXIES = 2
AGGREGATORS = 2
WORKERS = 2
CARBON_INSTANCES = ("a", "b")
#: The series the start-up summary follows through the cluster (send it with the echo shown).
DEMO_NAME = "demo.hits"
START_TIMEOUT_SECONDS = 60.0
#: carbon-cache writes its cache about once a second and drops it on SIGTERM (harness.carbon):
#: the aggregators' last flush gets this long to reach the Whisper files.
CARBON_SETTLE_SECONDS = 2.0
STOP_TIMEOUT_SECONDS = 30.0


def say(message: str) -> None:
    print(f"tallyd: {message}", flush=True)


def toml(table: Mapping[str, object]) -> str:
    """A flat TOML table (strings, numbers, booleans, lists of strings)."""
    def value(item: object) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, list):
            return "[" + ", ".join(value(x) for x in item) + "]"
        return json.dumps(item)
    return "".join(f"{key} = {value(item)}\n" for key, item in table.items())


class ClusterDaemon(TallydProcess):
    """A tallyd process whose log also goes to a file, with a pid file for a later run."""

    def __init__(self, name: str, argv: Sequence[str], *, data: Path) -> None:
        self.name = name
        self.log_path = data / "logs" / f"{name}.log"
        self._sink: IO[str] = open(self.log_path, "a")  # closed by LocalCluster.stop
        super().__init__(argv)
        (data / "pids" / f"{name}.pid").write_text(f"{self.pid}\n")

    def _on_line(self, line: str, label: str) -> None:
        super()._on_line(line, label)
        self._sink.write(line + "\n")
        self._sink.flush()

    def url(self, path: str = "") -> str:
        host, port = self.http
        return f"http://{host}:{port}{path}"

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=5) as answer:
            return json.loads(answer.read())

    def wait_ready(self, path: str = "/readyz") -> None:
        """``event=started``, then ``path`` answers 200 (the daemon's own readiness)."""
        self.wait_started(START_TIMEOUT_SECONDS)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            code, body = self.http_get(path, timeout=5)
            if code == 200:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise DaemonError(f"{path} answered {code} {body[:200]!r}\n" + self.describe())
            time.sleep(0.1)

    def terminate(self) -> int:
        """SIGTERM and wait (the daemon's graceful stop); SIGKILL its group on a timeout."""
        try:
            return self.stop(STOP_TIMEOUT_SECONDS)
        except DaemonError as exc:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            say(str(exc).splitlines()[0])
            return -9


def stop_leftovers(data: Path) -> None:
    """Stop what a killed run left: daemons by their pid files (a pid whose command line no
    longer names this data directory is someone else's), then graphite-web and carbon."""
    for pid_file in sorted((data / "pids").glob("*.pid")):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if str(data) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                say(f"stopping {pid_file.stem} (pid {pid}) left by an earlier run")
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
                while localcarbon.pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
    run_localcarbon("web-stop", "--data-dir", str(data / "graphite"), check=False)
    for instance in CARBON_INSTANCES:
        run_localcarbon("stop", "--data-dir", str(data / f"carbon-{instance}"), check=False)


def run_localcarbon(*args: str, check: bool = True) -> str:
    """tools/localcarbon.py ARGS in its own session (a Ctrl-C meant for us must not cut it
    short between starting a server and writing its pid file); its stdout."""
    result = subprocess.run([sys.executable, str(LOCALCARBON), *args], capture_output=True,
                            text=True, cwd=str(REPO_ROOT), start_new_session=True,
                            stdin=subprocess.DEVNULL, check=False)
    if check and result.returncode != 0:
        raise DaemonError(f"localcarbon.py {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def start_carbon(data: Path, instance: str, interval: int) -> str:
    """carbon-cache ``instance`` on a free port; its ring member ``127.0.0.1:PORT:INSTANCE``."""
    out = run_localcarbon("start", "--data-dir", str(data / f"carbon-{instance}"),
                          "--instance", instance, "--schema", f"{interval}s:1d")
    port = out.split("port=", 1)[1].split()[0]
    return f"127.0.0.1:{port}:{instance}"


def start_graphite(data: Path, port: int) -> str:
    out = run_localcarbon("web-start", "--data-dir", str(data / "graphite"), "--port", str(port),
                          *[arg for instance in CARBON_INSTANCES for arg in (
                              "--whisper-dir", str(data / f"carbon-{instance}/storage/whisper"))])
    return out.split("url=", 1)[1].split()[0]


class LocalCluster:
    """The daemons of one run, in start order; `stop` takes them down in data order."""

    def __init__(self, env: Mapping[str, str]) -> None:
        setting = {name: env.get(name, default) for name, (default, _) in ENVIRONMENT.items()}
        self.statsd_port = int(setting["TALLYD_STATSD_PORT"])
        self.graphite_port = int(setting["TALLYD_GRAPHITE_PORT"])
        self.ui_port = int(setting["TALLYD_UI_PORT"])
        self.interval = int(setting["TALLYD_FLUSH_INTERVAL"])
        self.data = Path(setting["TALLYD_DATA_DIR"]).resolve()
        self.carbon: list[str] = []
        self.graph = ""
        self.aggregators: list[ClusterDaemon] = []
        self.proxies: list[ClusterDaemon] = []
        self.ui: ClusterDaemon | None = None

    def path(self, name: str) -> Path:
        return self.data / name

    def start(self) -> None:
        for sub in ("logs", "pids", "graphite"):
            self.path(sub).mkdir(parents=True, exist_ok=True)
        stop_leftovers(self.data)
        # reuse_port would let our proxies share the port with anyone else who set it (another
        # checkout's run-local): ask for it alone first.
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as probe:
                try:
                    probe.bind(("127.0.0.1", self.statsd_port))
                except OSError as exc:
                    raise DaemonError(f"127.0.0.1:{self.statsd_port} is taken ({exc.strerror}); "
                                      "set TALLYD_STATSD_PORT to another port") from None
        with ThreadPoolExecutor() as pool:  # on Ctrl-C, leaving it waits for the started ones
            carbon = [pool.submit(start_carbon, self.data, i, self.interval)
                      for i in CARBON_INSTANCES]
            web = pool.submit(start_graphite, self.data, self.graphite_port) \
                if self.graphite_port else None
            self.carbon = [future.result() for future in carbon]
            self.path("aggregator.toml").write_text(toml({
                "carbon": self.carbon, "workers": WORKERS, "worker_listen": "udp://127.0.0.1:0",
                "flush_interval": self.interval}))
            self.aggregators = [self.daemon(f"agg-{i}", "aggregator", "--config",
                                            self.path("aggregator.toml"), "--listen",
                                            "udp://127.0.0.1:0", "--mgmt-port", "0")
                                for i in range(AGGREGATORS)]
            list(pool.map(ClusterDaemon.wait_ready, self.aggregators))
            self.path("proxy.toml").write_text(toml({
                "listen": [f"{kind}://127.0.0.1:{self.statsd_port}" for kind in ("udp", "tcp")],
                "reuse_port": True, "flush_interval": self.interval,
                "aggregator": [f"{agg.address('udp')}:{agg.mgmt[1]}" for agg in self.aggregators]}))
            self.proxies = [self.daemon(f"proxy-{i}", "proxy", "--config",
                                        self.path("proxy.toml"), "--mgmt-port", "0")
                            for i in range(PROXIES)]
            list(pool.map(ClusterDaemon.wait_ready, self.proxies))
            members = {"proxies": [p.url() for p in self.proxies],
                       "aggregators": [a.url() for a in self.aggregators]}
            self.path("ring.toml").write_text(
                toml({"carbon": self.carbon}) + "\n[cluster]\n" + toml(members))
            if self.ui_port:
                self.ui = self.daemon("ui", "ringtool", "ui", "--ring", self.path("ring.toml"),
                                      listen=f"127.0.0.1:{self.ui_port}")
                self.ui.wait_ready("/healthz")
            self.graph = web.result() if web else ""

    def daemon(self, name: str, module: str, *args: str | Path,
               listen: str | None = None) -> ClusterDaemon:
        argv = [sys.executable, "-m", module, *map(str, args)]
        argv += ["--listen", listen] if listen else ["--identity", name, "--http", "127.0.0.1:0"]
        return ClusterDaemon(name, argv, data=self.data)

    def daemons(self) -> list[ClusterDaemon]:
        return [*self.proxies, *self.aggregators, *([self.ui] if self.ui else [])]

    def summary(self) -> list[str]:
        """What to print once every tier is up: where to send, where the demo series goes."""
        rel = str(self.data.relative_to(Path.cwd()) if self.data.is_relative_to(Path.cwd())
                  else self.data)
        route = self.proxies[0].get_json("/route/" + DEMO_NAME)
        owner = self.aggregators[route["aggregator"]]
        paths = owner.get_json("/route/" + DEMO_NAME)["paths"]
        lines = [f"send StatsD to udp or tcp localhost:{self.statsd_port} (127.0.0.1): "
                 f"{PROXIES} proxies share that port (SO_REUSEPORT), e.g.",
                 f"    echo '{DEMO_NAME}:1|c' > /dev/udp/127.0.0.1/{self.statsd_port}",
                 f"{DEMO_NAME} goes to {owner.name} (worker {route.get('worker', 0)}), "
                 "and its series to the Carbon node the ring names:"]
        for item in paths:  # a counter's (the name is not seen yet: every type's are listed)
            if item["path"] not in (f"stats_counts.{DEMO_NAME}", f"stats.{DEMO_NAME}"):
                continue
            for node in item["carbon"]:
                instance = node.rsplit(":", 1)[1]
                where = localcarbon.whisper_file(Path(rel) / f"carbon-{instance}", item["path"])
                lines.append(f"    {item['path']} -> carbon {node}: {where}")
        lines += [f"    (any name: .venv/bin/tallyd-ring lookup --config {rel}/aggregator.toml "
                  "PATH)"]
        if self.graph:
            lines.append(f"graph: {self.graph}render?target=stats_counts.{DEMO_NAME}&from=-10min")
        lines += [f"status: {d.name} {d.url('/status')}" for d in self.proxies + self.aggregators]
        if self.ui:
            lines.append(f"cluster page (tallyd-ring ui): {self.ui.url('/')}")
        lines.append(f"loss check: .venv/bin/tallyd-ring cluster --ring {rel}/ring.toml")
        lines.append(f"configs, data and logs in {rel}/; Ctrl-C stops everything")
        return lines

    def watch(self) -> None:
        """Until a signal (KeyboardInterrupt) or a daemon's death."""
        while True:
            for daemon in self.daemons():
                if daemon.returncode is not None:
                    raise DaemonError(f"{daemon.name} exited\n" + daemon.describe())
            time.sleep(0.5)

    def stop(self) -> bool:
        """Proxies (they drain), aggregators (last flush), carbon's write, the rest; True if
        every daemon exited 0."""
        clean = True
        for tier in (self.proxies, self.aggregators, [self.ui] if self.ui else []):
            with ThreadPoolExecutor() as pool:
                codes = list(pool.map(ClusterDaemon.terminate, tier))
            for daemon, code in zip(tier, codes, strict=True):
                say(f"stopped {daemon.name} (exit status {code})")
                clean = clean and code == 0
                daemon._sink.close()
                (self.data / "pids" / f"{daemon.name}.pid").unlink(missing_ok=True)
            if tier is self.aggregators and tier:
                time.sleep(CARBON_SETTLE_SECONDS)
        stop_leftovers(self.data)  # graphite-web and carbon, by their pid files
        say("stopped graphite-web and carbon-cache " + " ".join(CARBON_INSTANCES))
        return clean


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] = ()) -> int:
    if argv:
        say("tools/run-local takes no arguments; its settings are the TALLYD_* variables "
            "(README.md, Quick start)")
        return 2
    # Whatever was inherited: a shell's background job starts with SIGINT ignored, and Python
    # then installs no handler of its own.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        cluster = LocalCluster(os.environ)
    except ValueError as exc:
        say(f"error: a TALLYD_* variable is not a number: {exc}")
        return 2
    started = time.monotonic()
    status = 0
    try:
        say(f"starting {len(CARBON_INSTANCES)} carbon-caches"
            + (", graphite-web" if cluster.graphite_port else "")
            + f", {AGGREGATORS} aggregators ({WORKERS} workers each), {PROXIES} proxies"
            + (" and the cluster page" if cluster.ui_port else ""))
        cluster.start()
        say(f"local cluster up in {time.monotonic() - started:.1f} s")
        for line in cluster.summary():
            say(line)
        cluster.watch()
    except KeyboardInterrupt:
        say("stopping: the proxies drain, the aggregators flush the interval in progress "
            f"(up to {cluster.interval} s), carbon writes it")
    except (DaemonError, OSError) as exc:
        say(f"error: {exc}")
        status = 1
    finally:
        # A second Ctrl-C must not cut the stop short and leave daemons running.
        signal.signal(signal.SIGINT, lambda *_: say("still stopping..."))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not cluster.stop():
            status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
